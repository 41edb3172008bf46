package replicate

import "sync"

// rangeLock keeps synchronisation chunks and regular writes of the same extent apart, at extent
// granularity: a sync chunk must not read data a write is changing (it would copy a stale
// version after the write's remote leg), and a write must not change data a chunk is copying.
// Regular writes do not exclude each other (as in HAST).
type rangeLock struct {
	mu      sync.Mutex
	cond    sync.Cond
	shift   uint
	writers []int32 // in-flight writes per extent
	syncing []bool  // a sync chunk holds the extent
	waiting int     // goroutines in cond.Wait, so unlocks skip Broadcast when nobody waits
}

func newRangeLock(extents int, extentShift uint) *rangeLock {
	r := &rangeLock{shift: extentShift, writers: make([]int32, extents), syncing: make([]bool, extents)}
	r.cond.L = &r.mu
	return r
}

func (r *rangeLock) span(off, length int64) (int, int) {
	return int(off >> r.shift), int((off + length - 1) >> r.shift)
}

// lockWrite waits while a sync chunk holds any extent of the range, then registers the write.
func (r *rangeLock) lockWrite(off, length int64) {
	first, last := r.span(off, length)
	r.mu.Lock()
	for {
		busy := false
		for e := first; e <= last; e++ {
			if r.syncing[e] {
				busy = true
				break
			}
		}
		if !busy {
			break
		}
		r.waiting++
		r.cond.Wait()
		r.waiting--
	}
	for e := first; e <= last; e++ {
		r.writers[e]++
	}
	r.mu.Unlock()
}

func (r *rangeLock) unlockWrite(off, length int64) {
	first, last := r.span(off, length)
	r.mu.Lock()
	for e := first; e <= last; e++ {
		r.writers[e]--
	}
	if r.waiting > 0 {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// lockSync waits until no write is in flight on extent e, then holds it.
func (r *rangeLock) lockSync(e int) {
	r.mu.Lock()
	for r.writers[e] > 0 || r.syncing[e] {
		r.waiting++
		r.cond.Wait()
		r.waiting--
	}
	r.syncing[e] = true
	r.mu.Unlock()
}

func (r *rangeLock) unlockSync(e int) {
	r.mu.Lock()
	r.syncing[e] = false
	if r.waiting > 0 {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}
