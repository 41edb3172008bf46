package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Client errors.
var (
	// ErrClosed is returned by requests made after Close, or in flight when the client closed.
	ErrClosed = errors.New("nbd: client closed")
	// ErrUnknownExport is returned by Dial when the server does not export the name asked for.
	ErrUnknownExport = errors.New("nbd: unknown export")
)

// Client is an NBD client for one export. Its methods are safe for concurrent use; concurrent
// requests are pipelined on the one connection and matched to replies by handle, and requests
// queued while another goroutine is sending go out together in one writev.
type Client struct {
	nc       net.Conn
	br       *bufio.Reader // reply reader; owned by readLoop after Dial
	size     int64
	flags    uint16
	minBlock int64
	maxBlock int64

	mu         sync.Mutex
	cond       sync.Cond // signals: sending finished, pending became empty, failure
	pending    map[uint64]*call
	next       uint64
	queue      []*call
	spare      []*call
	bufs       net.Buffers // used by the sending goroutine only
	sending    bool
	closing    bool
	err        error // first fatal error; every later request fails with it
	readerDone chan struct{}
}

// call is one request waiting for its reply; pooled.
type call struct {
	hdr  [requestSize]byte
	data []byte // write payload, or the destination of read data
	read bool
	done chan error
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan error, 1)} }}

// Dial connects to an NBD server, negotiates fixed newstyle and enters transmission with
// NBD_OPT_GO for export. ctx bounds the dial and the handshake.
func Dial(ctx context.Context, network, addr, export string) (*Client, error) {
	return DialTLS(ctx, network, addr, export, nil)
}

// DialTLS is Dial that upgrades the connection with NBD_OPT_STARTTLS and cfg before asking for
// the export; a nil cfg is Dial.
func DialTLS(ctx context.Context, network, addr, export string, cfg *tls.Config) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	c, err := newClient(ctx, nc, export, cfg)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nbd: handshake with %s for export %q: %w", addr, export, err)
	}
	return c, nil
}

func newClient(ctx context.Context, nc net.Conn, export string, cfg *tls.Config) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	c := &Client{
		nc:         nc,
		br:         bufio.NewReaderSize(nc, 64<<10),
		pending:    make(map[uint64]*call),
		readerDone: make(chan struct{}),
	}
	c.cond.L = &c.mu
	err := c.handshake(ctx, export, cfg)
	if !stop() {
		// The context ended while we negotiated; its deadline may be set on nc by now.
		return nil, errors.Join(err, ctx.Err())
	}
	if err != nil {
		return nil, err
	}
	c.nc.SetDeadline(time.Time{})
	go c.readLoop()
	return c, nil
}

func (c *Client) handshake(ctx context.Context, export string, cfg *tls.Config) error {
	if len(export) > maxNameLen {
		return fmt.Errorf("export name longer than %d bytes", maxNameLen)
	}
	var greet [18]byte
	if _, err := io.ReadFull(c.br, greet[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(greet[0:]); m != magicNBD {
		return fmt.Errorf("not an NBD server (magic %#x)", m)
	}
	if m := binary.BigEndian.Uint64(greet[8:]); m != magicOpt {
		return fmt.Errorf("server does not speak newstyle negotiation (magic %#x)", m)
	}
	serverFlags := binary.BigEndian.Uint16(greet[16:])
	if serverFlags&flagFixedNewstyle == 0 {
		return errors.New("server does not speak fixed newstyle negotiation")
	}
	clientFlags := uint32(flagCFixedNewstyle)
	if serverFlags&flagNoZeroes != 0 {
		clientFlags |= flagCNoZeroes
	}

	// Client flags and the first option go out in one write.
	msg := make([]byte, 0, 4+2*optHeaderSize+4+len(export)+4)
	msg = binary.BigEndian.AppendUint32(msg, clientFlags)
	if cfg != nil {
		if err := c.startTLS(ctx, msg, cfg); err != nil {
			return err
		}
		msg = msg[:0]
	}
	msg = binary.BigEndian.AppendUint64(msg, magicOpt)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(export)+2+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	msg = binary.BigEndian.AppendUint16(msg, 1)
	msg = binary.BigEndian.AppendUint16(msg, infoBlockSize)
	if _, err := c.nc.Write(msg); err != nil {
		return fmt.Errorf("send go: %w", err)
	}

	gotExport := false
	for {
		typ, data, err := c.optReply(optGo)
		if err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if !gotExport {
				return errors.New("server sent no export information")
			}
			if c.flags&flagHasFlags == 0 {
				return fmt.Errorf("transmission flags %#x lack NBD_FLAG_HAS_FLAGS", c.flags)
			}
			if c.minBlock == 0 {
				c.minBlock = 1
			}
			if c.maxBlock == 0 || c.maxBlock > MaxRequest {
				c.maxBlock = MaxRequest
			}
			// Chunks of large requests must stay aligned.
			c.maxBlock -= c.maxBlock % c.minBlock
			if c.maxBlock == 0 {
				return fmt.Errorf("unusable block sizes: minimum %d", c.minBlock)
			}
			return nil
		case typ == repInfo:
			if len(data) < 2 {
				return errors.New("short NBD_REP_INFO")
			}
			switch binary.BigEndian.Uint16(data) {
			case infoExport:
				if len(data) != 12 {
					return fmt.Errorf("NBD_INFO_EXPORT of %d bytes", len(data))
				}
				size := binary.BigEndian.Uint64(data[2:])
				if size > 1<<62 {
					return fmt.Errorf("export size %d out of range", size)
				}
				c.size = int64(size)
				c.flags = binary.BigEndian.Uint16(data[10:])
				gotExport = true
			case infoBlockSize:
				if len(data) != 14 {
					return fmt.Errorf("NBD_INFO_BLOCK_SIZE of %d bytes", len(data))
				}
				c.minBlock = int64(binary.BigEndian.Uint32(data[2:]))
				c.maxBlock = int64(binary.BigEndian.Uint32(data[10:]))
			}
		case typ&repFlagError != 0:
			if typ == repErrUnknown {
				return fmt.Errorf("%w: %s", ErrUnknownExport, data)
			}
			return fmt.Errorf("server refused NBD_OPT_GO with %s: %s", repName(typ), data)
		default:
			return fmt.Errorf("unexpected option reply type %d", typ)
		}
	}
}

// startTLS sends pre (client flags, when they have not gone yet) and NBD_OPT_STARTTLS, and
// upgrades the connection once the server agrees.
func (c *Client) startTLS(ctx context.Context, pre []byte, cfg *tls.Config) error {
	msg := binary.BigEndian.AppendUint64(pre, magicOpt)
	msg = binary.BigEndian.AppendUint32(msg, optStartTLS)
	msg = binary.BigEndian.AppendUint32(msg, 0)
	if _, err := c.nc.Write(msg); err != nil {
		return fmt.Errorf("send starttls: %w", err)
	}
	typ, data, err := c.optReply(optStartTLS)
	if err != nil {
		return err
	}
	if typ != repAck {
		return fmt.Errorf("server refused NBD_OPT_STARTTLS with %s: %s", repName(typ), data)
	}
	tc := tls.Client(c.nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc = tc
	c.br = bufio.NewReaderSize(tc, 64<<10)
	return nil
}

// optReply reads one reply to option opt.
func (c *Client) optReply(opt uint32) (typ uint32, data []byte, err error) {
	var h [optReplySize]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("read option reply: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		return 0, nil, fmt.Errorf("bad option reply magic %#x", m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, fmt.Errorf("reply to option %d, expected %d", o, opt)
	}
	typ = binary.BigEndian.Uint32(h[12:])
	length := binary.BigEndian.Uint32(h[16:])
	if length > maxOptionLen {
		return 0, nil, fmt.Errorf("option reply of %d bytes", length)
	}
	data = make([]byte, length)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return 0, nil, fmt.Errorf("read option reply data: %w", err)
	}
	return typ, data, nil
}

func repName(t uint32) string {
	switch t {
	case repErrUnsup:
		return "NBD_REP_ERR_UNSUP"
	case repErrPolicy:
		return "NBD_REP_ERR_POLICY"
	case repErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case repErrPlatform:
		return "NBD_REP_ERR_PLATFORM"
	case repErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD"
	case repErrUnknown:
		return "NBD_REP_ERR_UNKNOWN"
	case repErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN"
	case repErrBlockSizeReqd:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case repErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	}
	return fmt.Sprintf("reply %#x", t)
}

// Size is the size of the export in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadAt reads len(p) bytes at off. Like io.ReaderAt it returns io.EOF when the range reaches
// past the end of the export.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at negative offset %d", off)
	}
	if off >= c.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > c.size-off {
		want = p[:c.size-off]
	}
	n := 0
	for n < len(want) {
		chunk := want[n:min(len(want), n+int(c.maxBlock))]
		o := off + int64(n)
		if err := c.roundTrip(cmdRead, 0, o, uint32(len(chunk)), chunk, true); err != nil {
			return n, fmt.Errorf("nbd: read %d bytes at %d: %w", len(chunk), o, err)
		}
		n += len(chunk)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	return c.write(p, off, 0)
}

// WriteFUA writes p at off and returns once the server reports the data durable (forced unit
// access).
func (c *Client) WriteFUA(p []byte, off int64) (int, error) {
	if c.flags&flagSendFUA == 0 {
		n, err := c.write(p, off, 0)
		if err != nil {
			return n, err
		}
		return n, c.Flush()
	}
	return c.write(p, off, cmdFlagFUA)
}

func (c *Client) write(p []byte, off int64, flags uint16) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: write at negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		chunk := p[n:min(len(p), n+int(c.maxBlock))]
		o := off + int64(n)
		if err := c.roundTrip(cmdWrite, flags, o, uint32(len(chunk)), chunk, false); err != nil {
			return n, fmt.Errorf("nbd: write %d bytes at %d: %w", len(chunk), o, err)
		}
		n += len(chunk)
	}
	return n, nil
}

// Flush makes every write the server has acknowledged durable.
func (c *Client) Flush() error {
	if c.flags&flagSendFlush == 0 {
		return nil // the server has no volatile cache to flush
	}
	if err := c.roundTrip(cmdFlush, 0, 0, 0, nil, false); err != nil {
		return fmt.Errorf("nbd: flush: %w", err)
	}
	return nil
}

// Trim tells the server the range is no longer needed. It is a hint: afterwards the range's
// contents are undefined until written again.
func (c *Client) Trim(off, length int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("nbd: trim of %d bytes at %d: negative", length, off)
	}
	if c.flags&flagSendTrim == 0 {
		return nil
	}
	// The length field is 32 bits; 1 GiB chunks stay aligned for any minimum block size.
	const maxTrim = 1 << 30
	for length > 0 {
		n := min(length, maxTrim)
		if err := c.roundTrip(cmdTrim, 0, off, uint32(n), nil, false); err != nil {
			return fmt.Errorf("nbd: trim %d bytes at %d: %w", n, off, err)
		}
		off += n
		length -= n
	}
	return nil
}

// Close waits for requests in flight, sends NBD_CMD_DISC and closes the connection. Requests
// made after Close fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		<-c.readerDone
		return nil
	}
	c.closing = true
	for len(c.pending) > 0 && c.err == nil {
		c.cond.Wait()
	}
	if c.err == nil {
		disc := &call{}
		encodeRequest(disc.hdr[:], cmdDisc, 0, 0, 0, 0)
		c.queue = append(c.queue, disc)
		c.sendLocked()
		for c.sending {
			c.cond.Wait()
		}
	}
	if c.err == nil {
		c.err = ErrClosed
	}
	c.mu.Unlock()
	err := c.nc.Close()
	<-c.readerDone
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("nbd: close: %w", err)
	}
	return nil
}

func encodeRequest(b []byte, typ, flags uint16, cookie uint64, off int64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], uint64(off))
	binary.BigEndian.PutUint32(b[24:], length)
}

// roundTrip sends one request and waits for its reply. For reads, data receives the payload.
func (c *Client) roundTrip(typ, flags uint16, off int64, length uint32, data []byte, read bool) error {
	cl := callPool.Get().(*call)
	cl.data = data
	cl.read = read

	c.mu.Lock()
	if c.err != nil || c.closing {
		err := c.err
		c.mu.Unlock()
		cl.data = nil
		callPool.Put(cl)
		if err == nil {
			err = ErrClosed
		}
		return err
	}
	cookie := c.next
	c.next++
	encodeRequest(cl.hdr[:], typ, flags, cookie, off, length)
	c.pending[cookie] = cl
	c.queue = append(c.queue, cl)
	c.sendLocked()
	c.mu.Unlock()

	err := <-cl.done
	cl.data = nil
	callPool.Put(cl)
	return err
}

// sendLocked sends the queue unless another goroutine is already doing so, in which case that
// goroutine picks up what was queued. Called and returns with c.mu held.
func (c *Client) sendLocked() {
	if c.sending {
		return
	}
	c.sending = true
	for len(c.queue) > 0 && c.err == nil {
		batch := c.queue
		c.queue = c.spare[:0]
		c.mu.Unlock()

		bufs := c.bufs[:0]
		for _, cl := range batch {
			bufs = append(bufs, cl.hdr[:])
			if !cl.read && len(cl.data) > 0 {
				bufs = append(bufs, cl.data)
			}
		}
		out := bufs
		_, err := out.WriteTo(c.nc)
		clear(bufs)
		c.bufs = bufs[:0]
		clear(batch)

		c.mu.Lock()
		c.spare = batch[:0]
		if err != nil {
			c.failLocked(fmt.Errorf("nbd: send: %w", err))
		}
	}
	c.sending = false
	c.cond.Broadcast()
}

// Abort closes the connection without waiting for the requests in flight, which fail. It is
// for a client that gives up on a server that stopped answering (Close would wait for it), as a
// client following a service address to another node does. Close may still be called.
func (c *Client) Abort() {
	c.nc.Close()
	<-c.readerDone
}

// failLocked makes the client unusable and fails every request waiting for a reply. The
// caller must make sure no goroutine is sending (their payloads belong to the waiters).
func (c *Client) failLocked(err error) {
	if c.err == nil {
		c.err = err
	}
	for cookie, cl := range c.pending {
		delete(c.pending, cookie)
		cl.done <- c.err
	}
	clear(c.queue)
	c.queue = c.queue[:0]
	c.cond.Broadcast()
}

// fail is failLocked for the reply reader: it first stops any send in progress.
func (c *Client) fail(err error) {
	c.nc.Close()
	c.mu.Lock()
	for c.sending {
		c.cond.Wait()
	}
	c.failLocked(err)
	c.mu.Unlock()
}

// readLoop receives replies and completes their requests.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	var h [simpleReplySize]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			c.fail(fmt.Errorf("nbd: receive reply: %w", err))
			return
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != magicSimpleReply {
			c.fail(fmt.Errorf("nbd: bad reply magic %#x", m))
			return
		}
		errno := binary.BigEndian.Uint32(h[4:])
		cookie := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		cl, ok := c.pending[cookie]
		delete(c.pending, cookie)
		empty := len(c.pending) == 0
		c.mu.Unlock()
		if !ok {
			c.fail(fmt.Errorf("nbd: reply for unknown handle %d", cookie))
			return
		}
		var err error
		if errno != 0 {
			err = Errno(errno)
		} else if cl.read {
			if _, rerr := io.ReadFull(c.br, cl.data); rerr != nil {
				err = fmt.Errorf("nbd: receive read data: %w", rerr)
				cl.done <- err
				c.fail(err)
				return
			}
		}
		cl.done <- err
		if empty {
			c.cond.Broadcast()
		}
	}
}
