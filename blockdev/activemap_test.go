package blockdev

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

const (
	MiB = int64(1) << 20
	// The test map: 9.5 MiB of data in 1 MiB extents = 10 extents, the last one short.
	tData   = 9*MiB + MiB/2
	tExtent = uint32(MiB)
)

func newTestMap(t testing.TB, keepDirty int) *ActiveMap {
	t.Helper()
	a, err := NewActiveMap(tData, tExtent, keepDirty, 512)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// setBits lists the extents set in a bitmap image.
func setBits(img []byte) []int {
	var out []int
	for i, c := range img {
		for b := range 8 {
			if c&(1<<b) != 0 {
				out = append(out, i*8+b)
			}
		}
	}
	return out
}

func bitmapOf(size int, extents ...int) []byte {
	b := make([]byte, size)
	for _, e := range extents {
		b[e>>3] |= 1 << (e & 7)
	}
	return b
}

type amOp func(a *ActiveMap) bool

func ws(off, n int64) amOp { return func(a *ActiveMap) bool { return a.WriteStart(off, n) } }
func wd(off, n int64) amOp { return func(a *ActiveMap) bool { return a.WriteDone(off, n) } }
func ns(off, n int64) amOp { return func(a *ActiveMap) bool { return a.NeedSync(off, n) } }
func sd(e int, ep uint64) amOp {
	return func(a *ActiveMap) bool { return a.SyncDone(e, ep) }
}
func allSync() amOp { return func(a *ActiveMap) bool { return a.SetAllSync() } }

// persist writes the image "to disk": what the engine does when told mustPersist.
func persist() amOp {
	return func(a *ActiveMap) bool { a.MarkDurable(a.Image(nil)); return false }
}

func merge(ext ...int) amOp {
	return func(a *ActiveMap) bool {
		must, err := a.Merge(bitmapOf(a.MapSize(), ext...))
		if err != nil {
			panic(err)
		}
		return must
	}
}

func ext(e int) int64 { return int64(e) * MiB }

type amStep struct {
	name  string
	op    amOp
	want  bool  // the method's result
	image []int // extents set in Image afterwards
	dirty int   // Dirty() extents afterwards
	sync  int   // SyncPending afterwards
}

func TestActiveMapScenarios(t *testing.T) {
	scenarios := []struct {
		name  string
		keep  int
		steps []amStep
	}{
		{"first write must persist, second not", 3, []amStep{
			{"start e0", ws(0, 4096), true, []int{0}, 1, 0},
			{"persist", persist(), false, []int{0}, 1, 0},
			{"done e0: kept by LRU", wd(0, 4096), false, []int{0}, 0, 0},
			{"start e0 again", ws(100, 1), false, []int{0}, 1, 0},
			{"done", wd(100, 1), false, []int{0}, 0, 0},
		}},
		{"LRU eviction order (least recently written goes first)", 3, []amStep{
			{"e0", ws(ext(0), 1), true, []int{0}, 1, 0},
			{"e0 done", wd(ext(0), 1), false, []int{0}, 0, 0},
			{"e1", ws(ext(1), 1), true, []int{0, 1}, 1, 0},
			{"e1 done", wd(ext(1), 1), false, []int{0, 1}, 0, 0},
			{"e2", ws(ext(2), 1), true, []int{0, 1, 2}, 1, 0},
			{"e2 done", wd(ext(2), 1), false, []int{0, 1, 2}, 0, 0},
			{"persist", persist(), false, []int{0, 1, 2}, 0, 0},
			{"e0 again moves it to the head", ws(ext(0), 1), false, []int{0, 1, 2}, 1, 0},
			{"e0 done", wd(ext(0), 1), false, []int{0, 1, 2}, 0, 0},
			{"e3 evicts e1, the tail", ws(ext(3), 1), true, []int{0, 2, 3}, 1, 0},
			{"e3 done", wd(ext(3), 1), false, []int{0, 2, 3}, 0, 0},
			{"e4 evicts e2", ws(ext(4), 1), true, []int{0, 3, 4}, 1, 0},
			{"e4 done", wd(ext(4), 1), false, []int{0, 3, 4}, 0, 0},
			{"e5 evicts e0", ws(ext(5), 1), true, []int{3, 4, 5}, 1, 0},
		}},
		{"evicted extent with a write in flight stays set", 1, []amStep{
			{"e0", ws(ext(0), 1), true, []int{0}, 1, 0},
			{"e1 evicts e0 from the LRU", ws(ext(1), 1), true, []int{0, 1}, 2, 0},
			{"e0 done: not in LRU, bit lost", wd(ext(0), 1), true, []int{1}, 1, 0},
			{"e1 done: head of LRU, kept", wd(ext(1), 1), false, []int{1}, 0, 0},
		}},
		{"extent boundaries", 0, []amStep{
			{"last byte of e0 and first of e1", ws(MiB-1, 2), true, []int{0, 1}, 2, 0},
			{"exactly e2", ws(ext(2), MiB), true, []int{0, 1, 2}, 3, 0},
			{"ends on the e3 boundary", ws(ext(3)-4096, 4096), true, []int{0, 1, 2}, 3, 0},
			{"last (short) extent", ws(ext(9), MiB/2), true, []int{0, 1, 2, 9}, 4, 0},
			{"past the data area: ignored", ws(tData, 4096), false, []int{0, 1, 2, 9}, 4, 0},
			{"straddling the end: clipped", ws(tData-512, 4096), true, []int{0, 1, 2, 9}, 4, 0},
			{"zero length", ws(ext(5), 0), false, []int{0, 1, 2, 9}, 4, 0},
			{"negative offset clipped to 0", ws(-4096, 4097), true, []int{0, 1, 2, 9}, 4, 0},
			{"done e0+e1: e0 has another write", wd(MiB-1, 2), true, []int{0, 2, 9}, 3, 0},
			{"done e0 (the negative one)", wd(-4096, 4097), true, []int{2, 9}, 2, 0},
			{"done e2: one more in flight", wd(ext(2), MiB), false, []int{2, 9}, 2, 0},
			{"done e2 (ending on the boundary)", wd(ext(3)-4096, 4096), true, []int{9}, 1, 0},
		}},
		{"inflight counts overlapping writes", 0, []amStep{
			{"w1", ws(ext(5), 4096), true, []int{5}, 1, 0},
			{"w2 same extent", ws(ext(5)+8192, 4096), true, []int{5}, 1, 0},
			{"persist", persist(), false, []int{5}, 1, 0},
			{"w3 same extent: durable", ws(ext(5), 1), false, []int{5}, 1, 0},
			{"w1 done", wd(ext(5), 4096), false, []int{5}, 1, 0},
			{"w2 done", wd(ext(5)+8192, 4096), false, []int{5}, 1, 0},
			{"w3 done clears", wd(ext(5), 1), true, nil, 0, 0},
			{"unmatched done ignored", wd(ext(5), 1), false, nil, 0, 0},
			{"next write: durable image still has e5", ws(ext(5), 1), false, []int{5}, 1, 0},
		}},
		{"epoch race: NeedSync during a sync keeps the bit", 0, []amStep{
			{"need e4", ns(ext(4), 1), true, []int{4}, 1, 1},
			{"persist", persist(), false, []int{4}, 1, 1},
			{"need e4 again while syncing epoch 1", ns(ext(4)+10, 1), false, []int{4}, 1, 1},
			{"sync of epoch 1 done: stale", sd(4, 1), false, []int{4}, 1, 1},
			{"sync of epoch 2 done", sd(4, 2), true, nil, 0, 0},
			{"done again: no-op", sd(4, 2), false, nil, 0, 0},
			{"out of range", sd(10, 2), false, nil, 0, 0},
		}},
		{"sync done with a write in flight keeps the bit", 0, []amStep{
			{"need e7", ns(ext(7), 1), true, []int{7}, 1, 1},
			{"write e7", ws(ext(7), 1), true, []int{7}, 1, 1},
			{"sync done", sd(7, 1), false, []int{7}, 1, 0},
			{"write done", wd(ext(7), 1), true, nil, 0, 0},
		}},
		{"NeedSync over a write keeps the extent after the write", 2, []amStep{
			{"write e1+e2", ws(ext(1), 2*MiB), true, []int{1, 2}, 2, 0},
			{"remote leg failed", ns(ext(1), 2*MiB), true, []int{1, 2}, 2, 2},
			{"write done", wd(ext(1), 2*MiB), false, []int{1, 2}, 2, 2},
			{"e3, e4 push e1, e2 out of the LRU", ws(ext(3), 2*MiB), true, []int{1, 2, 3, 4}, 4, 2},
			{"e3, e4 done", wd(ext(3), 2*MiB), false, []int{1, 2, 3, 4}, 2, 2},
			{"sync e1", sd(1, 1), true, []int{2, 3, 4}, 1, 1},
			{"sync e2", sd(2, 1), true, []int{3, 4}, 0, 0},
		}},
		{"SetAllSync and merge", 0, []amStep{
			{"merge e0 e9", merge(0, 9), true, []int{0, 9}, 2, 2},
			{"persist", persist(), false, []int{0, 9}, 2, 2},
			{"merge e0 again: durable", merge(0), false, []int{0, 9}, 2, 2},
			{"merge nothing", merge(), false, []int{0, 9}, 2, 2},
			{"all", allSync(), true, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10, 10},
			{"persist", persist(), false, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10, 10},
			{"all again", allSync(), false, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, 10, 10},
			{"e0: merge epoch 1, all 2 and 4, merge 3", sd(0, 4), true, []int{1, 2, 3, 4, 5, 6, 7, 8, 9}, 9, 9},
			{"e9 stale epoch", sd(9, 2), false, []int{1, 2, 3, 4, 5, 6, 7, 8, 9}, 9, 9},
			{"e9 current epoch", sd(9, 3), true, []int{1, 2, 3, 4, 5, 6, 7, 8}, 8, 8},
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			a := newTestMap(t, sc.keep)
			for _, st := range sc.steps {
				got := st.op(a)
				if got != st.want {
					t.Fatalf("%s: returned %v, want %v", st.name, got, st.want)
				}
				if img := setBits(a.Image(nil)); !slices.Equal(img, st.image) {
					t.Fatalf("%s: image %v, want %v", st.name, img, st.image)
				}
				if d, _ := a.Dirty(); d != st.dirty {
					t.Fatalf("%s: dirty %d, want %d", st.name, d, st.dirty)
				}
				if s := a.SyncPending(); s != st.sync {
					t.Fatalf("%s: sync pending %d, want %d", st.name, s, st.sync)
				}
			}
		})
	}
}

func TestActiveMapGeometry(t *testing.T) {
	a := newTestMap(t, 64)
	if a.Extents() != 10 || a.ExtentSize() != tExtent || a.MapSize() != 512 {
		t.Fatalf("Extents %d ExtentSize %d MapSize %d", a.Extents(), a.ExtentSize(), a.MapSize())
	}
	for _, tc := range []struct {
		e        int
		off, len int64
	}{{0, 0, MiB}, {1, MiB, MiB}, {9, 9 * MiB, MiB / 2}, {10, 0, 0}, {-1, 0, 0}} {
		if off, l := a.ExtentRange(tc.e); off != tc.off || l != tc.len {
			t.Errorf("ExtentRange(%d) = %d,%d want %d,%d", tc.e, off, l, tc.off, tc.len)
		}
	}
	big, err := NewActiveMap(1<<40-69632, 2<<20, 64, 512)
	if err != nil {
		t.Fatal(err)
	}
	if big.Extents() != 524288 || big.MapSize() != 65536 {
		t.Fatalf("1 TiB map: %d extents, %d bytes", big.Extents(), big.MapSize())
	}
	s4k, _ := NewActiveMap(MiB, 4096, 1, 4096)
	if s4k.MapSize() != 4096 || s4k.Extents() != 256 {
		t.Fatalf("4K-sector map: %d bytes, %d extents", s4k.MapSize(), s4k.Extents())
	}
	for _, tc := range []struct {
		data   int64
		extent uint32
		keep   int
		sector int
		want   string
	}{
		{0, 4096, 1, 512, "data size 0"},
		{MiB, 3 << 20, 1, 512, "extent size 3145728 is not a power of two"},
		{MiB, 0, 1, 512, "extent size 0"},
		{MiB, 4096, 1, 500, "sector size 500"},
		{MiB, 4096, -1, 512, "keepdirty -1"},
		{1 << 62, 512, 1, 512, "exceed"},
	} {
		if _, err := NewActiveMap(tc.data, tc.extent, tc.keep, tc.sector); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewActiveMap(%d, %d, %d, %d) = %v, want %q", tc.data, tc.extent, tc.keep, tc.sector, err, tc.want)
		}
	}
}

func TestActiveMapDirtyBytes(t *testing.T) {
	a := newTestMap(t, 64)
	a.NeedSync(ext(9), 1)
	if n, b := a.Dirty(); n != 1 || b != MiB/2 {
		t.Fatalf("short last extent: Dirty = %d, %d; want 1, %d", n, b, MiB/2)
	}
	a.WriteStart(ext(2), 1)
	if n, b := a.Dirty(); n != 2 || b != MiB+MiB/2 {
		t.Fatalf("Dirty = %d, %d; want 2, %d", n, b, MiB+MiB/2)
	}
	a.WriteDone(ext(2), 1) // still in the LRU: not dirty
	if n, b := a.Dirty(); n != 1 || b != MiB/2 {
		t.Fatalf("LRU-only extent counted: Dirty = %d, %d", n, b)
	}
	a.SetAllSync()
	if n, b := a.Dirty(); n != 10 || b != tData {
		t.Fatalf("all: Dirty = %d, %d; want 10, %d", n, b, tData)
	}
}

func TestActiveMapNextSync(t *testing.T) {
	a, err := NewActiveMap(200*MiB, tExtent, 4, 512) // 200 extents: several words
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := a.NextSync(0); ok {
		t.Fatalf("NextSync on an empty map found something")
	}
	for _, e := range []int{0, 63, 64, 130, 199} {
		a.NeedSync(ext(e), 1)
	}
	a.NeedSync(ext(130), 1) // epoch 2
	for _, tc := range []struct {
		from, e int
		epoch   uint64
		ok      bool
	}{
		{-5, 0, 1, true}, {0, 0, 1, true}, {1, 63, 1, true}, {63, 63, 1, true}, {64, 64, 1, true},
		{65, 130, 2, true}, {131, 199, 1, true}, {199, 199, 1, true}, {200, 0, 0, false}, {1 << 30, 0, 0, false},
	} {
		e, ep, ok := a.NextSync(tc.from)
		if e != tc.e || ep != tc.epoch || ok != tc.ok {
			t.Errorf("NextSync(%d) = %d, %d, %v; want %d, %d, %v", tc.from, e, ep, ok, tc.e, tc.epoch, tc.ok)
		}
	}
	// Walking the whole map the way the sync engine does.
	var seen []int
	for e, ep, ok := a.NextSync(0); ok; e, ep, ok = a.NextSync(e + 1) {
		seen = append(seen, e)
		a.SyncDone(e, ep)
	}
	if !slices.Equal(seen, []int{0, 63, 64, 130, 199}) || a.SyncPending() != 0 {
		t.Fatalf("walk visited %v, %d left", seen, a.SyncPending())
	}
}

func TestActiveMapLoadMerge(t *testing.T) {
	a := newTestMap(t, 4)
	on := bitmapOf(512, 0, 3, 9)
	if err := a.Load(on); err != nil {
		t.Fatal(err)
	}
	if got := setBits(a.Image(nil)); !slices.Equal(got, []int{0, 3, 9}) {
		t.Fatalf("image after Load = %v", got)
	}
	if a.Differs() || !a.IsDurable(ext(3), 1) || a.IsDurable(ext(4), 1) {
		t.Fatalf("durable image after Load: differs %v", a.Differs())
	}
	if a.SyncPending() != 3 || !bytes.Equal(a.SyncBitmap(), on) {
		t.Fatalf("Load did not make every set bit a sync bit: %v", setBits(a.SyncBitmap()))
	}
	// Writing an extent loaded as dirty needs no persist.
	if a.WriteStart(ext(9), 1) {
		t.Fatalf("write to a durable extent asked for persist")
	}
	a.WriteDone(ext(9), 1)

	must, err := a.Merge(bitmapOf(512, 3, 4))
	if err != nil || !must {
		t.Fatalf("Merge = %v, %v; want mustPersist for e4", must, err)
	}
	if got := setBits(a.SyncBitmap()); !slices.Equal(got, []int{0, 3, 4, 9}) {
		t.Fatalf("sync bits after Merge = %v", got)
	}
	// The image differs from the sync bits by the LRU: e9 was written.
	a.SyncDone(9, 1)
	if got := setBits(a.Image(nil)); !slices.Equal(got, []int{0, 3, 4, 9}) {
		t.Fatalf("image %v: e9 should be kept by the LRU", got)
	}
	if got := setBits(a.SyncBitmap()); !slices.Equal(got, []int{0, 3, 4}) {
		t.Fatalf("sync bits %v", got)
	}

	// Round trip: the image loaded into a fresh map gives the same image.
	img := a.Image(nil)
	b := newTestMap(t, 4)
	if err := b.Load(img); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Image(nil), img) || !bytes.Equal(b.SyncBitmap(), img) {
		t.Fatalf("round trip: %v vs %v", setBits(b.Image(nil)), setBits(img))
	}

	// Malformed bitmaps are rejected and change nothing.
	before, pending := b.Image(nil), b.SyncPending()
	for _, tc := range []struct {
		name string
		bm   []byte
		want string
	}{
		{"too short", make([]byte, 1), "does not cover 10 extents"},
		{"empty", nil, "does not cover"},
		{"bit past the last extent", bitmapOf(512, 10), "past the last of 10"},
		{"non-zero padding byte", bitmapOf(512, 8*100), "byte 100 is non-zero"},
		{"non-zero byte past MapSize", bitmapOf(1024, 8*600), "byte 600 is non-zero"},
	} {
		if err := b.Load(tc.bm); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%s) = %v, want %q", tc.name, err, tc.want)
		}
		if _, err := b.Merge(tc.bm); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Merge(%s) = %v, want %q", tc.name, err, tc.want)
		}
		if !bytes.Equal(b.Image(nil), before) || b.SyncPending() != pending {
			t.Fatalf("rejected %s changed the map", tc.name)
		}
	}
	// Other lengths that cover exactly the extents are fine: a larger on-disk area, a
	// peer rounding to a smaller sector, the bare bytes.
	for _, n := range []int{2, 64, 4096} {
		c := newTestMap(t, 4)
		if err := c.Load(bitmapOf(n, 1, 8)); err != nil {
			t.Fatalf("Load of %d bytes: %v", n, err)
		}
		if got := setBits(c.Image(nil)); !slices.Equal(got, []int{1, 8}) || c.Differs() {
			t.Fatalf("Load of %d bytes: image %v, differs %v", n, got, c.Differs())
		}
	}
}

func TestActiveMapDurability(t *testing.T) {
	a := newTestMap(t, 0)
	if !a.IsDurable(ext(1), 0) {
		t.Fatalf("empty range must be durable")
	}
	a.WriteStart(ext(1), 1)
	stale := a.Image(nil)
	a.WriteStart(ext(2), 1)
	if !a.Differs() {
		t.Fatalf("Differs false with unpersisted bits")
	}
	a.MarkDurable(stale) // written while e2 was being added
	if !a.IsDurable(ext(1), 1) || a.IsDurable(ext(2), 1) || a.IsDurable(ext(1), 2*MiB) {
		t.Fatalf("stale MarkDurable: e1 %v e2 %v", a.IsDurable(ext(1), 1), a.IsDurable(ext(2), 1))
	}
	if !a.Differs() {
		t.Fatalf("Differs false while e2 is not durable")
	}
	if !a.WriteStart(ext(2), 1) {
		t.Fatalf("write to non-durable e2 did not ask for persist")
	}
	a.MarkDurable(a.Image(nil)[:100]) // too short: ignored
	if a.IsDurable(ext(2), 1) {
		t.Fatalf("a short MarkDurable was applied")
	}
	a.MarkDurable(a.Image(nil))
	if a.Differs() || !a.IsDurable(ext(1), 2*MiB) {
		t.Fatalf("after MarkDurable of the current image")
	}
	a.WriteDone(ext(1), 1)
	if !a.Differs() {
		t.Fatalf("a cleared bit must make the images differ")
	}
	buf := make([]byte, 0, 512)
	if img := a.Image(buf); &img[0] != &buf[:1][0] {
		t.Fatalf("Image did not reuse dst")
	}
}

// refModel is a deliberately naive restatement of the ActiveMap contract.
type refModel struct {
	n, keep  int
	inflight map[int]int
	sync     map[int]bool
	epoch    map[int]uint64
	lru      []int // most recent first
	durable  map[int]bool
}

func (m *refModel) covered(off, length int64) []int {
	var out []int
	for e := range m.n {
		lo := int64(e) * MiB
		hi := min(lo+MiB, tData)
		if length > 0 && off < hi && off+length > lo {
			out = append(out, e)
		}
	}
	return out
}

func (m *refModel) image() []int {
	var out []int
	for e := range m.n {
		if m.inflight[e] > 0 || m.sync[e] || slices.Contains(m.lru, e) {
			out = append(out, e)
		}
	}
	return out
}

func (m *refModel) touch(e int) {
	if m.keep == 0 {
		return
	}
	if i := slices.Index(m.lru, e); i >= 0 {
		m.lru = slices.Delete(m.lru, i, i+1)
	}
	m.lru = append([]int{e}, m.lru...)
	if len(m.lru) > m.keep {
		m.lru = m.lru[:m.keep]
	}
}

func (m *refModel) mustPersist(es []int) bool {
	for _, e := range es {
		if !m.durable[e] {
			return true
		}
	}
	return false
}

func TestActiveMapAgainstModel(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			keep := int(seed % 5)
			a := newTestMap(t, keep)
			m := &refModel{n: 10, keep: keep, inflight: map[int]int{}, sync: map[int]bool{},
				epoch: map[int]uint64{}, durable: map[int]bool{}}
			type write struct{ off, n int64 }
			var open []write
			for step := range 400 {
				off := rng.Int64N(tData+MiB) - MiB/2
				n := rng.Int64N(3*MiB) + 1
				var desc string
				var got, want bool
				switch op := rng.IntN(8); op {
				case 0, 1:
					desc = fmt.Sprintf("WriteStart(%d,%d)", off, n)
					got = a.WriteStart(off, n)
					es := m.covered(off, n)
					for _, e := range es {
						m.inflight[e]++
						m.touch(e)
					}
					want = m.mustPersist(es)
					open = append(open, write{off, n})
				case 2, 3:
					if len(open) == 0 {
						continue
					}
					i := rng.IntN(len(open))
					w := open[i]
					open = slices.Delete(open, i, i+1)
					desc = fmt.Sprintf("WriteDone(%d,%d)", w.off, w.n)
					before := m.image()
					got = a.WriteDone(w.off, w.n)
					for _, e := range m.covered(w.off, w.n) {
						m.inflight[e]--
					}
					after := m.image()
					want = false
					for _, e := range before {
						if !slices.Contains(after, e) {
							want = true
						}
					}
				case 4:
					desc = fmt.Sprintf("NeedSync(%d,%d)", off, n)
					got = a.NeedSync(off, n)
					es := m.covered(off, n)
					for _, e := range es {
						m.sync[e] = true
						m.epoch[e]++
					}
					want = m.mustPersist(es)
				case 5:
					from := rng.IntN(11)
					e, ep, ok := a.NextSync(from)
					we, wok := -1, false
					for i := from; i < m.n; i++ {
						if m.sync[i] {
							we, wok = i, true
							break
						}
					}
					if ok != wok || (ok && (e != we || ep != m.epoch[e])) {
						t.Fatalf("step %d: NextSync(%d) = %d,%d,%v; model %d,%d,%v", step, from, e, ep, ok, we, m.epoch[we], wok)
					}
					if !ok {
						continue
					}
					// Sometimes a stale epoch, as a sync racing with NeedSync would have.
					if rng.IntN(3) == 0 {
						ep--
					}
					desc = fmt.Sprintf("SyncDone(%d,%d)", e, ep)
					before := m.image()
					got = a.SyncDone(e, ep)
					if ep == m.epoch[e] {
						m.sync[e] = false
					}
					want = len(m.image()) < len(before)
				case 6:
					desc = "persist"
					a.MarkDurable(a.Image(nil))
					clear(m.durable)
					for _, e := range m.image() {
						m.durable[e] = true
					}
				case 7:
					es := []int{rng.IntN(10), rng.IntN(10)}
					desc = fmt.Sprintf("Merge(%v)", es)
					var err error
					got, err = a.Merge(bitmapOf(512, es...))
					if err != nil {
						t.Fatal(err)
					}
					for _, e := range slices.Compact(slices.Sorted(slices.Values(es))) {
						m.sync[e] = true
						m.epoch[e]++
					}
					want = m.mustPersist(es)
				}
				if got != want {
					t.Fatalf("step %d %s = %v, model %v", step, desc, got, want)
				}
				if img := setBits(a.Image(nil)); !slices.Equal(img, m.image()) {
					t.Fatalf("step %d %s: image %v, model %v", step, desc, img, m.image())
				}
				var dirty, pending int
				var durable []int
				for e := range m.n {
					if m.inflight[e] > 0 || m.sync[e] {
						dirty++
					}
					if m.sync[e] {
						pending++
					}
					if m.durable[e] {
						durable = append(durable, e)
					}
				}
				if d, _ := a.Dirty(); d != dirty || a.SyncPending() != pending {
					t.Fatalf("step %d %s: dirty %d pending %d, model %d %d", step, desc, d, a.SyncPending(), dirty, pending)
				}
				if a.Differs() != !slices.Equal(durable, m.image()) {
					t.Fatalf("step %d %s: Differs %v, durable %v image %v", step, desc, a.Differs(), durable, m.image())
				}
			}
		})
	}
}

func TestActiveMapWriteHotPathDoesNotAllocate(t *testing.T) {
	a, err := NewActiveMap(1<<36, DefaultExtentSize, DefaultKeepDirty, 512)
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		off := int64(i%200) << 21 // 200 extents: LRU eviction on most writes
		i++
		if a.WriteStart(off, 4096) {
			buf = a.Image(buf)
			a.MarkDurable(buf)
		}
		a.WriteDone(off, 4096)
	})
	if allocs != 0 {
		t.Fatalf("WriteStart/WriteDone/Image/MarkDurable allocate %.1f times per write", allocs)
	}
}

func BenchmarkActiveMapHotWrite(b *testing.B) {
	a, err := NewActiveMap(1<<40, DefaultExtentSize, DefaultKeepDirty, 512)
	if err != nil {
		b.Fatal(err)
	}
	for e := range 32 {
		a.WriteStart(int64(e)<<21, 4096)
		a.WriteDone(int64(e)<<21, 4096)
	}
	a.MarkDurable(a.Image(nil))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		off := int64(i&31)<<21 + int64(i&7)*4096
		i++
		if a.WriteStart(off, 4096) {
			b.Fatal("hot extent asked for persist")
		}
		a.WriteDone(off, 4096)
	}
}

func BenchmarkActiveMapNextSync1TiB(b *testing.B) {
	a, err := NewActiveMap(1<<40, DefaultExtentSize, DefaultKeepDirty, 512)
	if err != nil {
		b.Fatal(err)
	}
	a.NeedSync(1<<40-1, 1) // only the last extent: a scan over the whole map
	b.ReportAllocs()
	for b.Loop() {
		if e, _, ok := a.NextSync(0); !ok || e != a.Extents()-1 {
			b.Fatalf("NextSync = %d, %v", e, ok)
		}
	}
}

// TestActiveMapCleaning: a bit set on disk is cleared by FlushedImage only after a cleaning
// round (StartClean, the caller's flush, FinishClean) that began when its extent was idle
// and saw no write to it before finishing.
func TestActiveMapCleaning(t *testing.T) {
	type step struct {
		op   string // start, done, sync, syncdone, persist, clean-start, clean-finish
		e    int
		want []int // FlushedImage after the step (nil: not checked)
		// pending, when want is checked: whether a cleaning round would clear more (bits
		// set on disk, idle, not proven flushed).
		pending bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"idle extent clears after a round", []step{
			{op: "start", e: 1}, {op: "persist"}, {op: "done", e: 1, want: []int{1}, pending: true},
			{op: "clean-start"}, {op: "persist", want: []int{1}, pending: true},
			{op: "clean-finish", want: []int{}},
		}},
		{"a write during the round keeps the bit", []step{
			{op: "start", e: 1}, {op: "persist"}, {op: "done", e: 1},
			{op: "clean-start"},
			{op: "start", e: 1}, {op: "done", e: 1},
			{op: "clean-finish", want: []int{1}, pending: true},
			{op: "clean-start"}, {op: "clean-finish", want: []int{}},
		}},
		{"a write in flight at the start is not a candidate", []step{
			{op: "start", e: 2}, {op: "persist"},
			{op: "clean-start"}, {op: "done", e: 2},
			{op: "clean-finish", want: []int{2}, pending: true},
			{op: "clean-start"}, {op: "clean-finish", want: []int{}},
		}},
		{"a write after the clear needs a new round", []step{
			{op: "start", e: 3}, {op: "persist"}, {op: "done", e: 3},
			{op: "clean-start"}, {op: "clean-finish"}, {op: "persist", want: []int{}},
			{op: "start", e: 3}, {op: "persist"}, {op: "done", e: 3, want: []int{3}, pending: true},
			{op: "clean-start"}, {op: "clean-finish", want: []int{}},
		}},
		{"flushed, then written again before the bitmap write", []step{
			{op: "start", e: 4}, {op: "persist"}, {op: "done", e: 4},
			{op: "clean-start"}, {op: "clean-finish"},
			{op: "start", e: 4}, {op: "done", e: 4, want: []int{4}, pending: true},
		}},
		{"a synchronised extent needs a round after its sync", []step{
			{op: "sync", e: 5}, {op: "persist"},
			{op: "clean-start"}, {op: "clean-finish", want: []int{5}},
			{op: "syncdone", e: 5, want: []int{5}, pending: true},
			{op: "clean-start"}, {op: "clean-finish", want: []int{}},
		}},
		{"proven flushed, then synchronised (a pull may write it)", []step{
			{op: "start", e: 6}, {op: "persist"}, {op: "done", e: 6},
			{op: "clean-start"}, {op: "clean-finish"},
			{op: "sync", e: 6}, {op: "syncdone", e: 6, want: []int{6}, pending: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newTestMap(t, 0)
			var cand []byte
			for i, s := range tt.steps {
				switch s.op {
				case "start":
					a.WriteStart(ext(s.e), 1)
				case "done":
					a.WriteDone(ext(s.e), 1)
				case "sync":
					a.NeedSync(ext(s.e), 1)
				case "syncdone":
					_, epoch, ok := a.NextSync(s.e)
					if !ok || !a.SyncDone(s.e, epoch) {
						t.Fatalf("step %d: SyncDone(%d) failed", i, s.e)
					}
				case "persist":
					a.MarkDurable(a.FlushedImage(nil))
				case "clean-start":
					cand = a.StartClean()
				case "clean-finish":
					a.FinishClean(cand)
				}
				if s.want != nil {
					if got := setBits(a.FlushedImage(nil)); !slices.Equal(got, s.want) && !(len(got) == 0 && len(s.want) == 0) {
						t.Fatalf("step %d (%s %d): FlushedImage has %v, want %v", i, s.op, s.e, got, s.want)
					}
					if got := a.CleanPending(); got != s.pending {
						t.Fatalf("step %d (%s %d): CleanPending = %v, want %v", i, s.op, s.e, got, s.pending)
					}
				}
			}
		})
	}
}
