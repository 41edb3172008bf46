package nbd

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"hast/replicate"
)

// A client that did not ask for block size constraints (NBD_OPT_EXPORT_NAME cannot, NBD_OPT_GO
// may not) is owed 1-byte granularity by the NBD spec, while the volume takes whole sectors
// only. Such a client's requests are split into a run of whole sectors, passed through, and a
// partial sector at either end, read whole and, for writes, patched and written back.
//
// Two writes patching the same sector at once would each write back the other's old bytes, and
// so would a plain write landing between a patch's read and its write-back. So every write,
// write-zeroes and trim of an export takes its sector-aligned range in the export's rangeLock:
// shared when it is whole sectors, exclusive when it patches.

// rangeLock orders overlapping requests of one export. Requests are queued in arrival order
// and each waits only for earlier ones it conflicts with (overlapping, one of them exclusive),
// so a patch is not starved by a stream of plain writes, nor the other way round.
type rangeLock struct {
	mu    sync.Mutex
	cond  sync.Cond
	queue []*lockedRange // holding or waiting, in arrival order
}

type lockedRange struct {
	lo, hi int64
	excl   bool
}

func newRangeLock() *rangeLock {
	l := &rangeLock{}
	l.cond.L = &l.mu
	return l
}

// lock takes [lo, hi), exclusively or shared, waiting for earlier conflicting holders; the
// returned function gives it back.
func (l *rangeLock) lock(lo, hi int64, excl bool) (unlock func()) {
	r := &lockedRange{lo, hi, excl}
	l.mu.Lock()
	l.queue = append(l.queue, r)
	for l.blocked(r) {
		l.cond.Wait()
	}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		l.queue = slices.DeleteFunc(l.queue, func(q *lockedRange) bool { return q == r })
		l.mu.Unlock()
		l.cond.Broadcast()
	}
}

func (l *rangeLock) blocked(r *lockedRange) bool {
	for _, q := range l.queue {
		if q == r {
			return false
		}
		if (q.excl || r.excl) && q.lo < r.hi && r.lo < q.hi {
			return true
		}
	}
	panic("nbd: range lock entry missing from its queue")
}

// pieces splits [off, off+length) at ex's sector boundaries into runs of whole sectors and
// partial sectors, and calls fn for each in order.
func (ex *export) pieces(off, length int64, fn func(at, n int64, whole bool) error) error {
	end := off + length
	for at := off; at < end; {
		start := at &^ (ex.sector - 1)
		n, whole := min(end, start+ex.sector)-at, false
		if at == start && end-at >= ex.sector {
			n, whole = (end-at)&^(ex.sector-1), true
		}
		if err := fn(at, n, whole); err != nil {
			return err
		}
		at += n
	}
	return nil
}

// lockRange takes [off, off+length), widened to whole sectors, in ex's range lock: exclusively
// when the request patches a partial sector.
func (ex *export) lockRange(off, length int64, patches bool) (unlock func()) {
	lo := off &^ (ex.sector - 1)
	hi := (off + length + ex.sector - 1) &^ (ex.sector - 1)
	return ex.locks.lock(lo, hi, patches && (lo != off || hi != off+length))
}

// sectorAt reads the sector holding at into a pooled buffer, and returns it with its offset.
func (ex *export) sectorAt(at int64) ([]byte, int64, error) {
	start := at &^ (ex.sector - 1)
	b := getBuf(int(ex.sector))
	if err := readFull(ex.vol, b, start); err != nil {
		putBuf(b)
		return nil, 0, err
	}
	return b, start, nil
}

// read fills p from off.
func (ex *export) read(p []byte, off int64) error {
	return ex.pieces(off, int64(len(p)), func(at, n int64, whole bool) error {
		dst := p[at-off:][:n]
		if whole {
			return readFull(ex.vol, dst, at)
		}
		b, start, err := ex.sectorAt(at)
		if err != nil {
			return err
		}
		copy(dst, b[at-start:])
		putBuf(b)
		return nil
	})
}

// write writes length bytes at off: data's, or zeroes when data is nil.
func (ex *export) write(off, length int64, data []byte) error {
	defer ex.lockRange(off, length, true)()
	return ex.pieces(off, length, func(at, n int64, whole bool) error {
		var src []byte
		if data != nil {
			src = data[at-off:][:n]
		}
		if whole {
			if src == nil {
				return writeZeroes(ex.vol, at, n)
			}
			return writeFull(ex.vol, src, at)
		}
		b, start, err := ex.sectorAt(at)
		if err != nil {
			return err
		}
		defer putBuf(b)
		if src == nil {
			clear(b[at-start:][:n])
		} else {
			copy(b[at-start:], src)
		}
		return writeFull(ex.vol, b, start)
	})
}

// trim discards the whole sectors of [off, off+length); a trim may leave any data, so the
// partial sectors at its ends are left as they are.
func (ex *export) trim(off, length int64) error {
	defer ex.lockRange(off, length, false)()
	return ex.pieces(off, length, func(at, n int64, whole bool) error {
		if !whole {
			return nil
		}
		return ex.vol.Discard(at, n)
	})
}

// readFull reads len(p) bytes at off; an io.EOF with every byte read is success.
func readFull(vol replicate.Volume, p []byte, off int64) error {
	n, err := vol.ReadAt(p, off)
	if n == len(p) && errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil && n < len(p) {
		return fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	return err
}

// writeFull writes p at off.
func writeFull(vol replicate.Volume, p []byte, off int64) error {
	n, err := vol.WriteAt(p, off)
	if err == nil && n < len(p) {
		return fmt.Errorf("short write: %d of %d bytes", n, len(p))
	}
	return err
}

// zeroes is the source of NBD_CMD_WRITE_ZEROES data; volumes only read it.
var zeroes [1 << 20]byte

// writeZeroes writes length zero bytes at off. The volume does not promise zeroes after
// Discard, so NO_HOLE or not, zeroes are written.
func writeZeroes(vol replicate.Volume, off, length int64) error {
	for done := int64(0); done < length; {
		n := min(length-done, int64(len(zeroes)))
		if err := writeFull(vol, zeroes[:n], off+done); err != nil {
			return err
		}
		done += n
	}
	return nil
}
