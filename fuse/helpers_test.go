package fuse

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"hast/internal/fusectl"
	"hast/replicate"
)

// memVolume is an in-memory replicate.Volume that enforces the alignment rules of a real one:
// misaligned or out-of-range requests fail with replicate.ErrRange (and are counted, so tests
// can prove the frontend never sends one).
type memVolume struct {
	sector int64

	mu   sync.RWMutex
	data []byte

	calls      atomic.Int64 // every method call except Size and SectorSize
	flushes    atomic.Int64
	misaligned atomic.Int64

	dmu      sync.Mutex
	discards [][2]int64 // (off, length)

	// block, when set, makes WriteAt announce itself on entered and wait for release.
	block    atomic.Bool
	entered  chan struct{}
	released chan struct{}
}

func newMemVolume(size int64, sector int) *memVolume {
	return &memVolume{
		sector:   int64(sector),
		data:     make([]byte, size),
		entered:  make(chan struct{}, 16),
		released: make(chan struct{}),
	}
}

var _ replicate.Volume = (*memVolume)(nil)

func (m *memVolume) check(off, length int64) error {
	if off < 0 || length < 0 || off%m.sector != 0 || length%m.sector != 0 || off+length > int64(len(m.data)) {
		m.misaligned.Add(1)
		return fmt.Errorf("mem volume [%d,+%d): %w", off, length, replicate.ErrRange)
	}
	return nil
}

func (m *memVolume) ReadAt(p []byte, off int64) (int, error) {
	m.calls.Add(1)
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return copy(p, m.data[off:]), nil
}

func (m *memVolume) WriteAt(p []byte, off int64) (int, error) {
	m.calls.Add(1)
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	if m.block.Load() {
		m.entered <- struct{}{}
		<-m.released
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memVolume) Flush() error {
	m.calls.Add(1)
	m.flushes.Add(1)
	return nil
}

// Discard zeroes the range, as punching a hole into a file-backed component does.
func (m *memVolume) Discard(off, length int64) error {
	m.calls.Add(1)
	if err := m.check(off, length); err != nil {
		return err
	}
	m.dmu.Lock()
	m.discards = append(m.discards, [2]int64{off, length})
	m.dmu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}

func (m *memVolume) Size() int64     { return int64(len(m.data)) }
func (m *memVolume) SectorSize() int { return int(m.sector) }

func (m *memVolume) snapshot() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

func (m *memVolume) discardLog() [][2]int64 {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	return append([][2]int64(nil), m.discards...)
}

// fileVolume is a replicate.Volume on a preallocated file opened with O_DIRECT, the way a
// file-backed local component is driven; the benchmarks compare the FUSE path against it.
type fileVolume struct {
	f    *os.File
	size int64
}

func newFileVolume(tb testing.TB, size int64) *fileVolume {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "backing")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_DIRECT, 0o600)
	if err != nil {
		tb.Fatalf("open backing file: %v", err)
	}
	tb.Cleanup(func() { f.Close() })
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		tb.Fatalf("preallocate backing file: %v", err)
	}
	return &fileVolume{f: f, size: size}
}

func (v *fileVolume) ReadAt(p []byte, off int64) (int, error)  { return v.f.ReadAt(p, off) }
func (v *fileVolume) WriteAt(p []byte, off int64) (int, error) { return v.f.WriteAt(p, off) }
func (v *fileVolume) Flush() error                             { return unix.Fdatasync(int(v.f.Fd())) }
func (v *fileVolume) Discard(off, length int64) error {
	return unix.Fallocate(int(v.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}
func (v *fileVolume) Size() int64     { return v.size }
func (v *fileVolume) SectorSize() int { return 4096 }

// requireFUSE fails the test when it cannot mount: these tests run as root in CI and must not
// pass silently where they did not run.
func requireFUSE(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatalf("FUSE tests need root (euid %d)", os.Geteuid())
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		tb.Fatalf("FUSE tests need /dev/fuse: %v", err)
	}
}

// requireTool fails the test when a client program is not installed.
func requireTool(tb testing.TB, names ...string) {
	tb.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			tb.Fatalf("%s is not installed (apt-get install -y fio e2fsprogs util-linux): %v", name, err)
		}
	}
}

func testLogger(tb testing.TB) zerolog.Logger {
	level := zerolog.InfoLevel
	if _, ok := tb.(*testing.B); ok {
		level = zerolog.WarnLevel // keep benchmark output to the figures
	}
	return zerolog.New(zerolog.NewTestWriter(tb)).Level(level)
}

// liveMounts holds every view a test mounted and has not unmounted yet, for the watchdog.
var liveMounts sync.Map // *FS -> struct{}

// TestMain arms a watchdog: a test process that is both the FUSE server and a client of it
// cannot exit while one of its threads waits in the kernel for an answer it will never give
// (after a deadlock, or when go test's timeout kills it). Shortly before the timeout the
// watchdog aborts the connections of the views still mounted, so such a test fails with a
// stack dump instead of leaving an unkillable process and a dead mount behind.
func TestMain(m *testing.M) {
	flag.Parse()
	if fl := flag.Lookup("test.timeout"); fl != nil {
		if d, ok := fl.Value.(flag.Getter).Get().(time.Duration); ok && d > 0 {
			time.AfterFunc(d-min(30*time.Second, d/10), abortLiveMounts)
		}
	}
	os.Exit(m.Run())
}

func abortLiveMounts() {
	liveMounts.Range(func(k, _ any) bool {
		f := k.(*FS)
		fmt.Fprintf(os.Stderr, "watchdog: test about to time out, aborting the FUSE connection of %s\n", f.dir)
		if err := fusectl.Abort(f.connID); err != nil {
			fmt.Fprintf(os.Stderr, "watchdog: %v\n", err)
		}
		return true
	})
}

// mount mounts a view at dir and registers it with the watchdog.
func mount(tb testing.TB, dir string, opt Options) (*FS, error) {
	tb.Helper()
	requireFUSE(tb)
	f, err := Mount(dir, opt, testLogger(tb))
	if err != nil {
		return nil, err
	}
	liveMounts.Store(f, struct{}{})
	tb.Cleanup(func() { liveMounts.Delete(f) })
	return f, nil
}

// mountT mounts a fresh view in a temporary directory and unmounts it when the test ends.
func mountT(tb testing.TB) (*FS, string) {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "mnt")
	f, err := mount(tb, dir, Options{})
	if err != nil {
		tb.Fatalf("Mount: %v", err)
	}
	tb.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			tb.Errorf("Unmount: %v", err)
		}
	})
	return f, dir
}

func addT(tb testing.TB, f *FS, name string, v replicate.Volume) {
	tb.Helper()
	if err := f.Add(name, v); err != nil {
		tb.Fatalf("Add %s: %v", name, err)
	}
}

// run runs a command and fails the test with its output when it fails.
func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// alignedBuf returns a zeroed buffer aligned for O_DIRECT.
func alignedBuf(size int) []byte {
	const align = 4096
	b := make([]byte, size+align)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % align); r != 0 {
		off = align - r
	}
	return b[off : off+size]
}

func isMounted(dir string) (bool, error) {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && fields[4] == dir {
			return true, nil
		}
	}
	return false, nil
}
