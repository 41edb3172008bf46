package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func fileBlocks(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func TestCreateFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk")
	const size = 4 << 20
	if err := CreateFile(p, size); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Size() != size || st.Mode().Perm() != 0o600 {
		t.Fatalf("stat: %v, size %d, mode %v", err, st.Size(), st.Mode())
	}
	if b := fileBlocks(t, p); b*512 < size {
		t.Fatalf("file is sparse: %d blocks of 512 for %d bytes", b, size)
	}
	if err := CreateFile(p, size); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), p) {
		t.Fatalf("CreateFile over an existing file = %v, want ErrExist naming the path", err)
	}
	if err := CreateFile(filepath.Join(dir, "zero"), 0); err == nil {
		t.Fatalf("CreateFile of 0 bytes succeeded")
	}
	huge := filepath.Join(dir, "huge")
	if err := CreateFile(huge, 1<<62); err == nil {
		t.Fatalf("CreateFile of 4 EiB succeeded")
	}
	if _, err := os.Stat(huge); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("failed CreateFile left %s behind: %v", huge, err)
	}
}

func openTestFile(t *testing.T, size int64) (Device, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk")
	if err := CreateFile(p, size); err != nil {
		t.Fatal(err)
	}
	d, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, p
}

func TestOpenRegularFile(t *testing.T) {
	const size = 1 << 20
	d, p := openTestFile(t, size)
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

	// Edges: io.ReaderAt at the end, no growth on write.
	if n, err := d.ReadAt(got, size-100); n != 100 || err != io.EOF {
		t.Fatalf("read across the end = %d, %v; want 100, EOF", n, err)
	}
	checkOutOfRange(t, d, p, size, data, got)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err == nil {
		t.Fatalf("second Close succeeded")
	}
	if _, err := d.ReadAt(got, 0); err == nil {
		t.Fatalf("ReadAt after Close succeeded")
	}
}

func TestDiscardPunchesHole(t *testing.T) {
	const size = 1 << 20
	d, p := openTestFile(t, size)
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
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	if err != nil || hole != off {
		t.Fatalf("SEEK_HOLE = %d, %v; want %d", hole, err, off)
	}
	next, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if err != nil || next != off+n {
		t.Fatalf("SEEK_DATA = %d, %v; want %d", next, err, off+n)
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
	if d.Size() != size {
		t.Fatalf("size changed")
	}
	if err := d.Discard(0, 0); err != nil {
		t.Fatalf("empty discard: %v", err)
	}
}

// loopDevice attaches path to a free loop device and detaches it when the test ends.
func loopDevice(t *testing.T, path string, sector int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("loop device tests need root (BLKGETSIZE64/BLKSSZGET/BLKZEROOUT are only reachable through a block device)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Fatalf("losetup not found (apt-get install util-linux): %v", err)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--sector-size", fmt.Sprint(sector), path).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v: %s", path, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func TestBlockDevice(t *testing.T) {
	for _, sector := range []int{512, 4096} {
		t.Run(fmt.Sprint(sector), func(t *testing.T) {
			const size = 8 << 20
			backing := filepath.Join(t.TempDir(), "backing")
			if err := CreateFile(backing, size); err != nil {
				t.Fatal(err)
			}
			dev := loopDevice(t, backing, sector)
			d, err := Open(dev)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if d.Size() != size || d.SectorSize() != sector {
				t.Fatalf("%s: Size %d SectorSize %d; want %d, %d", dev, d.Size(), d.SectorSize(), size, sector)
			}
			if _, err := Open(dev); !errors.Is(err, ErrInUse) {
				t.Fatalf("second Open of %s = %v, want ErrInUse", dev, err)
			}

			data := pattern(size, 9)
			if _, err := d.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			if err := d.Flush(); err != nil {
				t.Fatal(err)
			}
			const off, n = 1 << 20, 64 << 10
			if err := d.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, size)
			if _, err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(data)
			clear(want[off : off+n])
			if !bytes.Equal(got, want) {
				t.Fatalf("contents after Discard (BLKZEROOUT) differ: the range must read as zeros")
			}
			if err := d.Discard(off+1, int64(sector)); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "not aligned") {
				t.Fatalf("unaligned discard = %v", err)
			}
			if _, err := d.WriteAt(data[:4096], size-512); !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("write past the device end = %v", err)
			}

			// The whole local component on a real block device.
			md, err := Create(d, "blk", CreateOptions{ExtentSize: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			g, _ := ComputeGeometry(size, sector, 64<<10)
			if md.MapSize() != g.MapSize || md.MapSize()%int64(sector) != 0 {
				t.Fatalf("mapsize %d, want %d", md.MapSize(), g.MapSize)
			}
			back, err := ReadMetadata(d, "blk")
			if err != nil || *back != *md {
				t.Fatalf("ReadMetadata = %+v, %v", back, err)
			}
		})
	}
}

func TestOpenReadOnly(t *testing.T) {
	d, p := openTestFile(t, 1<<20)
	md, err := Create(d, "r", CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// hast dump reads a component a running daemon holds locked.
	ro, err := OpenReadOnly(p)
	if err != nil {
		t.Fatalf("OpenReadOnly while locked: %v", err)
	}
	defer ro.Close()
	if ro.Size() != 1<<20 || ro.SectorSize() != 512 {
		t.Fatalf("Size %d SectorSize %d", ro.Size(), ro.SectorSize())
	}
	got, err := ReadMetadata(ro, "r")
	if err != nil || *got != *md {
		t.Fatalf("ReadMetadata via read-only device = %+v, %v", got, err)
	}
	if _, err := ro.WriteAt([]byte{1}, 0); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("write through a read-only device = %v", err)
	}
	if _, err := OpenReadOnly(filepath.Dir(p)); err == nil {
		t.Fatalf("OpenReadOnly accepted a directory")
	}
	// It takes no lock, so the owner can still reopen after closing.
	d.Close()
	d2, err := Open(p)
	if err != nil {
		t.Fatalf("Open while a read-only handle exists: %v", err)
	}
	d2.Close()
}

// checkOutOfRange checks a size-byte device opened from file p at its edges: a read at the
// end gives EOF, I/O outside it fails with ErrOutOfRange naming the path, and the file does
// not grow. data and got are a write payload and a read buffer of more than 100 bytes.
func checkOutOfRange(t *testing.T, d Device, p string, size int64, data, got []byte) {
	t.Helper()
	if n, err := d.ReadAt(got, size); n != 0 || err != io.EOF {
		t.Fatalf("read at the end = %d, %v", n, err)
	}
	if _, err := d.ReadAt(got, -1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read at -1 = %v", err)
	}
	for _, off := range []int64{size - 100, size, -512} {
		if _, err := d.WriteAt(data, off); !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), p) {
			t.Fatalf("write at %d = %v, want ErrOutOfRange naming the path", off, err)
		}
	}
	if err := d.Discard(size-512, 1024); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("discard past the end = %v", err)
	}
	if st, _ := os.Stat(p); st.Size() != size {
		t.Fatalf("file grew to %d", st.Size())
	}
}
