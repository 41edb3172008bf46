package nbd

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"hast/internal/testsupport"
)

func (b *connBudget) heldBytes() int64 {
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

// withBudget makes a server's budget serverBytes, reserveBytes of them kept for connections
// that hold nothing, and each connection may hold connBytes.
func withBudget(serverBytes, reserveBytes, connBytes int64) func(*Server) {
	return func(s *Server) {
		s.budget = newServerBudget(serverBytes, reserveBytes)
		s.connBytes = connBytes
	}
}

// TestBudgetStuckConnection: a connection whose requests never complete (a client that stopped
// reading its replies) holds its own limit and no more, and the others go on with the rest.
func TestBudgetStuckConnection(t *testing.T) {
	shared := newServerBudget(10, 0)
	var stuck, other connBudget
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
	testsupport.WaitUntil(t, "the stuck connection holds its limit", func() bool { return stuck.heldBytes() == 5 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := int64(1); n <= 5; n++ {
			held, ok := other.acquire(n)
			if !ok || held.n != n {
				t.Errorf("acquire(%d) = %d, %v", n, held.n, ok)
				return
			}
			other.release(held)
		}
	}()
	testsupport.Receive(t, "the other connection's requests", done)
	if h := stuck.heldBytes(); h != 5 {
		t.Errorf("the stuck connection holds %d bytes, want its limit 5", h)
	}
	stuck.close()
	testsupport.Receive(t, "the stuck connection's reader after close", stuckDone)
}

// TestBudgetOversized: a request larger than a connection's limit is charged the limit, so it
// waits until its connection holds nothing and then runs alone instead of waiting for ever.
func TestBudgetOversized(t *testing.T) {
	shared := newServerBudget(10, 0)
	var b connBudget
	b.init(shared, 4)
	small, ok := b.acquire(1)
	if !ok || small.n != 1 {
		t.Fatalf("acquire(1) = %d, %v", small.n, ok)
	}
	type res struct {
		held charge
		ok   bool
	}
	got := make(chan res, 1)
	go func() {
		held, ok := b.acquire(9)
		got <- res{held, ok}
	}()
	b.release(small)
	r := <-got
	if !r.ok || r.held.n != 4 {
		t.Fatalf("acquire(9) with a limit of 4 = %d, %v; want 4, true", r.held.n, r.ok)
	}
	if avail, _ := shared.main.State(); avail != 6 {
		t.Errorf("shared budget has %d bytes left, want 6", avail)
	}
	b.release(r.held)
}

// TestBudgetClose: closing a connection's budget ends a wait for the connection's limit and a
// wait in the server's line, and leaves what is held to be released.
func TestBudgetClose(t *testing.T) {
	shared := newServerBudget(10, 0)
	var full, queued, filler connBudget
	full.init(shared, 5)
	queued.init(shared, 5)
	filler.init(shared, 5)
	for _, b := range []*connBudget{&full, &filler} {
		if _, ok := b.acquire(5); !ok {
			t.Fatal("acquire of a free budget failed")
		}
	}
	full5, filler5 := charge{5, shared.main}, charge{5, shared.main}
	results := make(chan bool, 2)
	go func() { _, ok := full.acquire(1); results <- ok }()   // waits for its own limit
	go func() { _, ok := queued.acquire(3); results <- ok }() // waits in the server's line
	testsupport.WaitUntil(t, "a wait in the server's line", func() bool { _, q := shared.main.State(); return len(q) == 1 })
	full.close()
	queued.close()
	for range 2 {
		if <-results {
			t.Fatal("acquire on a closed budget returned true")
		}
	}
	if avail, q := shared.main.State(); avail != 0 || len(q) != 0 {
		t.Errorf("after close: %d bytes available and %v waiting, want 0 and none", avail, q)
	}
	if h := queued.heldBytes(); h != 0 {
		t.Errorf("the closed waiter holds %d bytes, want 0", h)
	}
	full.release(full5)
	filler.release(filler5)
	if avail, _ := shared.main.State(); avail != 10 {
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
		serverBytes  = 1 << 20
		reserveBytes = serverBytes / 4
		connBytes    = serverBytes / 2
		reqSize      = 64 << 10
		conns        = 4
		perConn      = 2 * connBytes / reqSize // twice what a connection may hold
	)
	vol := newGateVolume(4 << 20)
	ts := startServerWith(t, newExports("disk1", vol), withBudget(serverBytes, reserveBytes, connBytes))
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
	// passes the bound, or every byte charged is inside and the rest wait for the budget.
	// Connections that hold something only take from the part not reserved, so some of the
	// reserve may stay unused.
	testsupport.WaitUntil(t, "the server's budget is used up", func() bool {
		inside, _ := vol.load()
		avail, queue := ts.budget.main.State()
		reserved, _ := ts.budget.reserve.State()
		return inside > serverBytes || inside == serverBytes-reserved && avail == 0 && len(queue) > 0
	})
	if _, peak := vol.load(); peak > serverBytes {
		t.Errorf("%d payload bytes in the volume at once, more than the server's budget %d", peak, serverBytes)
	}
	openGate()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	testsupport.Receive(t, "the requests", done)
	if _, peak := vol.load(); peak > serverBytes {
		t.Errorf("%d payload bytes in the volume at once, more than the server's budget %d", peak, serverBytes)
	}
}

// TestServerStuckClient: a client that sends reads and never reads the replies holds its
// connection's share of the budget, and another client still reads and writes as much as the
// reserve in one request.
func TestServerStuckClient(t *testing.T) {
	const (
		serverBytes  = 4 << 20
		reserveBytes = serverBytes / 2
		connBytes    = serverBytes - reserveBytes
		reqSize      = 1 << 20
	)
	vol := newMemVolume(8<<20, 512)
	ts := startServerWith(t, newExports("disk1", vol), withBudget(serverBytes, reserveBytes, connBytes))
	stuck := stuckReader(t, ts.sock, 16, reqSize)
	testsupport.WaitUntil(t, "the stuck client holds its share", func() bool {
		h := ts.connHeld()
		return len(h) == 1 && h[0] >= connBytes
	})

	c := dialTest(t, "unix", ts.sock, "disk1")
	// The client's Close waits for its requests, which may be waiting for the stuck client's
	// budget if the test fails: let that go first.
	t.Cleanup(func() { stuck.nc.Close() })
	testsupport.Receive(t, "the other client's requests", writeReadBack(t, c, pattern(reserveBytes, 9)))
	for _, h := range ts.connHeld() {
		if h > connBytes {
			t.Errorf("a connection holds %d bytes, more than its share %d", h, connBytes)
		}
	}
	stuck.nc.Close()
}

// TestServerClientsThatStopReadingLeaveTheReserve is issue 11's head-of-line stall with the
// server's real budget: two clients pipeline 64 reads of 8 MiB and never read a reply. Both
// hold all they can get, and a third client's small read is still served at once, from the
// reserve, rather than when the first two are disconnected.
func TestServerClientsThatStopReadingLeaveTheReserve(t *testing.T) {
	vol := newMemVolume(8<<20, 512)
	ts := startServerWith(t, newExports("disk1", vol), func(s *Server) {
		// Disconnecting the stuck clients would serve the third one too: not what is tested.
		s.stallTimeout = time.Hour
	})
	stuckClients(t, 2, func() *rawConn { return stuckReader(t, ts.sock, 64, 8<<20) })
	testsupport.WaitUntil(t, "the stuck clients hold all they can", func() bool {
		avail, queue := ts.budget.main.State()
		return avail == 0 && len(queue) > 0
	})
	// A liveness bound, far above the time a read takes and far below replyTimeout.
	smallReadWithin(t, ts, 10*time.Second)
}

// stuckClients opens n connections with open, closed when the test ends.
func stuckClients(t *testing.T, n int, open func() *rawConn) {
	var stuck []*rawConn
	for range n {
		stuck = append(stuck, open())
	}
	// Before the server's Close, which would otherwise wait out shutdownGrace for them.
	t.Cleanup(func() {
		for _, s := range stuck {
			s.nc.Close()
		}
	})
}

// smallReadWithin reads 4 KiB of disk1 on a new connection and fails the test unless the
// read is served within bound.
func smallReadWithin(t *testing.T, ts *testServer, bound time.Duration) {
	t.Helper()
	c := dialTest(t, "unix", ts.sock, "disk1")
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ReadAt: %v", err)
		}
	case <-time.After(bound):
		t.Fatalf("a 4 KiB read waited %v behind clients that stalled", bound)
	}
}

// TestServerDropsStalledClients: clients that stop reading their replies, or stop in the
// middle of a write payload, hold the whole budget, reserve included. Once they have moved
// nothing for stallTimeout while a third client waits for budget, they are disconnected (as
// many as it takes), long before replyTimeout, and the third client is served.
func TestServerDropsStalledClients(t *testing.T) {
	const (
		serverBytes  = 2 << 20
		reserveBytes = 1 << 20
		connBytes    = 1 << 20
	)
	pki := newTestPKI(t)
	for _, tt := range []struct {
		name  string
		stuck func(t *testing.T, ts *testServer) *rawConn
	}{
		{"replies not read", func(t *testing.T, ts *testServer) *rawConn { return stuckReader(t, ts.sock, 16, 1<<20) }},
		{"write payload not sent", func(t *testing.T, ts *testServer) *rawConn {
			c := dialRaw(t, ts.sock)
			c.enterGo("disk1")
			c.request(0, cmdWrite, 1, 0, 1<<20, make([]byte, 1000))
			return c
		}},
		// Under TLS a write that times out cannot be resumed: the bound is below TLS. A unix
		// socket, whose buffers are smaller than one reply, keeps the client stuck from
		// the first reply on.
		{"replies not read over TLS", func(t *testing.T, ts *testServer) *rawConn {
			c := dialRawNet(t, "unix", servePolicy(t, ts.Server, "unix", Policy{TLS: pki.serverConfig(false)}))
			c.greet(3)
			c.startTLS(pki.clientConfig(false))
			c.optGo("disk1")
			for i := range 16 {
				c.request(0, cmdRead, uint64(i), 0, 1<<20, nil)
			}
			return c
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vol := newMemVolume(8<<20, 512)
			ts := startServerWith(t, newExports("disk1", vol), func(s *Server) {
				withBudget(serverBytes, reserveBytes, connBytes)(s)
				s.stallTimeout = 100 * time.Millisecond
			})
			stuckClients(t, 2, func() *rawConn { return tt.stuck(t, ts) })
			testsupport.WaitUntil(t, "the stuck clients hold the whole budget", func() bool {
				main, _ := ts.budget.main.State()
				reserve, _ := ts.budget.reserve.State()
				return main == 0 && reserve == 0
			})
			// A liveness bound, far below replyTimeout.
			smallReadWithin(t, ts, 20*time.Second)
		})
	}
}

// TestServerDropsClientsThatStopReading: two clients that send reads and never read the replies
// hold the whole budget between them; once their replies have waited replyTimeout they are
// disconnected, their budget comes back, and a third client is served.
func TestServerDropsClientsThatStopReading(t *testing.T) {
	const (
		serverBytes = 4 << 20
		connBytes   = serverBytes / 2
		reqSize     = 1 << 20
	)
	vol := newMemVolume(8<<20, 512)
	ts := startServerWith(t, newExports("disk1", vol), func(s *Server) {
		withBudget(serverBytes, 0, connBytes)(s)
		s.replyTimeout = 200 * time.Millisecond
		s.stallTimeout = time.Hour
	})
	var stuck []*rawConn
	for range 2 {
		stuck = append(stuck, stuckReader(t, ts.sock, 16, reqSize))
	}
	c := dialTest(t, "unix", ts.sock, "disk1")
	// The client's Close waits for its requests, which wait for the stuck clients' budget if
	// the test fails: let them go first.
	t.Cleanup(func() {
		for _, s := range stuck {
			s.nc.Close()
		}
	})
	// The whole budget: it needs both stuck clients gone.
	testsupport.Receive(t, "the third client's requests", writeReadBack(t, c, pattern(serverBytes, 7)))
	testsupport.WaitUntil(t, "the stuck clients to be disconnected", func() bool { return len(ts.connHeld()) == 1 })
}

// writeReadBack writes want at offset 0 through c and reads it back, in a goroutine; the
// returned channel is closed when it is done (failures are reported on t).
func writeReadBack(t *testing.T, c *Client, want []byte) <-chan struct{} {
	done := make(chan struct{})
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
	return done
}

// stuckReader connects to disk1 and sends n reads of reqSize whose replies it never reads: far
// more reply data than a socket buffer holds, so the server's writer blocks.
func stuckReader(t *testing.T, sock string, n int, reqSize uint32) *rawConn {
	c := dialRaw(t, sock)
	c.enterGo("disk1")
	for i := range n {
		c.request(0, cmdRead, uint64(i), 0, reqSize, nil)
	}
	return c
}
