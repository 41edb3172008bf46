package fuse

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hast/internal/fusectl"
	"hast/internal/testsupport"
)

func TestAddRemoveNames(t *testing.T) {
	f, dir := mountT(t)
	addT(t, f, "disk1", newMemVolume(1<<20, 512))
	addT(t, f, "disk2", newMemVolume(3<<20, 4096))

	if got := f.Names(); !slices.Equal(got, []string{"disk1", "disk2"}) {
		t.Fatalf("Names = %v, want [disk1 disk2]", got)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir: %v", err)
	}
	var listed []string
	for _, e := range entries {
		listed = append(listed, e.Name())
	}
	if !slices.Equal(listed, []string{"disk1", "disk2"}) {
		t.Fatalf("directory lists %v, want [disk1 disk2]", listed)
	}
	for name, size := range map[string]int64{"disk1": 1 << 20, "disk2": 3 << 20} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("stat %s: %v", name, err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want regular 0600", name, st.Mode())
		}
		if st.Size() != size {
			t.Errorf("%s: size %d, want %d", name, st.Size(), size)
		}
	}
	ino1 := inode(t, filepath.Join(dir, "disk1"))
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatalf("statfs: %v", err)
	}
	if got := int64(sfs.Blocks) * sfs.Bsize; got != 4<<20 {
		t.Errorf("statfs reports %d bytes, want the volumes' total %d", got, 4<<20)
	}

	if err := f.Add("disk1", newMemVolume(1<<20, 512)); err == nil {
		t.Error("Add of an existing name succeeded")
	}
	for _, bad := range []string{"", ".", "..", "a/b", strings.Repeat("x", 256)} {
		if err := f.Add(bad, newMemVolume(1<<20, 512)); err == nil {
			t.Errorf("Add(%q) succeeded", bad)
		}
	}
	if err := f.Add("odd", newMemVolume(1000, 512)); err == nil {
		t.Error("Add of a volume whose size is not a sector multiple succeeded")
	}
	if err := f.Remove("nosuch", false); err == nil {
		t.Error("Remove of a missing name succeeded")
	}

	if err := f.Remove("disk1", false); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "disk1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat after Remove: %v, want not-exist", err)
	}
	if got := f.Names(); !slices.Equal(got, []string{"disk2"}) {
		t.Fatalf("Names after Remove = %v, want [disk2]", got)
	}

	// It comes back, as a new inode with the new volume's size and contents.
	v := newMemVolume(2<<20, 512)
	copy(v.data, "fresh")
	addT(t, f, "disk1", v)
	path := filepath.Join(dir, "disk1")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat after re-Add: %v", err)
	}
	if st.Size() != 2<<20 {
		t.Errorf("size after re-Add %d, want %d", st.Size(), 2<<20)
	}
	if ino := inode(t, path); ino == ino1 {
		t.Errorf("re-added file kept inode %d", ino)
	}
	got := make([]byte, 5)
	if err := testsupport.ReadFileAt(path, got, 0); err != nil || string(got) != "fresh" {
		t.Errorf("re-added file reads %q, %v; want \"fresh\"", got, err)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

func TestReadWritePatterns(t *testing.T) {
	for _, sector := range []int{512, 4096} {
		t.Run(map[int]string{512: "sector512", 4096: "sector4096"}[sector], func(t *testing.T) {
			f, dir := mountT(t)
			const size = 4 << 20
			v := newMemVolume(size, sector)
			rng := rand.New(rand.NewPCG(1, uint64(sector)))
			for i := range v.data {
				v.data[i] = byte(rng.Uint32())
			}
			model := v.snapshot()
			addT(t, f, "disk", v)
			fh, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR, 0)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer fh.Close()

			cases := []struct{ off, n int64 }{
				{0, 4096}, {4096, 1 << 20}, {8192, 512}, // aligned
				{1, 1}, {511, 2}, {513, 100}, {4095, 4097}, // unaligned, within and across sectors
				{100, 3 * 4096}, {12345, 1<<20 + 17}, // unaligned, large
				{size - 1, 1}, {size - 700, 700}, // at the end
			}
			for _, c := range cases {
				p := make([]byte, c.n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				if n, err := fh.WriteAt(p, c.off); err != nil || int64(n) != c.n {
					t.Fatalf("WriteAt(off %d, len %d) = %d, %v", c.off, c.n, n, err)
				}
				copy(model[c.off:], p)
				got := make([]byte, c.n)
				if n, err := fh.ReadAt(got, c.off); err != nil || int64(n) != c.n {
					t.Fatalf("ReadAt(off %d, len %d) = %d, %v", c.off, c.n, n, err)
				}
				if !bytes.Equal(got, p) {
					t.Fatalf("ReadAt(off %d, len %d) returned other bytes than written", c.off, c.n)
				}
				// Unaligned reads of the neighbourhood see the model too.
				lo, hi := max(0, c.off-300), min(size, c.off+c.n+300)
				got = make([]byte, hi-lo)
				if _, err := fh.ReadAt(got, lo); err != nil {
					t.Fatalf("ReadAt(off %d, len %d): %v", lo, hi-lo, err)
				}
				if !bytes.Equal(got, model[lo:hi]) {
					t.Fatalf("bytes around write (off %d, len %d) changed", c.off, c.n)
				}
			}
			if !bytes.Equal(v.snapshot(), model) {
				t.Fatal("volume contents differ from the model")
			}
			if n := v.misaligned.Load(); n != 0 {
				t.Fatalf("volume saw %d misaligned requests", n)
			}
		})
	}
}

// TestConcurrentUnalignedWrites has goroutines write disjoint bytes that share sectors; the
// read-modify-write cycles must not lose each other's bytes.
func TestConcurrentUnalignedWrites(t *testing.T) {
	f, dir := mountT(t)
	const writers = 8
	const size = writers * 3 * 1024 // whole stripes
	v := newMemVolume(size, 512)
	addT(t, f, "disk", v)
	path := filepath.Join(dir, "disk")

	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fh, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer fh.Close()
			// Writer w owns bytes [w*3, w*3+3) of every 24-byte stripe.
			for off := int64(w * 3); off < size; off += writers * 3 {
				if _, err := fh.WriteAt([]byte{byte(w + 1), byte(w + 1), byte(w + 1)}, off); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	data := v.snapshot()
	for i, b := range data {
		if want := byte((i%(writers*3))/3 + 1); b != want {
			t.Fatalf("byte %d is %d, want %d: a read-modify-write lost a concurrent write", i, b, want)
		}
	}
}

func TestODirect(t *testing.T) {
	f, dir := mountT(t)
	v := newMemVolume(1<<20, 4096)
	addT(t, f, "disk", v)
	fh, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open O_DIRECT: %v", err)
	}
	defer fh.Close()
	p := alignedBuf(64 << 10)
	for i := range p {
		p[i] = byte(i * 7)
	}
	if _, err := fh.WriteAt(p, 128<<10); err != nil {
		t.Fatalf("O_DIRECT write: %v", err)
	}
	got := alignedBuf(64 << 10)
	if _, err := fh.ReadAt(got, 128<<10); err != nil {
		t.Fatalf("O_DIRECT read: %v", err)
	}
	if !bytes.Equal(got, p) || !bytes.Equal(v.snapshot()[128<<10:192<<10], p) {
		t.Fatal("O_DIRECT round trip differs")
	}
}

func TestEOF(t *testing.T) {
	f, dir := mountT(t)
	const size = 1 << 20
	v := newMemVolume(size, 512)
	addT(t, f, "disk", v)
	fh, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer fh.Close()

	buf := make([]byte, 4096)
	if n, err := fh.ReadAt(buf, size-100); n != 100 || err != io.EOF {
		t.Errorf("read across the end = %d, %v; want 100, EOF", n, err)
	}
	if n, err := fh.ReadAt(buf, size); n != 0 || err != io.EOF {
		t.Errorf("read at the end = %d, %v; want 0, EOF", n, err)
	}
	if n, err := fh.ReadAt(buf, size+12345); n != 0 || err != io.EOF {
		t.Errorf("read past the end = %d, %v; want 0, EOF", n, err)
	}
	if _, err := fh.WriteAt(buf, size); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write at the end: %v, want ENOSPC", err)
	}
	for i := range buf {
		buf[i] = 0xee
	}
	// The part inside the volume is written, as on a block device. Whether pwrite reports it
	// as a short count or (as this kernel does, retrying the rest itself) only ENOSPC is up to
	// the kernel.
	n, err := fh.WriteAt(buf, size-100)
	if n > 100 || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write across the end = %d, %v; want at most 100, ENOSPC", n, err)
	}
	if tail := v.snapshot()[size-100:]; !bytes.Equal(tail, buf[:100]) {
		t.Error("the part of a write across the end inside the volume was not written")
	}
	if st, err := fh.Stat(); err != nil || st.Size() != size {
		t.Errorf("size after writes past the end = %v, %v; want %d", st.Size(), err, size)
	}
}

func TestFsyncReachesFlush(t *testing.T) {
	f, dir := mountT(t)
	v := newMemVolume(1<<20, 512)
	addT(t, f, "disk", v)
	fh, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt([]byte("data"), 0); err != nil {
		t.Fatalf("write: %v", err)
	}
	before := v.flushes.Load()
	if err := fh.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if got := v.flushes.Load() - before; got != 1 {
		t.Fatalf("fsync made %d Flush calls, want 1", got)
	}
	if err := unix.Fdatasync(int(fh.Fd())); err != nil {
		t.Fatalf("fdatasync: %v", err)
	}
	if got := v.flushes.Load() - before; got != 2 {
		t.Fatalf("fsync+fdatasync made %d Flush calls, want 2", got)
	}
	// close(2) is not a durability point.
	if err := fh.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got := v.flushes.Load() - before; got != 2 {
		t.Fatalf("close made a Flush call (total %d)", got)
	}
}

func TestFallocate(t *testing.T) {
	f, dir := mountT(t)
	const size = 1 << 20
	v := newMemVolume(size, 512)
	for i := range v.data {
		v.data[i] = 0xff
	}
	addT(t, f, "disk", v)
	fh, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer fh.Close()
	fd := int(fh.Fd())
	model := v.snapshot()

	// Punch hole: the aligned middle is discarded, the edges are zeroed.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 1000, 10000); err != nil {
		t.Fatalf("punch hole: %v", err)
	}
	clear(model[1000:11000])
	if got, want := v.discardLog(), [][2]int64{{1024, 10752 - 1024}}; !slices.Equal(got, want) {
		t.Errorf("discards %v, want %v", got, want)
	}
	// A hole inside one sector is only zeroed.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 20000, 10); err != nil {
		t.Fatalf("punch small hole: %v", err)
	}
	clear(model[20000:20010])
	// Past the end with KEEP_SIZE: clipped.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, size-4096, 8192); err != nil {
		t.Fatalf("punch hole across the end: %v", err)
	}
	clear(model[size-4096:])
	if got := len(v.discardLog()); got != 2 {
		t.Errorf("%d discards after three holes, want 2", got)
	}
	// Zero range writes zeros and discards nothing.
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, 30001, 70000); err != nil {
		t.Fatalf("zero range: %v", err)
	}
	clear(model[30001:100001])
	if got := len(v.discardLog()); got != 2 {
		t.Errorf("zero range discarded (%d discards)", got)
	}
	if !bytes.Equal(v.snapshot(), model) {
		t.Error("contents after holes and zero ranges differ from the model")
	}
	read := make([]byte, size)
	if _, err := fh.ReadAt(read, 0); err != nil || !bytes.Equal(read, model) {
		t.Errorf("file reads differ from the model after fallocate (%v)", err)
	}

	// Plain allocation inside the size is a no-op success; growing is refused.
	if err := unix.Fallocate(fd, 0, 0, size); err != nil {
		t.Errorf("plain fallocate within size: %v", err)
	}
	if err := unix.Fallocate(fd, 0, 0, size+4096); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("fallocate growing the file: %v, want EFBIG", err)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_COLLAPSE_RANGE, 0, 4096); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("collapse range: %v, want EOPNOTSUPP", err)
	}
	if !bytes.Equal(v.snapshot(), model) {
		t.Error("refused or no-op fallocate calls changed the contents")
	}
	if n := v.misaligned.Load(); n != 0 {
		t.Fatalf("volume saw %d misaligned requests", n)
	}
}

func TestRefusedOperations(t *testing.T) {
	f, dir := mountT(t)
	const size = 1 << 20
	addT(t, f, "disk", newMemVolume(size, 512))
	path := filepath.Join(dir, "disk")

	checks := []struct {
		what string
		err  error
	}{
		{"truncate smaller", os.Truncate(path, size/2)},
		{"truncate larger", os.Truncate(path, 2*size)},
		{"rename", os.Rename(path, filepath.Join(dir, "other"))},
		{"unlink", os.Remove(path)},
		{"mkdir", os.Mkdir(filepath.Join(dir, "d"), 0o755)},
		{"symlink", os.Symlink("disk", filepath.Join(dir, "s"))},
		{"link", os.Link(path, filepath.Join(dir, "l"))},
		{"chmod", os.Chmod(path, 0o644)},
		{"chown", os.Chown(path, 1, 1)},
		{"mknod", unix.Mknod(filepath.Join(dir, "n"), unix.S_IFREG|0o600, 0)},
	}
	_, err := os.OpenFile(filepath.Join(dir, "new"), os.O_RDWR|os.O_CREATE, 0o600)
	checks = append(checks, struct {
		what string
		err  error
	}{"create", err})
	_, err = os.OpenFile(path, os.O_RDWR|os.O_TRUNC, 0)
	checks = append(checks, struct {
		what string
		err  error
	}{"open O_TRUNC", err})
	for _, c := range checks {
		if !errors.Is(c.err, syscall.EPERM) {
			t.Errorf("%s: %v, want EPERM", c.what, c.err)
		}
	}

	if err := os.Truncate(path, size); err != nil {
		t.Errorf("truncate to the same size: %v", err)
	}
	stamp := time.Unix(1_000_000_000, 0)
	if err := os.Chtimes(path, stamp, stamp); err != nil {
		t.Errorf("setting times: %v", err)
	} else if st, err := os.Stat(path); err != nil || !st.ModTime().Equal(stamp) {
		t.Errorf("mtime after Chtimes: %v, %v; want %v", st.ModTime(), err, stamp)
	}
	if got := f.Names(); !slices.Equal(got, []string{"disk"}) {
		t.Errorf("Names after refused operations = %v", got)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != size {
		t.Errorf("stat after refused operations: %v", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("directory after refused operations: %v, %v", entries, err)
	}
}

func TestRemoveBusy(t *testing.T) {
	f, dir := mountT(t)
	v := newMemVolume(1<<20, 512)
	addT(t, f, "disk1", v)
	path := filepath.Join(dir, "disk1")

	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	fh2, err := os.Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	err = f.Remove("disk1", false)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Remove of an open file: %v, want ErrBusy", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "disk1") || !strings.Contains(msg, "2 open") {
		t.Errorf("busy error %q does not name the file and the open count", msg)
	}
	if _, err := fh.WriteAt([]byte("still here"), 0); err != nil {
		t.Fatalf("write after refused Remove: %v", err)
	}

	// Once closed, removal works (the kernel releases handles asynchronously; Remove waits
	// for that briefly).
	fh.Close()
	fh2.Close()
	if err := f.Remove("disk1", false); err != nil {
		t.Fatalf("Remove after close: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat after Remove: %v", err)
	}
}

func TestForcedRemove(t *testing.T) {
	f, dir := mountT(t)
	v := newMemVolume(1<<20, 512)
	addT(t, f, "disk1", v)
	path := filepath.Join(dir, "disk1")
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt([]byte("before"), 0); err != nil {
		t.Fatalf("write: %v", err)
	}

	if err := f.Remove("disk1", true); err != nil {
		t.Fatalf("forced Remove: %v", err)
	}
	calls := v.calls.Load()
	buf := make([]byte, 6)
	if _, err := fh.ReadAt(buf, 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("read on a removed file: %v, want EIO", err)
	}
	if _, err := fh.WriteAt([]byte("after"), 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("write on a removed file: %v, want EIO", err)
	}
	if err := fh.Sync(); !errors.Is(err, syscall.EIO) {
		t.Errorf("fsync on a removed file: %v, want EIO", err)
	}
	if got := v.calls.Load(); got != calls {
		t.Errorf("the volume got %d calls after a forced Remove returned", got-calls)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after forced Remove: %v", err)
	}
	if len(f.Names()) != 0 {
		t.Errorf("Names after forced Remove = %v", f.Names())
	}
	if !bytes.HasPrefix(v.snapshot(), []byte("before")) {
		t.Error("data written before removal is gone from the volume")
	}
}

// TestForcedRemoveWaitsForVolume checks that a forced Remove returns only after a request that
// was already inside the Volume has come back.
func TestForcedRemoveWaitsForVolume(t *testing.T) {
	f, dir := mountT(t)
	v := newMemVolume(1<<20, 512)
	addT(t, f, "disk1", v)
	path := filepath.Join(dir, "disk1")
	writer, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer writer.Close()
	prober, err := os.Open(path)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer prober.Close()

	v.block.Store(true)
	writeErr := make(chan error, 1)
	go func() {
		_, err := writer.WriteAt(make([]byte, 512), 0)
		writeErr <- err
	}()
	<-v.entered // the write is inside the Volume

	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	removed := make(chan error, 1)
	go func() {
		err := f.Remove("disk1", true)
		note("remove returned")
		removed <- err
	}()
	// Wait until the file refuses new requests: Remove is then waiting for the write.
	for {
		if _, err := prober.ReadAt(make([]byte, 512), 0); errors.Is(err, syscall.EIO) {
			break
		}
	}
	note("write released")
	close(v.released)
	if err := <-removed; err != nil {
		t.Fatalf("forced Remove: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Errorf("the write that was inside the Volume failed: %v", err)
	}
	if !slices.Equal(order, []string{"write released", "remove returned"}) {
		t.Fatalf("events %v: Remove returned while a request was inside the Volume", order)
	}
}

func TestUnmountWithOpenFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt")
	f, err := mount(t, dir, Options{})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	v := newMemVolume(1<<20, 512)
	addT(t, f, "disk", v)
	fh, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer fh.Close()
	if err := f.Unmount(); err != nil {
		t.Fatalf("Unmount with an open file: %v", err)
	}
	if mounted, err := isMounted(dir); err != nil || mounted {
		t.Fatalf("still mounted after Unmount (%v)", err)
	}
	calls := v.calls.Load()
	if _, err := fh.ReadAt(make([]byte, 512), 0); err == nil {
		t.Error("read on a handle of an unmounted view succeeded")
	}
	if got := v.calls.Load(); got != calls {
		t.Errorf("the volume got %d calls after Unmount", got-calls)
	}
	if err := f.Unmount(); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
	if err := f.Add("disk", newMemVolume(1<<20, 512)); err == nil {
		t.Error("Add after Unmount succeeded")
	}
}

func TestMountCreatesDirAndUnmounts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	f, err := mount(t, dir, Options{MaxWrite: 256 << 10})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	if mounted, err := isMounted(dir); err != nil || !mounted {
		t.Fatalf("not in mountinfo after Mount (%v)", err)
	}
	if err := f.Unmount(); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	if mounted, err := isMounted(dir); err != nil || mounted {
		t.Fatalf("still in mountinfo after Unmount (%v)", err)
	}
	if _, err := mount(t, dir, Options{MaxWrite: -1}); err == nil {
		t.Fatal("Mount with negative MaxWrite succeeded")
	}
}

// TestMountReplacesDeadMount: a view whose server died (here: its connection aborted) leaves a
// mount that fails every access with ENOTCONN; mounting again at the same place replaces it.
func TestMountReplacesDeadMount(t *testing.T) {
	requireFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	dead, err := Mount(dir, Options{}, testLogger(t))
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	if err := fusectl.Abort(dead.connID); err != nil {
		t.Fatalf("abort: %v", err)
	}
	dead.server.Wait()
	// dead is not unmounted: its Unmount would unmount whatever is at dir by then.
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); !errors.Is(err, syscall.ENOTCONN) {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		t.Fatalf("statfs of the dead mount: %v, want ENOTCONN", err)
	}

	f, err := mount(t, dir, Options{})
	if err != nil {
		t.Fatalf("Mount over a dead mount: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	addT(t, f, "disk", newMemVolume(1<<20, 512))
	if st, err := os.Stat(filepath.Join(dir, "disk")); err != nil || st.Size() != 1<<20 {
		t.Fatalf("file in the new view: %v", err)
	}
}

// TestUnmountAfterExternalUnmount: an operator's umount -l must not make Unmount fail.
func TestUnmountAfterExternalUnmount(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mnt")
	f, err := mount(t, dir, Options{})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	addT(t, f, "disk", newMemVolume(1<<20, 512))
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		t.Fatalf("external lazy unmount: %v", err)
	}
	if err := f.Unmount(); err != nil {
		t.Fatalf("Unmount after an external unmount: %v", err)
	}
	if len(f.Names()) != 0 {
		t.Errorf("Names after Unmount = %v", f.Names())
	}
}
