package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// coldTestFile writes a patterned file of size bytes, syncs it and drops it from the
// page cache, and opens it as a Device.
func coldTestFile(t *testing.T, size int) (*fileDevice, []byte) {
	t.Helper()
	d, p := openTestFile(t, int64(size))
	want := pattern(size, 0x5a)
	if _, err := d.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	fd := d.(*fileDevice)
	if err := fd.control(func(fd int) error { return unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED) }); err != nil {
		t.Fatalf("fadvise %s: %v", p, err)
	}
	return fd, want
}

// onTmpfs reports whether dir's file system keeps everything in the page cache, where no
// read ever misses it.
func onTmpfs(t *testing.T, dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}

// TestColdReadsGoThroughRing reads a file that is not in the page cache from many
// goroutines: every byte must come back, and the misses must have gone to the ring.
func TestColdReadsGoThroughRing(t *testing.T) {
	const size, chunk = 4 << 20, 20 << 10 // chunks straddle pages and cached/uncached parts
	d, want := coldTestFile(t, size)
	// Make every other 64 KiB cached, so reads mix RWF_NOWAIT hits and ring reads.
	for off := 0; off < size; off += 128 << 10 {
		if _, err := d.ReadAt(make([]byte, 4096), int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			buf := make([]byte, chunk)
			for off := g * chunk; off+chunk <= size; off += 8 * chunk {
				if n, err := d.ReadAt(buf, int64(off)); err != nil || n != chunk {
					errs <- fmt.Errorf("ReadAt(%d) = %d, %v", off, n, err)
					return
				}
				if !bytes.Equal(buf, want[off:off+chunk]) {
					errs <- fmt.Errorf("ReadAt(%d) returned other data", off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if onTmpfs(t, os.TempDir()) {
		t.Logf("%s is memory-backed: no read missed the page cache", os.TempDir())
	} else if d.reads.ring.Load() == nil {
		t.Fatalf("reads of an uncached file never used the io_uring (noRing=%v, noNowait=%v)",
			d.reads.noRing.Load(), d.reads.noNowait.Load())
	}
}

// TestRingReadsWithoutNowait forces every read onto the ring, whatever the file system.
func TestRingReadsWithoutNowait(t *testing.T) {
	const size = 1 << 20
	d, want := coldTestFile(t, size)
	d.reads.noNowait.Store(true)
	d.reads.ringOnly = true
	got := make([]byte, size-1000)
	if n, err := d.ReadAt(got, 1000); err != nil || n != len(got) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, want[1000:]) {
		t.Fatal("ring read returned other data")
	}
	if d.reads.ring.Load() == nil {
		t.Fatalf("no ring was made (io_uring unusable here: noRing=%v)", d.reads.noRing.Load())
	}
}

// TestCloseDuringReads closes the device under readers: they get the data or an error,
// never a crash, a hang or a read of a recycled descriptor.
func TestCloseDuringReads(t *testing.T) {
	const size = 4 << 20
	d, want := coldTestFile(t, size)
	var wg sync.WaitGroup
	started := make(chan struct{}, 4)
	for g := range 4 {
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for i := 0; ; i++ {
				off := ((g*97 + i*31) % (size / len(buf))) * len(buf)
				_, err := d.ReadAt(buf, int64(off))
				if i == 0 {
					started <- struct{}{}
				}
				if err != nil {
					if !errors.Is(err, os.ErrClosed) {
						t.Errorf("read after close: %v, want os.ErrClosed", err)
					}
					return
				}
				if !bytes.Equal(buf, want[off:off+len(buf)]) {
					t.Errorf("ReadAt(%d) returned other data", off)
					return
				}
			}
		})
	}
	for range 4 {
		<-started
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}
