package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"hast/internal/uring"
	"hast/internal/uring/uringtest"
)

// opener is one way of opening a read-write local component; every check in
// deviceChecks runs against each of them.
type opener struct {
	name string
	open func(string) (Device, error)
	kind string
}

var openers = []opener{
	{"Open", Open, KindPwrite},
	{"OpenURing", OpenURing, KindURing},
	// A lone operation skips the ring (see ringOptions); this one never does, so that
	// every check also runs every read and write through the ring.
	{"OpenURingRingOnly", openRingOnly, KindURing},
}

func openRingOnly(path string) (Device, error) {
	return openURing(path, true, uring.Options{})
}

// deviceChecks is the behaviour every file-backed Device shares, whatever does its I/O.
var deviceChecks = []struct {
	name string
	run  func(t *testing.T, o opener)
}{
	{"ReadWriteEdges", checkReadWriteEdges},
	{"Exclusive", checkExclusive},
	{"OpenErrors", checkOpenErrors},
	{"DiscardPunchesHole", checkDiscardPunchesHole},
	{"ConcurrentIO", checkConcurrentIO},
	{"MisalignedIOAgainstModel", checkMisalignedIO},
	{"WriteAtSync", checkWriteAtSync},
	{"CloseDuringIO", checkCloseDuringIO},
	{"ReadOnlyAlongside", checkReadOnlyAlongside},
	{"BlockDevice", checkBlockDevice},
}

func TestDeviceConformance(t *testing.T) {
	for _, o := range openers {
		for _, c := range deviceChecks {
			t.Run(o.name+"/"+c.name, func(t *testing.T) { c.run(t, o) })
		}
	}
}

func kindOf(d Device) string {
	if k, ok := d.(interface{ Kind() string }); ok {
		return k.Kind()
	}
	return "unknown"
}

// openWith creates a preallocated file of size bytes and opens it with o.
func openWith(t *testing.T, o opener, size int64) (Device, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk")
	if err := CreateFile(p, size); err != nil {
		t.Fatal(err)
	}
	d, err := o.open(p)
	if err != nil {
		t.Fatal(err)
	}
	if k := kindOf(d); k != o.kind {
		t.Fatalf("%s gave a %q device, want %q", o.name, k, o.kind)
	}
	t.Cleanup(func() { d.Close() })
	return d, p
}

func checkReadWriteEdges(t *testing.T, o opener) {
	const size = 1 << 20
	d, p := openWith(t, o, size)
	if d.Size() != size || d.SectorSize() != 512 {
		t.Fatalf("Size %d SectorSize %d", d.Size(), d.SectorSize())
	}
	data := pattern(8192, 1)
	if n, err := d.WriteAt(data, 4096); err != nil || n != len(data) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if n, err := d.ReadAt(got, 4096); err != nil || n != len(got) || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt = %d, %v, equal %v", n, err, bytes.Equal(got, data))
	}
	raw, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(raw[4096:4096+8192], data) {
		t.Fatalf("data not in the file: %v", err)
	}
	if n, err := d.ReadAt(got, size-100); n != 100 || err != io.EOF || !bytes.Equal(got[:100], raw[size-100:]) {
		t.Fatalf("read across the end = %d, %v; want 100, EOF", n, err)
	}
	if n, err := d.ReadAt(nil, size); n != 0 || err != nil {
		t.Fatalf("empty read at the end = %d, %v", n, err)
	}
	checkOutOfRange(t, d, p, size, data, got)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
	for name, err := range map[string]error{
		"ReadAt":  func() error { _, err := d.ReadAt(got, 0); return err }(),
		"WriteAt": func() error { _, err := d.WriteAt(got, 0); return err }(),
		"Flush":   d.Flush(),
		"Discard": d.Discard(0, 4096),
	} {
		// The page-cache device reports os.File's "use of closed file", which is
		// not os.ErrClosed; either way the error names the device.
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s after Close = %v, want an error naming the path", name, err)
		}
	}
}

func checkExclusive(t *testing.T, o opener) {
	d, p := openWith(t, o, 1<<20)
	for _, other := range openers {
		_, err := other.open(p)
		if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "already in use") {
			t.Fatalf("%s while %s holds %s = %v, want ErrInUse naming the path", other.name, o.name, p, err)
		}
	}
	link := p + ".link"
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if _, err := o.open(link); !errors.Is(err, ErrInUse) {
		t.Fatalf("%s via symlink = %v, want ErrInUse", o.name, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2, err := o.open(p)
	if err != nil {
		t.Fatalf("reopen after Close: %v", err)
	}
	d2.Close()
}

func checkOpenErrors(t *testing.T, o opener) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	if _, err := o.open(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("open(missing) = %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, "/dev/null", fifo} {
		if _, err := o.open(p); err == nil || !strings.Contains(err.Error(), "not a regular file or block device") ||
			!strings.Contains(err.Error(), p) {
			t.Fatalf("open(%s) = %v", p, err)
		}
	}
}

func checkDiscardPunchesHole(t *testing.T, o opener) {
	const size = 1 << 20
	d, p := openWith(t, o, size)
	data := pattern(size, 3)
	if _, err := d.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	before := fileBlocks(t, p)
	const off, n = 256 << 10, 128 << 10
	if err := d.Discard(off, n); err != nil {
		t.Fatal(err)
	}
	if after := fileBlocks(t, p); before-after != n/512 {
		t.Fatalf("st_blocks %d → %d: want %d fewer", before, after, n/512)
	}
	got := make([]byte, size)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[off : off+n])
	if !bytes.Equal(got, want) {
		t.Fatalf("contents after discard differ")
	}
	if err := d.Discard(0, 0); err != nil {
		t.Fatalf("empty discard: %v", err)
	}
}

func checkConcurrentIO(t *testing.T, o opener) {
	d, _ := openWith(t, o, 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(g) * (128 << 10)
			data := pattern(128<<10, byte(g))
			got := make([]byte, len(data))
			for i := range 20 {
				data[i] ^= 0xff // every round writes something new
				if _, err := d.WriteAt(data, off); err != nil {
					errs <- err
					return
				}
				if _, err := d.ReadAt(got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("goroutine %d read back other data", g)
					return
				}
			}
			if err := d.Flush(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// checkMisalignedIO drives random reads and writes with every combination of aligned
// and misaligned offset, length and buffer address (the io_uring device's direct,
// bounce and page-cache paths) from several goroutines, each in its own region, and
// compares every read and finally the file itself with an in-memory model.
func checkMisalignedIO(t *testing.T, o opener) {
	const workers, region = 4, 1 << 20
	const size = workers*region + 3*512 // a tail that is not a whole 4 KiB block
	d, p := openWith(t, o, size)
	model := make([]byte, size)
	noise := make([]byte, 4*maxBounce) // random bytes to write from, at random offsets
	fill := rand.New(rand.NewPCG(1, 2))
	for i := range noise {
		noise[i] = byte(fill.Uint32())
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 99))
			base := int64(g) * region
			end := base + region
			if g == workers-1 {
				end = size
			}
			arena := make([]byte, 64*4096+8192)
			for i := range 150 {
				var off, n int64
				switch rng.IntN(3) {
				case 0: // aligned offset and length
					off = base + rng.Int64N((end-base)/4096)*4096
					n = 4096 * (1 + rng.Int64N(min(64, (end-off)/4096)))
				case 1: // sector-aligned
					off = base + rng.Int64N((end-base)/512)*512
					n = 512 * (1 + rng.Int64N(min(40, (end-off)/512)))
				default: // anything
					off = base + rng.Int64N(end-base)
					n = 1 + rng.Int64N(min(70000, end-off))
				}
				shift := 0
				if rng.IntN(2) == 0 {
					shift = 1 + rng.IntN(4095)
				}
				buf := arena[shift : shift+int(n)]
				if i%3 != 2 {
					src := noise[rng.IntN(len(noise)-len(buf)):]
					copy(buf, src)
					if w, err := d.WriteAt(buf, off); err != nil || w != len(buf) {
						errs <- fmt.Errorf("write %d at %d (buffer +%d) = %d, %v", n, off, shift, w, err)
						return
					}
					copy(model[off:], buf)
					continue
				}
				if r, err := d.ReadAt(buf, off); err != nil || r != len(buf) {
					errs <- fmt.Errorf("read %d at %d (buffer +%d) = %d, %v", n, off, shift, r, err)
					return
				}
				if !bytes.Equal(buf, model[off:off+n]) {
					errs <- fmt.Errorf("read %d at %d (buffer +%d) differs from what was written", n, off, shift)
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
	// A misaligned buffer larger than a bounce buffer goes through in pieces.
	big := make([]byte, 2*maxBounce+4096+1)[1:]
	copy(big, noise[7:])
	if n, err := d.WriteAt(big, 4096); err != nil || n != len(big) {
		t.Fatalf("large misaligned write = %d, %v", n, err)
	}
	copy(model[4096:], big)
	clear(big)
	if n, err := d.ReadAt(big, 4096); err != nil || n != len(big) || !bytes.Equal(big, model[4096:4096+len(big)]) {
		t.Fatalf("large misaligned read = %d, %v", n, err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(raw, model) {
		t.Fatalf("file contents differ from the model (%v)", err)
	}
	// A misaligned read across the end is cut short with io.EOF.
	buf := make([]byte, 4097)
	if n, err := d.ReadAt(buf[1:], size-1000); n != 1000 || err != io.EOF || !bytes.Equal(buf[1:1001], model[size-1000:]) {
		t.Fatalf("read across the end = %d, %v", n, err)
	}
}

func checkWriteAtSync(t *testing.T, o opener) {
	d, p := openWith(t, o, 1<<20)
	sw, ok := d.(SyncWriter)
	if !ok {
		t.Fatalf("%s device does not implement SyncWriter", o.name)
	}
	want := pattern(8192, 0xa5)
	for _, off := range []int64{4096, 513} {
		if n, err := sw.WriteAtSync(want, off); err != nil || n != len(want) {
			t.Fatalf("WriteAtSync at %d = %d, %v", off, n, err)
		}
		raw, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(raw[off:off+8192], want) {
			t.Fatalf("durable write at %d not in the file: %v", off, err)
		}
	}
	if _, err := sw.WriteAtSync(want, 1<<20-4096); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("durable write past the end = %v", err)
	}
}

// checkCloseDuringIO closes the device under concurrent writers: each write either
// completed or failed with ErrClosed (none is torn by the close), and Close returns.
func checkCloseDuringIO(t *testing.T, o opener) {
	d, p := openWith(t, o, 1<<20)
	var wg sync.WaitGroup
	started := make(chan struct{}, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := pattern(64<<10, byte(g))
			for i := 0; ; i++ {
				_, err := d.WriteAt(data, int64(g)*(64<<10))
				if errors.Is(err, os.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("write during Close: %v", err)
					return
				}
				if i == 5 {
					started <- struct{}{}
				}
			}
		}()
	}
	for range 8 {
		<-started
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for g := range 8 {
		if !bytes.Equal(raw[g*(64<<10):(g+1)*(64<<10)], pattern(64<<10, byte(g))) {
			t.Errorf("region %d is torn after Close", g)
		}
	}
}

func checkReadOnlyAlongside(t *testing.T, o opener) {
	d, p := openWith(t, o, 1<<20)
	md, err := Create(d, "r", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := OpenReadOnly(p)
	if err != nil {
		t.Fatalf("OpenReadOnly while locked: %v", err)
	}
	defer ro.Close()
	got, err := ReadMetadata(ro, "r")
	if err != nil || *got != *md {
		t.Fatalf("ReadMetadata via read-only device = %+v, %v", got, err)
	}
	back, err := ReadMetadata(d, "r")
	if err != nil || *back != *md {
		t.Fatalf("ReadMetadata via the device = %+v, %v", back, err)
	}
}

func checkBlockDevice(t *testing.T, o opener) {
	for _, sector := range []int{512, 4096} {
		t.Run(fmt.Sprint(sector), func(t *testing.T) {
			const size = 8 << 20
			backing := filepath.Join(t.TempDir(), "backing")
			if err := CreateFile(backing, size); err != nil {
				t.Fatal(err)
			}
			dev := loopDevice(t, backing, sector)
			d, err := o.open(dev)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Size() != size || d.SectorSize() != sector || kindOf(d) != o.kind {
				t.Fatalf("%s: Size %d SectorSize %d kind %s", dev, d.Size(), d.SectorSize(), kindOf(d))
			}
			if _, err := o.open(dev); !errors.Is(err, ErrInUse) {
				t.Fatalf("second open of %s = %v, want ErrInUse", dev, err)
			}
			data := pattern(size, 9)
			if _, err := d.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			// Sector-aligned but not 4 KiB-aligned, from a misaligned buffer.
			odd := pattern(3*512+1, 4)[1:]
			if _, err := d.WriteAt(odd, 5*512); err != nil {
				t.Fatal(err)
			}
			copy(data[5*512:], odd)
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			const off, n = 1 << 20, 64 << 10
			if err := d.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			clear(data[off : off+n])
			got := make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("contents differ")
			}
			if err := d.Discard(off+1, int64(sector)); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "not aligned") {
				t.Fatalf("unaligned discard = %v", err)
			}
			md, err := Create(d, "blk", CreateOptions{ExtentSize: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			back, err := ReadMetadata(d, "blk")
			if err != nil || *back != *md {
				t.Fatalf("ReadMetadata = %+v, %v", back, err)
			}
		})
	}
}

func TestOpenURingUsesDirectIO(t *testing.T) {
	d, _ := openWith(t, openers[1], 1<<20)
	u := d.(*uringDevice)
	// ext4 on this machine supports O_DIRECT; statx gives its alignment.
	if !u.Direct() || u.offAlign < 512 || u.offAlign&(u.offAlign-1) != 0 {
		t.Fatalf("direct %v, offset alignment %d", u.Direct(), u.offAlign)
	}
	var st unix.Statx_t
	if err := unix.Statx(u.dfd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st); err != nil {
		t.Fatal(err)
	}
	if int64(st.Dio_offset_align) != u.offAlign {
		t.Fatalf("offset alignment %d, statx says %d", u.offAlign, st.Dio_offset_align)
	}
	flags, err := unix.FcntlInt(uintptr(u.dfd), unix.F_GETFL, 0)
	if err != nil || flags&unix.O_DIRECT == 0 {
		t.Fatalf("direct descriptor flags %#x, %v", flags, err)
	}
}

// TestURingDeviceNoAllocations covers the direct and the page-cache paths; the bounce
// path uses a sync.Pool, which the race detector deliberately makes drop buffers.
func TestURingDeviceNoAllocations(t *testing.T) {
	for _, o := range openers[1:] {
		t.Run(o.name, func(t *testing.T) { checkNoAllocations(t, o) })
	}
}

func checkNoAllocations(t *testing.T, o opener) {
	d, _ := openWith(t, o, 1<<20)
	buf := make([]byte, 8192+4096)
	skip := (4096 - int(uintptr(unsafe.Pointer(&buf[0]))&4095)) & 4095
	alignedBuf := buf[skip : skip+8192]
	for name, op := range map[string]func(){
		"direct write": func() { d.WriteAt(alignedBuf, 8192) },
		"direct read":  func() { d.ReadAt(alignedBuf, 8192) },
		"cached write": func() { d.WriteAt(alignedBuf[:1000], 8192+7) },
		"cached read":  func() { d.ReadAt(alignedBuf[:1000], 8192+7) },
		"flush":        func() { d.Flush() },
	} {
		op()
		if a := testing.AllocsPerRun(50, op); a != 0 {
			t.Errorf("%s: %.1f allocations per call", name, a)
		}
	}
}

// TestOpenURingFallsBack runs OpenURing in a child process where io_uring_setup fails
// as it does on kernels without io_uring (ENOSYS) or with it disabled (EPERM): the
// result is Open's device, and it works.
func TestOpenURingFallsBack(t *testing.T) {
	if env := os.Getenv("BLOCKDEV_TEST_NO_URING"); env != "" {
		errno, path, _ := strings.Cut(env, ":")
		e := unix.ENOSYS
		if errno == "EPERM" {
			e = unix.EPERM
		}
		if err := uringtest.DenySetup(e); err != nil {
			fmt.Println(err)
			os.Exit(2)
		}
		d, err := OpenURing(path)
		if err != nil {
			fmt.Println("OpenURing:", err)
			os.Exit(1)
		}
		data := pattern(4096, 7)
		if _, err := d.WriteAt(data, 4096); err != nil {
			fmt.Println("WriteAt:", err)
			os.Exit(1)
		}
		if err := d.Flush(); err != nil {
			fmt.Println("Flush:", err)
			os.Exit(1)
		}
		fmt.Println("kind", kindOf(d))
		d.Close()
		os.Exit(0)
	}
	for _, errno := range []string{"ENOSYS", "EPERM"} {
		p := filepath.Join(t.TempDir(), "disk")
		if err := CreateFile(p, 1<<20); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestOpenURingFallsBack$")
		// The race runtime sleeps a second at exit unless told otherwise.
		cmd.Env = append(os.Environ(), "BLOCKDEV_TEST_NO_URING="+errno+":"+p, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "kind "+KindPwrite) {
			t.Fatalf("%s: child: %v\n%s", errno, err, out)
		}
		raw, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(raw[4096:8192], pattern(4096, 7)) {
			t.Fatalf("%s: the fallback device's write is not in the file (%v)", errno, err)
		}
	}
}
