package appliance

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hast/image/imagetest"
	"hast/internal/testsupport"
)

// TestGuestUblkDevices runs inside a qemu guest with ublk_drv (the build host has none): two
// daemons on loopback replicate disk1..3; the primary serves each as /dev/hast/diskN; fio's
// crc32c verification passes on disk1; ext4 on
// disk1 survives fsck; raw writes to disk2 reach the secondary's component byte for byte;
// demoting a mounted device is refused and after unmounting it succeeds and the device goes.
func TestGuestUblkDevices(t *testing.T) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk},
		Programs: []string{"mkfs.ext4", "fsck.ext4"}, Tools: []string{"fio"}, MemoryMB: 768, Timeout: 150 * time.Second}) {
		return
	}
	c, out := newTestCluster(t, ClusterOptions{Resources: 3, DiskSize: 24 << 20})
	if err := c.Pair(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	prim, sec := c.Nodes[0], c.Nodes[1]
	if err := c.WaitComplete(prim, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := mustClient(t, c, prim).Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st {
		if r.Device != "/dev/hast/"+r.Name || !strings.HasPrefix(r.UblkDevice, "/dev/ublkb") {
			t.Fatalf("%s: device %q -> %q", r.Name, r.Device, r.UblkDevice)
		}
		if target, err := os.Readlink(r.Device); err != nil || target != r.UblkDevice {
			t.Fatalf("%s -> %q, %v", r.Device, target, err)
		}
	}
	if secSt, err := mustClient(t, c, sec).Status(); err != nil || secSt[0].Device != "" {
		t.Fatalf("the secondary shows a device: %+v, %v", secSt, err)
	}
	mark := len(out.String())
	if code := c.CLI(prim, "list", "disk1"); code != 0 || !strings.Contains(out.String()[mark:], "  device: /dev/hast/disk1 (/dev/ublkb") {
		t.Fatalf("hast list: %d\n%s", code, out.String()[mark:])
	}

	// fio writes 4 KiB blocks at random at depth 16 with crc32c headers, then reads and checks them.
	fio, err := imagetest.Tool("fio", "--name=verify", "--filename=/dev/hast/disk1", "--ioengine=io_uring",
		"--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16M", "--verify=crc32c",
		"--do_verify=1", "--verify_fatal=1", "--output-format=terse", "--terse-version=3")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if o, err := fio.CombinedOutput(); err != nil {
		t.Fatalf("fio --verify=crc32c on /dev/hast/disk1: %v\n%s", err, o)
	}
	t.Logf("fio wrote and verified 16 MiB on /dev/hast/disk1 in %v", time.Since(start).Round(time.Millisecond))

	// ext4 on disk1, checksummed files.
	mnt := t.TempDir()
	files, err := testsupport.MakeExt4("/dev/hast/disk1", mnt, 16)
	if err != nil {
		t.Fatal(err)
	}
	unix.Sync()

	// Raw O_DIRECT writes on disk2.
	f, err := os.OpenFile("/dev/hast/disk2", os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf, _ := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	rand.Read(buf)
	if _, err := f.WriteAt(buf, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Demotion of the mounted disk1 is refused and changes nothing.
	mark = len(out.String())
	if code := c.CLI(prim, "role", "secondary", "disk1"); code == 0 {
		t.Fatalf("demoting a mounted device succeeded:\n%s", out.String()[mark:])
	}
	refusal := out.String()[mark:]
	if !strings.Contains(refusal, "in use") || !strings.Contains(refusal, "--force") {
		t.Fatalf("refusal does not say why:\n%s", refusal)
	}
	t.Logf("refused: %s", strings.TrimSpace(refusal))
	if err := files.CheckExt4("/dev/hast/disk1", mnt); err != nil {
		t.Fatal(err)
	}

	// The secondary's components hold the primary's data area byte for byte.
	if err := c.WaitComplete(prim, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, r := range st[:2] {
		primary, err := os.ReadFile(r.Device)
		if err != nil {
			t.Fatal(err)
		}
		comp, err := os.Open(filepath.Join(sec.Dir, r.Name+".img"))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := comp.Stat()
		second := make([]byte, r.DataSize)
		if _, err := comp.ReadAt(second, fi.Size()-r.DataSize); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		comp.Close()
		if int64(len(primary)) != r.DataSize || !bytes.Equal(primary, second) {
			t.Fatalf("%s: the secondary's component differs from the primary's device (%d vs %d bytes)", r.Name, len(primary), r.DataSize)
		}
	}

	// Unmounted, the demotion succeeds and the device goes away.
	dev := st[0].UblkDevice
	if err := c.Role(prim, "secondary", "disk1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, p := range []string{"/dev/hast/disk1", dev} {
		deadline := time.Now().Add(5 * time.Second)
		for _, err := os.Lstat(p); err == nil; _, err = os.Lstat(p) {
			if time.Now().After(deadline) {
				t.Fatalf("%s still exists after demotion", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A forced demotion deletes a device that is open; its I/O fails, nothing hangs.
	g, err := os.OpenFile("/dev/hast/disk3", os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if code := c.CLI(prim, "role", "secondary", "disk3"); code == 0 {
		t.Fatal("demoting an open device succeeded without --force")
	}
	if err := c.CLI(prim, "role", "--force", "secondary", "disk3"); err != 0 {
		t.Fatalf("role --force secondary disk3: exit %d\n%s", err, out)
	}
	// The kernel sets a deleted disk's capacity to zero: reads see its end, writes fail.
	if n, err := g.ReadAt(buf[:4096], 0); n != 0 || err == nil {
		t.Fatalf("read from a force-demoted device: %d, %v", n, err)
	}
	_, werr := g.WriteAt(buf[:4096], 0)
	if werr == nil {
		t.Fatal("write to a force-demoted device succeeded")
	}
	t.Logf("after --force: write fails with %v", werr)
	c.Stop()
	for _, p := range []string{"/dev/hast/disk2", "/dev/hast/disk3"} { // disk2 by the daemon's exit
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s left behind by a stopped daemon", p)
		}
	}
}

// TestGuestUblkDaemonKilled: the primary daemon is killed with SIGKILL while a program writes
// and fsyncs files on ext4 on /dev/hast/disk1 and fio writes with crc32c verification on
// /dev/hast/disk2; the restarted daemon, promoted again, re-attaches the same devices
// (UBLK_F_USER_RECOVERY): the writer sees a delay, never an error, fio's verification passes,
// and the file system checks clean with every file intact.
func TestGuestUblkDaemonKilled(t *testing.T) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk},
		Programs: []string{"mkfs.ext4", "fsck.ext4"}, Tools: []string{"fio"}, MemoryMB: 768, Timeout: 150 * time.Second}) {
		return
	}
	c, out := newTestCluster(t, ClusterOptions{Resources: 2, DiskSize: 48 << 20})
	if err := c.Pair(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	prim := c.Nodes[0]
	if err := c.WaitComplete(prim, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := mustClient(t, c, prim).Status()
	if err != nil {
		t.Fatal(err)
	}
	dev, dev2 := st[0].UblkDevice, st[1].UblkDevice
	fio, err := imagetest.Tool("fio", "--name=verify", "--filename=/dev/hast/disk2", "--ioengine=io_uring",
		"--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=24M", "--verify=crc32c",
		"--do_verify=1", "--verify_fatal=1", "--output-format=terse", "--terse-version=3")
	if err != nil {
		t.Fatal(err)
	}
	var fioOut bytes.Buffer
	fio.Stdout, fio.Stderr = &fioOut, &fioOut
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioStart := time.Now()
	mnt := t.TempDir()
	files, err := testsupport.MakeExt4("/dev/hast/disk1", mnt, 4)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	stop := make(chan struct{})
	written := make(chan int, 1000)
	writerErr := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if i == 400 { // 25 MiB: enough, and far from filling the file system
				<-stop
			}
			select {
			case <-stop:
				writerErr <- nil
				return
			default:
			}
			b := make([]byte, 64<<10)
			rand.Read(b)
			name := filepath.Join(mnt, fmt.Sprintf("w%04d", i))
			f, err := os.Create(name)
			if err == nil {
				_, err = f.Write(b)
			}
			if err == nil {
				err = f.Sync()
			}
			if f != nil {
				f.Close()
			}
			if err != nil {
				writerErr <- fmt.Errorf("file %d: %w", i, err)
				return
			}
			mu.Lock()
			files[name] = sha256.Sum256(b)
			mu.Unlock()
			written <- i
		}
	}()
	for range 10 {
		<-written
	}
	c.Kill(prim, syscall.SIGKILL)
	killed := time.Now()
	if err := c.Start(prim); err != nil {
		t.Fatal(err)
	}
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", fio.Process.Pid)); err != nil || strings.Contains(string(stat), ") Z ") {
		t.Fatalf("fio finished before the daemon was killed (%v)", err)
	}
	if err := c.Role(prim, "primary", "disk1", "disk2"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail(prim))
	}
	st, err = mustClient(t, c, prim).Status()
	if err != nil || st[0].UblkDevice != dev || st[1].UblkDevice != dev2 {
		t.Fatalf("after the restart the devices are %q, %q (%v), want the same %s, %s\n%s", st[0].UblkDevice, st[1].UblkDevice, err, dev, dev2, c.LogTail(prim))
	}
	t.Logf("restarted and re-attached %s and %s %v after SIGKILL", dev, dev2, time.Since(killed).Round(time.Millisecond))
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio across the daemon's crash: %v\n%s", err, fioOut.String())
	}
	t.Logf("fio wrote and verified 24 MiB across the crash in %v", time.Since(fioStart).Round(time.Millisecond))
	for n := len(written); n < 10; n = len(written) { // the writer carries on
		select {
		case err := <-writerErr:
			t.Fatalf("writer stopped: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	close(stop)
	if err := <-writerErr; err != nil {
		t.Fatalf("the writer saw an error across the daemon's crash: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d files written across the crash", len(files))
	if err := files.CheckExt4("/dev/hast/disk1", mnt); err != nil {
		t.Fatal(err)
	}

	// Killed again; this time the node becomes secondary for disk2 instead: the device left
	// behind is removed and the write it was holding fails instead of waiting for ever.
	g, err := os.OpenFile("/dev/hast/disk2", os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	c.Kill(prim, syscall.SIGKILL)
	held := make(chan error, 1)
	go func() {
		buf, _ := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		_, err := g.WriteAt(buf, 0)
		held <- err
	}()
	if err := c.Start(prim); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-held:
		t.Fatalf("a write to the orphaned device finished before any decision: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := c.Role(prim, "secondary", "disk2"); err != nil {
		t.Fatalf("%v\n%s", err, c.LogTail(prim))
	}
	select {
	case err := <-held:
		if err == nil {
			t.Fatal("the held write succeeded on a node that is no longer primary")
		}
		t.Logf("held write failed with %v once the node became secondary", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the held write still hangs after the node became secondary")
	}
	if _, err := os.Lstat("/dev/hast/disk2"); err == nil {
		t.Fatal("/dev/hast/disk2 still exists on a secondary")
	}
}

// TestGuestUblkRoleCycles: 100 promote/demote cycles of a resource whose device has writers in
// flight (the demotion is forced) leave no device behind, and the daemon's file descriptors
// and threads (each ublk queue has one) do not grow.
func TestGuestUblkRoleCycles(t *testing.T) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk}, MemoryMB: 768, Timeout: 240 * time.Second}) {
		return
	}
	c, out := newTestCluster(t, ClusterOptions{Resources: 1, DiskSize: 16 << 20})
	if err := c.Pair(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	prim := c.Nodes[0]
	pid := prim.cmd.Process.Pid
	cl := mustClient(t, c, prim) // one client: each in-process CLI call keeps its own idle connection
	count := func() (fds, threads int) {
		// Counted with the pair settled: a reconnection in progress holds a socket more.
		if err := c.WaitComplete(prim, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, l := range strings.Split(string(st), "\n") {
			fmt.Sscanf(l, "Threads: %d", &threads)
		}
		return len(ents), threads
	}
	var fds0, threads0 int
	start := time.Now()
	for i := range 100 {
		if i == 1 {
			fds0, threads0 = count()
		}
		f, err := os.OpenFile("/dev/hast/disk1", os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatalf("cycle %d: %v\n%s", i, err, c.LogTail(prim))
		}
		done := make(chan int)
		for w := range 2 {
			go func() {
				buf, _ := unix.Mmap(-1, 0, 16<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
				defer unix.Munmap(buf)
				n := 0
				for j := 0; ; j++ {
					if _, err := f.WriteAt(buf, int64(w*512+j%512)*16<<10); err != nil {
						break
					}
					n++
				}
				done <- n
			}()
		}
		time.Sleep(20 * time.Millisecond)
		if res, err := cl.SetRole("secondary", true, "disk1"); err != nil || res[0].Error != "" {
			t.Fatalf("cycle %d: forced demotion: %v %+v\n%s", i, err, res, c.LogTail(prim))
		}
		<-done
		<-done
		f.Close()
		if res, err := cl.SetRole("primary", false, "disk1"); err != nil || res[0].Error != "" {
			t.Fatalf("cycle %d: promotion: %v %+v\n%s", i, err, res, c.LogTail(prim))
		}
	}
	fds, threads := count()
	t.Logf("100 cycles in %v; daemon fds %d -> %d, threads %d -> %d", time.Since(start).Round(time.Millisecond), fds0, fds, threads0, threads)
	// A leak of one descriptor per cycle would show as 100; allow the runtime's and the
	// connections' own jitter.
	if fds > fds0+4 {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		kinds := map[string]int{}
		for _, e := range ents {
			target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
			if i := strings.IndexByte(target, ':'); i > 0 && !strings.HasPrefix(target, "/") {
				target = target[:i]
			}
			kinds[target]++
		}
		t.Fatalf("the daemon holds %d file descriptors, %d after the first cycle: %v", fds, fds0, kinds)
	}
	if threads > threads0+2 { // the Go runtime may start a spare thread or two
		t.Fatalf("the daemon runs %d threads, %d after the first cycle", threads, threads0)
	}
	left, _ := filepath.Glob("/dev/ublkc*")
	if len(left) != 1 {
		t.Fatalf("ublk devices after the cycles: %v, want only the current one", left)
	}
}
