package nbd

import (
	"sync"
	"sync/atomic"

	"hast/internal/budget"
)

// Payload memory is bounded twice. Before the reader takes a buffer for a READ or a WRITE, it
// charges the buffer's size to its connection's budget and to the server's, which all
// connections share:
//
//   - The server's (MaxInFlightBytes) bounds the daemon's memory however many resources and
//     clients are served. Limits per connection alone let three resources at depth 128 hold
//     three times as much.
//   - The connection's (connInFlightBytes) keeps one busy client from taking all of it.
//
// Limits alone cannot keep clients that stop reading their replies (or stop in the middle of a
// write payload) from holding the server's budget: however small each share, enough of them
// hold it all. So the server's budget is split in two, and misbehaving clients are dropped:
//
//   - reserveBytes of it serve only connections that hold nothing, and only when the rest has
//     no room for them. A connection holding something charges the rest. Clients that stopped
//     reading can each take at most one request from the reserve, so a well-behaved client,
//     which holds nothing between its requests when it waits, keeps getting served while a
//     few of them hang on.
//   - A connection whose replies (or write payload) have not moved for stallTimeout while
//     another connection waits for budget is disconnected, which gives its share back (see
//     conn.send). Nobody waiting, it may stall up to replyTimeout.
//
// Each part is a budget.Budget, which grants bytes in arrival order, so a large request
// waiting for room is not overtaken for ever by a stream of small ones from other connections
// that would each fit in what it waits for.

// serverBudget is the payload budget of a Server, shared by its connections.
type serverBudget struct {
	main    *budget.Budget // charged by connections that hold something
	reserve *budget.Budget // for connections that hold nothing
	waiting atomic.Int32   // readers waiting in either line
}

func newServerBudget(total, reserve int64) *serverBudget {
	return &serverBudget{main: budget.New(total - reserve), reserve: budget.New(reserve)}
}

// charge is what one buffer holds of the server's budget.
type charge struct {
	n    int64
	from *budget.Budget
}

// connBudget is one connection's share of its server's budget: at most limit bytes, each also
// charged to the server's. The connection's reader is the only acquirer; workers and the
// writer release.
type connBudget struct {
	srv     *serverBudget
	limit   int64
	stop    chan struct{} // closed by close: ends a wait for the server's budget
	waiting atomic.Bool   // the reader waits for the server's budget

	mu     sync.Mutex
	cond   sync.Cond
	held   int64
	closed bool
}

// init sets b up as a share of at most limit bytes of srv.
func (b *connBudget) init(srv *serverBudget, limit int64) {
	b.srv = srv
	b.limit = min(limit, srv.main.Size())
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
func (b *connBudget) acquire(n int64) (charge, bool) {
	n = min(n, b.limit)
	b.mu.Lock()
	for !b.closed && b.held+n > b.limit {
		b.cond.Wait()
	}
	if b.closed {
		b.mu.Unlock()
		return charge{}, false
	}
	holdsNothing := b.held == 0
	b.held += n
	b.mu.Unlock()

	from := b.srv.main
	ok := from.TryAcquire(n)
	if !ok && holdsNothing && n <= b.srv.reserve.Size() {
		from = b.srv.reserve
		ok = from.TryAcquire(n)
	}
	if !ok {
		b.waiting.Store(true)
		b.srv.waiting.Add(1)
		ok = from.Acquire(n, b.stop)
		b.srv.waiting.Add(-1)
		b.waiting.Store(false)
		if !ok {
			b.mu.Lock()
			b.held -= n
			b.mu.Unlock()
			return charge{}, false
		}
	}
	return charge{n, from}, true
}

// othersWait reports whether another connection's reader waits for the server's budget.
func (b *connBudget) othersWait() bool {
	n := b.srv.waiting.Load()
	if b.waiting.Load() {
		n--
	}
	return n > 0
}

// release gives back what acquire charged.
func (b *connBudget) release(c charge) {
	c.from.Release(c.n)
	b.mu.Lock()
	b.held -= c.n
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
