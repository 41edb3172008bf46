package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// chunkSize is the most one read takes from a connection; each chunk is delayed as a unit.
	chunkSize = 64 << 10
	// queueChunks bounds what is held per direction (chunkSize × queueChunks = 8 MiB): a full
	// queue stops the reader, so TCP flow control pushes back on the sender as a slow link would.
	queueChunks = 128
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// Proxy is a TCP forwarder that holds every chunk it reads for a configured time before writing
// it on, separately per direction, keeping the byte order. It stands in for netem's delay, which
// this kernel lacks. Closing one side of a forwarded connection half-closes the other once the
// data before it has been delivered.
type Proxy struct {
	ln   net.Listener
	dial func(ctx context.Context) (net.Conn, error)

	toTarget, toClient atomic.Int64 // delays in nanoseconds

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	accept atomic.Uint64
}

// NewProxy forwards every connection accepted on ln to a connection made by dial, delaying each
// direction by d until SetDelay changes it. The proxy owns ln.
func NewProxy(ln net.Listener, dial func(ctx context.Context) (net.Conn, error), d time.Duration) *Proxy {
	p := &Proxy{ln: ln, dial: dial, conns: map[net.Conn]struct{}{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.SetDelay(d, d)
	p.wg.Add(1)
	go p.serve()
	return p
}

// Proxy starts a delaying proxy with its listening socket and its outgoing connections in
// namespace i: it listens on listen (e.g. IP[i]+":0") and forwards to target, which is dialled
// from that namespace, so the far end sees the connection come from namespace i's address.
// Close stops it, as does closing the Net.
func (n *Net) Proxy(i int, listen, target string, d time.Duration) (*Proxy, error) {
	ns := n.NS[i]
	ln, err := ListenIn(ns, "tcp", listen)
	if err != nil {
		return nil, err
	}
	p := NewProxy(ln, func(ctx context.Context) (net.Conn, error) {
		return DialIn(ctx, ns, "tcp", target)
	}, d)
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		p.Close()
		return nil, fmt.Errorf("faultnet: network %d is closed", n.N)
	}
	n.proxies = append(n.proxies, p)
	n.mu.Unlock()
	return p, nil
}

// Addr is the address the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay sets the delay of data going to the target and of data coming back to the client.
// It applies to chunks read from then on; chunks never overtake each other.
func (p *Proxy) SetDelay(toTarget, toClient time.Duration) {
	p.toTarget.Store(int64(toTarget))
	p.toClient.Store(int64(toClient))
}

// Accepted is the number of connections the proxy has accepted.
func (p *Proxy) Accepted() uint64 { return p.accept.Load() }

// Close stops accepting, closes every forwarded connection and waits for the proxy's goroutines.
func (p *Proxy) Close() error {
	p.cancel()
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accept.Add(1)
		if !p.track(c) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *Proxy) forward(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	target, err := p.dial(ctx)
	cancel()
	if err != nil {
		return
	}
	if !p.track(target) {
		target.Close()
		return
	}
	defer p.untrack(target)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(target, client, &p.toTarget) }()
	go func() { defer wg.Done(); p.pipe(client, target, &p.toClient) }()
	wg.Wait()
}

type chunk struct {
	buf *[]byte
	n   int
	due time.Time
}

// pipe copies src to dst, each chunk no earlier than its arrival plus the delay. A read error
// (EOF included) half-closes dst after the queued chunks; a write error closes both, which also
// stops the opposite direction.
func (p *Proxy) pipe(dst, src net.Conn, delay *atomic.Int64) {
	q := make(chan chunk, queueChunks)
	go func() {
		defer close(q)
		for {
			b := chunkPool.Get().(*[]byte)
			n, err := src.Read(*b)
			if n > 0 {
				q <- chunk{buf: b, n: n, due: time.Now().Add(time.Duration(delay.Load()))}
			} else {
				chunkPool.Put(b)
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for c := range q {
		if !failed {
			if wait := time.Until(c.due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-p.ctx.Done():
					t.Stop()
					failed = true
				}
			}
		}
		if !failed {
			if _, err := dst.Write((*c.buf)[:c.n]); err != nil {
				failed = true
			}
		}
		if failed {
			// Unblock the reader and the other direction; keep draining q so the reader ends.
			src.Close()
			dst.Close()
		}
		chunkPool.Put(c.buf)
	}
	if !failed {
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		} else {
			dst.Close()
		}
	}
}
