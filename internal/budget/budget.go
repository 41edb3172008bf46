// Package budget bounds the memory a daemon lends to requests in flight. A Budget is a counting
// semaphore over bytes: whoever is about to hold a buffer for a request acquires its size first
// and releases it when the buffer is given back, so however many requests, connections or
// resources there are, their buffers together stay under the budget's size.
//
// The NBD server charges its payload buffers to one; an async primary charges the copies of
// writes it keeps until the peer has applied them, so a peer that falls behind makes writers
// wait instead of growing the daemon's memory.
//
// Waiters are served first come, first served, so a large request waiting for room is not
// overtaken for ever by a stream of small ones that would each fit in what it waits for.
package budget

import (
	"container/list"
	"sync"
)

// Budget is a counting semaphore over bytes whose waiters are served first come, first served.
// It is safe for concurrent use.
type Budget struct {
	mu      sync.Mutex
	size    int64
	avail   int64
	waiters list.List // of *waiter, oldest first
}

type waiter struct {
	n     int64
	ready chan struct{} // closed when the bytes are granted
}

// New returns a budget of size bytes, all available.
func New(size int64) *Budget {
	return &Budget{size: size, avail: size}
}

// Size returns the budget's size: the most that may be acquired at once.
func (b *Budget) Size() int64 { return b.size }

// Acquire takes n bytes (0 < n <= Size), waiting behind every earlier waiter. It returns false,
// holding nothing, when cancel is closed before the bytes are granted; a nil cancel waits for
// as long as it takes.
func (b *Budget) Acquire(n int64, cancel <-chan struct{}) bool {
	if b.TryAcquire(n) {
		return true
	}
	b.mu.Lock()
	w := &waiter{n: n, ready: make(chan struct{})}
	e := b.waiters.PushBack(w)
	// Bytes given back since TryAcquire looked would otherwise wait for the next release.
	b.grantLocked()
	b.mu.Unlock()

	select {
	case <-w.ready:
		return true
	case <-cancel:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-w.ready:
		// Granted while we were giving up: hand the bytes on.
		b.avail += n
	default:
		b.waiters.Remove(e)
	}
	// Either way the head of the line may have changed, and whoever is there now may fit.
	b.grantLocked()
	return false
}

// TryAcquire takes n bytes if they are available now and nobody waits for them; it never
// waits.
func (b *Budget) TryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waiters.Len() == 0 && b.avail >= n {
		b.avail -= n
		return true
	}
	return false
}

// Release gives back n bytes taken by Acquire or TryAcquire.
func (b *Budget) Release(n int64) {
	b.mu.Lock()
	b.avail += n
	b.grantLocked()
	b.mu.Unlock()
}

// State returns the bytes available and the sizes waiting, oldest first: for tests and status.
func (b *Budget) State() (avail int64, waiting []int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for e := b.waiters.Front(); e != nil; e = e.Next() {
		waiting = append(waiting, e.Value.(*waiter).n)
	}
	return b.avail, waiting
}

// grantLocked wakes waiters from the front of the line for as long as they fit.
func (b *Budget) grantLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*waiter)
		if w.n > b.avail {
			return
		}
		b.avail -= w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}
