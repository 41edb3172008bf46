package uring

import (
	"errors"
	"fmt"
	"runtime"
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

// setupFlagSets are tried in order for the loop's ring. It is only ever entered from
// the loop's locked thread, which is the contract of SINGLE_ISSUER; DEFER_TASKRUN (6.1+)
// then posts completions in batches while that thread waits, with no task-work
// interrupts, and measured the least CPU per operation here. COOP_TASKRUN (5.19+) is
// the next best. Older kernels reject unknown flags with EINVAL.
var setupFlagSets = []uint32{
	SetupSingleIssuer | SetupDeferTaskrun,
	SetupSingleIssuer | SetupCoopTaskrun,
	SetupCoopTaskrun,
	0,
}

// User data values above the slot range mark the ring's own requests.
const (
	tagWake   = 1 << 32 // the eventfd read that wakes the loop
	tagCancel = 2 << 32 // ASYNC_CANCEL requests issued by Close
	tagIgnore = 3 << 32 // NOPs overwriting SQEs that were failed without submission
	tagLane   = 4 << 32 // the lane's operation
)

// wakeValue is what callers write to the eventfd; the kernel only reads it.
var wakeValue = [8]byte{1}

// Ring is an io_uring instance safe for use by many goroutines: each call submits one
// operation and blocks until it completes.
//
// # Shape
//
// A Ring has two paths, chosen per operation.
//
// The loop: one goroutine, locked to an OS thread, owns the main [RawRing], set up with
// SINGLE_ISSUER|DEFER_TASKRUN. Callers take a free slot from a fixed table (user_data is
// the slot index), describe the operation there, append the slot to a queue and park
// on the slot's channel. The loop copies everything queued into SQEs and calls
// io_uring_enter once, both submitting and reaping, then wakes the owners of the
// completed slots. Under load callers make no system call at all. When the loop is
// asleep in the kernel, a caller wakes it by writing to an eventfd the ring itself is
// reading.
//
// The lane: when the loop has nothing to do, the caller instead submits to a second,
// small ring and waits in io_uring_enter itself, so a lone operation costs one
// system call and no thread hand-off, like pwrite. Only one caller uses the lane at a
// time; everybody else goes to the loop.
//
// Slots, channels and queues are allocated once; steady-state operations do not
// allocate.
//
// # Why this shape
//
// Four designs were measured on the 2-vCPU build VM (shared with other builds, hence
// ranges over interleaved runs; 4 KiB O_DIRECT random writes to a fallocated file):
//
//	                                NOP round trip  depth 1 IOPS        depth 32 CPU/op
//	callers submit, one reaper      7-10 µs         ~0.75× pwrite       (IOPS ≈ pwrite's)
//	the loop alone                  22-28 µs        0.35-0.65× pwrite   9-12.6 µs
//	leader/follower (callers wait)  0.35 µs         0.8-1.3× pwrite     14-17 µs
//	the loop plus the lane          0.4-1.2 µs      0.75-1.1× pwrite    10-13 µs
//
// Every cross-thread wake-up costs microseconds of IPIs and VM exits here, which sinks
// any design with hand-offs at depth 1. At depth, the loop with DEFER_TASKRUN needs the
// least CPU: callers make no system calls and one thread reaps every completion, where
// in the leader/follower design every caller's thread enters the kernel and is
// interrupted for its completions' task work. At depth 32 the Ring used 5-10 µs of CPU
// per write against pwrite's 8-21 µs (see BenchmarkRingWrite4K).
type Ring struct {
	slots []slot
	free  chan uint32
	busy  atomic.Int32 // operations on the loop path, from slot wait to return

	kernelOps atomic.Int32 // loop operations submitted and not yet completed

	mu       sync.Mutex
	queue    []uint32 // slots ready for submission
	sleeping bool     // the loop is, or is about to be, waiting in io_uring_enter
	closed   bool
	fatal    error // set when io_uring_enter failed in a way retrying cannot fix

	wakers  sync.WaitGroup // callers between deciding to wake the loop and writing efd
	closing chan struct{}  // closed by Close: releases callers waiting for a slot
	done    chan struct{}  // closed when the loop has torn its ring down
	loopErr error          // the loop's teardown error, read after done

	efd     int
	flags   uint32   // setup flags of the loop's ring
	wakeBuf [8]byte  // target of the loop's eventfd read
	spare   []uint32 // the loop's half of the queue double buffer

	lane lane
}

type slot struct {
	sqe  SQE
	buf  unsafe.Pointer // keeps the caller's buffer reachable while the kernel uses it
	res  int32
	done chan struct{}
}

// New starts a ring for entries operations in flight (a power of two, 2..4096, or
// rounded up to one): entries-1 on the loop and one on the lane. Errors meaning this
// kernel cannot do io_uring wrap [ErrUnsupported].
func New(entries uint32) (*Ring, error) {
	if entries < 2 || entries > 4096 {
		return nil, fmt.Errorf("uring: %d entries: want 2..4096", entries)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("uring: eventfd: %w", err)
	}
	r := &Ring{efd: efd, closing: make(chan struct{}), done: make(chan struct{})}
	if err := r.lane.setup(); err != nil {
		unix.Close(efd)
		return nil, err
	}
	started := make(chan error, 1)
	go r.loop(entries, started)
	if err := <-started; err != nil {
		r.lane.raw.Close()
		unix.Close(efd)
		return nil, err
	}
	return r, nil
}

// Flags returns the setup flags the kernel accepted for the loop's ring.
func (r *Ring) Flags() uint32 { return r.flags }

// Slots returns how many operations the loop takes at once (the lane's one not
// counted); further callers wait for a slot.
func (r *Ring) Slots() int { return len(r.slots) }

// setup creates the loop's RawRing on the calling (locked) thread with the best flags
// this kernel accepts, and checks that it implements the opcodes Ring offers.
func (r *Ring) setup(entries uint32) (*RawRing, error) {
	var raw *RawRing
	var err error
	for _, flags := range setupFlagSets {
		raw, err = SetupRaw(entries, flags)
		if err == nil || !errors.Is(err, unix.EINVAL) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	if err := checkOps(raw); err != nil {
		raw.Close()
		return nil, err
	}
	r.flags = raw.Params().Flags
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

// run executes one operation described by sqe (UserData is overwritten) on the lane
// when the loop is idle and the lane free, else on the loop, and returns the kernel's
// result. buf is the memory the kernel will access, kept reachable until the completion
// has been consumed.
func (r *Ring) run(sqe *SQE, buf unsafe.Pointer) (int32, error) {
	if r.busy.Load() == 0 {
		if res, ok, err := r.lane.run(sqe, buf); ok {
			return res, err
		}
	}
	return r.do(sqe, buf)
}

// do runs an operation through the loop.
func (r *Ring) do(sqe *SQE, buf unsafe.Pointer) (int32, error) {
	r.busy.Add(1)
	defer r.busy.Add(-1)
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

	<-s.done
	res := s.res
	s.buf = nil
	r.free <- idx
	return res, nil
}

// wake interrupts the loop's io_uring_enter by making its eventfd read complete.
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
	laneErr := r.lane.close()
	r.wake()
	<-r.done
	// The operation of a caller still inside wake() may already have completed;
	// its write must not land on a recycled descriptor number.
	r.wakers.Wait()
	errs := []error{laneErr, r.loopErr}
	if err := unix.Close(r.efd); err != nil {
		errs = append(errs, fmt.Errorf("uring: close eventfd: %w", err))
	}
	return errors.Join(errs...)
}

// loop owns the main RawRing for its whole life. It never unlocks its OS thread: when it
// returns the thread exits, taking the io_uring task context with it rather than
// handing a thread with kernel-side ring state back to the scheduler.
func (r *Ring) loop(entries uint32, started chan<- error) {
	runtime.LockOSThread()
	raw, err := r.setup(entries)
	started <- err
	if err != nil {
		return
	}
	defer close(r.done)

	l := loopState{r: r, raw: raw}
	l.armWake()
	for {
		r.mu.Lock()
		q := r.queue
		r.queue = r.spare[:0]
		closed := r.closed
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
		}
		if l.closing && l.inflight == 0 && !l.wakeArmed && l.cancels == 0 {
			break
		}
		var want uint32
		if wait || closed {
			want = 1
		}
		l.enter(want)
		l.reap()
		r.kernelOps.Store(int32(l.inflight))
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
	l.sqe().PrepCancel(tagWake, 0, tagCancel)
	l.cancels++
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

// reap consumes every completion in the CQ.
func (l *loopState) reap() {
	raw := l.raw
	for cqe := raw.PeekCQE(); cqe != nil; cqe = raw.PeekCQE() {
		ud, res := cqe.UserData, cqe.Res
		raw.AdvanceCQ(1)
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
}

// lane is a small ring, one operation at a time, that the calling goroutine submits to
// and waits on itself. It is
// set up without SINGLE_ISSUER or COOP_TASKRUN because its owner changes from call to
// call, and so does the thread that submits and waits.
type lane struct {
	raw   *RawRing
	taken atomic.Bool // a caller owns the lane

	mu       sync.Mutex // the SQ: the owner's submission against Close's cancel
	closed   bool
	broken   bool           // io_uring_enter failed for good: callers use the loop
	inflight bool           // the owner's operation is in the kernel
	users    sync.WaitGroup // owners past the closed check
	buf      unsafe.Pointer // keeps the owner's buffer reachable
	backoff  time.Duration  // owner only
}

func (ln *lane) setup() error {
	// Two SQ entries: the operation, and Close's cancel of it.
	raw, err := SetupRaw(2, 0)
	if err != nil {
		return err
	}
	if err := checkOps(raw); err != nil {
		raw.Close()
		return err
	}
	ln.raw = raw
	return nil
}

// run executes sqe on the lane if it is free; ok is false when it is not, and the
// caller goes to the loop instead.
func (ln *lane) run(sqe *SQE, buf unsafe.Pointer) (res int32, ok bool, err error) {
	if ln.taken.Load() || !ln.taken.CompareAndSwap(false, true) {
		return 0, false, nil
	}
	defer ln.taken.Store(false)
	ln.mu.Lock()
	if ln.closed {
		ln.mu.Unlock()
		return 0, true, ErrClosed
	}
	if ln.broken {
		ln.mu.Unlock()
		return 0, false, nil
	}
	ln.users.Add(1)
	defer ln.users.Done()
	ln.buf = buf
	q := ln.raw.NextSQE()
	*q = *sqe
	q.UserData = tagLane
	ln.inflight = true
	toSubmit := ln.raw.flush()
	ln.mu.Unlock()

	res, err = ln.wait(toSubmit)
	ln.mu.Lock()
	ln.inflight = false
	ln.buf = nil
	ln.mu.Unlock()
	return res, true, err
}

// wait submits and waits until the lane's operation has completed, skipping the
// completions of Close's cancel requests.
func (ln *lane) wait(toSubmit uint32) (int32, error) {
	raw := ln.raw
	for {
		_, err := raw.enter(toSubmit, 1, EnterGetEvents)
		for cqe := raw.PeekCQE(); cqe != nil; cqe = raw.PeekCQE() {
			ud, res := cqe.UserData, cqe.Res
			raw.AdvanceCQ(1)
			if ud == tagLane {
				ln.backoff = 0
				return res, nil
			}
		}
		switch err {
		case nil, unix.EINTR:
		case unix.EAGAIN, unix.EBUSY:
			ln.sleep()
		default:
			// Withdraw whatever the kernel has not consumed (ours, perhaps a
			// cancel from Close) so no later enter runs it.
			ln.mu.Lock()
			ln.broken = true
			unsubmitted := false
			for i := atomic.LoadUint32(raw.sqKHead); i != raw.sqeTail; i++ {
				sqe := (*SQE)(unsafe.Add(raw.sqes, uintptr(i&raw.sqMask)*raw.sqeSize))
				unsubmitted = unsubmitted || sqe.UserData == tagLane
				sqe.PrepNop(tagIgnore)
			}
			ln.mu.Unlock()
			if unsubmitted {
				return 0, fmt.Errorf("io_uring_enter: %w", err)
			}
			// The kernel has the operation and will write its buffer: keep
			// waiting for it rather than hand the buffer back early.
			ln.sleep()
		}
		toSubmit = 0
	}
}

func (ln *lane) sleep() {
	ln.backoff = min(max(2*ln.backoff, 10*time.Microsecond), 10*time.Millisecond)
	time.Sleep(ln.backoff)
}

// close cancels the lane's operation if one is in flight, waits for its owner and
// releases the lane's ring.
func (ln *lane) close() error {
	ln.mu.Lock()
	ln.closed = true
	if ln.inflight {
		if sqe := ln.raw.NextSQE(); sqe != nil {
			sqe.PrepCancel(tagLane, 0, tagCancel)
			ln.raw.enter(ln.raw.flush(), 0, 0)
		}
	}
	ln.mu.Unlock()
	ln.users.Wait()
	return ln.raw.Close()
}
