package blockdev

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// hastRecord builds one nv record by hand from hast-reference §6, independently of
// package nv: u8 type, u8 namesize (with NUL), u32 LE dsize, name NUL-padded to a
// multiple of 8, value zero-padded to a multiple of 8.
func hastRecord(typ byte, name string, val []byte) []byte {
	b := []byte{typ, byte(len(name) + 1)}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(val)))
	nameField := make([]byte, (len(name)+1+7)/8*8)
	copy(nameField, name)
	b = append(b, nameField...)
	valField := make([]byte, (len(val)+7)/8*8)
	copy(valField, val)
	return append(b, valField...)
}

func recString(name, v string) []byte { return hastRecord(17, name, append([]byte(v), 0)) }
func recU64(name string, v uint64) []byte {
	return hastRecord(8, name, binary.LittleEndian.AppendUint64(nil, v))
}
func recU32(name string, v uint32) []byte {
	return hastRecord(6, name, binary.LittleEndian.AppendUint32(nil, v))
}
func recI64(name string, v int64) []byte {
	return hastRecord(7, name, binary.LittleEndian.AppendUint64(nil, uint64(v)))
}

func block(recs ...[]byte) []byte {
	b := bytes.Join(recs, nil)
	if len(b) > MetadataSize {
		panic("test block too large")
	}
	return append(b, make([]byte, MetadataSize-len(b))...)
}

// hastFields returns the nine records hastd writes, in metadata.c's order.
func hastFields(md Metadata) [][]byte {
	return [][]byte{
		recString("resource", md.Resource),
		recU64("datasize", md.DataSize),
		recU32("extentsize", md.ExtentSize),
		recU32("keepdirty", md.KeepDirty),
		recU64("offset", md.LocalOff),
		recU64("resuid", md.ResUID),
		recU64("localcnt", md.LocalCnt),
		recU64("remotecnt", md.RemoteCnt),
		recString("prevrole", md.PrevRole),
	}
}

func TestHastRecordMatchesReferenceExample(t *testing.T) {
	// §6: `cmd`=2 as uint8.
	want, _ := hex.DecodeString(strings.ReplaceAll("02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", " ", ""))
	if got := hastRecord(2, "cmd", []byte{2}); !bytes.Equal(got, want) {
		t.Fatalf("hand encoder disagrees with §6 example:\n got %x\nwant %x", got, want)
	}
	// The resource record written out byte by byte.
	lit, _ := hex.DecodeString(strings.ReplaceAll(
		"11 09 06 00 00 00 72 65 73 6f 75 72 63 65 00 00 00 00 00 00 00 00 64 69 73 6b 31 00 00 00", " ", ""))
	if got := recString("resource", "disk1"); !bytes.Equal(got, lit) {
		t.Fatalf("resource record:\n got %x\nwant %x", got, lit)
	}
}

var goldenMD = Metadata{
	Resource:      "disk1",
	DataSize:      10737413120,
	ExtentSize:    2097152,
	KeepDirty:     64,
	LocalOff:      5120,
	ResUID:        0x0123456789abcdef,
	LocalCnt:      7,
	RemoteCnt:     5,
	PrevRole:      "primary",
	PeerRemoteCnt: 9,
}

func TestWriteMetadataGolden(t *testing.T) {
	d := NewMemDevice(8192, 512)
	// Garbage where the block goes proves the padding is written, not left over.
	for i := range 8192 {
		d.data[i] = 0xa5
	}
	md := goldenMD
	if err := WriteMetadata(d, &md); err != nil {
		t.Fatal(err)
	}
	want := block(append(hastFields(goldenMD), recU64("peerremotecnt", goldenMD.PeerRemoteCnt))...)
	got := make([]byte, MetadataSize)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("metadata block differs from the hand-built one:\n got %x\nwant %x", got[:320], want[:320])
	}
	if d.data[MetadataSize] != 0xa5 {
		t.Fatalf("WriteMetadata wrote past the 4096-byte block")
	}
}

func TestReadMetadataHASTWrittenBlock(t *testing.T) {
	// A block as FreeBSD's hastd writes it: no peerremotecnt.
	md := goldenMD
	md.PeerRemoteCnt = 0
	d := NewMemDevice(int64(md.LocalOff+md.DataSize), 512)
	copy(d.data, block(hastFields(md)...))
	got, err := ReadMetadata(d, "disk1")
	if err != nil {
		t.Fatal(err)
	}
	if *got != md {
		t.Fatalf("got %+v\nwant %+v", *got, md)
	}
}

func TestGeometryReferenceTable(t *testing.T) {
	const GiB, TiB = int64(1) << 30, int64(1) << 40
	tests := []struct {
		media    int64
		sector   int
		extent   uint32
		nextents int
		mapsize  int64
		localoff int64
		datasize int64
	}{
		// hast-reference §5.2.
		{10 * GiB, 512, 2 << 20, 5120, 1024, 5120, 10737413120},
		{10 * GiB, 4096, 2 << 20, 5120, 4096, 8192, 10737410048},
		{TiB, 512, 2 << 20, 524288, 65536, 69632, TiB - 69632},
		// Worked by hand: 1 MiB after the metadata in 64 KiB extents = 16 extents = 2
		// bytes, one sector.
		{1<<20 + 4096, 512, 64 << 10, 16, 512, 4608, 1<<20 - 512},
		// One byte more needs a 17th extent, still one sector.
		{1<<20 + 4097, 512, 64 << 10, 17, 512, 4608, 1<<20 - 511},
		// 4097 extents need 513 bytes: two sectors.
		{8*GiB + 4096 + 1, 512, 2 << 20, 4097, 1024, 5120, 8*GiB + 1 - 1024},
		// Extent as small as the sector.
		{4096 + 512*8*512 + 512, 512, 512, 4097, 1024, 5120, 512*8*512 + 512 - 1024},
	}
	for _, tc := range tests {
		g, err := ComputeGeometry(tc.media, tc.sector, tc.extent)
		if err != nil {
			t.Errorf("ComputeGeometry(%d, %d, %d): %v", tc.media, tc.sector, tc.extent, err)
			continue
		}
		want := Geometry{tc.media, tc.sector, tc.extent, tc.nextents, tc.mapsize, tc.datasize, tc.localoff}
		if g != want {
			t.Errorf("ComputeGeometry(%d, %d, %d) = %+v, want %+v", tc.media, tc.sector, tc.extent, g, want)
		}
	}
}

func TestGeometryErrors(t *testing.T) {
	tests := []struct {
		media  int64
		sector int
		extent uint32
		want   string
	}{
		{1 << 30, 0, 2 << 20, "sector size 0 is not a power of two"},
		{1 << 30, 1000, 2 << 20, "sector size 1000 is not a power of two"},
		{1 << 30, 4096, 2048, "extent size (2048) is less than sector size (4096)"},
		{1 << 30, 512, 0, "extent size (0) is less than sector size (512)"},
		{1 << 30, 512, 768, "extent size (768) is not a multiple of sector size (512)"},
		{1 << 30, 512, 3 << 20, "extent size (3145728) is not a power of two"},
		{4096, 512, 2 << 20, "media size 4096 leaves no room"},
		{-1, 512, 2 << 20, "media size -1 leaves no room"},
		{4096 + 512, 512, 512, "leave no data space"},
	}
	for _, tc := range tests {
		_, err := ComputeGeometry(tc.media, tc.sector, tc.extent)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ComputeGeometry(%d, %d, %d) error = %v, want %q", tc.media, tc.sector, tc.extent, err, tc.want)
		}
	}
}

func TestCreate(t *testing.T) {
	const size = 64<<20 + 4096
	d := NewMemDevice(size, 512)
	// Only the first 64 KiB matter; filling all of it is slow under -race.
	copy(d.data, bytes.Repeat([]byte{0xff}, 64<<10))
	md, err := Create(d, "r0", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := ComputeGeometry(size, 512, DefaultExtentSize)
	want := Metadata{Resource: "r0", DataSize: uint64(g.DataSize), ExtentSize: DefaultExtentSize,
		KeepDirty: DefaultKeepDirty, LocalOff: uint64(g.LocalOff), PrevRole: "init"}
	if *md != want {
		t.Fatalf("Create = %+v, want %+v", *md, want)
	}
	if md.MapSize() != 512 {
		t.Fatalf("MapSize = %d, want 512 (32 extents)", md.MapSize())
	}
	wantBlk := block(append(hastFields(want), recU64("peerremotecnt", 0))...)
	if !bytes.Equal(d.data[:MetadataSize], wantBlk) {
		t.Fatalf("block 0 after create:\n got %x\nwant %x", d.data[:256], wantBlk[:256])
	}
	if !bytes.Equal(d.data[MetadataSize:md.LocalOff], make([]byte, md.MapSize())) {
		t.Fatalf("bitmap not zeroed")
	}
	if d.data[md.LocalOff] != 0xff {
		t.Fatalf("create touched user data")
	}
	if d.Flushes() != 1 {
		t.Fatalf("create flushed %d times, want 1", d.Flushes())
	}
	got, err := ReadMetadata(d, "r0")
	if err != nil {
		t.Fatal(err)
	}
	if *got != want {
		t.Fatalf("ReadMetadata = %+v, want %+v", *got, want)
	}
	bm, err := ReadBitmap(d, got)
	if err != nil || len(bm) != 512 {
		t.Fatalf("ReadBitmap = %d bytes, %v", len(bm), err)
	}
}

func TestCreateOptions(t *testing.T) {
	d := NewMemDevice(16<<20, 4096)
	md, err := Create(d, "r", CreateOptions{ExtentSize: 64 << 10, KeepDirty: 7, MediaSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := ComputeGeometry(8<<20, 4096, 64<<10)
	if md.ExtentSize != 64<<10 || md.KeepDirty != 7 || md.LocalOff != uint64(g.LocalOff) || md.DataSize != uint64(g.DataSize) {
		t.Fatalf("Create with -e -k -m = %+v, want geometry %+v", *md, g)
	}
	if _, err := ReadMetadata(d, "r"); err != nil {
		t.Fatalf("reading back a -m create: %v", err)
	}

	for _, tc := range []struct {
		name string
		opt  CreateOptions
		res  string
		want string
	}{
		{"media too large", CreateOptions{MediaSize: 16<<20 + 1}, "r", "larger than the device"},
		{"negative media", CreateOptions{MediaSize: -5}, "r", "negative"},
		{"extent below sector", CreateOptions{ExtentSize: 2048}, "r", "less than sector size (4096)"},
		{"extent not power of two", CreateOptions{ExtentSize: 12288}, "r", "not a power of two"},
		{"empty name", CreateOptions{}, "", "empty resource name"},
		{"NUL in name", CreateOptions{}, "a\x00b", "NUL"},
		{"name too long", CreateOptions{}, strings.Repeat("x", 4000), "more than the 4096-byte block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewMemDevice(16<<20, 4096)
			_, err := Create(d, tc.res, tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestReadMetadataErrors(t *testing.T) {
	const size = 64<<20 + 4096
	good := Metadata{Resource: "r0", ExtentSize: DefaultExtentSize, KeepDirty: 64, PrevRole: "secondary"}
	g, _ := ComputeGeometry(size, 512, DefaultExtentSize)
	good.DataSize, good.LocalOff = uint64(g.DataSize), uint64(g.LocalOff)
	fields := func(mut func(m *Metadata)) [][]byte {
		m := good
		if mut != nil {
			mut(&m)
		}
		return hastFields(m)
	}
	without := func(i int) []byte {
		f := fields(nil)
		return block(append(f[:i:i], f[i+1:]...)...)
	}
	replace := func(i int, rec []byte) []byte {
		f := fields(nil)
		f[i] = rec
		return block(f...)
	}
	garbage := make([]byte, MetadataSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	trailing := block(fields(nil)...)
	trailing[MetadataSize-1] = 1

	tests := []struct {
		name     string
		blk      []byte
		devSize  int64
		resource string
		is       error
		want     string
	}{
		{"wrong resource", block(fields(nil)...), size, "other", ErrWrongResource,
			`provider is not part of resource other (its metadata names resource "r0")`},
		{"truncated device", block(fields(nil)...), size - 512, "r0", ErrBadMetadata, "exceeds the device's"},
		{"device smaller than block", nil, 1000, "r0", ErrBadMetadata, "less than the 4096-byte metadata block"},
		{"all zeros", make([]byte, MetadataSize), size, "r0", ErrBadMetadata, "all zeros"},
		{"garbage", garbage, size, "r0", ErrBadMetadata, "not a HAST nv list"},
		{"bytes after the list", trailing, size, "r0", ErrBadMetadata, "not a HAST nv list"},
		{"missing prevrole", without(8), size, "r0", ErrBadMetadata, "prevrole (string)"},
		{"missing resuid", without(5), size, "r0", ErrBadMetadata, "resuid (uint64)"},
		{"datasize as int64", replace(1, recI64("datasize", int64(good.DataSize))), size, "r0", ErrBadMetadata, "datasize (uint64)"},
		{"extentsize as uint64", replace(2, recU64("extentsize", DefaultExtentSize)), size, "r0", ErrBadMetadata, "extentsize (uint32)"},
		{"unknown prevrole", replace(8, recString("prevrole", "tertiary")), size, "r0", ErrBadMetadata, `prevrole "tertiary"`},
		{"keepdirty 0", replace(3, recU32("keepdirty", 0)), size, "r0", ErrBadMetadata, "keepdirty is 0"},
		{"offset off by a sector", replace(4, recU64("offset", good.LocalOff+512)), size, "r0", ErrBadMetadata,
			"does not match datasize"},
		{"extent not power of two", block(fields(func(m *Metadata) { m.ExtentSize = 3 << 20 })...), size, "r0",
			ErrBadMetadata, "not a power of two"},
		{"huge offset", replace(4, recU64("offset", 1<<63)), size, "r0", ErrBadMetadata, "overflows"},
		{"peerremotecnt of wrong type", block(append(fields(nil), recU32("peerremotecnt", 1))...), size, "r0",
			ErrBadMetadata, "peerremotecnt (uint64)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := NewMemDevice(tc.devSize, 512)
			copy(d.data, tc.blk)
			md, err := ReadMetadata(d, tc.resource)
			if err == nil {
				t.Fatalf("accepted: %+v", md)
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.is, tc.want)
			}
		})
	}
	// The unmodified block is fine, so every case above failed for its own reason.
	d := NewMemDevice(size, 512)
	copy(d.data, block(fields(nil)...))
	if _, err := ReadMetadata(d, "r0"); err != nil {
		t.Fatalf("baseline block rejected: %v", err)
	}
}

func TestReadMetadataSectorSizeMismatch(t *testing.T) {
	// A disk created with 512-byte sectors read through a 4096-byte-sector device: the
	// offset no longer matches what create computes there.
	src := NewMemDevice(64<<20, 512)
	if _, err := Create(src, "r", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := NewMemDevice(64<<20, 4096)
	copy(dst.data, src.data[:8192])
	if _, err := ReadMetadata(dst, "r"); !errors.Is(err, ErrBadMetadata) || !strings.Contains(err.Error(), "sector size 4096") {
		t.Fatalf("err = %v", err)
	}
}

func TestWriteMetadataErrors(t *testing.T) {
	d := NewMemDevice(1<<20, 512)
	for _, tc := range []struct {
		md   Metadata
		want string
	}{
		{Metadata{Resource: "r", PrevRole: "boss"}, `prevrole "boss"`},
		{Metadata{Resource: "", PrevRole: "init"}, "empty resource name"},
		{Metadata{Resource: strings.Repeat("n", 4050), PrevRole: "init"}, "more than the 4096-byte block"},
	} {
		if err := WriteMetadata(d, &tc.md); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("WriteMetadata(%.20q) = %v, want %q", tc.md.Resource, err, tc.want)
		}
	}
	if !bytes.Equal(d.data[:MetadataSize], make([]byte, MetadataSize)) {
		t.Fatalf("a rejected WriteMetadata wrote to the device")
	}
	small := NewMemDevice(100, 512)
	if err := WriteMetadata(small, &Metadata{Resource: "r", PrevRole: "init"}); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("WriteMetadata on a 100-byte device = %v, want ErrOutOfRange", err)
	}
}

func TestMetadataRoundTripCounters(t *testing.T) {
	d := NewMemDevice(64<<20, 512)
	md, err := Create(d, "r", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	md.ResUID, md.LocalCnt, md.RemoteCnt, md.PeerRemoteCnt, md.PrevRole = 1<<63|5, 1<<40, 3, 1<<62, "primary"
	for _, flags := range []struct{ inconsistent, primaryStale bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		md.Inconsistent, md.PrimaryStale = flags.inconsistent, flags.primaryStale
		if err := WriteMetadata(d, md); err != nil {
			t.Fatal(err)
		}
		got, err := ReadMetadata(d, "r")
		if err != nil {
			t.Fatal(err)
		}
		if *got != *md {
			t.Fatalf("round trip: got %+v, want %+v", *got, *md)
		}
	}
}

func TestBitmapReadWrite(t *testing.T) {
	// 8 GiB + 4097 bytes of media: create reserves two sectors (4097 extents), but the
	// data area holds only 4096 extents, so the activemap's image is one sector.
	const media = 8<<30 + 4096 + 1
	g, err := ComputeGeometry(media, 512, DefaultExtentSize)
	if err != nil {
		t.Fatal(err)
	}
	md := &Metadata{Resource: "r", DataSize: uint64(g.DataSize), ExtentSize: DefaultExtentSize,
		KeepDirty: 64, LocalOff: uint64(g.LocalOff), PrevRole: "init"}
	am, err := NewActiveMap(g.DataSize, DefaultExtentSize, 64, 512)
	if err != nil {
		t.Fatal(err)
	}
	if am.MapSize() != 512 || md.MapSize() != 1024 {
		t.Fatalf("edge geometry: activemap %d bytes, area %d bytes; want 512 and 1024", am.MapSize(), md.MapSize())
	}
	// Only the metadata and bitmap area are needed; a small device with a fake size
	// would not pass ReadMetadata, so use the bitmap functions directly on a device
	// large enough for the area.
	d := NewMemDevice(8192, 512)
	for i := range d.data {
		d.data[i] = 0xee
	}
	am.NeedSync(0, 1)
	am.NeedSync(g.DataSize-1, 1)
	if err := WriteBitmap(d, md, am.Image(nil)); err != nil {
		t.Fatal(err)
	}
	bm, err := ReadBitmap(d, md)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1024)
	want[0] = 0x01
	want[511] = 0x80 // extent 4095
	if !bytes.Equal(bm, want) {
		t.Fatalf("bitmap area after WriteBitmap: % x ... % x", bm[:4], bm[508:516])
	}
	if d.data[4096+1024] != 0xee || d.data[4095] != 0xee {
		t.Fatalf("WriteBitmap wrote outside [4096, 4096+mapsize)")
	}
	am2, _ := NewActiveMap(g.DataSize, DefaultExtentSize, 64, 512)
	if err := am2.Load(bm); err != nil {
		t.Fatalf("Load of the padded area: %v", err)
	}
	if am2.SyncPending() != 2 {
		t.Fatalf("SyncPending after Load = %d, want 2", am2.SyncPending())
	}
	if err := WriteBitmap(d, md, make([]byte, 1025)); err == nil {
		t.Fatalf("WriteBitmap accepted more than MapSize bytes")
	}
	bad := *md
	bad.LocalOff = 4096
	if _, err := ReadBitmap(d, &bad); err == nil {
		t.Fatalf("ReadBitmap accepted an empty bitmap area")
	}
	bad.LocalOff = 1 << 20
	if err := WriteBitmap(d, &bad, nil); err == nil {
		t.Fatalf("WriteBitmap accepted an area past the device end")
	}
}

func TestCreatePageAligned(t *testing.T) {
	const size = 1<<30 + 4096
	d := NewMemDevice(size, 512)
	hast, _ := ComputeGeometry(size, 512, DefaultExtentSize)
	if hast.LocalOff%4096 == 0 {
		t.Fatalf("test premise: HAST's layout should be unaligned here, localoff %d", hast.LocalOff)
	}
	md, err := Create(d, "r0", CreateOptions{Align: PageAlign})
	if err != nil {
		t.Fatal(err)
	}
	if md.LocalOff%4096 != 0 || md.LocalOff <= MetadataSize {
		t.Fatalf("aligned create: localoff %d", md.LocalOff)
	}
	got, err := ReadMetadata(d, "r0")
	if err != nil {
		t.Fatalf("reading back an aligned create: %v", err)
	}
	if *got != *md {
		t.Fatalf("ReadMetadata = %+v, want %+v", *got, *md)
	}
	// HAST's own layout still reads back too.
	d2 := NewMemDevice(size, 512)
	if _, err := Create(d2, "r0", CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if md2, err := ReadMetadata(d2, "r0"); err != nil || md2.LocalOff != uint64(hast.LocalOff) {
		t.Fatalf("HAST layout: %+v, %v", md2, err)
	}
}
