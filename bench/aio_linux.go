package bench

import (
	"errors"
	"fmt"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux native AIO (io_setup/io_submit/io_getevents), just enough for the baselines: with O_DIRECT
// on a preallocated file it submits both copies of a write in one system call and lets the disk
// work on them at once, and it lets the ideal pipeline's receiver keep reading the socket while
// its writes are in flight. No goroutine hand-off is involved, so the baselines pay nothing the
// hardware does not.

const (
	iocbCmdPread  = 0
	iocbCmdPwrite = 1
)

// iocb is struct iocb of <linux/aio_abi.h> (little-endian field order).
type iocb struct {
	data     uint64
	key      uint32
	rwFlags  int32
	opcode   uint16
	reqprio  int16
	fd       uint32
	buf      uint64
	nbytes   uint64
	offset   int64
	reserved uint64
	flags    uint32
	resfd    uint32
}

// ioEvent is struct io_event.
type ioEvent struct {
	data uint64
	obj  uint64
	res  int64
	res2 int64
}

type aioCtx uintptr

func aioSetup(nr int) (aioCtx, error) {
	var ctx aioCtx
	_, _, e := unix.Syscall(unix.SYS_IO_SETUP, uintptr(nr), uintptr(unsafe.Pointer(&ctx)), 0)
	if e != 0 {
		return 0, fmt.Errorf("io_setup(%d): %w", nr, e)
	}
	return ctx, nil
}

func (c aioCtx) destroy() {
	unix.Syscall(unix.SYS_IO_DESTROY, uintptr(c), 0, 0)
}

// submit queues the iocbs and returns how many went out; the buffers they point at must stay
// referenced until they complete.
func (c aioCtx) submit(cbs []*iocb) (int, error) {
	done := 0
	for done < len(cbs) {
		n, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, uintptr(c), uintptr(len(cbs)-done), uintptr(unsafe.Pointer(&cbs[done])))
		if e == unix.EINTR || e == unix.EAGAIN {
			continue
		}
		if e != 0 {
			return done, fmt.Errorf("io_submit: %w", e)
		}
		done += int(n)
	}
	return done, nil
}

// getEvents waits for at least minNr completions (or the timeout, if positive).
func (c aioCtx) getEvents(minNr int, evs []ioEvent, timeout time.Duration) (int, error) {
	var tsp *unix.Timespec
	var ts unix.Timespec
	if timeout > 0 {
		ts = unix.NsecToTimespec(int64(timeout))
		tsp = &ts
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, uintptr(c), uintptr(minNr), uintptr(len(evs)),
			uintptr(unsafe.Pointer(&evs[0])), uintptr(unsafe.Pointer(tsp)), 0)
		if e == unix.EINTR {
			if tsp != nil {
				return 0, nil
			}
			continue
		}
		if e != 0 {
			return 0, fmt.Errorf("io_getevents: %w", e)
		}
		return int(n), nil
	}
}

func (cb *iocb) prep(op uint16, fd int, b []byte, off int64, data uint64) {
	*cb = iocb{data: data, opcode: op, fd: uint32(fd), nbytes: uint64(len(b)), offset: off}
	if len(b) > 0 {
		cb.buf = uint64(uintptr(unsafe.Pointer(&b[0])))
	}
}

// eventErr turns an io_event's result into an error for a transfer of want bytes.
func eventErr(ev *ioEvent, want int) error {
	switch {
	case ev.res < 0:
		return syscall.Errno(-ev.res)
	case int(ev.res) != want:
		return fmt.Errorf("short transfer: %d of %d bytes", ev.res, want)
	}
	return nil
}

var errClosed = errors.New("bench: target closed")
