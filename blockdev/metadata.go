package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"

	"hast/internal/nv"
)

const (
	// MetadataSize is the size of the metadata block at offset 0. HAST fixes it
	// regardless of the sector size.
	MetadataSize = 4096
	// DefaultExtentSize is hastctl create's default extent size (2 MiB).
	DefaultExtentSize = 2 << 20
	// DefaultKeepDirty is hastctl create's default length of the keepdirty LRU.
	DefaultKeepDirty = 64
)

// Roles as stored in the metadata's prevrole field.
const (
	RoleInit      = "init"
	RolePrimary   = "primary"
	RoleSecondary = "secondary"
)

var (
	// ErrBadMetadata is wrapped by every ReadMetadata error about the content of the
	// metadata block (not a HAST block, missing or mistyped fields, sizes that do not
	// fit the device).
	ErrBadMetadata = errors.New("blockdev: invalid metadata")
	// ErrWrongResource is wrapped when the metadata belongs to another resource.
	ErrWrongResource = errors.New("blockdev: provider belongs to another resource")
)

// Metadata is the content of the metadata block (hast-reference §5.3).
type Metadata struct {
	Resource   string
	DataSize   uint64
	ExtentSize uint32
	KeepDirty  uint32
	LocalOff   uint64 // nv name "offset"
	ResUID     uint64
	LocalCnt   uint64
	RemoteCnt  uint64
	PrevRole   string // "init" | "primary" | "secondary"
	// Extension (ours): the peer's remotecnt as last learned in a handshake, persisted so a
	// restarted primary still bumps localcnt on its first disconnected write
	// (hast-reference §13 item 6). nv name "peerremotecnt" (uint64), written after the
	// HAST fields; absent on HAST-written disks (then 0). hastd ignores names it does not
	// look up, so the extra record keeps the block readable by FreeBSD.
	PeerRemoteCnt uint64
	// Extension (ours): this node is the target of a synchronisation that has not finished, so
	// its copy is not consistent and must not be promoted without --force. nv name
	// "inconsistent" (uint8 1), written only when set.
	Inconsistent bool
	// Extension (ours), kept by a secondary: the extents set in this node's on-disk activemap
	// are ones the primary failed to write locally, so this copy is the only good one there
	// and they must be pulled from here, never pushed over. While set, the bitmap holds
	// nothing else (it is cleared when the session starts). nv name "primarystale" (uint8 1),
	// written only when set.
	PrimaryStale bool
}

// MapSize returns the size of the on-disk bitmap area: LocalOff − MetadataSize.
func (md *Metadata) MapSize() int64 { return int64(md.LocalOff) - MetadataSize }

// Geometry is the layout hastctl create derives from a media size (hast-reference §5.2).
type Geometry struct {
	MediaSize  int64
	SectorSize int
	ExtentSize uint32
	// NExtents is the extent count create sizes the bitmap for, over
	// MediaSize − MetadataSize. The activemap of a running node covers DataSize and may
	// count one extent fewer; the on-disk size almost always agrees (see WriteBitmap).
	NExtents int
	MapSize  int64 // bitmap bytes, rounded up to the sector size
	DataSize int64 // user-visible bytes
	LocalOff int64 // MetadataSize + MapSize, where user data starts
}

// ComputeGeometry implements §5.2: the bitmap size follows from mediaSize − 4096 and is
// rounded up to the sector size. It validates what HAST's create validates (sector size a
// power of two, extent size at least one sector and a multiple of it) and, unlike HAST,
// that the extent size is a power of two (hastd would assert on it later) and that some
// data space is left.
func ComputeGeometry(mediaSize int64, sectorSize int, extentSize uint32) (Geometry, error) {
	if sectorSize <= 0 || sectorSize&(sectorSize-1) != 0 {
		return Geometry{}, fmt.Errorf("sector size %d is not a power of two", sectorSize)
	}
	ss := uint64(sectorSize)
	if uint64(extentSize) < ss {
		return Geometry{}, fmt.Errorf("extent size (%d) is less than sector size (%d)", extentSize, sectorSize)
	}
	if uint64(extentSize)%ss != 0 {
		return Geometry{}, fmt.Errorf("extent size (%d) is not a multiple of sector size (%d)", extentSize, sectorSize)
	}
	if extentSize&(extentSize-1) != 0 {
		return Geometry{}, fmt.Errorf("extent size (%d) is not a power of two, which the activemap requires", extentSize)
	}
	if mediaSize <= MetadataSize {
		return Geometry{}, fmt.Errorf("media size %d leaves no room after the %d-byte metadata block", mediaSize, MetadataSize)
	}
	rest := uint64(mediaSize - MetadataSize)
	nextents := (rest-1)/uint64(extentSize) + 1
	mapBytes := (nextents + 7) / 8
	mapSize := (mapBytes + ss - 1) / ss * ss
	if mapSize >= rest {
		return Geometry{}, fmt.Errorf("media size %d too small: metadata (%d bytes) and bitmap (%d bytes) leave no data space",
			mediaSize, MetadataSize, mapSize)
	}
	if nextents > math.MaxInt32 {
		return Geometry{}, fmt.Errorf("media size %d with extent size %d gives %d extents, more than %d",
			mediaSize, extentSize, nextents, math.MaxInt32)
	}
	return Geometry{
		MediaSize:  mediaSize,
		SectorSize: sectorSize,
		ExtentSize: extentSize,
		NExtents:   int(nextents),
		MapSize:    int64(mapSize),
		DataSize:   int64(rest - mapSize),
		LocalOff:   MetadataSize + int64(mapSize),
	}, nil
}

// CreateOptions are hastctl create's -e, -k and -m. Zero values select HAST's defaults;
// MediaSize 0 means the whole device, and a MediaSize larger than the device is an error.
type CreateOptions struct {
	ExtentSize uint32
	KeepDirty  uint32
	MediaSize  int64
	// Align rounds the bitmap area up to this many bytes instead of the sector size, so user
	// data starts on that boundary. 0 is HAST's exact layout. With 512-byte sectors (regular
	// files) HAST's layout starts user data at e.g. 4608, and every 4 KiB write then straddles
	// two pages: a read-modify-write in the page cache, 30x slower here (docs/BENCHMARKS.md §2).
	// `hast create` uses PageAlign unless asked for HAST's layout.
	Align int
}

// PageAlign is the alignment `hast create` gives user data by default.
const PageAlign = 4096

// Create writes a fresh metadata block (prevrole "init", resuid 0, counters 0) and
// mapsize zero bytes at offset 4096 (§4.2), in HAST's order, then flushes the device.
func Create(d Device, resource string, opt CreateOptions) (*Metadata, error) {
	if err := checkResourceName(resource); err != nil {
		return nil, fmt.Errorf("create %s: %w", resource, err)
	}
	media := opt.MediaSize
	switch {
	case media < 0:
		return nil, fmt.Errorf("create %s: media size %d is negative", resource, media)
	case media == 0:
		media = d.Size()
	case media > d.Size():
		return nil, fmt.Errorf("create %s: media size %d is larger than the device (%d bytes)", resource, media, d.Size())
	}
	ext := opt.ExtentSize
	if ext == 0 {
		ext = DefaultExtentSize
	}
	keep := opt.KeepDirty
	if keep == 0 {
		keep = DefaultKeepDirty
	}
	unit := d.SectorSize()
	if opt.Align > unit {
		unit = opt.Align
	}
	g, err := ComputeGeometry(media, unit, ext)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", resource, err)
	}
	md := &Metadata{
		Resource:   resource,
		DataSize:   uint64(g.DataSize),
		ExtentSize: g.ExtentSize,
		KeepDirty:  keep,
		LocalOff:   uint64(g.LocalOff),
		PrevRole:   RoleInit,
	}
	// Metadata first, as HAST does: if we crash before the bitmap is cleared, the new
	// block (resuid 0) already forces a full sync, so a stale bitmap only costs extra
	// copying; the other order could leave an old resource with its dirty bits erased.
	if err := WriteMetadata(d, md); err != nil {
		return nil, fmt.Errorf("create %s: %w", resource, err)
	}
	zeros := make([]byte, min(g.MapSize, zeroChunk))
	for off := int64(0); off < g.MapSize; off += int64(len(zeros)) {
		n := min(int64(len(zeros)), g.MapSize-off)
		if _, err := d.WriteAt(zeros[:n], MetadataSize+off); err != nil {
			return nil, fmt.Errorf("create %s: clear bitmap: %w", resource, err)
		}
	}
	if err := d.Flush(); err != nil {
		return nil, fmt.Errorf("create %s: %w", resource, err)
	}
	return md, nil
}

func checkResourceName(name string) error {
	if name == "" {
		return errors.New("empty resource name")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("resource name %q contains a NUL byte", name)
	}
	return nil
}

func checkRole(role string) error {
	switch role {
	case RoleInit, RolePrimary, RoleSecondary:
		return nil
	}
	return fmt.Errorf("prevrole %q is not init, primary or secondary", role)
}

// encode returns the metadata block: the nv list in HAST's field order, zero padded.
func (md *Metadata) encode() ([]byte, error) {
	if err := checkResourceName(md.Resource); err != nil {
		return nil, err
	}
	if err := checkRole(md.PrevRole); err != nil {
		return nil, err
	}
	var l nv.List
	l.AddString("resource", md.Resource)
	l.AddUint64("datasize", md.DataSize)
	l.AddUint32("extentsize", md.ExtentSize)
	l.AddUint32("keepdirty", md.KeepDirty)
	l.AddUint64("offset", md.LocalOff)
	l.AddUint64("resuid", md.ResUID)
	l.AddUint64("localcnt", md.LocalCnt)
	l.AddUint64("remotecnt", md.RemoteCnt)
	l.AddString("prevrole", md.PrevRole)
	l.AddUint64("peerremotecnt", md.PeerRemoteCnt)
	if md.Inconsistent {
		l.AddUint8("inconsistent", 1)
	}
	if md.PrimaryStale {
		l.AddUint8("primarystale", 1)
	}
	if l.EncodedLen() > MetadataSize {
		return nil, fmt.Errorf("metadata for resource %q encodes to %d bytes, more than the %d-byte block",
			md.Resource, l.EncodedLen(), MetadataSize)
	}
	return l.AppendEncode(make([]byte, 0, MetadataSize))[:MetadataSize], nil
}

// WriteMetadata writes the full 4096-byte block at offset 0: the nv list in HAST's field
// order, then zero padding. It does not flush; callers that need the block durable
// (counter bumps, resuid changes) call Flush.
func WriteMetadata(d Device, md *Metadata) error {
	blk, err := md.encode()
	if err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	if _, err := d.WriteAt(blk, 0); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	return nil
}

// SyncMetadata writes the metadata block and flushes the device: the block is durable when it
// returns nil (counter bumps, resuid changes, the inconsistent marks).
func SyncMetadata(d Device, md *Metadata) error {
	if err := WriteMetadata(d, md); err != nil {
		return err
	}
	if err := d.Flush(); err != nil {
		return fmt.Errorf("flush metadata: %w", err)
	}
	return nil
}

func badMetadata(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadMetadata}, args...)...)
}

// ReadMetadata reads and validates block 0: it decodes the nv list (every HAST field
// present with HAST's exact type), checks that the resource name is resource, and that
// offset, datasize and extentsize are what create computes for this device's sector
// size (offset = 4096 + mapsize of offset+datasize) and fit the device.
func ReadMetadata(d Device, resource string) (*Metadata, error) {
	if d.Size() < MetadataSize {
		return nil, badMetadata("device has %d bytes, less than the %d-byte metadata block", d.Size(), MetadataSize)
	}
	blk := make([]byte, MetadataSize)
	if _, err := d.ReadAt(blk, 0); err != nil {
		return nil, fmt.Errorf("read metadata: %w", err)
	}
	if bytes.Count(blk, []byte{0}) == len(blk) {
		return nil, badMetadata("metadata block is all zeros (never created?)")
	}
	l, err := nv.Decode(blk)
	if err != nil {
		return nil, badMetadata("metadata block is not a HAST nv list: %v", err)
	}
	var md Metadata
	var missing []string
	str := func(name string, dst *string) {
		if v, ok := l.String(name); ok {
			*dst = v
		} else {
			missing = append(missing, name+" (string)")
		}
	}
	u64 := func(name string, dst *uint64) {
		if v, ok := l.Uint64(name); ok {
			*dst = v
		} else {
			missing = append(missing, name+" (uint64)")
		}
	}
	u32 := func(name string, dst *uint32) {
		if v, ok := l.Uint32(name); ok {
			*dst = v
		} else {
			missing = append(missing, name+" (uint32)")
		}
	}
	str("resource", &md.Resource)
	u64("datasize", &md.DataSize)
	u32("extentsize", &md.ExtentSize)
	u32("keepdirty", &md.KeepDirty)
	u64("offset", &md.LocalOff)
	u64("resuid", &md.ResUID)
	u64("localcnt", &md.LocalCnt)
	u64("remotecnt", &md.RemoteCnt)
	str("prevrole", &md.PrevRole)
	if l.Has("peerremotecnt") {
		u64("peerremotecnt", &md.PeerRemoteCnt)
	}
	if v, ok := l.Uint8("inconsistent"); ok && v != 0 {
		md.Inconsistent = true
	}
	if v, ok := l.Uint8("primarystale"); ok && v != 0 {
		md.PrimaryStale = true
	}
	if len(missing) > 0 {
		return nil, badMetadata("fields missing or of the wrong type: %s", strings.Join(missing, ", "))
	}
	if md.Resource != resource {
		return nil, fmt.Errorf("%w: provider is not part of resource %s (its metadata names resource %q)",
			ErrWrongResource, resource, md.Resource)
	}
	if err := checkRole(md.PrevRole); err != nil {
		return nil, badMetadata("%v", err)
	}
	if md.KeepDirty == 0 {
		return nil, badMetadata("keepdirty is 0")
	}
	if md.LocalOff > math.MaxInt64 || md.DataSize > math.MaxInt64 || md.LocalOff+md.DataSize > math.MaxInt64 {
		return nil, badMetadata("offset %d + datasize %d overflows", md.LocalOff, md.DataSize)
	}
	media := int64(md.LocalOff + md.DataSize)
	g, err := ComputeGeometry(media, d.SectorSize(), md.ExtentSize)
	if err != nil {
		return nil, badMetadata("offset %d, datasize %d: %v", md.LocalOff, md.DataSize, err)
	}
	if g.LocalOff != int64(md.LocalOff) && d.SectorSize() < PageAlign {
		// Our default layout rounds the bitmap to a page so user data is page aligned.
		if ga, err := ComputeGeometry(media, PageAlign, md.ExtentSize); err == nil && ga.LocalOff == int64(md.LocalOff) {
			g = ga
		}
	}
	if g.LocalOff != int64(md.LocalOff) {
		return nil, badMetadata("offset %d does not match datasize %d, extentsize %d and sector size %d (create would use %d)",
			md.LocalOff, md.DataSize, md.ExtentSize, d.SectorSize(), g.LocalOff)
	}
	if media > d.Size() {
		return nil, badMetadata("offset %d + datasize %d = %d exceeds the device's %d bytes (device truncated or replaced?)",
			md.LocalOff, md.DataSize, media, d.Size())
	}
	return &md, nil
}

func checkMapArea(d Device, md *Metadata) error {
	ms := md.MapSize()
	if ms <= 0 || md.LocalOff > math.MaxInt64 || int64(md.LocalOff) > d.Size() {
		return fmt.Errorf("bitmap area [%d,%d) does not fit a device of %d bytes", MetadataSize, md.LocalOff, d.Size())
	}
	return nil
}

// ReadBitmap reads the MapSize bytes of the on-disk activemap at offset 4096.
func ReadBitmap(d Device, md *Metadata) ([]byte, error) {
	if err := checkMapArea(d, md); err != nil {
		return nil, fmt.Errorf("read bitmap: %w", err)
	}
	buf := make([]byte, md.MapSize())
	if _, err := d.ReadAt(buf, MetadataSize); err != nil {
		return nil, fmt.Errorf("read bitmap: %w", err)
	}
	return buf, nil
}

// WriteBitmap writes exactly MapSize bytes at 4096. bitmap may be shorter than MapSize:
// the activemap covers the data area only and in rare geometries (one extent fewer
// crossing a sector boundary of the map) its image is a sector smaller than the area
// create reserved; the rest is written as zeros, as HAST leaves it. It does not flush.
func WriteBitmap(d Device, md *Metadata, bitmap []byte) error {
	if err := checkMapArea(d, md); err != nil {
		return fmt.Errorf("write bitmap: %w", err)
	}
	ms := md.MapSize()
	if int64(len(bitmap)) > ms {
		return fmt.Errorf("write bitmap: %d bytes do not fit the %d-byte bitmap area", len(bitmap), ms)
	}
	if int64(len(bitmap)) < ms {
		padded := make([]byte, ms)
		copy(padded, bitmap)
		bitmap = padded
	}
	if _, err := d.WriteAt(bitmap, MetadataSize); err != nil {
		return fmt.Errorf("write bitmap: %w", err)
	}
	return nil
}
