package blockdev

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func readAll(t *testing.T, d Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMemDeviceBasics(t *testing.T) {
	m := NewMemDevice(10000, 4096)
	if m.Size() != 10000 || m.SectorSize() != 4096 {
		t.Fatalf("Size %d SectorSize %d", m.Size(), m.SectorSize())
	}
	if NewMemDevice(10, 1000).SectorSize() != 512 {
		t.Fatalf("invalid sector size not replaced by 512")
	}
	if _, err := m.WriteAt([]byte("hello"), 9995); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if n, err := m.ReadAt(buf, 9995); n != 5 || err != io.EOF || string(buf[:5]) != "hello" {
		t.Fatalf("ReadAt across the end = %d, %v, %q", n, err, buf[:n])
	}
	if _, err := m.WriteAt([]byte("hello"), 9996); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past end = %v", err)
	}
	if err := m.Discard(9990, 10); err != nil {
		t.Fatal(err)
	}
	if n, _ := m.ReadAt(buf, 9990); n != 10 || !bytes.Equal(buf, make([]byte, 10)) {
		t.Fatalf("discarded range reads %q", buf)
	}
	if err := m.Discard(9990, 11); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("discard past end = %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"read":  func() error { _, err := m.ReadAt(buf, 0); return err }(),
		"write": func() error { _, err := m.WriteAt(buf, 0); return err }(),
		"flush": m.Flush(), "discard": m.Discard(0, 1), "close": m.Close(),
	} {
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	m.Reopen()
	if _, err := m.ReadAt(buf, 0); err != nil {
		t.Fatalf("ReadAt after Reopen: %v", err)
	}
}

func TestMemDevicePowerLoss(t *testing.T) {
	m := NewMemDevice(64<<10, 512)
	base := pattern(64<<10, 1)
	m.WriteAt(base, 0) // durable: power-loss mode is off
	m.PowerLoss()
	if !bytes.Equal(readAll(t, m), base) {
		t.Fatalf("PowerLoss outside power-loss mode dropped durable writes")
	}

	m.SetPowerLossMode(true)
	// Unaligned writes spanning sectors, and a discard, all after the last flush.
	w1 := pattern(1000, 2)
	m.WriteAt(w1, 300)
	w2 := pattern(5000, 3)
	m.WriteAt(w2, 20000)
	m.Discard(40000, 2000)
	want := bytes.Clone(base)
	copy(want[300:], w1)
	copy(want[20000:], w2)
	clear(want[40000:42000])
	if !bytes.Equal(readAll(t, m), want) {
		t.Fatalf("unflushed writes not visible to reads")
	}
	if m.Unflushed() == 0 {
		t.Fatalf("no unflushed sectors recorded")
	}
	m.PowerLoss()
	if !bytes.Equal(readAll(t, m), base) || m.Unflushed() != 0 {
		t.Fatalf("PowerLoss kept unflushed writes")
	}

	// Flushed writes survive, later ones do not.
	m.WriteAt(w1, 300)
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	m.WriteAt(w2, 20000)
	m.PowerLoss()
	want = bytes.Clone(base)
	copy(want[300:], w1)
	if !bytes.Equal(readAll(t, m), want) {
		t.Fatalf("after flush + power loss")
	}

	// Turning the mode off makes pending writes durable.
	m.WriteAt(w2, 20000)
	m.SetPowerLossMode(false)
	m.PowerLoss()
	copy(want[20000:], w2)
	if !bytes.Equal(readAll(t, m), want) {
		t.Fatalf("SetPowerLossMode(false) lost pending writes")
	}
}

func TestMemDevicePowerLossPartial(t *testing.T) {
	const sectors = 64
	run := func(seed uint64, keep float64) (kept int, img []byte) {
		m := NewMemDevice(sectors*512, 512)
		m.SetPowerLossMode(true)
		for s := range sectors {
			m.WriteAt(bytes.Repeat([]byte{byte(s + 1)}, 512), int64(s)*512)
		}
		m.PowerLossPartial(seed, keep)
		img = readAll(t, m)
		for s := range sectors {
			sec := img[s*512 : (s+1)*512]
			switch {
			case bytes.Equal(sec, bytes.Repeat([]byte{byte(s + 1)}, 512)):
				kept++
			case bytes.Equal(sec, make([]byte, 512)):
			default:
				t.Fatalf("sector %d torn: survives neither whole nor not at all", s)
			}
		}
		return kept, img
	}
	if k, _ := run(1, 0); k != 0 {
		t.Fatalf("keep=0 kept %d sectors", k)
	}
	if k, _ := run(1, 1); k != sectors {
		t.Fatalf("keep=1 kept %d sectors", k)
	}
	k1, img1 := run(7, 0.5)
	k2, img2 := run(7, 0.5)
	if k1 == 0 || k1 == sectors || !bytes.Equal(img1, img2) || k1 != k2 {
		t.Fatalf("keep=0.5: kept %d and %d of %d; same seed must give the same result", k1, k2, sectors)
	}
}

func TestMemDeviceConcurrent(t *testing.T) {
	m := NewMemDevice(1<<20, 512)
	m.SetPowerLossMode(true)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := pattern(4096, byte(g))
			for i := range 50 {
				off := int64(g)*(256<<10) + int64(i)*4096
				m.WriteAt(data, off)
				got := make([]byte, 4096)
				m.ReadAt(got, off)
				if !bytes.Equal(got, data) {
					t.Errorf("goroutine %d: read back other data", g)
				}
				if i%10 == 0 {
					m.Flush()
				}
			}
		}()
	}
	wg.Wait()
	m.Flush()
	m.PowerLoss()
	for g := range 4 {
		got := make([]byte, 4096)
		m.ReadAt(got, int64(g)*(256<<10)+49*4096)
		if !bytes.Equal(got, pattern(4096, byte(g))) {
			t.Fatalf("goroutine %d's flushed data lost", g)
		}
	}
}

func TestFaultDevice(t *testing.T) {
	type opRes struct {
		op  Op
		off int64
		n   int64
	}
	do := func(f *FaultDevice, o opRes) error {
		switch o.op {
		case OpRead:
			_, err := f.ReadAt(make([]byte, o.n), o.off)
			return err
		case OpWrite:
			_, err := f.WriteAt(make([]byte, o.n), o.off)
			return err
		case OpFlush:
			return f.Flush()
		default:
			return f.Discard(o.off, o.n)
		}
	}
	r := func(off, n int64) opRes { return opRes{OpRead, off, n} }
	w := func(off, n int64) opRes { return opRes{OpWrite, off, n} }
	fl := opRes{op: OpFlush}
	dc := func(off, n int64) opRes { return opRes{OpDiscard, off, n} }

	tests := []struct {
		name  string
		fault Fault
		ops   []opRes
		fails []bool
	}{
		{"every write", Fault{Op: OpWrite}, []opRes{r(0, 512), w(0, 512), fl, w(4096, 1)},
			[]bool{false, true, false, true}},
		{"any op", Fault{}, []opRes{r(0, 1), w(0, 1), fl, dc(0, 512)}, []bool{true, true, true, true}},
		{"flush only", Fault{Op: OpFlush}, []opRes{w(0, 1), fl, dc(0, 1)}, []bool{false, true, false}},
		{"discard only", Fault{Op: OpDiscard}, []opRes{w(0, 1), fl, dc(0, 1)}, []bool{false, false, true}},
		{"range", Fault{Op: OpRead, Off: 8192, Len: 4096},
			[]opRes{r(0, 8192), r(4096, 4097), r(12288, 512), r(12287, 1), r(8192, 4096), fl},
			[]bool{false, true, false, true, true, false}},
		{"range to the end", Fault{Off: 8192}, []opRes{w(0, 8192), w(8191, 2), w(60000, 1), fl},
			[]bool{false, true, true, false}},
		{"after 2", Fault{Op: OpWrite, After: 2}, []opRes{w(0, 1), r(0, 1), w(0, 1), w(0, 1), w(0, 1)},
			[]bool{false, false, false, true, true}},
		{"after 1, twice", Fault{Op: OpWrite, After: 1, Times: 2}, []opRes{w(0, 1), w(0, 1), w(0, 1), w(0, 1)},
			[]bool{false, true, true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFaultDevice(NewMemDevice(64<<10, 512), 1)
			id := f.Inject(tc.fault)
			want := 0
			for i, o := range tc.ops {
				err := do(f, o)
				if (err != nil) != tc.fails[i] {
					t.Fatalf("op %d (%s %d+%d): err %v, want failure %v", i, o.op, o.off, o.n, err, tc.fails[i])
				}
				if err != nil {
					want++
					if !errors.Is(err, syscall.EIO) || !errors.Is(err, ErrInjected) {
						t.Fatalf("injected error %v does not wrap EIO and ErrInjected", err)
					}
				}
			}
			if f.Injected() != want || f.Fired(id) != want {
				t.Fatalf("Injected %d Fired %d, want %d", f.Injected(), f.Fired(id), want)
			}
			f.Clear(id)
			for i, o := range tc.ops {
				if err := do(f, o); err != nil {
					t.Fatalf("op %d after Clear: %v", i, err)
				}
			}
		})
	}
}

func TestFaultDeviceDetails(t *testing.T) {
	m := NewMemDevice(64<<10, 512)
	f := NewFaultDevice(m, 1)
	custom := errors.New("media gone")
	id := f.Inject(Fault{Op: OpWrite, Err: custom})
	if _, err := f.WriteAt([]byte{1}, 100); !errors.Is(err, custom) || !errors.Is(err, ErrInjected) ||
		!strings.Contains(err.Error(), "write [100,+1)") {
		t.Fatalf("custom error = %v", err)
	}
	if m.data[100] != 0 {
		t.Fatalf("a failed write reached the device")
	}
	f.Clear(id)
	f.Clear(12345) // unknown: ignored
	if f.Size() != m.Size() || f.SectorSize() != 512 {
		t.Fatalf("Size/SectorSize not passed through")
	}
	if _, err := f.WriteAt([]byte{7}, 100); err != nil || m.data[100] != 7 {
		t.Fatalf("write after Clear: %v", err)
	}

	// Two faults: the first matching one fires, both count the operation.
	a := f.Inject(Fault{Op: OpRead, After: 1})
	b := f.Inject(Fault{Op: OpRead})
	buf := make([]byte, 1)
	f.ReadAt(buf, 0) // a: seen 1 (passes), b fires
	f.ReadAt(buf, 0) // a fires
	if f.Fired(a) != 1 || f.Fired(b) != 1 {
		t.Fatalf("Fired a=%d b=%d, want 1 and 1", f.Fired(a), f.Fired(b))
	}
	f.Clear(a)
	f.Clear(b)

	// Probability: deterministic per seed, roughly p.
	count := func(seed int64) (n int, pattern []bool) {
		f := NewFaultDevice(NewMemDevice(4096, 512), seed)
		f.Inject(Fault{Op: OpRead, Prob: 0.25})
		for range 2000 {
			_, err := f.ReadAt(buf, 0)
			pattern = append(pattern, err != nil)
			if err != nil {
				n++
			}
		}
		return n, pattern
	}
	n1, p1 := count(42)
	n2, p2 := count(42)
	_, p3 := count(43)
	if n1 != n2 || !slices.Equal(p1, p2) {
		t.Fatalf("same seed, different faults")
	}
	if slices.Equal(p1, p3) {
		t.Fatalf("different seeds, identical fault pattern")
	}
	if n1 < 400 || n1 > 600 {
		t.Fatalf("p=0.25 failed %d of 2000 reads", n1)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestZeroFill(t *testing.T) {
	// The fallback used where a file system cannot punch holes or preallocate.
	p := filepath.Join(t.TempDir(), "f")
	data := pattern(3<<20, 5)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := zeroFill(f, 100, zeroChunk+5000); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	clear(data[100 : 100+zeroChunk+5000])
	if !bytes.Equal(got, data) {
		t.Fatalf("zeroFill wrote the wrong range")
	}
}
