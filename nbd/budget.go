package nbd

import (
	"sync"

	"hast/internal/budget"
)

// Payload memory is bounded twice. Before the reader takes a buffer for a READ or a WRITE, it
// charges the buffer's size to its connection's budget and to the server's, which all
// connections share:
//
//   - The server's (MaxInFlightBytes) bounds the daemon's memory however many resources and
//     clients are served. Limits per connection alone let three resources at depth 128 hold
//     three times as much.
//   - The connection's (connInFlightBytes, half of the server's) keeps one client that stops
//     reading its replies, or stops in the middle of a write payload, from holding all of it:
//     the other connections keep MaxRequest between them, so they go on, one request of any
//     size at a time at worst. Two such clients do hold all of it: the others then wait until
//     one of them goes away (or is disconnected by a demotion).
//
// The server's budget is a budget.Budget, which grants bytes in arrival order, so a large
// request waiting for room is not overtaken for ever by a stream of small ones from other
// connections that would each fit in what it waits for.

// connBudget is one connection's share of its server's budget: at most limit bytes, each also
// charged to the server's. The connection's reader is the only acquirer; workers and the
// writer release.
type connBudget struct {
	shared *budget.Budget
	limit  int64
	stop   chan struct{} // closed by close: ends a wait for the shared budget

	mu     sync.Mutex
	cond   sync.Cond
	held   int64
	closed bool
}

// init sets b up as a share of at most limit bytes of shared.
func (b *connBudget) init(shared *budget.Budget, limit int64) {
	b.shared = shared
	b.limit = min(limit, shared.Size())
	b.stop = make(chan struct{})
	b.cond.L = &b.mu
}

// acquire charges a buffer of n bytes, waiting for room on the connection and then on the
// server. It returns what was charged, to be given back with release, or false when the
// connection is stopping.
//
// A buffer larger than the connection's whole limit is charged the limit: it waits until the
// connection holds nothing and then runs alone on it. The package's limits never do that
// (MaxRequest fits), but it keeps any limits from deadlocking.
func (b *connBudget) acquire(n int64) (int64, bool) {
	n = min(n, b.limit)
	b.mu.Lock()
	for !b.closed && b.held+n > b.limit {
		b.cond.Wait()
	}
	if b.closed {
		b.mu.Unlock()
		return 0, false
	}
	b.held += n
	b.mu.Unlock()
	if !b.shared.Acquire(n, b.stop) {
		b.mu.Lock()
		b.held -= n
		b.mu.Unlock()
		return 0, false
	}
	return n, true
}

// release gives back n bytes charged by acquire.
func (b *connBudget) release(n int64) {
	b.shared.Release(n)
	b.mu.Lock()
	b.held -= n
	b.mu.Unlock()
	b.cond.Signal()
}

// close makes acquire, waiting or not, return false from now on. Bytes held stay held until
// they are released.
func (b *connBudget) close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.stop)
	}
	b.mu.Unlock()
	b.cond.Broadcast()
}
