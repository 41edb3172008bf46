package nbd

import (
	"bytes"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// state returns the bytes available and the sizes waiting, oldest first.
func (b *sharedBudget) state() (avail int64, queue []int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for e := b.waiters.Front(); e != nil; e = e.Next() {
		queue = append(queue, e.Value.(*budgetWaiter).n)
	}
	return b.avail, queue
}

func (b *budget) heldBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}

// connHeld returns the budget bytes each connection of s holds.
func (s *Server) connHeld() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var held []int64
	for c := range s.conns {
		held = append(held, c.budget.heldBytes())
	}
	return held
}

// withBudget makes a server's budget serverBytes, of which each connection may hold connBytes.
func withBudget(serverBytes, connBytes int64) func(*Server) {
	return func(s *Server) {
		s.budget = newSharedBudget(serverBytes)
		s.connBytes = connBytes
	}
}

// waitUntil polls cond until it holds. The minute is a liveness guard, not a performance
// assertion: every condition waited for is reached by the code under test alone, and one that
// is not reached is a hang (the failure being tested for).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// finish waits for done, with the same liveness guard as waitUntil.
func finish(t *testing.T, what string, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("never finished: %s", what)
	}
}

// receive returns what ch delivers, with the same liveness guard as waitUntil.
func receive[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("never returned: %s", what)
	}
	var zero T
	return zero
}

func TestSharedBudget(t *testing.T) {
	// Every step runs an operation and then checks which acquirers it let through, what is
	// still waiting (sizes, oldest first) and what is left.
	type step struct {
		op      string // "acquire" (n bytes for id), "release" (what id holds), "cancel" (id's wait)
		id      string
		n       int64
		granted []string
		queue   []int64
		avail   int64
	}
	tests := []struct {
		name  string
		size  int64
		steps []step
	}{
		{"fits at once", 10, []step{
			{op: "acquire", id: "a", n: 4, granted: []string{"a"}, avail: 6},
			{op: "acquire", id: "b", n: 6, granted: []string{"b"}, avail: 0},
			{op: "release", id: "a", avail: 4},
			{op: "release", id: "b", avail: 10},
		}},
		{"a small request that fits waits behind a large one that does not", 10, []step{
			{op: "acquire", id: "a", n: 8, granted: []string{"a"}, avail: 2},
			{op: "acquire", id: "b", n: 5, queue: []int64{5}, avail: 2},
			{op: "acquire", id: "c", n: 1, queue: []int64{5, 1}, avail: 2},
			{op: "release", id: "a", granted: []string{"b", "c"}, avail: 4},
		}},
		{"a request larger than what is left goes through once the others give back", 10, []step{
			{op: "acquire", id: "a", n: 4, granted: []string{"a"}, avail: 6},
			{op: "acquire", id: "b", n: 4, granted: []string{"b"}, avail: 2},
			{op: "acquire", id: "all", n: 10, queue: []int64{10}, avail: 2},
			{op: "acquire", id: "c", n: 1, queue: []int64{10, 1}, avail: 2},
			{op: "release", id: "a", queue: []int64{10, 1}, avail: 6},
			{op: "release", id: "b", granted: []string{"all"}, queue: []int64{1}, avail: 0},
			{op: "release", id: "all", granted: []string{"c"}, avail: 9},
		}},
		{"giving up at the head of the line lets the next one in", 10, []step{
			{op: "acquire", id: "a", n: 8, granted: []string{"a"}, avail: 2},
			{op: "acquire", id: "b", n: 5, queue: []int64{5}, avail: 2},
			{op: "acquire", id: "c", n: 2, queue: []int64{5, 2}, avail: 2},
			{op: "cancel", id: "b", granted: []string{"c"}, avail: 0},
		}},
		{"giving up in the middle keeps the order of the rest", 10, []step{
			{op: "acquire", id: "a", n: 8, granted: []string{"a"}, avail: 2},
			{op: "acquire", id: "b", n: 5, queue: []int64{5}, avail: 2},
			{op: "acquire", id: "c", n: 3, queue: []int64{5, 3}, avail: 2},
			{op: "acquire", id: "d", n: 1, queue: []int64{5, 3, 1}, avail: 2},
			{op: "cancel", id: "c", queue: []int64{5, 1}, avail: 2},
			{op: "release", id: "a", granted: []string{"b", "d"}, avail: 4},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newSharedBudget(tt.size)
			type acquirer struct {
				n      int64
				cancel chan struct{}
				result chan bool
			}
			acq := map[string]*acquirer{}
			pending := map[string]bool{} // started, not yet returned
			for i, s := range tt.steps {
				switch s.op {
				case "acquire":
					a := &acquirer{n: s.n, cancel: make(chan struct{}), result: make(chan bool, 1)}
					acq[s.id], pending[s.id] = a, true
					go func() { a.result <- b.acquire(a.n, a.cancel) }()
				case "release":
					b.release(acq[s.id].n)
				case "cancel":
					close(acq[s.id].cancel)
					if receive(t, s.id+" giving up", acq[s.id].result) {
						t.Fatalf("step %d: %s gave up but acquire returned true", i, s.id)
					}
					delete(pending, s.id)
				}
				for _, id := range s.granted {
					if !receive(t, "acquire of "+id, acq[id].result) {
						t.Fatalf("step %d: acquire of %s returned false", i, id)
					}
					delete(pending, id)
				}
				// Wait for new waiters to queue up, or for one that should wait to return.
				waitUntil(t, fmt.Sprintf("step %d: queue %v", i, s.queue), func() bool {
					for id := range pending {
						if len(acq[id].result) > 0 {
							return true
						}
					}
					_, q := b.state()
					return slices.Equal(q, s.queue)
				})
				for id := range pending {
					select {
					case ok := <-acq[id].result:
						t.Fatalf("step %d: acquire of %s returned %v, want it still waiting", i, id, ok)
					default:
					}
				}
				if avail, q := b.state(); avail != s.avail || !slices.Equal(q, s.queue) {
					t.Fatalf("step %d: %d bytes available and %v waiting, want %d and %v", i, avail, q, s.avail, s.queue)
				}
			}
		})
	}
}

// TestSharedBudgetGiveUpWhileGranted races a release that grants a waiter against the waiter
// giving up: whichever wins, no byte may be lost or counted twice.
func TestSharedBudgetGiveUpWhileGranted(t *testing.T) {
	b := newSharedBudget(1)
	for range 500 {
		if !b.acquire(1, nil) {
			t.Fatal("acquire of a free budget failed")
		}
		cancel := make(chan struct{})
		got := make(chan bool, 1)
		go func() { got <- b.acquire(1, cancel) }()
		waitUntil(t, "the second acquire waits", func() bool { _, q := b.state(); return len(q) == 1 })
		go b.release(1)
		close(cancel)
		if <-got {
			b.release(1)
		}
		waitUntil(t, "everything is back", func() bool { a, q := b.state(); return a == 1 && len(q) == 0 })
	}
}

// TestBudgetStuckConnection: a connection whose requests never finish (a client that stopped
// reading its replies) holds its own limit and no more, and the others go on with the rest.
func TestBudgetStuckConnection(t *testing.T) {
	shared := newSharedBudget(10)
	var stuck, other budget
	stuck.init(shared, 5)
	other.init(shared, 5)
	// The stuck connection's reader keeps taking budget for requests that never complete.
	stuckDone := make(chan struct{})
	go func() {
		defer close(stuckDone)
		for {
			if _, ok := stuck.acquire(1); !ok {
				return
			}
		}
	}()
	waitUntil(t, "the stuck connection holds its limit", func() bool { return stuck.heldBytes() == 5 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := int64(1); n <= 5; n++ {
			held, ok := other.acquire(n)
			if !ok || held != n {
				t.Errorf("acquire(%d) = %d, %v", n, held, ok)
				return
			}
			other.release(held)
		}
	}()
	finish(t, "the other connection's requests", done)
	if h := stuck.heldBytes(); h != 5 {
		t.Errorf("the stuck connection holds %d bytes, want its limit 5", h)
	}
	stuck.close()
	finish(t, "the stuck connection's reader after close", stuckDone)
}

// TestBudgetOversized: a request larger than a connection's limit is charged the limit, so it
// waits until its connection holds nothing and then runs alone instead of waiting for ever.
func TestBudgetOversized(t *testing.T) {
	shared := newSharedBudget(10)
	var b budget
	b.init(shared, 4)
	small, ok := b.acquire(1)
	if !ok || small != 1 {
		t.Fatalf("acquire(1) = %d, %v", small, ok)
	}
	type res struct {
		held int64
		ok   bool
	}
	got := make(chan res, 1)
	go func() {
		held, ok := b.acquire(9)
		got <- res{held, ok}
	}()
	b.release(small)
	r := <-got
	if !r.ok || r.held != 4 {
		t.Fatalf("acquire(9) with a limit of 4 = %d, %v; want 4, true", r.held, r.ok)
	}
	if avail, _ := shared.state(); avail != 6 {
		t.Errorf("shared budget has %d bytes left, want 6", avail)
	}
	b.release(r.held)
}

// TestBudgetClose: closing a connection's budget ends a wait for the connection's limit and a
// wait in the server's line, and leaves what is held to be released.
func TestBudgetClose(t *testing.T) {
	shared := newSharedBudget(10)
	var full, queued, filler budget
	full.init(shared, 5)
	queued.init(shared, 5)
	filler.init(shared, 5)
	for _, b := range []*budget{&full, &filler} {
		if _, ok := b.acquire(5); !ok {
			t.Fatal("acquire of a free budget failed")
		}
	}
	results := make(chan bool, 2)
	go func() { _, ok := full.acquire(1); results <- ok }()   // waits for its own limit
	go func() { _, ok := queued.acquire(3); results <- ok }() // waits in the server's line
	waitUntil(t, "a wait in the server's line", func() bool { _, q := shared.state(); return len(q) == 1 })
	full.close()
	queued.close()
	for range 2 {
		if <-results {
			t.Fatal("acquire on a closed budget returned true")
		}
	}
	if avail, q := shared.state(); avail != 0 || len(q) != 0 {
		t.Errorf("after close: %d bytes available and %v waiting, want 0 and none", avail, q)
	}
	if h := queued.heldBytes(); h != 0 {
		t.Errorf("the closed waiter holds %d bytes, want 0", h)
	}
	full.release(5)
	filler.release(5)
	if avail, _ := shared.state(); avail != 10 {
		t.Errorf("%d bytes available after every release, want 10", avail)
	}
}

// gateVolume counts the payload bytes inside its ReadAt and WriteAt calls at once and holds
// every call until open is closed.
type gateVolume struct {
	size int64
	open chan struct{}

	mu           sync.Mutex
	inside, peak int64
}

func newGateVolume(size int64) *gateVolume {
	return &gateVolume{size: size, open: make(chan struct{})}
}

func (v *gateVolume) pass(n int) {
	v.mu.Lock()
	v.inside += int64(n)
	v.peak = max(v.peak, v.inside)
	v.mu.Unlock()
	<-v.open
	v.mu.Lock()
	v.inside -= int64(n)
	v.mu.Unlock()
}

func (v *gateVolume) load() (inside, peak int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.inside, v.peak
}

func (v *gateVolume) ReadAt(p []byte, off int64) (int, error) {
	v.pass(len(p))
	clear(p)
	return len(p), nil
}

func (v *gateVolume) WriteAt(p []byte, off int64) (int, error) { v.pass(len(p)); return len(p), nil }
func (v *gateVolume) Flush() error                             { return nil }
func (v *gateVolume) Discard(off, length int64) error          { return nil }
func (v *gateVolume) Size() int64                              { return v.size }
func (v *gateVolume) SectorSize() int                          { return 512 }

// TestServerBudgetSharedByConnections: many connections, each of which may hold half the
// server's budget, never have more than the server's budget in flight together.
func TestServerBudgetSharedByConnections(t *testing.T) {
	const (
		serverBytes = 1 << 20
		connBytes   = serverBytes / 2
		reqSize     = 64 << 10
		conns       = 4
		perConn     = 2 * connBytes / reqSize // twice what a connection may hold
	)
	vol := newGateVolume(4 << 20)
	ts := startServerWith(t, newExports("disk1", vol), withBudget(serverBytes, connBytes))
	var wg sync.WaitGroup
	for i := range conns {
		c := dialTest(t, "unix", ts.sock, "disk1")
		for j := range perConn {
			wg.Go(func() {
				buf := make([]byte, reqSize)
				var err error
				if i%2 == 0 {
					_, err = c.ReadAt(buf, int64(j*reqSize))
				} else {
					_, err = c.WriteAt(buf, int64(j*reqSize))
				}
				if err != nil {
					t.Errorf("connection %d request %d: %v", i, j, err)
				}
			})
		}
	}
	// A client's Close waits for its requests, so a failure must not leave them at the gate.
	openGate := sync.OnceFunc(func() { close(vol.open) })
	t.Cleanup(openGate)
	// Nothing leaves the volume until the gate opens, so what is inside only grows: either it
	// passes the bound, or it reaches it with the remaining readers queued for the budget.
	waitUntil(t, "the server's budget is used up", func() bool {
		inside, _ := vol.load()
		avail, queue := ts.budget.state()
		return inside > serverBytes || inside == serverBytes && avail == 0 && len(queue) > 0
	})
	if _, peak := vol.load(); peak != serverBytes {
		t.Errorf("%d payload bytes in the volume at once, want the server's budget %d", peak, serverBytes)
	}
	openGate()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	finish(t, "the requests", done)
	if _, peak := vol.load(); peak > serverBytes {
		t.Errorf("%d payload bytes in the volume at once, more than the server's budget %d", peak, serverBytes)
	}
}

// TestServerStuckClient: a client that sends reads and never reads the replies holds its
// connection's share of the budget, and another client still reads and writes as much as the
// rest of it in one request.
func TestServerStuckClient(t *testing.T) {
	const (
		serverBytes = 4 << 20
		connBytes   = serverBytes / 2
		reqSize     = 1 << 20
	)
	vol := newMemVolume(8<<20, 512)
	ts := startServerWith(t, newExports("disk1", vol), withBudget(serverBytes, connBytes))
	stuck := dialRaw(t, ts.sock)
	stuck.enterGo("disk1")
	// Far more reply data than a socket buffer holds, so the server's writer blocks.
	for i := range 16 {
		stuck.request(0, cmdRead, uint64(i), 0, reqSize, nil)
	}
	waitUntil(t, "the stuck client holds its share", func() bool {
		h := ts.connHeld()
		return len(h) == 1 && h[0] >= connBytes
	})

	c := dialTest(t, "unix", ts.sock, "disk1")
	// The client's Close waits for its requests, which may be waiting for the stuck client's
	// budget if the test fails: let that go first.
	t.Cleanup(func() { stuck.nc.Close() })
	done := make(chan struct{})
	want := pattern(serverBytes-connBytes, 9)
	go func() {
		defer close(done)
		if _, err := c.WriteAt(want, 0); err != nil {
			t.Errorf("WriteAt: %v", err)
			return
		}
		got := make([]byte, len(want))
		if _, err := c.ReadAt(got, 0); err != nil {
			t.Errorf("ReadAt: %v", err)
		} else if !bytes.Equal(got, want) {
			t.Error("read back different data")
		}
	}()
	finish(t, "the other client's requests", done)
	for _, h := range ts.connHeld() {
		if h > connBytes {
			t.Errorf("a connection holds %d bytes, more than its share %d", h, connBytes)
		}
	}
	stuck.nc.Close()
}
