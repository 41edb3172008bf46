package ublk

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hast/image/imagetest"
	"hast/internal/testsupport"
	"hast/replicate"
)

// The tests in this file run inside a qemu guest with Debian's 6.12 kernel and ublk_drv (the
// build host's kernel has no ublk); imagetest.Boot starts the guest from the host.

var guestOpts = imagetest.Options{Modules: []string{imagetest.ModUblk}, Programs: []string{"mkfs.ext4", "fsck.ext4"}}

// TestGuestTwoQueues: a two-CPU guest, a device with two hardware queues, I/O from both CPUs
// lands in the right places (each queue maps its own descriptor array).
func TestGuestTwoQueues(t *testing.T) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk}, CPUs: 2}) {
		return
	}
	if runtime.NumCPU() != 2 {
		t.Fatalf("guest has %d CPUs, want 2", runtime.NumCPU())
	}
	vol := newRAMVolume(32<<20, 512)
	d := createDevice(t, vol, Options{Queues: 2, Depth: 16})
	if info, err := d.Info(); err != nil || info.NrHWQueues != 2 {
		t.Fatalf("GET_DEV_INFO: %d queues, %v", info.NrHWQueues, err)
	}
	f, err := os.OpenFile(d.BlockPath(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	errs := make(chan error, 2)
	for cpu := range 2 {
		go func() {
			runtime.LockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errs <- err
				return
			}
			buf := alignedBuf(t, 64<<10)
			for i := range 64 {
				off := int64(cpu)*16<<20 + int64(i)*64<<10
				for j := range buf {
					buf[j] = byte(cpu*64 + i)
				}
				if _, err := f.WriteAt(buf, off); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for cpu := range 2 {
		for i := range 64 {
			b := vol.snapshot(cpu*16<<20+i*64<<10, 64<<10)
			if !bytes.Equal(b, bytes.Repeat([]byte{byte(cpu*64 + i)}, 64<<10)) {
				t.Fatalf("cpu %d block %d wrong", cpu, i)
			}
		}
	}
	var served [2]int
	for i, q := range d.queues {
		served[i] = int(q.served.Load())
	}
	t.Logf("requests per queue: %v", served)
	if served[0] == 0 || served[1] == 0 {
		t.Fatalf("one queue served nothing: %v", served)
	}
}

// alignedBuf returns n bytes of page-aligned memory for O_DIRECT.
func alignedBuf(t *testing.T, n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func createDevice(t *testing.T, vol replicate.Volume, opt Options) *Device {
	t.Helper()
	start := time.Now()
	d, err := Create(vol, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s up in %v (user copy %v)", d.BlockPath(), time.Since(start).Round(time.Millisecond), d.UserCopy())
	t.Cleanup(func() { d.Close() })
	return d
}

func ioctlRange(t *testing.T, f *os.File, req uint, off, n uint64) error {
	r := [2]uint64{off, n}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), uintptr(unsafe.Pointer(&r)))
	if e != 0 {
		return e
	}
	return nil
}

// TestGuestDataPath: reads, writes, FUA, flush, discard and write-zeroes reach the volume with
// the right bytes, in the per-tag buffer mode and in USER_COPY mode.
func TestGuestDataPath(t *testing.T) {
	if imagetest.Boot(t, guestOpts) {
		return
	}
	feat, err := Features()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("driver features %#x", feat)
	for _, mode := range []struct {
		name   string
		noCopy bool
	}{{"tag-buffers", true}, {"user-copy", false}} {
		t.Run(mode.name, func(t *testing.T) {
			if !mode.noCopy && feat&FeatureUserCopy == 0 {
				t.Fatal("the driver does not offer UBLK_F_USER_COPY")
			}
			vol := newRAMVolume(64<<20, 512)
			d := createDevice(t, vol, Options{NoUserCopy: mode.noCopy, Depth: 32})
			if d.UserCopy() == mode.noCopy {
				t.Fatalf("user copy %v, want %v", d.UserCopy(), !mode.noCopy)
			}
			info, err := d.Info()
			if err != nil || info.State != stateLive || info.ServerPID != int32(os.Getpid()) {
				t.Fatalf("GET_DEV_INFO: %+v, %v", info, err)
			}
			f, err := os.OpenFile(d.BlockPath(), os.O_RDWR|unix.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var size uint64
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); e != 0 || size != 64<<20 {
				t.Fatalf("BLKGETSIZE64 = %d, %v", size, e)
			}
			// 1 MiB at an odd 4 KiB offset: the block layer splits it into MaxIO requests.
			buf := alignedBuf(t, 1<<20)
			rand.Read(buf)
			const off = 5<<20 + 4096
			if n, err := f.WriteAt(buf, off); err != nil || n != len(buf) {
				t.Fatalf("write: %d, %v", n, err)
			}
			if !bytes.Equal(vol.snapshot(off, len(buf)), buf) {
				t.Fatal("the volume does not hold what was written")
			}
			back := alignedBuf(t, 1<<20)
			if n, err := f.ReadAt(back, off); err != nil || n != len(back) || !bytes.Equal(back, buf) {
				t.Fatalf("read back: %d, %v, equal %v", n, err, bytes.Equal(back, buf))
			}
			flushes := vol.flushes.Load()
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			if vol.flushes.Load() == flushes {
				t.Fatal("fsync sent no FLUSH to the volume")
			}
			g, err := os.OpenFile(d.BlockPath(), os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			flushes = vol.flushes.Load()
			if _, err := g.WriteAt(buf[:4096], 0); err != nil {
				t.Fatal(err)
			}
			g.Close()
			if vol.flushes.Load() == flushes {
				t.Fatal("an O_DSYNC write (FUA) was not flushed")
			}
			if err := ioctlRange(t, f, unix.BLKDISCARD, off, 64<<10); err != nil {
				t.Fatalf("BLKDISCARD: %v", err)
			}
			if vol.discards.Load() == 0 || !bytes.Equal(vol.snapshot(off, 64<<10), make([]byte, 64<<10)) {
				t.Fatal("discard did not reach the volume")
			}
			if err := ioctlRange(t, f, unix.BLKZEROOUT, off+1<<19, 128<<10); err != nil {
				t.Fatalf("BLKZEROOUT: %v", err)
			}
			if !bytes.Equal(vol.snapshot(off+1<<19, 128<<10), make([]byte, 128<<10)) ||
				!bytes.Equal(vol.snapshot(off+1<<19+128<<10, 4096), buf[1<<19+128<<10:][:4096]) {
				t.Fatal("write-zeroes zeroed the wrong range")
			}
			f.Close()
			if err := d.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			for _, p := range []string{d.BlockPath(), d.CharPath()} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s still there after Close: %v", p, err)
				}
			}
		})
	}
}

// TestGuestErrors: volume errors reach readers and writers as the errno the issue names, and a
// device closed under an open file fails its I/O at once instead of hanging.
func TestGuestErrors(t *testing.T) {
	if imagetest.Boot(t, guestOpts) {
		return
	}
	vol := newRAMVolume(16<<20, 4096)
	d := createDevice(t, vol, Options{})
	f, err := os.OpenFile(d.BlockPath(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuf(t, 8192)
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{syscall.ENOSPC, syscall.ENOSPC},
		{fmt.Errorf("local: %w", syscall.EIO), syscall.EIO},
		{replicate.ErrNotPrimary, syscall.EIO},
		{syscall.EOPNOTSUPP, syscall.EOPNOTSUPP},
	} {
		vol.setFail(c.err)
		_, werr := f.WriteAt(buf, 8192)
		if !errors.Is(werr, c.want) {
			t.Errorf("volume error %v: write got %v, want %v", c.err, werr, c.want)
		}
	}
	vol.setFail(nil)
	if _, err := f.WriteAt(buf, 8192); err != nil {
		t.Fatalf("after the fault: %v", err)
	}
	// A 4 KiB-sector volume gives a 4 KiB logical block size.
	var lbs int32
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKSSZGET, uintptr(unsafe.Pointer(&lbs))); e != 0 || lbs != 4096 {
		t.Fatalf("BLKSSZGET = %d, %v", lbs, e)
	}
	goroutines := runtime.NumGoroutine()
	done := make(chan error, 1)
	go func() { done <- d.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("close with the device open: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close hung with the block device open")
	}
	if _, err := f.ReadAt(buf, 0); err == nil {
		t.Fatal("read on a deleted device succeeded")
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Fatalf("%d goroutines after Close, %d before", n, goroutines)
	}
}

// TestGuestExt4: mkfs.ext4, mount, files with checksums, unmount, fsck -f clean, mount again
// and verify.
func TestGuestExt4(t *testing.T) {
	if imagetest.Boot(t, guestOpts) {
		return
	}
	vol := newRAMVolume(128<<20, 512)
	d := createDevice(t, vol, Options{})
	mnt := t.TempDir()
	files, err := testsupport.MakeExt4(d.BlockPath(), mnt, 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := files.CheckExt4(d.BlockPath(), mnt); err != nil {
		t.Fatal(err)
	}
	t.Logf("ext4: %d files verified; volume saw %d writes, %d flushes, %d discards",
		len(files), vol.writes.Load(), vol.flushes.Load(), vol.discards.Load())
}

// TestGuestLifecycle: 100 devices created and closed with writes and reads in flight leave no
// device, file descriptor, thread-bound goroutine or mapping behind.
func TestGuestLifecycle(t *testing.T) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk}, Timeout: 150 * time.Second}) {
		return
	}
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	vol := newRAMVolume(8<<20, 512)
	// Warm up: the runtime's own descriptors and threads settle on the first device.
	d, err := Create(vol, Options{Depth: 16})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	fd0, g0 := fds(), runtime.NumGoroutine()
	start := time.Now()
	var served, failed int
	for i := range 100 {
		d, err := Create(vol, Options{Depth: 16})
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		f, err := os.OpenFile(d.BlockPath(), os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		done := make(chan [2]int)
		for w := range 4 {
			go func() {
				buf, _ := unix.Mmap(-1, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
				defer unix.Munmap(buf)
				var ok, bad int
				for j := 0; bad == 0; j++ {
					off := int64((w*64+j%64)*64<<10) % (8 << 20)
					var err error
					if j%2 == 0 {
						_, err = f.WriteAt(buf, off)
					} else {
						_, err = f.ReadAt(buf, off)
					}
					if err != nil {
						bad++
					} else {
						ok++
					}
				}
				done <- [2]int{ok, bad}
			}()
		}
		time.Sleep(time.Duration(i%5) * 5 * time.Millisecond)
		closed := make(chan error, 1)
		go func() { closed <- d.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Fatalf("cycle %d: close: %v", i, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("cycle %d: Close hung with I/O in flight", i)
		}
		for range 4 {
			r := <-done
			served += r[0]
			failed += r[1]
		}
		f.Close()
	}
	t.Logf("100 cycles in %v: %d requests served, %d failed at close", time.Since(start).Round(time.Millisecond), served, failed)
	// A device whose start fails after its queues armed FETCH_REQ is torn down, not left hanging.
	failed1 := make(chan error, 1)
	go func() {
		_, err := Create(vol, Options{Depth: 16, failStart: true})
		failed1 <- err
	}()
	select {
	case err := <-failed1:
		if err == nil {
			t.Fatal("Create with a failing start succeeded")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Create hung tearing down a device that never started")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left, _ := filepath.Glob("/sys/block/ublkb*")
		cdevs, _ := filepath.Glob("/dev/ublkc*")
		if len(left)+len(cdevs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("devices left behind: %v %v", left, cdevs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if maps, err := os.ReadFile("/proc/self/maps"); err != nil || bytes.Contains(maps, []byte("ublkc")) {
		t.Fatalf("descriptor mappings left behind (%v):\n%s", err, maps)
	}
	if n := fds(); n != fd0 {
		t.Fatalf("%d file descriptors open, %d before the cycles", n, fd0)
	}
	deadline = time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > g0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > g0 {
		t.Fatalf("%d goroutines, %d before the cycles", n, g0)
	}
}

// recoveryChild is the environment variable that makes the test binary a ublk server process
// for TestGuestRecovery: "create" or "recover:<id>"; the volume is the file in recoveryFile.
const (
	recoveryChild = "HAST_UBLK_CHILD"
	recoveryFile  = "HAST_UBLK_FILE"
)

// TestGuestRecoveryChild is the server process TestGuestRecovery starts and kills; it does
// nothing in a normal run.
func TestGuestRecoveryChild(t *testing.T) {
	mode := os.Getenv(recoveryChild)
	if mode == "" {
		return
	}
	f, err := os.OpenFile(os.Getenv(recoveryFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	vol := fileVolume{f}
	var d *Device
	if mode == "create" {
		d, err = Create(vol, Options{Recovery: true, Depth: 32})
	} else {
		var id int
		fmt.Sscanf(mode, "recover:%d", &id)
		d, err = Recover(id, vol, 30*time.Second, Options{})
	}
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("SERVING %d\n", d.ID())
	select {} // until killed
}

// startServer runs TestGuestRecoveryChild in a new process and waits for its device.
func startServer(t *testing.T, mode, file string) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestGuestRecoveryChild$", "-test.v")
	cmd.Env = append(os.Environ(), recoveryChild+"="+mode, recoveryFile+"="+file)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var id int
		if _, err := fmt.Sscanf(sc.Text(), "SERVING %d", &id); err == nil {
			go io.Copy(io.Discard, out)
			return cmd, id
		}
		t.Logf("server: %s", sc.Text())
	}
	cmd.Wait()
	t.Fatalf("server %s exited before serving", mode)
	return nil, 0
}

// TestGuestRecovery: the server is killed with SIGKILL while a writer keeps writing and
// syncing; a new process recovers the same /dev/ublkbN, the writer sees a delay and no error,
// and every block written reads back.
func TestGuestRecovery(t *testing.T) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk}, Timeout: 150 * time.Second}) {
		return
	}
	file := filepath.Join(t.TempDir(), "vol")
	if err := os.WriteFile(file, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, id := startServer(t, "create", file)
	dev := fmt.Sprintf("/dev/ublkb%d", id)
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const block = 64 << 10
	blocks := (16 << 20) / block
	sums := make([][32]byte, blocks)
	var maxStall time.Duration
	wrote := make(chan int, blocks)
	writerErr := make(chan error, 1)
	go func() {
		buf := alignedBuf(t, block)
		for i := range blocks {
			rand.Read(buf)
			sums[i] = sha256.Sum256(buf)
			start := time.Now()
			if _, err := f.WriteAt(buf, int64(i)*block); err != nil {
				writerErr <- fmt.Errorf("block %d: %w", i, err)
				return
			}
			if i%8 == 7 {
				if err := f.Sync(); err != nil {
					writerErr <- fmt.Errorf("fsync after block %d: %w", i, err)
					return
				}
			}
			maxStall = max(maxStall, time.Since(start))
			wrote <- i
		}
		writerErr <- nil
	}()
	for i := range 40 { // kill the server in the middle of the run
		if <-wrote != i {
			t.Fatal("writer out of order")
		}
	}
	srv.Process.Kill()
	srv.Wait()
	killed := time.Now()
	ahead := len(wrote)
	if 40+ahead >= blocks {
		t.Fatal("the writer finished before the server was killed")
	}
	srv2, id2 := startServer(t, fmt.Sprintf("recover:%d", id), file)
	defer func() { srv2.Process.Kill(); srv2.Wait() }()
	if id2 != id {
		t.Fatalf("recovered device %d, want %d", id2, id)
	}
	t.Logf("recovered /dev/ublkb%d %v after SIGKILL (killed at block %d of %d)", id, time.Since(killed).Round(time.Millisecond), 40+ahead, blocks)
	if err := <-writerErr; err != nil {
		t.Fatalf("the writer saw an error across the crash: %v", err)
	}
	t.Logf("longest write or fsync: %v", maxStall.Round(time.Millisecond))
	back := alignedBuf(t, block)
	for i := range blocks {
		if _, err := f.ReadAt(back, int64(i)*block); err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(back) != sums[i] {
			t.Fatalf("block %d differs after recovery", i)
		}
	}
}
