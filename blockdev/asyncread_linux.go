package blockdev

import (
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"hast/internal/uring"
)

// Reads of the page-cache device never block a goroutine in the kernel.
//
// A blocking pread from a goroutine keeps its P (one of GOMAXPROCS) until the runtime's
// monitor notices, tens of microseconds to milliseconds later. With two CPUs and a frontend
// serving 32 cold random reads at once, the goroutines that would accept requests and send
// replies then wait for a P more than the disk: our NBD server over a file reached 19k
// IOPS where nbdkit (16 threads) reached 54k and the same preads without the server
// around them 45k, and GOMAXPROCS=8 brought the server to 48k.
//
// So a read first asks for the cached part with preadv2(RWF_NOWAIT), which never waits
// for the disk; whatever is not cached is read through an io_uring (buffered, so the
// page cache, readahead and coherence with pwrite are unchanged), where the goroutine
// parks on a channel and gives its P back. A lone miss on an idle ring is a plain
// pread (the ring's direct path): one blocked goroutine holds at most one P. The ring
// is made on the first miss, so tools that open a component to read its metadata never
// start one. Where io_uring or RWF_NOWAIT are unavailable the device falls back to what
// it did before.

// asyncReader is the fileDevice's read path; the zero value is ready.
type asyncReader struct {
	mu       sync.Mutex
	ring     atomic.Pointer[uring.Ring]
	noRing   atomic.Bool // io_uring cannot be used here: blocking pread
	noNowait atomic.Bool // RWF_NOWAIT is refused for this file
	closed   atomic.Bool // set by close, under mu
	ringOnly bool        // tests: the ring has no direct path, every miss goes through it
}

// readFull fills p from off of fd, the way os.File.ReadAt does (io.EOF when the file
// ends first).
func (a *asyncReader) readFull(fd int, p []byte, off int64) (int, error) {
	got := 0
	for got < len(p) {
		n, err := a.readOnce(fd, p[got:], off+int64(got))
		if err != nil {
			return got, err
		}
		if n == 0 {
			return got, io.EOF
		}
		got += n
	}
	return got, nil
}

// readOnce reads at most len(p) bytes, from the page cache if it can, else through the
// ring, else with a blocking pread.
func (a *asyncReader) readOnce(fd int, p []byte, off int64) (int, error) {
	if !a.noNowait.Load() {
		n, err := preadNowait(fd, p, off)
		switch {
		case err == nil:
			if n > 0 || len(p) == 0 {
				return n, nil
			}
			// 0 bytes: end of file, or (on some file systems) nothing cached; a plain
			// read tells the two apart.
		case err == unix.EAGAIN:
		case err == unix.EOPNOTSUPP || err == unix.EINVAL:
			a.noNowait.Store(true)
		default:
			return 0, err
		}
	}
	if r := a.getRing(); r != nil {
		n, err := r.Read(fd, p, off)
		if err == nil || !a.closed.Load() {
			return n, err
		}
		// The device closed the ring under this read (refused it, or cancelled it in
		// flight); the descriptor is still held, so finish with pread.
	}
	for {
		n, err := unix.Pread(fd, p, off)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// getRing returns the read ring, making it on first use; nil means blocking reads.
func (a *asyncReader) getRing() *uring.Ring {
	if r := a.ring.Load(); r != nil {
		return r
	}
	if a.noRing.Load() {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.ring.Load(); r != nil || a.closed.Load() {
		return r
	}
	opts := ringOptions
	if a.ringOnly {
		opts = uring.Options{}
	}
	r, err := uring.NewWithOptions(ringEntries, opts)
	if err != nil {
		// Unsupported or refused (memlock, policy): reading is still correct without it.
		a.noRing.Store(true)
		return nil
	}
	a.ring.Store(r)
	return r
}

// close stops the ring, if one was made; reads still waiting on it fall back to pread.
func (a *asyncReader) close() error {
	a.mu.Lock()
	a.closed.Store(true)
	r := a.ring.Swap(nil)
	a.mu.Unlock()
	if r == nil {
		return nil
	}
	return r.Close()
}

// preadNowait is preadv2(fd, {p}, off, RWF_NOWAIT), without the allocation of
// unix.Preadv2's iovec slice.
func preadNowait(fd int, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	iov := unix.Iovec{Base: unsafe.SliceData(p)}
	iov.SetLen(len(p))
	for {
		// preadv2's position is split into low and high words; on 64-bit the high one
		// is ignored.
		n, _, errno := unix.Syscall6(unix.SYS_PREADV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1,
			uintptr(off), 0, unix.RWF_NOWAIT)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, syscall.Errno(errno)
		}
		return int(n), nil
	}
}
