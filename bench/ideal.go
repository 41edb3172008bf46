package bench

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Ideal is the "ideal" baseline: the same physical work as a fullsync replicated write with no
// protocol, built to be hard to beat.
//
//   - Sending: a write is queued and sent with writev (16-byte header + the caller's buffer, no
//     copy) together with everything else queued meanwhile. Small requests are sent by their
//     caller when nobody else is sending; large ones by a sender goroutine, so the copy into the
//     socket overlaps the local write.
//   - Local copy: written by the caller with pwrite when it is the only write in flight (no
//     hand-off), otherwise submitted with Linux AIO and reaped by one goroutine, so concurrent
//     callers are parked instead of each pinning a thread in a blocking system call.
//   - Receiver: parses requests from a buffered reader and submits them with AIO as they arrive
//     (one io_submit for everything that arrived together); a completion goroutine sends the
//     acknowledgements of each batch of completions in one write. A lone small request with
//     nothing in flight is written and acknowledged by the reader itself.
//
// There is no goroutine or allocation per request: slots, buffers and iocbs are preallocated.
type Ideal struct {
	a, b *file
	size int64

	ln         net.Listener
	conn, peer net.Conn // sending side and receiving side of the one connection

	slots []*islot
	free  chan *islot

	mu      sync.Mutex
	queue   []*islot
	spare   []*islot
	sending bool
	kick    chan struct{}
	// arr and bufs belong to the caller that is sending; bufs is a field so that writev
	// needs no allocation per batch.
	arr  net.Buffers
	bufs net.Buffers

	dead    chan struct{}
	deadErr error
	once    sync.Once
	closing atomic.Bool
	wg      sync.WaitGroup

	recv     *idealReceiver
	lctx     aioCtx // local writes when several are in flight
	inflight atomic.Int32
}

const (
	idealHdr = 16 // slot id (4), length (4), offset (8)
	idealAck = 8  // slot id (4), errno (4)
)

type islot struct {
	id   uint32
	hdr  [idealHdr]byte
	data []byte
	done chan error // the remote acknowledgement and the local completion
	lcb  iocb
	lptr [1]*iocb
}

// OpenIdeal builds the pipeline between the two files over one loopback TCP connection. depth
// is the largest number of concurrent callers; maxBlock the largest request.
func OpenIdeal(pathA, pathB string, direct bool, depth, maxBlock int) (*Ideal, error) {
	a, b, err := openFiles(pathA, pathB, direct)
	if err != nil {
		return nil, err
	}
	t := &Ideal{a: a, b: b, size: min(a.size, b.size), free: make(chan *islot, depth),
		kick: make(chan struct{}, 1), dead: make(chan struct{})}
	fail := func(err error) (*Ideal, error) {
		t.Close()
		return nil, fmt.Errorf("ideal baseline: %w", err)
	}
	t.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.close()
		b.close()
		return nil, fmt.Errorf("ideal baseline: %w", err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := t.ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	if t.conn, err = net.Dial("tcp", t.ln.Addr().String()); err != nil {
		return fail(err)
	}
	var ok bool
	if t.peer, ok = <-accepted; !ok {
		return fail(errors.New("accept failed"))
	}
	for i := range depth {
		s := &islot{id: uint32(i), done: make(chan error, 2)}
		s.lptr[0] = &s.lcb
		t.slots = append(t.slots, s)
		t.free <- s
	}
	if t.lctx, err = aioSetup(depth); err != nil {
		return fail(err)
	}
	t.recv, err = newIdealReceiver(t.peer, b, depth, maxBlock, t.fail)
	if err != nil {
		return fail(err)
	}
	t.wg.Add(3)
	go t.reapLocal()
	go t.sendLoop()
	go t.ackLoop()
	t.recv.start(&t.wg)
	return t, nil
}

func (t *Ideal) Size() int64 { return t.size }

func (t *Ideal) ReadAt(p []byte, off int64) (int, error) { return t.a.pread(p, off) }

// WriteAt writes p locally and on the receiver and returns when both are done.
func (t *Ideal) WriteAt(p []byte, off int64) (int, error) {
	return t.write(p, off, true)
}

func (t *Ideal) write(p []byte, off int64, local bool) (int, error) {
	var s *islot
	select {
	case s = <-t.free:
	case <-t.dead:
		return 0, t.deadErr
	}
	binary.LittleEndian.PutUint32(s.hdr[0:], s.id)
	binary.LittleEndian.PutUint32(s.hdr[4:], uint32(len(p)))
	binary.LittleEndian.PutUint64(s.hdr[8:], uint64(off))
	s.data = p
	// The local write overlaps the remote leg. When this is the only write in flight, the
	// caller does it with pwrite after sending (no hand-off at all); when several are, it is
	// submitted with AIO and reaped by one goroutine, so that the callers are parked rather
	// than each holding a thread (and, until the runtime notices, a P) in a blocking system
	// call while the network goroutines need to run.
	async := t.inflight.Add(1) > 1
	defer t.inflight.Add(-1)
	legs := 1
	var errs []error
	if local && async {
		s.lcb.prep(iocbCmdPwrite, t.a.fd(p, off), p, off, aioData(s.id, len(p)))
		if _, err := t.lctx.submit(s.lptr[:]); err != nil {
			t.free <- s
			return 0, fmt.Errorf("ideal local write at %d: %w", off, err)
		}
		legs = 2
	}
	t.enqueue(s)
	if local && !async {
		if _, err := t.a.pwrite(p, off); err != nil {
			errs = append(errs, err)
		}
	}
	for range legs {
		select {
		case err := <-s.done:
			if err != nil {
				errs = append(errs, err)
			}
		case <-t.dead:
			// The slot may still be referenced by the dead connection; it is not reused.
			return 0, errors.Join(append(errs, t.deadErr)...)
		}
	}
	s.data = nil
	t.free <- s
	if len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	return len(p), nil
}

// aioData packs a slot id and a request length into an iocb's user data, so that whoever
// reaps the completion needs nothing from the submitter's memory (the kernel's completion is a
// synchronisation the race detector cannot see).
func aioData(id uint32, length int) uint64 { return uint64(id)<<32 | uint64(uint32(length)) }

func fromAIOData(d uint64) (id uint32, length int) { return uint32(d >> 32), int(uint32(d)) }

// reapLocal completes the local writes submitted on lctx.
func (t *Ideal) reapLocal() {
	defer t.wg.Done()
	evs := make([]ioEvent, len(t.slots))
	for {
		n, err := t.lctx.getEvents(1, evs, 50*time.Millisecond)
		if err != nil {
			t.fail(err)
			return
		}
		for i := range n {
			id, length := fromAIOData(evs[i].data)
			var lerr error
			if err := eventErr(&evs[i], length); err != nil {
				lerr = fmt.Errorf("ideal local write of %d bytes: %w", length, err)
			}
			t.slots[id].done <- lerr
		}
		if n == 0 {
			select {
			case <-t.dead:
				return
			default:
			}
		}
	}
}

func (t *Ideal) Flush() error { return errors.Join(t.a.sync(), t.b.sync()) }

// CopyTarget is the ideal resynchronisation: each WriteAt reads the range from the first file
// into the caller's buffer and sends it to the receiver, which writes it to the second file. It
// is what a sync of dirty extents has to do at the least.
func (t *Ideal) CopyTarget() Target { return idealCopy{t} }

type idealCopy struct{ t *Ideal }

func (c idealCopy) Size() int64                             { return c.t.size }
func (c idealCopy) ReadAt(p []byte, off int64) (int, error) { return c.t.a.pread(p, off) }
func (c idealCopy) Flush() error                            { return c.t.b.sync() }
func (c idealCopy) WriteAt(p []byte, off int64) (int, error) {
	if _, err := c.t.a.pread(p, off); err != nil {
		return 0, err
	}
	return c.t.write(p, off, false)
}

func (t *Ideal) fail(err error) {
	t.once.Do(func() {
		if t.closing.Load() {
			err = errClosed
		}
		t.deadErr = fmt.Errorf("ideal baseline: %w", err)
		close(t.dead)
		if t.conn != nil {
			t.conn.Close()
		}
		if t.peer != nil {
			t.peer.Close()
		}
	})
}

// inlineSend is the largest request its caller sends itself: a small request goes out without
// waking another goroutine, while a large one is handed to the sender goroutine so that sending
// it (a copy into the socket) overlaps the caller's local write, as in the product.
const inlineSend = 64 << 10

// enqueue queues s for sending.
func (t *Ideal) enqueue(s *islot) {
	t.mu.Lock()
	t.queue = append(t.queue, s)
	if t.sending {
		// The sender drains the queue until it is empty, this request included.
		t.mu.Unlock()
		return
	}
	if len(s.data) > inlineSend {
		t.mu.Unlock()
		select {
		case t.kick <- struct{}{}:
		default:
		}
		return
	}
	t.drainLocked()
	t.mu.Unlock()
}

// drainLocked sends everything queued, including what is queued while it sends; t.mu is held on
// entry and exit and released while sending.
func (t *Ideal) drainLocked() {
	t.sending = true
	for len(t.queue) > 0 {
		batch := t.queue
		t.queue = t.spare[:0]
		t.mu.Unlock()
		arr := t.arr[:0]
		for _, s := range batch {
			arr = append(arr, s.hdr[:], s.data)
		}
		t.bufs = arr
		_, err := t.bufs.WriteTo(t.conn)
		clear(arr) // drop references to callers' buffers
		t.arr = arr
		if err != nil {
			t.fail(fmt.Errorf("send: %w", err))
		}
		t.mu.Lock()
		t.spare = batch[:0]
	}
	t.sending = false
}

func (t *Ideal) sendLoop() {
	defer t.wg.Done()
	for {
		select {
		case <-t.dead:
			return
		case <-t.kick:
		}
		t.mu.Lock()
		if !t.sending {
			t.drainLocked()
		}
		t.mu.Unlock()
	}
}

func (t *Ideal) ackLoop() {
	defer t.wg.Done()
	br := bufio.NewReaderSize(t.conn, 64<<10)
	var ack [idealAck]byte
	for {
		if _, err := io.ReadFull(br, ack[:]); err != nil {
			t.fail(fmt.Errorf("receive ack: %w", err))
			return
		}
		id := binary.LittleEndian.Uint32(ack[0:])
		if int(id) >= len(t.slots) {
			t.fail(fmt.Errorf("ack for unknown slot %d", id))
			return
		}
		var err error
		if e := binary.LittleEndian.Uint32(ack[4:]); e != 0 {
			err = fmt.Errorf("remote write: %w", syscall.Errno(e))
		}
		t.slots[id].done <- err
	}
}

// Close tears the pipeline down and closes the files.
func (t *Ideal) Close() error {
	t.closing.Store(true)
	t.fail(errClosed)
	if t.ln != nil {
		t.ln.Close()
	}
	t.wg.Wait()
	if t.recv != nil {
		t.recv.ctx.destroy()
	}
	if t.lctx != 0 {
		t.lctx.destroy()
	}
	return errors.Join(t.a.close(), t.b.close())
}

// idealReceiver is the second node of the ideal pipeline.
type idealReceiver struct {
	conn   net.Conn
	f      *file
	ctx    aioCtx
	bufs   [][]byte
	cbs    []iocb
	maxBlk int
	fail   func(error)
	// inflight counts writes submitted and not yet reaped.
	inflight atomic.Int32
}

func newIdealReceiver(c net.Conn, f *file, depth, maxBlock int, fail func(error)) (*idealReceiver, error) {
	ctx, err := aioSetup(depth)
	if err != nil {
		return nil, err
	}
	return &idealReceiver{conn: c, f: f, ctx: ctx, bufs: make([][]byte, depth), cbs: make([]iocb, depth),
		maxBlk: maxBlock, fail: fail}, nil
}

func (r *idealReceiver) start(wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := r.readLoop(); err != nil {
			r.fail(err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := r.completeLoop(); err != nil {
			r.fail(err)
		}
	}()
}

func (r *idealReceiver) readLoop() error {
	br := bufio.NewReaderSize(r.conn, 256<<10)
	var hdr [idealHdr]byte
	pending := make([]*iocb, 0, len(r.cbs))
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return fmt.Errorf("receive request: %w", err)
		}
		id := binary.LittleEndian.Uint32(hdr[0:])
		n := int(binary.LittleEndian.Uint32(hdr[4:]))
		off := int64(binary.LittleEndian.Uint64(hdr[8:]))
		if int(id) >= len(r.bufs) || n > r.maxBlk {
			return fmt.Errorf("bad request: slot %d, %d bytes", id, n)
		}
		if cap(r.bufs[id]) < n {
			r.bufs[id] = alignedBuf(r.maxBlk)
		}
		buf := r.bufs[id][:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("receive payload: %w", err)
		}
		cb := &r.cbs[id]
		cb.prep(iocbCmdPwrite, r.f.fd(buf, off), buf, off, aioData(id, n))
		pending = append(pending, cb)
		// Keep parsing while the next whole request is already buffered, so one io_submit
		// covers everything that arrived together.
		if br.Buffered() >= idealHdr {
			if h, err := br.Peek(idealHdr); err == nil && br.Buffered() >= idealHdr+int(binary.LittleEndian.Uint32(h[4:])) {
				continue
			}
		}
		if len(pending) == 1 && n <= inlineSend && r.inflight.Load() == 0 {
			// A lone request with nothing else in flight: write it and acknowledge it
			// from here, saving the completion goroutine's wake-up (queue depth 1).
			if err := r.writeNow(cb, buf); err != nil {
				return err
			}
			pending = pending[:0]
			continue
		}
		r.inflight.Add(int32(len(pending)))
		if _, err := r.ctx.submit(pending); err != nil {
			return err
		}
		pending = pending[:0]
	}
}

func (r *idealReceiver) writeNow(cb *iocb, buf []byte) error {
	var errno uint32
	if _, err := r.f.pwrite(buf, cb.offset); err != nil {
		errno = uint32(syscall.EIO)
		var e syscall.Errno
		if errors.As(err, &e) {
			errno = uint32(e)
		}
	}
	var ack [idealAck]byte
	id, _ := fromAIOData(cb.data)
	binary.LittleEndian.PutUint32(ack[0:], id)
	binary.LittleEndian.PutUint32(ack[4:], errno)
	if _, err := r.conn.Write(ack[:]); err != nil {
		return fmt.Errorf("send ack: %w", err)
	}
	return nil
}

func (r *idealReceiver) completeLoop() error {
	evs := make([]ioEvent, len(r.cbs))
	acks := make([]byte, 0, len(r.cbs)*idealAck)
	for {
		n, err := r.ctx.getEvents(1, evs, 50*time.Millisecond)
		if err != nil {
			return err
		}
		if n == 0 {
			// Timed out: see whether the connection is still there.
			if r.conn.SetReadDeadline(time.Time{}) != nil {
				return nil
			}
			continue
		}
		r.inflight.Add(-int32(n))
		acks = acks[:0]
		for i := range n {
			id, length := fromAIOData(evs[i].data)
			var errno uint32
			if err := eventErr(&evs[i], length); err != nil {
				var e syscall.Errno
				if errors.As(err, &e) {
					errno = uint32(e)
				} else {
					errno = uint32(syscall.EIO)
				}
			}
			acks = binary.LittleEndian.AppendUint32(acks, id)
			acks = binary.LittleEndian.AppendUint32(acks, errno)
		}
		if _, err := r.conn.Write(acks); err != nil {
			return fmt.Errorf("send acks: %w", err)
		}
	}
}
