package uring

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hast/internal/uring/uringtest"
)

func newRing(t testing.TB, entries uint32) *Ring {
	t.Helper()
	r, err := New(entries)
	if err != nil {
		t.Fatalf("New(%d): %v", entries, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// testPipe returns a pipe's read and write ends, closed when the test ends.
func testPipe(t testing.TB) [2]int {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(p[0])
		unix.Close(p[1])
	})
	return p
}

// tempFD creates a file of size bytes (preallocated) and opens it with extra flags.
func tempFD(t testing.TB, size int64, flags int) int {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if size > 0 {
		if err := unix.Fallocate(fd, 0, 0, size); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13) ^ seed
	}
	return b
}

// aligned returns n bytes starting on a 4096-byte boundary, as O_DIRECT wants.
func aligned(n int) []byte {
	b := make([]byte, n+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)) & 4095
	return b[off : off+n : off+n]
}

func TestSetupRawMapsRings(t *testing.T) {
	r, err := SetupRaw(8, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := r.Params()
	if p.Features&FeatSingleMmap == 0 || r.SQEntries() != 8 || r.CQEntries() != 16 {
		t.Fatalf("features %#x, SQ %d, CQ %d", p.Features, r.SQEntries(), r.CQEntries())
	}
	if r.NextSQE128() != nil || r.PeekCQE32() != nil {
		t.Fatalf("128-byte accessors work on a 64-byte ring")
	}
	// Fill the SQ: the ninth slot does not exist until the kernel consumes some.
	for i := range 8 {
		sqe := r.NextSQE()
		if sqe == nil {
			t.Fatalf("SQE %d: SQ full early", i)
		}
		sqe.PrepNop(uint64(100 + i))
	}
	if r.NextSQE() != nil || r.SQSpace() != 0 {
		t.Fatalf("SQ not full after 8 SQEs")
	}
	n, err := r.SubmitAndWait(8)
	if err != nil || n != 8 {
		t.Fatalf("SubmitAndWait = %d, %v", n, err)
	}
	if r.SQSpace() != 8 || r.CQReady() != 8 {
		t.Fatalf("after submit: SQ space %d, CQ ready %d", r.SQSpace(), r.CQReady())
	}
	for i := range 8 {
		cqe := r.PeekCQE()
		if cqe == nil || cqe.UserData != uint64(100+i) || cqe.Res != 0 {
			t.Fatalf("CQE %d = %+v", i, cqe)
		}
		r.AdvanceCQ(1)
	}
	if r.PeekCQE() != nil {
		t.Fatalf("CQ not empty")
	}
	ok, err := r.Supported(OpRead, OpWrite, OpFsync, OpFallocate, OpURingCmd)
	if err != nil || !ok {
		t.Fatalf("probe = %v, %v", ok, err)
	}
	if ok, err := r.Supported(probeOps - 1); err != nil || ok {
		t.Fatalf("probe of an opcode that does not exist = %v, %v", ok, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSQE128URingCmd submits IORING_OP_URING_CMD in a 128-byte SQE to a device without
// a uring_cmd handler (/dev/zero; /dev/null has a no-op one on recent kernels): the
// kernel must recognise the opcode and layout, and refuse the command itself with
// EOPNOTSUPP (not EINVAL, which a mangled SQE would produce).
func TestSQE128URingCmd(t *testing.T) {
	r, err := SetupRaw(4, SetupSQE128|SetupCQE32)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Params().Flags&(SetupSQE128|SetupCQE32) != SetupSQE128|SetupCQE32 {
		t.Fatalf("flags %#x", r.Params().Flags)
	}
	f, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 2 { // twice, so the second entry exercises the 128-byte stride
		sqe := r.NextSQE128()
		sqe.PrepURingCmd(int(f.Fd()), 0x1234, uint64(7+i))
		copy(sqe.Cmd(), bytes.Repeat([]byte{0xab}, 80))
		if sqe.CmdOp() != 0x1234 || sqe.Opcode != OpURingCmd {
			t.Fatalf("prep: %+v", sqe.SQE)
		}
		if _, err := r.SubmitAndWait(1); err != nil {
			t.Fatal(err)
		}
		cqe := r.PeekCQE32()
		if cqe == nil || cqe.UserData != uint64(7+i) || syscall.Errno(-cqe.Res) != unix.EOPNOTSUPP {
			t.Fatalf("URING_CMD on /dev/zero: %+v, want EOPNOTSUPP", cqe)
		}
		r.AdvanceCQ(1)
	}
}

func TestSetupErrorsMapToUnsupported(t *testing.T) {
	for _, errno := range []syscall.Errno{unix.ENOSYS, unix.EPERM, unix.EACCES} {
		if err := setupError(errno, 0); !errors.Is(err, ErrUnsupported) || !errors.Is(err, errno) {
			t.Errorf("setupError(%v) = %v, want ErrUnsupported wrapping the errno", errno, err)
		}
	}
	if err := setupError(unix.EINVAL, SetupDeferTaskrun); errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.EINVAL) {
		t.Errorf("setupError(EINVAL) = %v, want a plain EINVAL for the flag fallback", err)
	}
	if _, err := New(1); err == nil {
		t.Errorf("New(1) succeeded")
	}
}

// TestUnsupportedUnderSeccomp runs New in a child process whose seccomp filter makes
// io_uring_setup fail as a kernel without io_uring (ENOSYS) or with it disabled (EPERM)
// would, and expects ErrUnsupported.
func TestUnsupportedUnderSeccomp(t *testing.T) {
	if errno := os.Getenv("URING_TEST_SECCOMP"); errno != "" {
		var e syscall.Errno = unix.ENOSYS
		if errno == "EPERM" {
			e = unix.EPERM
		}
		if err := uringtest.DenySetup(e); err != nil {
			fmt.Println("seccomp:", err)
			os.Exit(2)
		}
		_, err := New(8)
		fmt.Println("New:", err)
		if !errors.Is(err, ErrUnsupported) || !errors.Is(err, e) {
			os.Exit(1)
		}
		os.Exit(0)
	}
	for _, errno := range []string{"ENOSYS", "EPERM"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestUnsupportedUnderSeccomp$")
		// The race runtime sleeps a second at exit unless told otherwise.
		cmd.Env = append(os.Environ(), "URING_TEST_SECCOMP="+errno, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: child failed: %v\n%s", errno, err, out)
		}
	}
}

func TestRingReadWriteConcurrent(t *testing.T) {
	for _, direct := range []bool{false, true} {
		for _, m := range ringModes {
			t.Run(fmt.Sprintf("odirect=%v/%s", direct, m.name), func(t *testing.T) {
				flags := 0
				if direct {
					flags = unix.O_DIRECT
				}
				const workers, rounds = 24, 40
				const size = workers * rounds * 8192 // no wrap-around: each block has one writer
				fd := tempFD(t, size, flags)
				r, err := NewWithOptions(16, m.opts) // fewer slots than goroutines: callers also queue for slots
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				var wg sync.WaitGroup
				errs := make(chan error, workers)
				for g := range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf, got := aligned(8192), aligned(8192)
						for i := range rounds {
							// Each worker owns the 8 KiB blocks ≡ g (mod workers).
							off := int64(i*workers+g) * 8192
							copy(buf, pattern(len(buf), byte(g*rounds+i)))
							if n, err := r.Write(fd, buf, off); err != nil || n != len(buf) {
								errs <- fmt.Errorf("write at %d = %d, %v", off, n, err)
								return
							}
							if n, err := r.Read(fd, got, off); err != nil || n != len(got) {
								errs <- fmt.Errorf("read at %d = %d, %v", off, n, err)
								return
							}
							if !bytes.Equal(got, buf) {
								errs <- fmt.Errorf("worker %d read back other data at %d", g, off)
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				if err := r.Fsync(fd, FsyncDatasync); err != nil {
					t.Fatal(err)
				}
				if err := r.Fsync(fd, 0); err != nil {
					t.Fatal(err)
				}
				// Cross-check with plain pread that the data is really in the file.
				want := pattern(8192, byte(5*rounds+rounds-1))
				got := aligned(8192)
				off := int64((rounds-1)*workers+5) * 8192
				if _, err := unix.Pread(fd, got, off); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("pread after the ring's writes: %v, equal %v", err, bytes.Equal(got, want))
				}
			})
		}
	}
}

// ringModes are the loop's two ways of waiting, and the direct path (over the poller
// loop); tests on files run in each.
var ringModes = append(loopModes[:len(loopModes):len(loopModes)], struct {
	name string
	opts Options
}{"direct", Options{Direct: true}})

func TestRingShortReadAtEOF(t *testing.T) {
	fd := tempFD(t, 0, 0)
	r := newRing(t, 4)
	if n, err := r.Write(fd, []byte("0123456789"), 90); err != nil || n != 10 {
		t.Fatalf("write = %d, %v", n, err)
	}
	buf := make([]byte, 64)
	if n, err := r.Read(fd, buf, 80); err != nil || n != 20 || string(buf[10:20]) != "0123456789" {
		t.Fatalf("read across EOF = %d, %v, %q", n, err, buf[:n])
	}
	if n, err := r.Read(fd, buf, 100); err != nil || n != 0 {
		t.Fatalf("read at EOF = %d, %v", n, err)
	}
	if n, err := r.Read(fd, nil, 0); err != nil || n != 0 {
		t.Fatalf("empty read = %d, %v", n, err)
	}
}

func TestRingErrorsPropagate(t *testing.T) {
	r := newRing(t, 4)
	buf := aligned(4096)
	if _, err := r.Read(-1, buf, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("read from fd -1 = %v, want EBADF", err)
	}
	// Memory alignment is not tested: 6.18 accepts misaligned buffers for O_DIRECT on
	// ext4 although statx reports dio_mem_align 512. Offsets and lengths are enforced.
	fd := tempFD(t, 1<<20, unix.O_DIRECT)
	if _, err := r.Write(fd, buf, 100); !errors.Is(err, unix.EINVAL) {
		t.Errorf("O_DIRECT write at a misaligned offset = %v, want EINVAL", err)
	}
	if _, err := r.Write(fd, buf[:100], 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("O_DIRECT write of a misaligned length = %v, want EINVAL", err)
	}
	ro, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ro)
	if _, err := r.Write(ro, buf, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("write to a read-only fd = %v, want EBADF", err)
	}
	p := testPipe(t)
	if err := r.Fsync(p[1], FsyncDatasync); !errors.Is(err, unix.EINVAL) {
		t.Errorf("fdatasync of a pipe = %v, want EINVAL", err)
	}
	// The ring is still healthy after failed operations.
	if n, err := r.Write(fd, buf, 4096); err != nil || n != 4096 {
		t.Fatalf("write after errors = %d, %v", n, err)
	}
}

func TestRingFallocate(t *testing.T) {
	fd := tempFD(t, 0, 0)
	r := newRing(t, 4)
	const size = 1 << 20
	if err := r.Fallocate(fd, 0, 0, size); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size != size || st.Blocks*512 < size {
		t.Fatalf("after fallocate: %v, size %d, blocks %d", err, st.Size, st.Blocks)
	}
	if err := r.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, size/2); err != nil {
		t.Fatal(err)
	}
	before := st.Blocks
	if err := unix.Fstat(fd, &st); err != nil || st.Size != size || before-st.Blocks != size/2/512 {
		t.Fatalf("after punching half: %v, size %d, blocks %d → %d", err, st.Size, before, st.Blocks)
	}
	if err := r.Fallocate(fd, 0, -1, 10); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("fallocate at -1 = %v, want EINVAL", err)
	}
}

// waitFor polls cond; it synchronises with goroutines parking inside the ring and
// fails the test rather than hang if they never get there.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(time.Millisecond) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// loopModes are the two ways the loop waits: in the Go poller, and in io_uring_enter
// as where the eventfd cannot be registered.
var loopModes = []struct {
	name string
	opts Options
}{
	{"poller", Options{}},
	{"enter", Options{blockingWait: true}},
}

// TestCloseWithOperationsInFlight blocks reads on an empty pipe in every loop slot and
// in the queue for slots, then closes the ring: the reads in the kernel are cancelled,
// the queued ones get ErrClosed, and nothing hangs or leaks.
func TestCloseWithOperationsInFlight(t *testing.T) {
	for _, m := range loopModes {
		t.Run(m.name, func(t *testing.T) { checkCloseWithOperationsInFlight(t, m.opts) })
	}
}

func checkCloseWithOperationsInFlight(t *testing.T, opts Options) {
	r, err := NewWithOptions(4, opts) // 3 loop slots: one SQ entry is the loop's own
	if err != nil {
		t.Fatal(err)
	}
	p := testPipe(t)

	const readers = 5 // 3 slots + 2 waiting for a slot
	errs := make(chan error, readers)
	for range readers {
		go func() {
			buf := make([]byte, 16)
			n, err := r.Read(p[0], buf, 0)
			if err == nil {
				err = fmt.Errorf("read returned %d bytes", n)
			}
			errs <- err
		}()
	}
	waitFor(t, "readers to block", func() bool {
		return r.active.Load() == readers && r.kernelOps.Load() == 3
	})
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var cancelled, closed int
	for range readers {
		err := <-errs
		switch {
		case errors.Is(err, unix.ECANCELED) || errors.Is(err, unix.EINTR):
			cancelled++
		case errors.Is(err, ErrClosed):
			closed++
		default:
			t.Errorf("reader: %v", err)
		}
	}
	if cancelled != 3 || closed != 2 {
		t.Errorf("%d cancelled, %d refused; want 3 and 2", cancelled, closed)
	}
	if _, err := r.Write(p[1], []byte("x"), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("write after Close = %v", err)
	}
	if err := r.Nop(); !errors.Is(err, ErrClosed) {
		t.Errorf("nop after Close = %v", err)
	}
	if err := r.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
}

// TestCloseDrainsDiskIO closes the ring while writers hammer it: every write either
// completed fully, was cancelled while queued in the kernel's workers (ECANCELED), or
// was refused with ErrClosed; and Close returns.
func TestCloseDrainsDiskIO(t *testing.T) {
	for _, m := range ringModes {
		t.Run(m.name, func(t *testing.T) { checkCloseDrainsDiskIO(t, m.opts) })
	}
}

func checkCloseDrainsDiskIO(t *testing.T, opts Options) {
	fd := tempFD(t, 1<<20, 0)
	r, err := NewWithOptions(8, opts)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	done := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := pattern(4096, byte(g))
			for {
				n, err := r.Write(fd, buf, int64(g)*4096)
				if errors.Is(err, ErrClosed) || errors.Is(err, unix.ECANCELED) {
					return
				}
				if err != nil || n != len(buf) {
					t.Errorf("write = %d, %v", n, err)
					return
				}
				mu.Lock()
				done++
				mu.Unlock()
			}
		}()
	}
	waitFor(t, "writes to run", func() bool { mu.Lock(); defer mu.Unlock(); return done > 100 })
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// TestNoAllocations checks both paths: the loop, and the direct path of an idle
// Direct ring.
func TestNoAllocations(t *testing.T) {
	fd := tempFD(t, 1<<20, 0)
	buf := make([]byte, 4096)
	for _, direct := range []bool{false, true} {
		r, err := NewWithOptions(8, Options{Direct: direct})
		if err != nil {
			t.Fatal(err)
		}
		write := func() {
			if _, err := r.Write(fd, buf, 8192); err != nil {
				t.Fatal(err)
			}
		}
		write() // warm up
		if a := testing.AllocsPerRun(200, write); a != 0 {
			t.Errorf("direct %v: %.1f allocations per write", direct, a)
		}
		if got := r.nDirect.Load() > 0; got != direct {
			t.Errorf("direct %v: direct path used: %v", direct, got)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDirectPath: on a Direct ring a lone operation is a plain system call, every kind
// of operation gives the result the ring would, and after operations overlap even a
// lone one takes the loop until the ring has been idle for busyHold.
func TestDirectPath(t *testing.T) {
	fd := tempFD(t, 1<<20, 0)
	r, err := NewWithOptions(8, Options{Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := pattern(8192, 3)
	if n, err := r.WriteFlags(fd, data, 4096, unix.RWF_DSYNC); err != nil || n != len(data) {
		t.Fatalf("write = %d, %v", n, err)
	}
	got := make([]byte, len(data))
	if n, err := r.Read(fd, got, 4096); err != nil || n != len(got) || !bytes.Equal(got, data) {
		t.Fatalf("read = %d, %v (equal %v)", n, err, bytes.Equal(got, data))
	}
	if err := r.Fsync(fd, FsyncDatasync); err != nil {
		t.Fatal(err)
	}
	if err := r.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE|unix.FALLOC_FL_PUNCH_HOLE, 4096, 4096); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Read(fd, got[:4096], 4096); err != nil || n != 4096 || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatalf("read of the punched block = %d, %v", n, err)
	}
	if _, err := r.Read(-1, got, 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("read of a bad descriptor = %v, want EBADF", err)
	}
	if n := r.nDirect.Load(); n != 6 || r.kernelOps.Load() != 0 {
		t.Fatalf("%d operations on the direct path, want all 6", n)
	}

	// Overlap: with another operation in flight (simulated: a pipe cannot be read
	// on the direct path, pread refuses pipes) the write takes the loop, and so does
	// a lone write right after.
	before := r.nDirect.Load()
	r.hold = time.Hour // "right after", however slow this machine is
	r.active.Add(1)
	if _, err := r.Write(fd, data[:4096], 0); err != nil {
		t.Fatal(err)
	}
	r.active.Add(-1)
	if _, err := r.Write(fd, data[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if n := r.nDirect.Load() - before; n != 0 {
		t.Fatalf("%d operations took the direct path while or right after the ring was busy", n)
	}
	r.busyUntil.Store(0) // as if the hour had passed
	if _, err := r.Write(fd, data[:4096], 0); err != nil {
		t.Fatal(err)
	}
	if n := r.nDirect.Load() - before; n != 1 {
		t.Fatalf("a write after the hold took the direct path %d times, want 1", n)
	}
}

// cancelInFlight asks the loop to cancel every operation in the kernel, as the kernel
// itself does for the operations of a thread that exits.
func (r *Ring) cancelInFlight() {
	r.mu.Lock()
	r.cancelReq = true
	r.unlockAndWake()
}

// pendingRead starts a one-byte read of p's empty read end on r and waits until the
// kernel holds it; the result arrives on the returned channel.
func pendingRead(t *testing.T, r *Ring, p [2]int) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		n, err := r.Read(p[0], b, 0)
		if err == nil && (n != 1 || b[0] != 'y') {
			err = fmt.Errorf("read %d bytes %q, want \"y\"", n, b[:n])
		}
		done <- err
	}()
	waitFor(t, "the read to reach the kernel", func() bool { return r.kernelOps.Load() == 1 })
	return done
}

// TestCancelledOperationIsRetried: an operation the kernel cancels while the ring is
// open is made again, not failed with ECANCELED.
func TestCancelledOperationIsRetried(t *testing.T) {
	for _, m := range loopModes {
		t.Run(m.name, func(t *testing.T) {
			r, err := NewWithOptions(8, m.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			p := testPipe(t)
			done := pendingRead(t, r, p)
			r.cancelInFlight()
			waitFor(t, "the cancelled read to be retried", func() bool { return r.nRetried.Load() == 1 })
			waitFor(t, "the retried read to reach the kernel", func() bool { return r.kernelOps.Load() == 1 })
			if _, err := unix.Write(p[1], []byte("y")); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestThreadExitDoesNotFailOperations: the loop submits from whichever thread runs it,
// and the kernel cancels a thread's requests when it exits, which a Go thread does when
// a goroutine locked to it returns. With one P, such goroutines run on the thread that
// ran the loop. The read must still return its data.
func TestThreadExitDoesNotFailOperations(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	r := newRing(t, 8)
	p := testPipe(t)
	done := pendingRead(t, r, p)
	for range 20 {
		exited := make(chan struct{})
		go func() {
			runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
			close(exited)
		}()
		<-exited
	}
	waitFor(t, "the read to be back in the kernel", func() bool { return r.kernelOps.Load() == 1 })
	if _, err := unix.Write(p[1], []byte("y")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("retried %d times", r.nRetried.Load())
}
