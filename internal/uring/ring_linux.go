package uring

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by operations on a closed [Ring] and by operations that were
// still waiting for a slot when it was closed.
var ErrClosed = errors.New("uring: ring closed")

// loopSetupFlags are the loop's ring's setup flags: none. The loop is an ordinary
// goroutine, so it submits from whichever thread runs it: SINGLE_ISSUER (and with it
// DEFER_TASKRUN) would need a locked thread, which is what [Ring]'s history section
// measured against. COOP_TASKRUN is left out on purpose: it lets the kernel post a
// completion only when the submitting thread next enters the kernel, and a Go thread
// that submitted may then sleep idle for a long time; without it the kernel wakes that
// thread to post the completion.
const loopSetupFlags = 0

// User data values above the slot range mark the ring's own requests.
const (
	tagWake   = 1 << 32 // the eventfd read that wakes the loop
	tagCancel = 2 << 32 // ASYNC_CANCEL requests issued by Close
	tagIgnore = 3 << 32 // NOPs overwriting SQEs that were failed without submission
)

// wakeValue is what callers write to the eventfd; the kernel only reads it.
var wakeValue = [8]byte{1}

// Ring is an io_uring instance safe for use by many goroutines: each call submits one
// operation and blocks until it completes.
//
// # Shape
//
// The loop: one goroutine owns the [RawRing]. Callers take a free slot from a fixed table (user_data is
// the slot index), describe the operation there, append the slot to a queue and park
// on the slot's channel. The loop copies everything queued into SQEs and calls
// io_uring_enter once, both submitting and reaping, then wakes the owners of the
// completed slots. Under load callers make no system call at all.
//
// When it has nothing to submit or reap, the loop waits in the Go poller on an eventfd
// that the kernel signals for completions and callers write to wake it (see
// parkInPoller); where the eventfd cannot be registered it waits in io_uring_enter
// instead, for a completion or for a read of that eventfd.
//
// The direct path ([Options].Direct): when the ring has been idle for busyHold, a
// caller makes its operation as the plain system call (pread, pwritev2, fdatasync,
// fallocate) on its own thread: one system call and no thread hand-off.
//
// Slots, channels and queues are allocated once; steady-state operations do not
// allocate.
//
// # Why this shape
//
// Designs measured on the 2-vCPU build VM (shared with other builds, hence ranges over
// interleaved runs; 4 KiB O_DIRECT random writes to a fallocated file):
//
//	                                NOP round trip  depth 1 IOPS        depth 32 CPU/op
//	callers submit, one reaper      7-10 µs         ~0.75× pwrite       (IOPS ≈ pwrite's)
//	the loop alone                  22-28 µs        0.35-0.65× pwrite   9-12.6 µs
//	leader/follower (callers wait)  0.35 µs         0.8-1.3× pwrite     14-17 µs
//	the loop plus a second ring     0.4-1.2 µs      0.75-1.1× pwrite    10-13 µs
//	  where a lone caller waits
//
// Every cross-thread wake-up costs microseconds of IPIs and VM exits here, which sinks
// any design with hand-offs at depth 1. At depth, the loop (then locked to its thread,
// with DEFER_TASKRUN) needed the least CPU: callers make no system calls and one
// goroutine reaps every completion.
//
// Three later findings, with both nodes of hast bench on one machine, replaced the
// second ring with the direct path, moved the loop's wait into the Go poller and
// unlocked the loop from its thread:
//
//   - A goroutine blocked in a system call keeps its P until sysmon takes it back, so
//     threads waiting in io_uring_enter (the loop's, a lone caller's) held the Ps the
//     requests needed: randwrite-4k-qd32 with --local-io uring rose from 15.8k to
//     25–30k IOPS.
//   - At depth 1 the second ring was slower than pwrite on the same disk (the
//     replicated write's p50 194 µs against 122–153 µs with pwrite). The hold after
//     overlap keeps a gap under load from sending an operation to a blocking call that
//     would sit behind the disk's queue.
//   - The loop was locked to its thread (SINGLE_ISSUER|DEFER_TASKRUN), and every time
//     the poller woke it the scheduler had to hand a P to that thread and take it back
//     when it parked: two thread switches per round, the largest item left in a traced
//     QD32 run. As an ordinary goroutine the loop is woken like any other: replicated
//     randwrite-4k-qd32 with --local-io uring went from 0.74–0.76× to 1.00–1.02× of
//     the ideal pipeline, at 15–20 % less CPU per operation (interleaved pairs).
type Ring struct {
	slots []slot
	free  chan uint32

	active    atomic.Int32   // operations between entry and return, both paths
	direct    bool           // Options.Direct
	hold      time.Duration  // busyHold; tests change it
	busyUntil atomic.Int64   // nanotime before which even a lone operation takes the loop
	directs   sync.WaitGroup // operations on the direct path, waited for by Close
	nDirect   atomic.Uint64  // operations made on the direct path (tests)

	kernelOps atomic.Int32 // loop operations submitted and not yet completed

	mu       sync.Mutex
	queue    []uint32 // slots ready for submission
	sleeping bool     // the loop is, or is about to be, waiting (in the poller or io_uring_enter)
	closed   bool
	fatal    error // set when io_uring_enter failed in a way retrying cannot fix

	wakers  sync.WaitGroup // callers between deciding to wake the loop and writing efd
	closing chan struct{}  // closed by Close: releases callers waiting for a slot
	done    chan struct{}  // closed when the loop has torn its ring down
	loopErr error          // the loop's teardown error, read after done

	efd     int
	evf     *os.File // efd in the Go poller, when the loop parks there (see park)
	wakeBuf [8]byte  // target of the loop's eventfd read
	spare   []uint32 // the loop's half of the queue double buffer

	blockingWait bool // Options.blockingWait

	nRetried  atomic.Uint64 // operations resubmitted after a cancellation (tests)
	cancelReq bool          // under mu: cancel every operation in flight (tests)
}

// Options tune a Ring.
type Options struct {
	// Direct lets a lone operation skip the ring (see [Ring]). Only for descriptors
	// whose operations always complete, such as regular files and block devices:
	// Close cannot cancel a plain system call, it waits for it.
	Direct bool

	// blockingWait makes the loop wait in io_uring_enter even where it could wait in
	// the poller, as where the eventfd cannot be registered (tests).
	blockingWait bool
}

// busyHold is how long the ring counts as busy after two of its operations overlapped.
const busyHold = time.Millisecond

// nanotime is a monotonic clock reading in nanoseconds.
func nanotime() int64 { return int64(time.Since(clockBase)) }

var clockBase = time.Now()

type slot struct {
	sqe  SQE
	buf  unsafe.Pointer // keeps the caller's buffer reachable while the kernel uses it
	res  int32
	done chan struct{}
}

// New starts a ring for entries operations in flight (a power of two, 2..4096, or
// rounded up to one; one entry is kept for the loop's own use), with default options.
// Errors meaning this kernel cannot do io_uring wrap [ErrUnsupported].
func New(entries uint32) (*Ring, error) {
	return NewWithOptions(entries, Options{})
}

// NewWithOptions is New with options.
func NewWithOptions(entries uint32, o Options) (*Ring, error) {
	if entries < 2 || entries > 4096 {
		return nil, fmt.Errorf("uring: %d entries: want 2..4096", entries)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("uring: eventfd: %w", err)
	}
	r := &Ring{efd: efd, closing: make(chan struct{}), done: make(chan struct{}),
		direct: o.Direct, hold: busyHold, blockingWait: o.blockingWait}
	started := make(chan error, 1)
	go r.loop(entries, started)
	if err := <-started; err != nil {
		unix.Close(efd)
		return nil, err
	}
	return r, nil
}

// Slots returns how many operations the loop takes at once; further callers wait for a
// slot.
func (r *Ring) Slots() int { return len(r.slots) }

// setup creates the loop's RawRing and checks that it implements the opcodes Ring
// offers.
func (r *Ring) setup(entries uint32) (*RawRing, error) {
	raw, err := SetupRaw(entries, loopSetupFlags)
	if err != nil {
		return nil, err
	}
	if err := checkOps(raw); err != nil {
		raw.Close()
		return nil, err
	}
	// One SQ entry stays reserved for re-arming the eventfd read.
	n := raw.SQEntries() - 1
	r.slots = make([]slot, n)
	r.free = make(chan uint32, n)
	for i := range r.slots {
		r.slots[i].done = make(chan struct{}, 1)
		r.free <- uint32(i)
	}
	r.queue = make([]uint32, 0, n)
	r.spare = make([]uint32, 0, n)
	return raw, nil
}

func checkOps(raw *RawRing) error {
	ok, err := raw.Supported(OpRead, OpWrite, OpFsync, OpFallocate, OpAsyncCancel, OpNop)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("io_uring: %w (kernel lacks IORING_OP_READ/WRITE/FSYNC/FALLOCATE, needs Linux 5.6+)", ErrUnsupported)
	}
	return nil
}

// run executes one operation described by sqe (UserData is overwritten), directly when
// the ring allows it and has been idle, else on the loop, and returns the kernel's
// result. buf is the memory the kernel will access, kept reachable until the completion
// has been consumed.
//
// An operation the kernel cancelled while the ring is open is made again. The kernel
// cancels the requests of a thread that exits, and the loop submits from whichever
// thread runs it; a Go thread exits when a goroutine locked to it returns. The
// operations Ring offers can be repeated: they name their offset.
func (r *Ring) run(sqe *SQE, buf unsafe.Pointer) (int32, error) {
	for {
		res, err := r.run1(sqe, buf)
		if err != nil || res != -int32(unix.ECANCELED) {
			return res, err
		}
		r.mu.Lock()
		closed := r.closed
		r.mu.Unlock()
		if closed {
			return res, nil
		}
		r.nRetried.Add(1)
	}
}

func (r *Ring) run1(sqe *SQE, buf unsafe.Pointer) (int32, error) {
	alone := r.active.Add(1) == 1
	defer r.active.Add(-1)
	if !r.direct {
		return r.do(sqe, buf)
	}
	now := nanotime()
	if !alone {
		r.busyUntil.Store(now + int64(r.hold))
		return r.do(sqe, buf)
	}
	if now < r.busyUntil.Load() {
		return r.do(sqe, buf)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, ErrClosed
	}
	r.directs.Add(1)
	r.mu.Unlock()
	defer r.directs.Done()
	r.nDirect.Add(1)
	return directOp(sqe, buf), nil
}

// directOp makes the operation sqe describes as its plain system call and returns what
// its completion would hold: a count or a negative errno.
func directOp(sqe *SQE, buf unsafe.Pointer) int32 {
	fd, off := int(sqe.FD), int64(sqe.Off)
	var p []byte
	if buf != nil {
		p = unsafe.Slice((*byte)(buf), sqe.Len)
	}
	for {
		var n int
		var err error
		switch sqe.Opcode {
		case OpRead:
			n, err = unix.Pread(fd, p, off)
		case OpWrite:
			if sqe.OpFlags == 0 {
				n, err = unix.Pwrite(fd, p, off)
			} else {
				iov := [1][]byte{p}
				n, err = unix.Pwritev2(fd, iov[:], off, int(sqe.OpFlags))
			}
		case OpFsync:
			if sqe.OpFlags&FsyncDatasync != 0 {
				err = unix.Fdatasync(fd)
			} else {
				err = unix.Fsync(fd)
			}
		case OpFallocate:
			err = unix.Fallocate(fd, sqe.Len, off, int64(sqe.Addr))
		case OpNop:
		default:
			return -int32(unix.EINVAL)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			var errno syscall.Errno
			if !errors.As(err, &errno) {
				errno = syscall.EIO
			}
			return -int32(errno)
		}
		return int32(n)
	}
}

// do runs an operation through the loop.
func (r *Ring) do(sqe *SQE, buf unsafe.Pointer) (int32, error) {
	var idx uint32
	select {
	case idx = <-r.free:
	case <-r.closing:
		return 0, ErrClosed
	}
	s := &r.slots[idx]
	s.sqe = *sqe
	s.sqe.UserData = uint64(idx)
	s.buf = buf

	r.mu.Lock()
	if r.closed || r.fatal != nil {
		err := r.fatal
		r.mu.Unlock()
		s.buf = nil
		r.free <- idx
		if err == nil {
			err = ErrClosed
		}
		return 0, err
	}
	r.queue = append(r.queue, idx)
	r.unlockAndWake()

	<-s.done
	res := s.res
	s.buf = nil
	r.free <- idx
	return res, nil
}

// unlockAndWake releases r.mu, which the caller holds after giving the loop work, and
// wakes the loop if it is waiting.
func (r *Ring) unlockAndWake() {
	wake := r.sleeping
	if wake {
		r.sleeping = false
		r.wakers.Add(1)
	}
	r.mu.Unlock()
	if wake {
		r.wake()
		r.wakers.Done()
	}
}

// wake ends the loop's wait by signalling its eventfd: readable in the poller, or the
// completion of the eventfd read the ring holds.
func (r *Ring) wake() {
	for {
		_, err := unix.Write(r.efd, wakeValue[:])
		// EAGAIN would need 2^64-2 unread wakes; EBADF cannot happen because
		// Close waits for wakers before closing the descriptor.
		if err != unix.EINTR {
			return
		}
	}
}

func errResult(op string, res int32) error {
	if res < 0 {
		return fmt.Errorf("io_uring %s: %w", op, syscall.Errno(-res))
	}
	return nil
}

// Read reads up to len(p) bytes at off from fd (IORING_OP_READ). Like pread it may
// return fewer bytes, and 0 at end of file.
func (r *Ring) Read(fd int, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var sqe SQE
	sqe.PrepRead(fd, p, off, 0)
	res, err := r.run(&sqe, unsafe.Pointer(unsafe.SliceData(p)))
	if err != nil {
		return 0, err
	}
	if err := errResult("read", res); err != nil {
		return 0, err
	}
	return int(res), nil
}

// Write writes up to len(p) bytes at off to fd (IORING_OP_WRITE). Like pwrite it may
// write fewer bytes.
func (r *Ring) Write(fd int, p []byte, off int64) (int, error) {
	return r.WriteFlags(fd, p, off, 0)
}

// WriteFlags is Write with pwritev2's per-write flags (rw_flags), such as
// unix.RWF_DSYNC to make this write durable on its own.
func (r *Ring) WriteFlags(fd int, p []byte, off int64, rwFlags uint32) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var sqe SQE
	sqe.PrepWrite(fd, p, off, 0)
	sqe.OpFlags = rwFlags
	res, err := r.run(&sqe, unsafe.Pointer(unsafe.SliceData(p)))
	if err != nil {
		return 0, err
	}
	if err := errResult("write", res); err != nil {
		return 0, err
	}
	return int(res), nil
}

// Fsync flushes fd (IORING_OP_FSYNC); flags is 0 for fsync or [FsyncDatasync] for
// fdatasync.
func (r *Ring) Fsync(fd int, flags uint32) error {
	var sqe SQE
	sqe.PrepFsync(fd, flags, 0)
	res, err := r.run(&sqe, nil)
	if err != nil {
		return err
	}
	return errResult("fsync", res)
}

// Fallocate calls fallocate(fd, mode, off, length) (IORING_OP_FALLOCATE).
func (r *Ring) Fallocate(fd int, mode uint32, off, length int64) error {
	var sqe SQE
	sqe.PrepFallocate(fd, mode, off, length, 0)
	res, err := r.run(&sqe, nil)
	if err != nil {
		return err
	}
	return errResult("fallocate", res)
}

// Nop runs IORING_OP_NOP: the cost of a round trip through the ring.
func (r *Ring) Nop() error {
	var sqe SQE
	sqe.PrepNop(0)
	res, err := r.run(&sqe, nil)
	if err != nil {
		return err
	}
	return errResult("nop", res)
}

// Close stops accepting operations, cancels those in flight that the kernel can cancel
// (they fail with ECANCELED: reads from pipes, writes still queued for the kernel's
// workers; I/O already issued to a device runs to completion), waits for every
// operation to finish and releases the rings. Callers
// waiting for a slot get [ErrClosed]. A second Close returns ErrClosed.
func (r *Ring) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	r.closed = true
	r.sleeping = false
	r.mu.Unlock()
	close(r.closing)
	r.wake()
	<-r.done
	r.directs.Wait()
	// The operation of a caller still inside wake() may already have completed;
	// its write must not land on a recycled descriptor number.
	r.wakers.Wait()
	errs := []error{r.loopErr}
	closeEFD := func() error { return unix.Close(r.efd) }
	if r.evf != nil {
		closeEFD = r.evf.Close
	}
	if err := closeEFD(); err != nil {
		errs = append(errs, fmt.Errorf("uring: close eventfd: %w", err))
	}
	return errors.Join(errs...)
}

// loop owns the RawRing for its whole life.
func (r *Ring) loop(entries uint32, started chan<- error) {
	raw, err := r.setup(entries)
	started <- err
	if err != nil {
		return
	}
	defer close(r.done)

	l := loopState{r: r, raw: raw}
	if r.blockingWait {
		l.armWake()
	} else if err := r.parkInPoller(raw); err != nil {
		l.armWake()
	} else {
		l.parked = true
	}
	for {
		r.mu.Lock()
		q := r.queue
		r.queue = r.spare[:0]
		closed := r.closed
		cancelReq := r.cancelReq
		r.cancelReq = false
		// Block in the kernel only when nothing is queued; completions that are
		// already there make io_uring_enter return at once anyway.
		wait := len(q) == 0 && !closed
		r.sleeping = wait
		r.mu.Unlock()

		l.inflight += len(q)
		for _, idx := range q {
			if l.fatalErrno != 0 {
				// Queued before the failure was known; the SQ may be full of
				// withdrawn entries the kernel will never consume.
				l.complete(idx, -int32(l.fatalErrno))
				continue
			}
			// Cannot fail: a slot's SQE occupies at most one SQ entry, and one is
			// reserved beyond the slots for the wake read.
			*raw.NextSQE() = r.slots[idx].sqe
		}
		r.spare = q

		if closed && !l.closing {
			l.closing = true
			if l.fatalErrno == 0 {
				l.cancelAll()
			}
		} else if cancelReq && !l.closing && l.fatalErrno == 0 {
			l.cancelAll()
		}
		if l.closing && l.inflight == 0 && !l.wakeArmed && l.cancels == 0 {
			break
		}
		// Parked, the loop submits and collects without blocking in the kernel, and when
		// that found nothing it waits in the Go poller for a caller's wake or a completion.
		var want uint32
		if !l.parked && (wait || closed) {
			want = 1
		}
		l.enter(want)
		idle := l.reap() == 0
		r.kernelOps.Store(int32(l.inflight))
		if l.parked && idle && (wait || l.closing) {
			l.park()
		}
	}
	if err := raw.Close(); err != nil {
		r.loopErr = err
	}
}

// loopState is the loop goroutine's private bookkeeping.
type loopState struct {
	r         *Ring
	raw       *RawRing
	inflight  int  // slot operations in the SQ or the kernel, not yet completed
	wakeArmed bool // the eventfd read is in the SQ or the kernel
	parked    bool // the loop waits in the Go poller, not in io_uring_enter (see park)
	closing   bool // Close was called: cancel everything, re-arm nothing
	cancels   int  // Close's cancel requests not yet completed
	backoff   time.Duration

	// fatalErrno is set when io_uring_enter failed for good. Operations the kernel
	// already took are still waited for, forever if need be: handing their buffers
	// back while the kernel may write them would corrupt memory.
	fatalErrno syscall.Errno
}

func (l *loopState) armWake() {
	l.raw.NextSQE().PrepRead(l.r.efd, l.r.wakeBuf[:], 0, tagWake)
	l.wakeArmed = true
}

// sqe returns a free SQE, submitting what is pending if the SQ is full (only Close's
// burst of cancel requests can fill it).
func (l *loopState) sqe() *SQE {
	for {
		if s := l.raw.NextSQE(); s != nil {
			return s
		}
		l.enter(0)
		l.reap()
	}
}

// cancelAll asks the kernel to cancel every outstanding request, the wake read included.
func (l *loopState) cancelAll() {
	for i := range l.r.slots {
		// Cancelling an idle slot finds nothing (ENOENT) and costs one CQE.
		l.sqe().PrepCancel(uint64(i), 0, tagCancel)
		l.cancels++
	}
	if l.wakeArmed {
		l.sqe().PrepCancel(tagWake, 0, tagCancel)
		l.cancels++
	}
}

// enter submits everything published and waits for want completions (or returns early,
// which the loop tolerates). Transient errors are retried by the next iteration; an
// error that retrying cannot fix fails the operations the kernel has not taken, since
// their callers would otherwise wait forever.
func (l *loopState) enter(want uint32) {
	_, err := l.raw.Enter(want, EnterGetEvents)
	switch err {
	case nil:
		l.backoff = 0
		return
	case unix.EINTR:
		return
	case unix.EAGAIN, unix.EBUSY:
		// Short of memory or CQ space; completions drain on the next reap.
		l.sleep()
		return
	}
	l.failUnsubmitted(fmt.Errorf("io_uring_enter: %w", err))
}

func (l *loopState) sleep() {
	l.backoff = min(max(2*l.backoff, 10*time.Microsecond), 10*time.Millisecond)
	time.Sleep(l.backoff)
}

// failUnsubmitted turns every SQE the kernel has not consumed into a NOP whose
// completion is ignored, and fails the operations they carried with err. Later
// operations fail with err too. Operations the kernel has taken complete normally.
func (l *loopState) failUnsubmitted(err error) {
	l.r.mu.Lock()
	if l.r.fatal == nil {
		l.r.fatal = err
	}
	l.r.mu.Unlock()
	errno := syscall.EIO
	var en syscall.Errno
	if errors.As(err, &en) {
		errno = en
	}
	if l.fatalErrno == 0 {
		l.fatalErrno = errno
	}
	raw := l.raw
	for i := atomic.LoadUint32(raw.sqKHead); i != raw.sqeTail; i++ {
		sqe := (*SQE)(unsafe.Add(raw.sqes, uintptr(i&raw.sqMask)*raw.sqeSize))
		ud := sqe.UserData
		sqe.PrepNop(tagIgnore)
		switch {
		case ud < uint64(len(l.r.slots)):
			l.complete(uint32(ud), -int32(errno))
		case ud == tagWake:
			l.wakeArmed = false
		case ud == tagCancel:
			l.cancels--
		}
	}
	l.sleep()
}

func (l *loopState) complete(idx uint32, res int32) {
	s := &l.r.slots[idx]
	s.res = res
	l.inflight--
	// Never blocks: the channel holds one signal and each operation gets one.
	s.done <- struct{}{}
}

// reap consumes every completion in the CQ and returns how many there were.
func (l *loopState) reap() int {
	raw := l.raw
	n := 0
	for cqe := raw.PeekCQE(); cqe != nil; cqe = raw.PeekCQE() {
		ud, res := cqe.UserData, cqe.Res
		raw.AdvanceCQ(1)
		n++
		switch {
		case ud < uint64(len(l.r.slots)):
			l.complete(uint32(ud), res)
		case ud == tagWake:
			l.wakeArmed = false
			if !l.closing {
				l.armWake()
			}
		case ud == tagCancel:
			l.cancels--
		}
	}
	return n
}

// parkInPoller makes the loop wait for work in the Go poller instead of in
// io_uring_enter: the kernel signals an eventfd registered with the ring whenever it
// posts a completion, whichever thread submitted the operation and whatever that
// thread is doing (TestCompletionSignalsEventFD). Callers wake the loop through the
// same eventfd.
//
// Why: a goroutine blocked in a system call keeps its P until sysmon takes it back,
// tens of microseconds to milliseconds later. The loop spends most of its time waiting,
// so with a ring per local component (two in hast bench, one per resource in a daemon)
// and two CPUs, the loops held the Ps that the requests' goroutines needed: hast bench
// randwrite-4k-qd32 with --local-io uring ran at 15.8k IOPS with GOMAXPROCS=2 and
// 23.5k with GOMAXPROCS=8. A goroutine parked in the poller holds no P.
func (r *Ring) parkInPoller(raw *RawRing) error {
	fd := int32(r.efd)
	if err := raw.Register(RegisterEventFD, unsafe.Pointer(&fd), 1); err != nil {
		return err
	}
	if err := unix.SetNonblock(r.efd, true); err != nil {
		return err
	}
	r.evf = os.NewFile(uintptr(r.efd), "io_uring eventfd")
	return nil
}

// park waits until the eventfd is signalled, by a caller or by a completion, and
// consumes the signal. A completion the kernel failed to signal would leave an
// operation waiting; parkLimit bounds that wait, as a safety net, not as a poll.
func (l *loopState) park() {
	if l.inflight > 0 || l.cancels > 0 {
		l.r.evf.SetReadDeadline(time.Now().Add(parkLimit))
	} else {
		l.r.evf.SetReadDeadline(time.Time{})
	}
	// Any outcome (a signal, the deadline, EINTR) sends the loop round again.
	l.r.evf.Read(l.r.wakeBuf[:])
}

// parkLimit bounds a parked wait while operations are in flight.
const parkLimit = 100 * time.Millisecond
