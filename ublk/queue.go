package ublk

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"hast/internal/uring"
)

// wakeTag is the user_data of the eventfd read armed in each queue's ring; tags are below it.
const wakeTag = 1 << 32

// queue is one hardware queue: a ring owned by one locked OS thread.
type queue struct {
	d     *Device
	id    uint16
	depth int
	maxIO int

	descs []byte // mmap of /dev/ublkcN: depth ioDesc entries, read-only
	bufs  []byte // per-tag buffers (copy mode), depth × maxIO, anonymous mmap
	efd   int    // eventfd: serving goroutines wake the queue thread
	wbuf  [8]byte

	mu   sync.Mutex
	done []completion // results waiting to be committed

	exited chan error
	served atomic.Int64 // requests handled, for tests and status
	// sleeping is set while the queue thread may block in io_uring_enter.
	sleeping atomic.Bool
}

type completion struct {
	tag    uint16
	result int32
}

func startQueue(d *Device, id uint16) (*queue, error) {
	q := &queue{d: d, id: id, depth: int(d.info.QueueDepth), maxIO: int(d.info.MaxIOBufBytes),
		efd: -1, exited: make(chan error, 1)}
	var err error
	q.descs, err = unix.Mmap(int(d.cdev.Fd()), descOffset(id, pageSize), descLen(q.depth, pageSize),
		unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("ublk: map descriptors of queue %d: %w", id, err)
	}
	if !d.userCopy {
		q.bufs, err = unix.Mmap(-1, 0, q.depth*q.maxIO, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			q.release()
			return nil, fmt.Errorf("ublk: buffers of queue %d: %w", id, err)
		}
	}
	q.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		q.release()
		return nil, fmt.Errorf("ublk: eventfd: %w", err)
	}
	ready := make(chan error, 1)
	go q.run(ready)
	if err := <-ready; err != nil {
		q.release()
		return nil, err
	}
	return q, nil
}

// release unmaps and closes what the queue holds; the queue thread has exited.
func (q *queue) release() {
	if q.descs != nil {
		unix.Munmap(q.descs)
		q.descs = nil
	}
	if q.bufs != nil {
		unix.Munmap(q.bufs)
		q.bufs = nil
	}
	if q.efd >= 0 {
		unix.Close(q.efd)
		q.efd = -1
	}
}

// wait waits for the queue thread to finish (after STOP_DEV) and releases the queue.
func (q *queue) wait() error {
	err := <-q.exited
	q.release()
	return err
}

func (q *queue) desc(tag uint16) ioDesc {
	return *(*ioDesc)(unsafe.Pointer(&q.descs[int(tag)*ioDescSize]))
}

func (q *queue) buf(tag uint16) []byte {
	if q.bufs == nil {
		return nil
	}
	return q.bufs[int(tag)*q.maxIO : (int(tag)+1)*q.maxIO]
}

// run is the queue thread. The driver binds the queue to the task that issues FETCH_REQ and
// delivers completions as task work on it, so every io_uring_enter of this ring happens here.
func (q *queue) run(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
	ring, err := uring.SetupRaw(uint32(2*q.depth+2), 0)
	if err != nil {
		ready <- fmt.Errorf("ublk: ring of queue %d: %w", q.id, err)
		return
	}
	defer ring.Close()
	armed := 0 // commands the driver holds (FETCH or COMMIT_AND_FETCH)
	serving := 0
	push := func(op uint32, tag uint16, result int32) {
		sqe := ring.NextSQE()
		for sqe == nil { // cannot happen with 2×depth+2 slots; be safe anyway
			ring.Submit()
			sqe = ring.NextSQE()
		}
		*sqe = uring.SQE{Opcode: uring.OpURingCmd, FD: int32(q.d.cdev.Fd()), UserData: uint64(tag)}
		sqe.SetCmdOp(op)
		c := ioCmd{QID: q.id, Tag: tag, Result: result}
		if b := q.buf(tag); b != nil {
			c.Addr = uint64(uintptr(unsafe.Pointer(&b[0])))
		}
		*(*ioCmd)(unsafe.Pointer(&sqe.Cmd()[0])) = c
		armed++
	}
	armWake := func() {
		sqe := ring.NextSQE()
		sqe.PrepRead(q.efd, q.wbuf[:], -1, wakeTag) // -1: the file position (an eventfd has none)
	}
	for tag := 0; tag < q.depth; tag++ {
		push(ioFetchReq, uint16(tag), 0)
	}
	armWake()
	if _, err := ring.Submit(); err != nil {
		ready <- fmt.Errorf("ublk: FETCH_REQ on queue %d: %w", q.id, err)
		return
	}
	ready <- nil
	aborted := false
	var pending []completion
	for {
		if aborted && armed == 0 && serving == 0 {
			q.exited <- nil
			return
		}
		// One io_uring_enter submits the commits of the last round and waits for the next
		// event, unless results are already waiting. Serving goroutines write the eventfd
		// only while this thread sleeps (sleeping is set before the last look at the list,
		// they read it after appending, so one of the two sees the other).
		q.sleeping.Store(true)
		q.mu.Lock()
		wait := uint32(1)
		if len(q.done) > 0 {
			wait = 0
		}
		q.mu.Unlock()
		_, err := ring.Enter(wait, 0)
		q.sleeping.Store(false)
		if err != nil && err != unix.EINTR {
			q.exited <- fmt.Errorf("ublk: queue %d: io_uring_enter: %w", q.id, err)
			return
		}
		if q.d.abandon.Load() {
			q.exited <- nil // the deferred ring.Close cancels the armed commands
			return
		}
		for cqe := ring.PeekCQE(); cqe != nil; cqe = ring.PeekCQE() {
			ud, res := cqe.UserData, cqe.Res
			ring.AdvanceCQ(1)
			if ud == wakeTag {
				armWake()
				continue
			}
			armed--
			tag := uint16(ud)
			switch {
			case res == ioResOK:
				serving++
				go q.serve(tag, q.desc(tag))
			case res == -int32(syscall.ENODEV):
				aborted = true // STOP_DEV or a dying device: do not re-arm
			default:
				q.d.log.Error().Int("queue", int(q.id)).Int("tag", int(tag)).Int32("res", res).Msg("ublk: unexpected command result")
				aborted = true
			}
		}
		q.mu.Lock()
		pending, q.done = q.done, pending[:0]
		q.mu.Unlock()
		for _, c := range pending {
			serving--
			push(ioCommitAndFetchReq, c.tag, c.result)
		}
	}
}

// serve runs one request against the volume and hands the result to the queue thread.
func (q *queue) serve(tag uint16, d ioDesc) {
	res := q.handle(tag, d)
	q.served.Add(1)
	q.mu.Lock()
	q.done = append(q.done, completion{tag, res})
	q.mu.Unlock()
	if !q.sleeping.CompareAndSwap(true, false) {
		return // the queue thread is awake and will see the result
	}
	q.wake()
}

// wake makes the queue thread return from io_uring_enter.
func (q *queue) wake() {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	unix.Write(q.efd, one[:])
}

// userBufs holds request buffers for USER_COPY mode.
var userBufs sync.Pool

func (q *queue) handle(tag uint16, d ioDesc) int32 {
	if q.d.closed.Load() {
		return -int32(syscall.EIO)
	}
	vol := q.d.vol
	off := int64(d.StartSector) << 9
	n := int(d.NrSectors) << 9
	op := d.OpFlags & 0xff
	switch op {
	case opRead, opWrite:
		if n > q.maxIO {
			return -int32(syscall.EINVAL)
		}
		buf := q.buf(tag)
		if buf == nil {
			p, _ := userBufs.Get().(*[]byte)
			if p == nil || cap(*p) < q.maxIO {
				b := make([]byte, q.maxIO)
				p = &b
			}
			defer userBufs.Put(p)
			buf = *p
		}
		buf = buf[:n]
		pos := userCopyOffset(q.id, tag)
		if op == opRead {
			if _, err := vol.ReadAt(buf, off); err != nil {
				return errno(err)
			}
			if q.d.userCopy {
				if _, err := unix.Pwrite(int(q.d.cdev.Fd()), buf, pos); err != nil {
					return errno(err)
				}
			}
			return int32(n)
		}
		if q.d.userCopy {
			if _, err := unix.Pread(int(q.d.cdev.Fd()), buf, pos); err != nil {
				return errno(err)
			}
		}
		if _, err := vol.WriteAt(buf, off); err != nil {
			return errno(err)
		}
		if d.OpFlags&ioFlagFUA != 0 {
			if err := vol.Flush(); err != nil {
				return errno(err)
			}
		}
		return int32(n)
	case opFlush:
		if err := vol.Flush(); err != nil {
			return errno(err)
		}
		return 0
	case opDiscard:
		if err := vol.Discard(off, int64(n)); err != nil {
			return errno(err)
		}
		return 0
	case opWriteZeroes:
		if d.OpFlags&ioFlagNoUnmap == 0 {
			if err := vol.Discard(off, int64(n)); err != nil {
				return errno(err)
			}
			return 0
		}
		zero := make([]byte, min(n, 1<<20))
		for done := 0; done < n; {
			k := min(len(zero), n-done)
			if _, err := vol.WriteAt(zero[:k], off+int64(done)); err != nil {
				return errno(err)
			}
			done += k
		}
		return 0
	}
	return -int32(syscall.EOPNOTSUPP)
}
