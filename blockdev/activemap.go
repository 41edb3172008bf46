package blockdev

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// ActiveMap tracks which extents of the data area may differ between the nodes and
// what the on-disk bitmap must say about them (hast-reference §8). It is pure logic with
// no I/O and is not safe for concurrent use: the replication engine holds a mutex
// around it and performs the bitmap writes itself.
//
// Per extent it keeps the number of writes in flight, a sync bit (the extent must be
// copied to the peer) with an epoch counting how often sync was requested, and
// membership in the keepdirty LRU of recently written extents. The on-disk image is the
// union of the three: bit e is set when extent e has writes in flight, needs sync, or is
// in the LRU. Keeping hot extents set in the image spares a bitmap rewrite per write; the
// price is that after a crash those extents are resynced although they may be equal.
//
// This simplifies HAST's memtab counters: HAST folds "requests needed to sync" into the
// write counter, so a sync in progress and a failed remote write are indistinguishable.
// Here the sync bit is separate and carries an epoch, so a sync that raced with a new
// failure (NeedSync while the extent was being copied) cannot clear the bit it did not
// copy for.
//
// The map also remembers the last image the engine reported durable (MarkDurable). The
// ordering rule of HAST's metaflush is expressed through it: WriteStart, NeedSync, Merge
// and SetAllSync return mustPersist when an extent they touch is not set in the durable
// image, and the engine must then write Image (and flush) before any data for that
// extent leaves the node.
type ActiveMap struct {
	dataSize   int64
	extentSize uint32
	shift      uint
	nextents   int
	mapSize    int

	inflight []uint32 // writes in progress per extent
	epoch    []uint64 // incremented whenever sync is requested for the extent
	sync     []uint64 // bitset: extent must be copied to the peer
	nsync    int
	ndirty   int // extents with inflight > 0 or the sync bit

	// keepdirty LRU: a doubly linked list threaded through fixed slots so that moving
	// an extent to the head and evicting the tail never allocate. lruSlot maps an
	// extent to its slot, -1 when it is not in the LRU.
	lruSlot  []int32
	slotExt  []int32
	slotPrev []int32
	slotNext []int32
	head     int32
	tail     int32
	used     int

	img     []byte // current image, maintained bit by bit
	durable []byte // last image reported on disk
	diff    int    // number of bits in which img and durable differ

	// Clearing a bit on disk needs the extent's data flushed first (metaflush). A cleaning
	// round (StartClean, a data flush, FinishClean) proves that for the extents that were
	// idle when it began and were not written while it ran; their bits go to flushed, and
	// FlushedImage may then clear them without a flush of its own.
	touched []byte // extents written since the last StartClean
	flushed []byte // extents whose data is known flushed since they were last written
}

// NewActiveMap builds an empty map over dataSize bytes of data area. extentSize must be
// a power of two; the image is sector-rounded like HAST's on-disk size. keepDirty is the
// LRU length (0 disables the LRU: every idle extent is cleared at once).
func NewActiveMap(dataSize int64, extentSize uint32, keepDirty int, sectorSize int) (*ActiveMap, error) {
	if dataSize <= 0 {
		return nil, fmt.Errorf("activemap: data size %d must be positive", dataSize)
	}
	if extentSize == 0 || extentSize&(extentSize-1) != 0 {
		return nil, fmt.Errorf("activemap: extent size %d is not a power of two", extentSize)
	}
	if sectorSize <= 0 || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("activemap: sector size %d is not a power of two", sectorSize)
	}
	if keepDirty < 0 {
		return nil, fmt.Errorf("activemap: keepdirty %d is negative", keepDirty)
	}
	n := (uint64(dataSize)-1)/uint64(extentSize) + 1
	if n > math.MaxInt32 {
		return nil, fmt.Errorf("activemap: %d extents of %d bytes exceed the supported %d", n, extentSize, math.MaxInt32)
	}
	nextents := int(n)
	mapBytes := (nextents + 7) / 8
	mapSize := (mapBytes + sectorSize - 1) / sectorSize * sectorSize
	slots := min(keepDirty, nextents)
	a := &ActiveMap{
		dataSize:   dataSize,
		extentSize: extentSize,
		shift:      uint(bits.TrailingZeros32(extentSize)),
		nextents:   nextents,
		mapSize:    mapSize,
		inflight:   make([]uint32, nextents),
		epoch:      make([]uint64, nextents),
		sync:       make([]uint64, (nextents+63)/64),
		lruSlot:    make([]int32, nextents),
		slotExt:    make([]int32, slots),
		slotPrev:   make([]int32, slots),
		slotNext:   make([]int32, slots),
		img:        make([]byte, mapSize),
		durable:    make([]byte, mapSize),
		touched:    make([]byte, mapSize),
		flushed:    make([]byte, mapSize),
	}
	a.resetLRU()
	return a, nil
}

func (a *ActiveMap) resetLRU() {
	for i := range a.lruSlot {
		a.lruSlot[i] = -1
	}
	a.head, a.tail, a.used = -1, -1, 0
}

// Extents returns the number of extents of the data area.
func (a *ActiveMap) Extents() int { return a.nextents }

// ExtentSize returns the extent size in bytes.
func (a *ActiveMap) ExtentSize() uint32 { return a.extentSize }

// MapSize returns the image size in bytes (bitmap bytes rounded up to the sector size).
func (a *ActiveMap) MapSize() int { return a.mapSize }

// ExtentRange returns the data-area range of extent e; the last extent may be shorter
// (it ends at the data size). An e outside the map yields (0, 0).
func (a *ActiveMap) ExtentRange(e int) (off, length int64) {
	if e < 0 || e >= a.nextents {
		return 0, 0
	}
	off = int64(e) << a.shift
	return off, min(int64(a.extentSize), a.dataSize-off)
}

// span returns the extents covered by [off, off+length), clipped to the data area.
func (a *ActiveMap) span(off, length int64) (first, last int, ok bool) {
	if length <= 0 {
		return 0, 0, false
	}
	end := off + length
	if end < off { // overflow
		end = a.dataSize
	}
	off = max(off, 0)
	end = min(end, a.dataSize)
	if off >= end {
		return 0, 0, false
	}
	return int(off >> a.shift), int((end - 1) >> a.shift), true
}

func (a *ActiveMap) hasSync(e int) bool { return a.sync[e>>6]&(1<<(e&63)) != 0 }

func (a *ActiveMap) isDirty(e int) bool { return a.inflight[e] > 0 || a.hasSync(e) }

func (a *ActiveMap) isDurable(e int) bool { return a.durable[e>>3]&(1<<(e&7)) != 0 }

// refresh recomputes the derived state of extent e after a change: the dirty count
// (given whether e was dirty before) and its image bit. It reports whether the image
// bit was cleared.
func (a *ActiveMap) refresh(e int, wasDirty bool) (lost bool) {
	dirty := a.isDirty(e)
	if dirty != wasDirty {
		if dirty {
			a.ndirty++
		} else {
			a.ndirty--
		}
	}
	want := dirty || a.lruSlot[e] >= 0
	i, m := e>>3, byte(1)<<(e&7)
	have := a.img[i]&m != 0
	if want == have {
		return false
	}
	if want {
		a.img[i] |= m
	} else {
		a.img[i] &^= m
	}
	if want == a.isDurable(e) {
		a.diff--
	} else {
		a.diff++
	}
	return !want
}

func (a *ActiveMap) setSync(e int) {
	was := a.isDirty(e)
	// Conservative: a resync may write this extent's data (a pull), so its bit is cleared
	// only after a cleaning round that starts once it is idle again.
	a.flushed[e>>3] &^= 1 << (e & 7)
	if !a.hasSync(e) {
		a.sync[e>>6] |= 1 << (e & 63)
		a.nsync++
	}
	a.epoch[e]++
	a.refresh(e, was)
}

// touch moves extent e to the head of the LRU, inserting it (and evicting the least
// recently written extent when full) if needed.
func (a *ActiveMap) touch(e int) {
	if len(a.slotExt) == 0 {
		return
	}
	s := a.lruSlot[e]
	switch {
	case s >= 0:
		if s == a.head {
			return
		}
		a.unlink(s)
	case a.used < len(a.slotExt):
		s = int32(a.used)
		a.used++
	default:
		s = a.tail
		victim := int(a.slotExt[s])
		a.unlink(s)
		a.lruSlot[victim] = -1
		a.refresh(victim, a.isDirty(victim))
	}
	a.slotExt[s] = int32(e)
	a.lruSlot[e] = s
	a.slotPrev[s] = -1
	a.slotNext[s] = a.head
	if a.head >= 0 {
		a.slotPrev[a.head] = s
	}
	a.head = s
	if a.tail < 0 {
		a.tail = s
	}
}

func (a *ActiveMap) unlink(s int32) {
	p, n := a.slotPrev[s], a.slotNext[s]
	if p >= 0 {
		a.slotNext[p] = n
	} else {
		a.head = n
	}
	if n >= 0 {
		a.slotPrev[n] = p
	} else {
		a.tail = p
	}
}

// WriteStart records that a write of [off, off+length) begins: each covered extent gets
// one more write in flight and moves to the LRU head (evicting the tail beyond
// keepdirty). It returns true if some covered extent is not set in the durable image:
// the caller must then persist (Image, write, MarkDurable) before sending data anywhere.
func (a *ActiveMap) WriteStart(off, length int64) (mustPersist bool) {
	first, last, ok := a.span(off, length)
	if !ok {
		return false
	}
	for e := first; e <= last; e++ {
		was := a.isDirty(e)
		a.inflight[e]++
		a.touched[e>>3] |= 1 << (e & 7)
		a.flushed[e>>3] &^= 1 << (e & 7)
		a.touch(e)
		a.refresh(e, was)
		if !a.isDurable(e) {
			mustPersist = true
		}
	}
	return mustPersist
}

// WriteDone records that a write started with WriteStart finished (whatever its
// outcome; a failed remote leg is reported separately with NeedSync). It returns true
// if the image lost bits, which the caller may persist lazily: a stale set bit only
// costs a resync of that extent after a crash.
func (a *ActiveMap) WriteDone(off, length int64) (changed bool) {
	first, last, ok := a.span(off, length)
	if !ok {
		return false
	}
	for e := first; e <= last; e++ {
		if a.inflight[e] == 0 {
			// Unmatched WriteDone: ignore it rather than wrap the counter, which would
			// pin the extent dirty forever.
			continue
		}
		was := a.isDirty(e)
		a.inflight[e]--
		if a.refresh(e, was) {
			changed = true
		}
	}
	return changed
}

// NeedSync records that the remote leg of a write of [off, off+length) failed or was
// never sent: the covered extents get their sync bit and a new epoch. It returns
// mustPersist like WriteStart.
func (a *ActiveMap) NeedSync(off, length int64) (mustPersist bool) {
	first, last, ok := a.span(off, length)
	if !ok {
		return false
	}
	for e := first; e <= last; e++ {
		a.setSync(e)
		if !a.isDurable(e) {
			mustPersist = true
		}
	}
	return mustPersist
}

// SetAllSync marks every extent for sync (full synchronisation). It returns mustPersist.
func (a *ActiveMap) SetAllSync() (mustPersist bool) {
	for e := 0; e < a.nextents; e++ {
		a.setSync(e)
		if !a.isDurable(e) {
			mustPersist = true
		}
	}
	return mustPersist
}

// checkBitmap validates a bitmap from disk or from the peer: it must cover every extent,
// and no bit past the last extent may be set. Its length may differ from MapSize because
// the on-disk area is sized from the media size and the peer may round to another
// sector size; only the bits of real extents carry meaning.
func (a *ActiveMap) checkBitmap(b []byte) error {
	need := (a.nextents + 7) / 8
	if len(b) < need {
		return fmt.Errorf("activemap: bitmap of %d bytes does not cover %d extents (%d bytes needed)", len(b), a.nextents, need)
	}
	if r := a.nextents & 7; r != 0 && b[need-1]>>r != 0 {
		return fmt.Errorf("activemap: bitmap marks extents past the last of %d", a.nextents)
	}
	for i, c := range b[need:] {
		if c != 0 {
			return fmt.Errorf("activemap: bitmap byte %d is non-zero but past the last of %d extents", need+i, a.nextents)
		}
	}
	return nil
}

// Load sets the state from the on-disk bitmap at startup: every set bit becomes a sync
// bit (what was dirty at a crash, LRU extents included, is resynced), nothing is in
// flight, the LRU is empty, and the durable image becomes this bitmap. A bitmap that
// does not cover every extent, or marks extents past the last one, is an error and
// leaves the map unchanged.
func (a *ActiveMap) Load(bitmap []byte) error {
	if err := a.checkBitmap(bitmap); err != nil {
		return err
	}
	clear(a.inflight)
	clear(a.sync)
	clear(a.img)
	clear(a.flushed)
	a.resetLRU()
	a.nsync, a.ndirty = 0, 0
	for e := 0; e < a.nextents; e++ {
		if bitmap[e>>3]&(1<<(e&7)) != 0 {
			a.sync[e>>6] |= 1 << (e & 63)
			a.epoch[e]++
			a.nsync++
			a.ndirty++
			a.img[e>>3] |= 1 << (e & 7)
		}
	}
	a.MarkDurable(a.img)
	return nil
}

// Merge ORs a peer's bitmap into the sync bits (handshake). It returns mustPersist; a
// malformed bitmap (see Load) is an error and changes nothing.
func (a *ActiveMap) Merge(bitmap []byte) (mustPersist bool, err error) {
	if err := a.checkBitmap(bitmap); err != nil {
		return false, err
	}
	for i, c := range bitmap[:(a.nextents+7)/8] {
		for c != 0 {
			e := i<<3 | bits.TrailingZeros8(c)
			c &= c - 1
			a.setSync(e)
			if !a.isDurable(e) {
				mustPersist = true
			}
		}
	}
	return mustPersist, nil
}

// NextSync returns the first extent ≥ from whose sync bit is set, and its epoch for
// SyncDone.
func (a *ActiveMap) NextSync(from int) (e int, epoch uint64, ok bool) {
	if a.nsync == 0 || from >= a.nextents {
		return 0, 0, false
	}
	from = max(from, 0)
	w := from >> 6
	word := a.sync[w] &^ (1<<(from&63) - 1)
	for {
		if word != 0 {
			e = w<<6 | bits.TrailingZeros64(word)
			if e >= a.nextents {
				return 0, 0, false
			}
			return e, a.epoch[e], true
		}
		w++
		if w >= len(a.sync) {
			return 0, 0, false
		}
		word = a.sync[w]
	}
}

// SyncDone clears the sync bit of e only if its epoch is still epoch, i.e. no NeedSync
// (or Merge, SetAllSync) asked again while the extent was being copied. It returns
// whether the image lost bits.
func (a *ActiveMap) SyncDone(e int, epoch uint64) (changed bool) {
	if e < 0 || e >= a.nextents || !a.hasSync(e) || a.epoch[e] != epoch {
		return false
	}
	was := a.isDirty(e)
	a.sync[e>>6] &^= 1 << (e & 63)
	a.nsync--
	return a.refresh(e, was)
}

// SyncPending returns the number of extents with the sync bit set.
func (a *ActiveMap) SyncPending() int { return a.nsync }

// Dirty reports what HAST calls dirty: extents with writes in flight or the sync bit
// (not those only kept in the LRU), and their size in bytes (the last extent counts
// with its real, possibly shorter, length).
func (a *ActiveMap) Dirty() (extents int, bytes int64) {
	bytes = int64(a.ndirty) << a.shift
	if last := a.nextents - 1; a.isDirty(last) {
		_, l := a.ExtentRange(last)
		bytes -= int64(a.extentSize) - l
	}
	return a.ndirty, bytes
}

// Image appends the current on-disk image (MapSize bytes) to dst[:0] and returns it.
func (a *ActiveMap) Image(dst []byte) []byte { return append(dst[:0], a.img...) }

// MarkDurable records that img, a value returned by Image, is now on disk. It may be
// older than the current image (the map may have changed while it was written). An img
// shorter than MapSize is ignored, which errs on the safe side: extents it would have
// made durable keep asking to be persisted.
func (a *ActiveMap) MarkDurable(img []byte) {
	if len(img) < a.mapSize {
		return
	}
	copy(a.durable, img)
	a.diff = 0
	i := 0
	for ; i+8 <= a.mapSize; i += 8 {
		x := binary.LittleEndian.Uint64(a.img[i:]) ^ binary.LittleEndian.Uint64(a.durable[i:])
		a.diff += bits.OnesCount64(x)
	}
	for ; i < a.mapSize; i++ {
		a.diff += bits.OnesCount8(a.img[i] ^ a.durable[i])
	}
}

// StartClean begins a cleaning round: it returns the extents whose bits are set on disk
// but clear in the current image (idle, out of the LRU, nothing to sync), and starts
// recording writes. The caller then flushes the data and calls FinishClean with the
// returned value: every write to those extents completed before this call, so that
// flush covers them, unless a new write started meanwhile.
func (a *ActiveMap) StartClean() (candidates []byte) {
	candidates = make([]byte, a.mapSize)
	for i := range candidates {
		candidates[i] = a.durable[i] &^ a.img[i] &^ a.flushed[i]
	}
	clear(a.touched)
	return candidates
}

// FinishClean records that the data flush begun after StartClean returned candidates
// has completed: the candidates not written since may now be cleared on disk.
func (a *ActiveMap) FinishClean(candidates []byte) {
	if len(candidates) < a.mapSize {
		return
	}
	for i := range a.flushed {
		a.flushed[i] |= candidates[i] &^ a.touched[i]
	}
}

// CleanPending reports whether some bit is set on disk, clear in the current image and
// not yet proven flushed: a cleaning round would let it be cleared.
func (a *ActiveMap) CleanPending() bool {
	for i := range a.img {
		if a.durable[i]&^a.img[i]&^a.flushed[i] != 0 {
			return true
		}
	}
	return false
}

// FlushedImage appends to dst[:0] the image that may be written without flushing data
// first: the current image, except that a bit set on disk stays set until a cleaning
// round has proven its extent's data flushed.
func (a *ActiveMap) FlushedImage(dst []byte) []byte {
	dst = append(dst[:0], a.img...)
	for i := range dst {
		dst[i] |= a.durable[i] &^ a.flushed[i]
	}
	return dst
}

// Differs reports whether the current image differs from the durable one (HAST's
// activemap_differ): bits were set or cleared since the last MarkDurable.
func (a *ActiveMap) Differs() bool { return a.diff != 0 }

// IsDurable reports whether every extent covered by [off, off+length) is set in the
// durable image, i.e. data written there now would be resynced after a crash.
func (a *ActiveMap) IsDurable(off, length int64) bool {
	first, last, ok := a.span(off, length)
	if !ok {
		return true
	}
	for e := first; e <= last; e++ {
		if !a.isDurable(e) {
			return false
		}
	}
	return true
}

// SyncBitmap returns the sync bits only, MapSize bytes in the on-disk bit order (sent
// to the peer in the handshake).
func (a *ActiveMap) SyncBitmap() []byte {
	out := make([]byte, a.mapSize)
	for i := range (a.nextents + 7) / 8 {
		out[i] = byte(a.sync[i>>3] >> (8 * (i & 7)))
	}
	return out
}
