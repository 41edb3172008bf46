package faultfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func mount(t *testing.T) *FS {
	t.Helper()
	backing, mnt := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(backing, "disk"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Mount(backing, mnt)
	if err != nil {
		t.Fatalf("mount (needs root and /dev/fuse): %v", err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return f
}

// The errors reach the caller of the real system calls, buffered and O_DIRECT, and end when
// cleared; data written outside a fault reaches the backing file.
func TestFaultsReachSystemCalls(t *testing.T) {
	f := mount(t)
	for _, direct := range []bool{false, true} {
		flags := os.O_RDWR
		if direct {
			flags |= unix.O_DIRECT
		}
		fd, err := unix.Open(filepath.Join(f.Mountpoint, "disk"), flags, 0)
		if err != nil {
			t.Fatalf("open (direct %v): %v", direct, err)
		}
		buf := bytes.Repeat([]byte{7}, 4096)
		f.FailWrites(syscall.EIO, 4096)
		if _, err := unix.Pwrite(fd, buf, 4096); !errors.Is(err, syscall.EIO) {
			t.Fatalf("direct %v: pwrite during a write fault = %v, want EIO", direct, err)
		}
		if _, err := unix.Pwrite(fd, buf[:512], 0); err != nil {
			t.Fatalf("direct %v: pwrite below the faulty range: %v", direct, err)
		}
		f.FailWrites(0, 0)
		if _, err := unix.Pwrite(fd, buf, 8192); err != nil {
			t.Fatalf("direct %v: pwrite after the fault: %v", direct, err)
		}
		f.FailSyncs(syscall.EIO)
		if err := unix.Fdatasync(fd); !errors.Is(err, syscall.EIO) {
			t.Fatalf("direct %v: fdatasync during a sync fault = %v, want EIO", direct, err)
		}
		f.FailSyncs(0)
		if err := unix.Fdatasync(fd); err != nil {
			t.Fatalf("direct %v: fdatasync after the fault: %v", direct, err)
		}
		unix.Close(fd)
	}
	if f.WriteFaults.Load() != 2 || f.SyncFaults.Load() != 2 {
		t.Fatalf("faults counted: %d writes, %d syncs; want 2 and 2", f.WriteFaults.Load(), f.SyncFaults.Load())
	}
	got := make([]byte, 4096)
	fd, err := os.Open(filepath.Join(f.Mountpoint, "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if _, err := fd.ReadAt(got, 8192); err != nil || got[0] != 7 {
		t.Fatalf("data written after the fault: %v, first byte %d", err, got[0])
	}
	if _, err := fd.ReadAt(got, 4096); err != nil || got[0] != 0 {
		t.Fatalf("data of the failed write reached the file: %v, first byte %d", err, got[0])
	}
}

// A file left open does not keep the mount (and the process, at exit) hanging on a server that
// is gone: it fails from then on.
func TestUnmountWithAFileOpen(t *testing.T) {
	backing, mnt := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(backing, "disk"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Mount(backing, mnt)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := os.OpenFile(filepath.Join(mnt, "disk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Unmount(); err != nil {
		t.Fatalf("unmount with a file open: %v", err)
	}
	if _, err := fd.WriteAt([]byte{1}, 0); err == nil {
		t.Fatal("a write to a file of an ended mount succeeded")
	}
	fd.Close()
}
