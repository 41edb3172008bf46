package replicate

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"hast/replicate/proto"
)

// ErrDisconnected fails the remote leg of requests when the link to the peer is down.
var ErrDisconnected = errors.New("replicate: not connected to the peer")

// rreq is one request to the peer. Its callbacks run on the link's goroutines and must not block.
type rreq struct {
	cmd     uint8
	seq     uint64
	off     int64
	length  int64
	data    []byte // WRITE payload, or READ destination of exactly length bytes
	memsync bool
	scratch []byte // compression output, reused

	received bool               // memsync early ack seen (receiver goroutine only)
	acked    atomic.Bool        // the owner counted this request's acknowledgement
	onRecv   func(*rreq)        // memsync early ack (optional)
	onDone   func(*rreq, error) // final reply, or link failure
	ctx      any                // owner's state
	wait     chan error         // used by do()
}

// link is the primary's pair of connections to the secondary: requests go out on C1 and replies
// come back on C2 (HAST's layout). One goroutine sends, draining everything queued into a single
// writev; one goroutine receives and completes requests by sequence number.
type link struct {
	out, in  net.Conn
	version  uint8
	features uint32 // extensions the peer advertised
	maxIO    int64  // largest request the peer accepts
	cfg      *Config
	log      zerolog.Logger

	mu      sync.Mutex
	queue   []*rreq
	spare   []*rreq
	kick    chan struct{}
	pending map[uint64]*rreq
	closed  bool
	err     error

	// sendMu is held by whoever writes to out: the send loop, or a submitter that found the
	// queue empty and the loop idle and sends its own requests (see submit). It guards enc.
	sendMu sync.Mutex
	enc    batchEncoder

	seq      atomic.Uint64
	lastRecv atomic.Int64 // unix nanos of the last reply
	lastSend atomic.Int64

	done   chan struct{}
	onDown func(*link, error)
	wg     sync.WaitGroup

	// Counters for status and tests.
	batches, frames atomic.Uint64
}

func newLink(out, in net.Conn, version uint8, cfg *Config, log zerolog.Logger, onDown func(*link, error)) *link {
	l := &link{
		out: out, in: in, version: version, cfg: cfg, log: log, maxIO: MaxIO,
		kick:    make(chan struct{}, 1),
		pending: make(map[uint64]*rreq),
		done:    make(chan struct{}),
		onDown:  onDown,
	}
	now := time.Now().UnixNano()
	l.lastRecv.Store(now)
	l.lastSend.Store(now)
	l.wg.Add(3)
	go l.sendLoop()
	go l.recvLoop()
	go l.watchdog()
	return l
}

// submit queues requests; they are sent in order. On a closed link they fail at once.
func (l *link) submit(rs ...*rreq) {
	l.mu.Lock()
	if l.closed {
		err := l.err
		l.mu.Unlock()
		for _, r := range rs {
			r.onDone(r, fmt.Errorf("%w: %v", ErrDisconnected, err))
		}
		return
	}
	for _, r := range rs {
		r.seq = l.seq.Add(1)
	}
	// With nothing queued and nobody sending, everything submitted earlier is on the wire:
	// sending here keeps the order and saves the hand-off to the send loop, which at queue
	// depth 1 is a thread wake-up per request. Under load the loop batches as before. Large
	// writes still go through the loop, so that copying them into the socket overlaps the
	// caller's local write.
	if len(l.queue) == 0 && small(rs) && l.sendMu.TryLock() {
		l.registerAndSend(rs)
		return
	}
	l.queue = append(l.queue, rs...)
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// directSendMax bounds the payload a submitter sends itself (see submit).
const directSendMax = 64 << 10

func small(rs []*rreq) bool {
	n := 0
	for _, r := range rs {
		n += len(r.data)
	}
	return n <= directSendMax
}

// registerAndSend records rs as awaiting replies and sends them. It is called holding l.mu and
// l.sendMu, with nothing queued ahead of rs, and releases both; a failed send fails the link.
func (l *link) registerAndSend(rs []*rreq) error {
	l.register(rs)
	l.mu.Unlock()
	err := l.sendLocked(rs)
	l.sendMu.Unlock()
	if err != nil {
		l.fail(fmt.Errorf("send: %w", err))
	}
	return err
}

// register records rs as awaiting replies; l.mu is held.
func (l *link) register(rs []*rreq) {
	if len(l.pending) == 0 {
		// The watchdog measures silence only while something is outstanding.
		l.lastRecv.Store(time.Now().UnixNano())
	}
	for _, r := range rs {
		l.pending[r.seq] = r
	}
}

// do sends one request and waits for its final reply.
func (l *link) do(r *rreq) error {
	r.wait = make(chan error, 1)
	r.onDone = func(r *rreq, err error) { r.wait <- err }
	l.submit(r)
	return <-r.wait
}

// fail closes the link once and fails everything queued or in flight.
func (l *link) fail(err error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.err = err
	queued := l.queue
	l.queue = nil
	pend := l.pending
	l.pending = make(map[uint64]*rreq)
	l.mu.Unlock()
	close(l.done)
	l.out.Close()
	l.in.Close()
	derr := fmt.Errorf("%w: %v", ErrDisconnected, err)
	for _, r := range queued {
		r.onDone(r, derr)
	}
	for _, r := range pend {
		r.onDone(r, derr)
	}
	if l.onDown != nil {
		l.onDown(l, err)
	}
}

// close shuts the link down and waits for its goroutines.
func (l *link) close() {
	l.fail(errors.New("link closed"))
	l.wg.Wait()
}

func (l *link) sendLoop() {
	defer l.wg.Done()
	ticker := time.NewTicker(l.cfg.Keepalive / 2)
	defer ticker.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-l.kick:
		case <-ticker.C:
			if time.Since(time.Unix(0, l.lastSend.Load())) >= l.cfg.Keepalive {
				l.sendMu.Lock()
				err := l.sendKeepalive()
				l.sendMu.Unlock()
				if err != nil {
					l.fail(fmt.Errorf("send keepalive: %w", err))
					return
				}
			}
			continue
		}
		// Taking the queue while holding sendMu orders this batch after anything a submitter
		// sent directly, and before anything sent directly later.
		l.sendMu.Lock()
		l.mu.Lock()
		if len(l.queue) == 0 {
			l.mu.Unlock()
			l.sendMu.Unlock()
			continue
		}
		// Swap in the previous batch's array: queue and batch never share one.
		batch := l.queue
		l.queue = l.spare[:0]
		if l.registerAndSend(batch) != nil {
			return
		}
		l.mu.Lock()
		l.spare = batch[:0]
		l.mu.Unlock()
	}
}

func (l *link) sendKeepalive() error {
	e := &l.enc
	e.nvl.Reset()
	e.nvl.AddUint8("cmd", proto.CmdKeepalive)
	e.hdr = proto.EncodeFrame(e.hdr[:0], l.version, &e.nvl)
	return l.write(net.Buffers{e.hdr})
}

// sendLocked encodes batch and writes it in one writev; sendMu is held.
func (l *link) sendLocked(batch []*rreq) error {
	e := &l.enc
	e.reset()
	for _, r := range batch {
		e.nvl.Reset()
		e.nvl.AddUint8("cmd", r.cmd)
		e.nvl.AddUint64("seq", r.seq)
		e.nvl.AddUint64("offset", uint64(r.off))
		e.nvl.AddUint64("length", uint64(r.length))
		var payload []byte
		if r.cmd == proto.CmdWrite {
			if r.memsync {
				e.nvl.AddUint8("memsync", 1)
			}
			var err error
			payload, err = proto.EncodeData(&e.nvl, r.data, l.cfg.Compression, l.cfg.Checksum, r.scratch)
			if err != nil {
				return fmt.Errorf("encode write: %w", err)
			}
			if len(payload) > 0 && len(r.data) > 0 && &payload[0] != &r.data[0] {
				r.scratch = payload[:0]
			}
		}
		e.add(l.version, payload)
	}
	l.frames.Add(uint64(len(batch)))
	// A reply to any frame of this batch comes after the write began, and the kernel has
	// copied that frame's payload before the peer can have it; but the Go memory model sees
	// no edge through a socket. This store, before the write, and the load in recvLoop give
	// one, so an owner reusing a buffer after its reply is ordered after the encoding's reads
	// of it (checksums, compression), and the race detector agrees. After the write it would
	// miss a reply to an early frame that arrives while later ones are still being written.
	// (A TLS link reads the payloads again during the write, but sends each record with
	// write(2), which the race detector orders before any later read(2).)
	l.batches.Add(1)
	err := l.write(e.buffers())
	e.release()
	return err
}

func (l *link) write(bufs net.Buffers) error {
	l.out.SetWriteDeadline(time.Now().Add(l.cfg.Timeout))
	_, err := bufs.WriteTo(l.out)
	l.lastSend.Store(time.Now().UnixNano())
	return err
}

// recvBufferSize is the read buffer of each side's receiving loop, once the handshake is over
// (nothing else reads the connection then): a frame is read with two or three reads of the
// stream (header, nv list, data), and under load one system call now brings many frames. A
// payload larger than the buffer is read straight into its destination.
const recvBufferSize = 64 << 10

func (l *link) recvLoop() {
	defer l.wg.Done()
	rd := proto.NewReader(bufio.NewReaderSize(l.in, recvBufferSize), MaxRecvIO+4096)
	var dec []byte
	for {
		_, msg, data, err := rd.Next()
		if err != nil {
			l.fail(fmt.Errorf("receive: %w", err))
			return
		}
		l.lastRecv.Store(time.Now().UnixNano())
		l.batches.Load() // pairs with the store before each batch is written (see sendLocked)
		seq, ok := msg.Uint64("seq")
		if !ok {
			l.fail(errors.New("reply without seq"))
			return
		}
		_, early := msg.Int8("received")
		l.mu.Lock()
		r := l.pending[seq]
		if r != nil && !early {
			delete(l.pending, seq)
		}
		l.mu.Unlock()
		if r == nil {
			l.log.Warn().Uint64("seq", seq).Msg("reply to an unknown request ignored")
			continue
		}
		if early {
			if !r.received {
				r.received = true
				if r.onRecv != nil {
					r.onRecv(r)
				}
			}
			continue
		}
		var rerr error
		if e, ok := msg.Int16("error"); ok && e != 0 {
			rerr = fmt.Errorf("remote request failed: %w", syscall.Errno(e))
		} else if r.cmd == CmdDigest {
			d, ok := msg.Uint8Array("digest")
			if !ok || len(d) != len(r.data) {
				rerr = errors.New("digest reply without a valid digest")
			} else {
				copy(r.data, d)
			}
		} else if r.cmd == proto.CmdRead {
			dec, err = proto.DecodeData(msg, data, dec[:0])
			switch {
			case err != nil:
				// A corrupt payload means the link cannot be trusted.
				r.onDone(r, fmt.Errorf("read reply: %w", err))
				l.fail(fmt.Errorf("read reply seq %d: %w", seq, err))
				return
			case int64(len(dec)) != r.length:
				rerr = fmt.Errorf("read reply has %d bytes, want %d", len(dec), r.length)
			default:
				copy(r.data, dec)
			}
		}
		r.onDone(r, rerr)
	}
}

// watchdog fails the link when requests are outstanding and nothing came back for the timeout.
func (l *link) watchdog() {
	defer l.wg.Done()
	t := time.NewTicker(l.cfg.Timeout / 10)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
		}
		l.mu.Lock()
		n := len(l.pending)
		l.mu.Unlock()
		if n > 0 && time.Since(time.Unix(0, l.lastRecv.Load())) > l.cfg.Timeout {
			l.fail(fmt.Errorf("no reply from the peer for %v with %d requests outstanding", l.cfg.Timeout, n))
			return
		}
	}
}
