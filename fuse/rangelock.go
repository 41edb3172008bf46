package fuse

import "sync"

// sectorLock keeps read-modify-write cycles apart from every other write to the same sectors.
//
// Aligned writes take shared locks: the kernel gives no ordering between overlapping writes in
// flight, so they need not exclude each other. A read-modify-write takes an exclusive lock over
// the whole sectors it rewrites; without it, a concurrent write to bytes of the same sector that
// the cycle does not change would be overwritten with the stale copy the cycle read.
//
// An exclusive request is registered before it waits, which keeps new shared requests on its
// range from starving it; exclusive requests on overlapping ranges are granted in arrival order.
type sectorLock struct {
	mu      sync.Mutex
	cond    sync.Cond
	seq     uint64
	shared  []lockedRange
	excl    []lockedRange // granted or waiting, in arrival order
	waiting int           // goroutines in cond.Wait, so unlocks skip Broadcast when nobody waits
}

type lockedRange struct {
	start, end int64 // [start, end)
	id         uint64
}

func newSectorLock() *sectorLock {
	l := &sectorLock{}
	l.cond.L = &l.mu
	return l
}

func overlaps(r lockedRange, start, end int64) bool {
	return r.start < end && start < r.end
}

// lockShared waits until no exclusive request (granted or waiting) overlaps [start, end) and
// returns the id to pass to unlockShared.
func (l *sectorLock) lockShared(start, end int64) uint64 {
	l.mu.Lock()
	for l.exclOverlaps(start, end, ^uint64(0)) {
		l.wait()
	}
	l.seq++
	id := l.seq
	l.shared = append(l.shared, lockedRange{start, end, id})
	l.mu.Unlock()
	return id
}

// lockExclusive waits until no shared lock and no earlier exclusive request overlaps
// [start, end) and returns the id to pass to unlockExclusive.
func (l *sectorLock) lockExclusive(start, end int64) uint64 {
	l.mu.Lock()
	l.seq++
	id := l.seq
	l.excl = append(l.excl, lockedRange{start, end, id})
	for l.sharedOverlaps(start, end) || l.exclOverlaps(start, end, id) {
		l.wait()
	}
	l.mu.Unlock()
	return id
}

func (l *sectorLock) unlockShared(id uint64) {
	l.mu.Lock()
	l.shared = removeRange(l.shared, id)
	l.wakeLocked()
	l.mu.Unlock()
}

func (l *sectorLock) unlockExclusive(id uint64) {
	l.mu.Lock()
	l.excl = removeRange(l.excl, id)
	l.wakeLocked()
	l.mu.Unlock()
}

func (l *sectorLock) wait() {
	l.waiting++
	l.cond.Wait()
	l.waiting--
}

func (l *sectorLock) wakeLocked() {
	if l.waiting > 0 {
		l.cond.Broadcast()
	}
}

// exclOverlaps reports whether an exclusive request that arrived before id overlaps the range.
func (l *sectorLock) exclOverlaps(start, end int64, before uint64) bool {
	for _, r := range l.excl {
		if r.id < before && overlaps(r, start, end) {
			return true
		}
	}
	return false
}

func (l *sectorLock) sharedOverlaps(start, end int64) bool {
	for _, r := range l.shared {
		if overlaps(r, start, end) {
			return true
		}
	}
	return false
}

// removeRange deletes the entry with the given id, keeping the order of the others (exclusive
// requests rely on it for fairness).
func removeRange(rs []lockedRange, id uint64) []lockedRange {
	for i, r := range rs {
		if r.id == id {
			copy(rs[i:], rs[i+1:])
			return rs[:len(rs)-1]
		}
	}
	return rs
}
