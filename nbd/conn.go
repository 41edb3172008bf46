package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"hast/replicate"
)

// conn is one client connection: the handshake, then the transmission phase.
type conn struct {
	srv    *Server
	policy *Policy
	nc     net.Conn // the socket, or the TLS connection over it once secured
	br     *bufio.Reader
	// secured: the client upgraded with NBD_OPT_STARTTLS; tlsw then gathers replies into full
	// TLS records, each Write being a record and a system call of its own. Set by the reader
	// before the writer starts.
	secured bool
	tlsw    *bufio.Writer
	log     zerolog.Logger
	done    chan struct{} // closed when the connection is fully gone

	mu       sync.Mutex
	ex       *export // set once transmission starts
	stopping bool

	// Transmission phase. work is unbuffered so that a send succeeds only when a worker is idle;
	// otherwise the reader starts a new worker (up to maxInFlight) or waits for one.
	work     chan *request
	replies  chan *request
	nworkers int // touched by the reader only
	workers  sync.WaitGroup
	budget   connBudget
}

func newConn(s *Server, nc net.Conn, p *Policy) *conn {
	remote := "unknown"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	c := &conn{
		srv:    s,
		policy: p,
		nc:     nc,
		br:     bufio.NewReaderSize(nc, 64<<10),
		log:    s.log.With().Str("remote", remote).Logger(),
		done:   make(chan struct{}),
	}
	c.budget.init(s.budget, s.connBytes)
	return c
}

// exportedAs reports whether the connection is in transmission with export name.
func (c *conn) exportedAs(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ex != nil && c.ex.name == name
}

func (c *conn) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

// shutdown stops the connection: the reader stops taking requests, requests in flight finish
// and their replies are sent (within shutdownGrace), then the socket is closed.
func (c *conn) shutdown() {
	c.mu.Lock()
	already := c.stopping
	if !already {
		c.stopping = true
		// Under c.mu, so that armReplyDeadline cannot overwrite the grace with its own.
		now := time.Now()
		c.nc.SetReadDeadline(now)
		c.nc.SetWriteDeadline(now.Add(shutdownGrace))
	}
	c.mu.Unlock()
	if already {
		return
	}
	c.budget.close()
}

// errStalled marks a client given up on because its replies or its write payload did not move.
var errStalled = errors.New("client stalled")

// transfer runs step, one write of replies or one read of a write payload that resumes where
// the last one stopped, until it is done, under deadlines that setDeadline arms. It gives the
// client up (errStalled) when the transfer has taken replyTimeout, or when a window of
// stallTimeout moved nothing while another connection waits for payload budget: see budget.go.
func (c *conn) transfer(what string, setDeadline func(time.Time) error, step func() (int64, error)) error {
	start := time.Now()
	for {
		window := min(c.srv.stallTimeout, c.srv.replyTimeout-time.Since(start))
		c.armDeadline(setDeadline, time.Now().Add(window))
		n, err := step()
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || c.isStopping() {
			return err
		}
		switch {
		case time.Since(start) >= c.srv.replyTimeout:
			return fmt.Errorf("%w: %s not done in %v", errStalled, what, c.srv.replyTimeout)
		case n == 0 && c.budget.othersWait():
			return fmt.Errorf("%w: %s: nothing moved in %v while other clients wait for memory",
				errStalled, what, c.srv.stallTimeout)
		}
	}
}

// armDeadline sets a socket deadline with setDeadline unless the connection is shutting down:
// shutdown's deadline stays. Under c.mu, so that the two cannot interleave.
func (c *conn) armDeadline(setDeadline func(time.Time) error, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopping {
		setDeadline(t)
	}
}

// readPayload reads a write payload into buf.
func (c *conn) readPayload(buf []byte) error {
	done := 0
	err := c.transfer("write payload", c.nc.SetReadDeadline, func() (int64, error) {
		n, err := io.ReadFull(c.br, buf[done:])
		done += n
		return int64(n), err
	})
	// Between requests the client may stay idle as long as it likes.
	c.armDeadline(c.nc.SetReadDeadline, time.Time{})
	return err
}

// send writes a batch of replies.
func (c *conn) send(out net.Buffers) error {
	if c.secured {
		// stallWriter bounds the writes under TLS.
		for _, b := range out {
			if _, err := c.tlsw.Write(b); err != nil {
				return err
			}
		}
		return c.tlsw.Flush()
	}
	return c.transfer("replies", c.nc.SetWriteDeadline, func() (int64, error) { return out.WriteTo(c.nc) })
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer func() { c.nc.Close() }()
	c.log.Debug().Msg("nbd: connection opened")
	ex, err := c.handshake()
	if err != nil {
		switch {
		case c.isStopping():
			c.log.Debug().Err(err).Msg("nbd: connection closed during handshake by shutdown")
		case errors.Is(err, errHandshake):
			c.log.Info().Err(err).Msg("nbd: handshake ended")
		default:
			c.log.Debug().Err(err).Msg("nbd: handshake failed")
		}
		return
	}
	c.mu.Lock()
	c.ex = ex
	stopping := c.stopping
	c.mu.Unlock()
	if stopping {
		return
	}
	c.log = c.log.With().Str("export", ex.name).Logger()
	c.log.Debug().Int64("size", ex.size).Int64("sector", ex.sector).Msg("nbd: transmission started")

	c.work = make(chan *request)
	c.replies = make(chan *request, maxInFlight)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()

	err = c.readLoop(ex)

	close(c.work)
	c.workers.Wait()
	close(c.replies)
	<-writerDone
	switch {
	case err == nil:
		c.log.Debug().Msg("nbd: connection closed")
	case errors.Is(err, errProtocol):
		c.log.Warn().Err(err).Msg("nbd: connection closed on protocol violation")
	case errors.Is(err, errStalled):
		c.log.Warn().Err(err).Msg("nbd: disconnecting a client that stopped sending its write payload")
	default:
		c.log.Debug().Err(err).Msg("nbd: connection lost")
	}
}

// errProtocol marks a request so malformed that the connection is closed.
var errProtocol = errors.New("protocol violation")

// request is one NBD request from header to reply; pooled.
type request struct {
	typ    uint16
	flags  uint16
	cookie uint64
	off    uint64
	length uint32

	buf   []byte // write payload, then read data
	held  charge // budget held by buf
	errno Errno
	fatal bool // close the connection after replying
	hdr   [simpleReplySize]byte
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

// readLoop parses requests until DISC (returns nil), shutdown (nil), or an error.
func (c *conn) readLoop(ex *export) error {
	var h [requestSize]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if c.isStopping() {
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != magicRequest {
			return fmt.Errorf("%w: bad request magic %#x", errProtocol, m)
		}
		r := requestPool.Get().(*request)
		*r = request{
			flags:  binary.BigEndian.Uint16(h[4:]),
			typ:    binary.BigEndian.Uint16(h[6:]),
			cookie: binary.BigEndian.Uint64(h[8:]),
			off:    binary.BigEndian.Uint64(h[16:]),
			length: binary.BigEndian.Uint32(h[24:]),
		}
		if r.typ == cmdDisc {
			requestPool.Put(r)
			return nil
		}
		if r.typ == cmdWrite && r.length > MaxRequest {
			// Reading the payload to skip it would let a client stream gigabytes at us.
			err := fmt.Errorf("%w: write of %d bytes (limit %d)", errProtocol, r.length, MaxRequest)
			requestPool.Put(r)
			return err
		}
		r.errno = validate(ex, r)
		if r.errno != 0 {
			c.log.Debug().Str("cmd", cmdName(r.typ)).Uint16("flags", r.flags).Uint64("offset", r.off).
				Uint32("length", r.length).Stringer("errno", r.errno).Msg("nbd: request refused")
			if r.typ == cmdWrite {
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					requestPool.Put(r)
					return c.readErr("skip write payload", err)
				}
			}
			c.replies <- r
			continue
		}
		if r.length == 0 && r.typ != cmdFlush {
			// Valid but empty (the spec does not forbid it): nothing for the volume to do.
			c.replies <- r
			continue
		}
		switch r.typ {
		case cmdWrite:
			if !c.charge(r) {
				requestPool.Put(r)
				return nil
			}
			r.buf = getBuf(int(r.length))
			if err := c.readPayload(r.buf); err != nil {
				c.release(r)
				return c.readErr("read write payload", err)
			}
		case cmdRead:
			// The buffer is taken by the worker; the budget here keeps the reader from
			// accepting more data to produce than the limit.
			if !c.charge(r) {
				requestPool.Put(r)
				return nil
			}
		}
		c.dispatch(r)
	}
}

// charge takes budget for r's payload buffer, waiting for room; false means the connection is
// stopping. What is charged is the buffer getBuf will return, size class and all, so that the
// bound is on memory rather than on payload.
func (c *conn) charge(r *request) bool {
	var ok bool
	r.held, ok = c.budget.acquire(int64(bufCap(int(r.length))))
	return ok
}

func (c *conn) readErr(what string, err error) error {
	if c.isStopping() {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// validate checks a request against the export; it returns the error to reply with, or 0.
// Nothing that fails here reaches the volume.
func validate(ex *export, r *request) Errno {
	allowed := uint16(cmdFlagFUA)
	if r.typ == cmdWriteZeroes {
		allowed |= cmdFlagNoHole
	}
	if r.flags&^allowed != 0 {
		return EINVAL
	}
	switch r.typ {
	case cmdFlush:
		// Offset and length are reserved (zero). A flush covers no range, so stray values
		// are tolerated rather than failing a flush over them.
		return 0
	case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes:
	default:
		return EINVAL
	}
	if r.typ == cmdRead && r.length > MaxRequest {
		return EINVAL
	}
	if !ex.anyAlign && (r.off%uint64(ex.sector) != 0 || uint64(r.length)%uint64(ex.sector) != 0) {
		return EINVAL
	}
	if r.off > uint64(ex.size) || uint64(r.length) > uint64(ex.size)-r.off {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	return 0
}

// dispatch hands r to an idle worker, a new one, or waits for one when maxInFlight are busy.
func (c *conn) dispatch(r *request) {
	select {
	case c.work <- r:
		return
	default:
	}
	if c.nworkers < maxInFlight {
		c.nworkers++
		c.workers.Add(1)
		go c.worker(r)
		return
	}
	c.work <- r
}

func (c *conn) worker(r *request) {
	defer c.workers.Done()
	for {
		c.execute(r)
		c.replies <- r
		var ok bool
		if r, ok = <-c.work; !ok {
			return
		}
	}
}

// execute runs a validated request against the volume and records the result in r.
func (c *conn) execute(r *request) {
	ex := c.ex
	vol := ex.vol
	off, length := int64(r.off), int64(r.length)
	var err error
	switch r.typ {
	case cmdRead:
		r.buf = getBuf(int(r.length))
		err = ex.read(r.buf, off)
	case cmdWrite:
		err = ex.write(off, length, r.buf)
		// The payload is done with; give the memory back before the reply waits in line.
		c.release(r)
	case cmdFlush:
		err = vol.Flush()
	case cmdTrim:
		err = ex.trim(off, length)
	case cmdWriteZeroes:
		err = ex.write(off, length, nil)
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && r.typ != cmdRead && r.typ != cmdFlush {
		err = vol.Flush()
	}
	if err != nil {
		r.errno, r.fatal = errnoFor(err)
		lvl := c.log.Warn()
		if r.errno == EINVAL || r.errno == ESHUTDOWN {
			lvl = c.log.Debug()
		}
		lvl.Err(err).Str("cmd", cmdName(r.typ)).Uint64("offset", r.off).Uint32("length", r.length).
			Stringer("errno", r.errno).Msg("nbd: request failed")
		if r.typ == cmdRead {
			c.release(r) // an error reply carries no data
		}
	}
}

// errnoFor maps a volume error onto the protocol; fatal means the connection must close.
func errnoFor(err error) (errno Errno, fatal bool) {
	switch {
	case errors.Is(err, replicate.ErrNotPrimary):
		return ESHUTDOWN, true
	case errors.Is(err, replicate.ErrRange):
		return EINVAL, false
	}
	return EIO, false
}

// release returns r's buffer and budget.
func (c *conn) release(r *request) {
	if r.buf != nil {
		putBuf(r.buf)
		r.buf = nil
	}
	if r.held.n != 0 {
		c.budget.release(r.held)
		r.held = charge{}
	}
}

// writeLoop sends replies, batching every reply that is ready into one writev.
func (c *conn) writeLoop() {
	const maxBatch = 64
	batch := make([]*request, 0, maxBatch)
	bufs := make(net.Buffers, 0, 2*maxBatch)
	failed := false
	for r := range c.replies {
		batch = append(batch[:0], r)
	more:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-c.replies:
				if !ok {
					break more
				}
				batch = append(batch, r)
			default:
				break more
			}
		}
		if !failed {
			bufs = bufs[:0]
			for _, r := range batch {
				binary.BigEndian.PutUint32(r.hdr[0:], magicSimpleReply)
				binary.BigEndian.PutUint32(r.hdr[4:], uint32(r.errno))
				binary.BigEndian.PutUint64(r.hdr[8:], r.cookie)
				bufs = append(bufs, r.hdr[:])
				if r.typ == cmdRead && r.errno == 0 {
					bufs = append(bufs, r.buf)
				}
			}
			if err := c.send(bufs); err != nil {
				// Keep draining so workers and the reader never block on us; the replies are
				// dropped, which is all a broken connection allows.
				failed = true
				switch {
				case errors.Is(err, errStalled):
					c.log.Warn().Err(err).Msg("nbd: disconnecting a client that does not read its replies")
				case !c.isStopping():
					c.log.Debug().Err(err).Msg("nbd: send replies")
				}
				c.shutdown()
			}
			clear(bufs)
		}
		for i, r := range batch {
			if r.fatal {
				c.shutdown()
			}
			c.release(r)
			requestPool.Put(r)
			batch[i] = nil
		}
	}
}
