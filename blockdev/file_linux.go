package blockdev

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fileSectorSize is the sector size HAST assumes for regular files.
const fileSectorSize = 512

// zeroChunk bounds the buffer used where a file system cannot punch holes or
// preallocate and zeros have to be written instead.
const zeroChunk = 1 << 20

// fileDevice is a Device backed by an *os.File: a regular file or a block device.
// os.File's ReadAt/WriteAt use pread/pwrite and are safe for concurrent use, and its
// internal fd reference counting makes Close safe against concurrent I/O.
type fileDevice struct {
	f      *os.File
	path   string
	size   int64
	sector int
	block  bool
	reads  asyncReader
}

// Open opens path read-write, takes flock(LOCK_EX|LOCK_NB) (a second Open of the same
// path fails with an error wrapping [ErrInUse]), and sizes it via fstat (regular file,
// sector size 512) or BLKGETSIZE64/BLKSSZGET (block device). Errors name the path.
func Open(path string) (Device, error) {
	// Stat first so that opening a FIFO or a character device with side effects is
	// never attempted.
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := checkKind(path, st.Mode()); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d, err := newFileDevice(f, path, true)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func checkKind(path string, mode fs.FileMode) error {
	if mode.IsRegular() || (mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0) {
		return nil
	}
	return fmt.Errorf("open %s: not a regular file or block device (mode %s)", path, mode)
}

// OpenReadOnly opens path for reading without taking the lock, so `hast dump` can inspect a
// component a running daemon holds (as hastctl dump does). Writes fail.
func OpenReadOnly(path string) (Device, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := checkKind(path, st.Mode()); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d, err := newFileDevice(f, path, false)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func newFileDevice(f *os.File, path string, lock bool) (*fileDevice, error) {
	d := &fileDevice{f: f, path: path}
	err := d.control(func(fd int) error {
		if err := flockIf(fd, lock); err != nil {
			switch {
			case errors.Is(err, unix.EWOULDBLOCK):
				return fmt.Errorf("open %s: %w (flock held by another opener)", path, ErrInUse)
			case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOLCK):
				// HAST only warns when the file system cannot lock; refusing would make
				// such storage unusable, and the exclusion is a safety net, not a
				// correctness requirement of the data path.
			default:
				return fmt.Errorf("open %s: flock: %w", path, err)
			}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("open %s: fstat: %w", path, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			d.size = st.Size
			d.sector = fileSectorSize
		case unix.S_IFBLK:
			d.block = true
			var size uint64
			if err := ioctlPtr(fd, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
				return fmt.Errorf("open %s: BLKGETSIZE64: %w", path, err)
			}
			var ssz int32
			if err := ioctlPtr(fd, unix.BLKSSZGET, unsafe.Pointer(&ssz)); err != nil {
				return fmt.Errorf("open %s: BLKSSZGET: %w", path, err)
			}
			if size > 1<<63-1 {
				return fmt.Errorf("open %s: device size %d does not fit int64", path, size)
			}
			d.size = int64(size)
			d.sector = int(ssz)
		default:
			return fmt.Errorf("open %s: not a regular file or block device", path)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if d.sector <= 0 || d.sector&(d.sector-1) != 0 {
		return nil, fmt.Errorf("open %s: sector size %d is not a power of two", path, d.sector)
	}
	return d, nil
}

// flockIf takes the exclusive lock of an opener that will write.
func flockIf(fd int, lock bool) error {
	if !lock {
		return nil
	}
	return unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// control runs fn with the file's descriptor, holding a reference so a concurrent
// Close cannot recycle the descriptor number underneath it.
func (d *fileDevice) control(fn func(fd int) error) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("%s: %w", d.path, err)
	}
	var inner error
	if err := rc.Control(func(fd uintptr) { inner = fn(int(fd)) }); err != nil {
		// Control fails only once the file is closing; say so the way os.File's own
		// methods do.
		return fmt.Errorf("%s: %w (%v)", d.path, os.ErrClosed, err)
	}
	return inner
}

func (d *fileDevice) ReadAt(p []byte, off int64) (int, error) {
	n, eof, err := checkRead(len(p), off, d.size)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", d.path, err)
	}
	if n > 0 {
		var got int
		rerr := d.control(func(fd int) error {
			var err error
			got, err = d.reads.readFull(fd, p[:n], off)
			return err
		})
		if rerr != nil {
			return got, fmt.Errorf("read %s at %d: %w", d.path, off, rerr)
		}
	}
	return readResult(n, eof, nil)
}

func (d *fileDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange("write", off, int64(len(p)), d.size); err != nil {
		return 0, fmt.Errorf("%s: %w", d.path, err)
	}
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write %s at %d: %w", d.path, off, err)
	}
	return n, nil
}

func (d *fileDevice) Flush() error {
	return d.control(func(fd int) error {
		if err := unix.Fdatasync(fd); err != nil {
			return fmt.Errorf("fdatasync %s: %w", d.path, err)
		}
		return nil
	})
}

func (d *fileDevice) Discard(off, length int64) error {
	if err := checkRange("discard", off, length, d.size); err != nil {
		return fmt.Errorf("%s: %w", d.path, err)
	}
	if length == 0 {
		return nil
	}
	if d.block {
		return d.discardBlock(off, length)
	}
	err := d.control(func(fd int) error {
		return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	})
	if errors.Is(err, unix.EOPNOTSUPP) {
		// Both nodes must read the same bytes back from a discarded range, so where the
		// file system cannot punch holes the range is zeroed explicitly.
		return zeroFill(d.f, off, length)
	}
	if err != nil {
		return fmt.Errorf("discard %s [%d,+%d): %w", d.path, off, length, err)
	}
	return nil
}

func (d *fileDevice) discardBlock(off, length int64) error {
	mask := int64(d.sector - 1)
	if off&mask != 0 || length&mask != 0 {
		return fmt.Errorf("discard %s [%d,+%d): not aligned to the %d-byte sector size: %w",
			d.path, off, length, d.sector, syscall.EINVAL)
	}
	// BLKZEROOUT, not BLKDISCARD: a discarded range must read back as zeros on both nodes (the
	// FUSE view and online verify rely on it), and BLKDISCARD promises nothing about contents.
	// The kernel still unmaps where the device guarantees zeroes (REQ_OP_WRITE_ZEROES).
	rng := [2]uint64{uint64(off), uint64(length)}
	err := d.control(func(fd int) error {
		return ioctlPtr(fd, unix.BLKZEROOUT, unsafe.Pointer(&rng))
	})
	if err != nil {
		return fmt.Errorf("discard %s [%d,+%d): BLKZEROOUT: %w", d.path, off, length, err)
	}
	return nil
}

func (d *fileDevice) Size() int64     { return d.size }
func (d *fileDevice) SectorSize() int { return d.sector }

func (d *fileDevice) Close() error {
	err := d.f.Close()
	// After the descriptor: a read still on the ring finishes, or falls back to pread
	// on the descriptor it holds a reference to.
	if rerr := d.reads.close(); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("close %s: %w", d.path, err)
	}
	return nil
}

// zeroFill writes zeros over [off, off+length) of f.
func zeroFill(f *os.File, off, length int64) error {
	buf := make([]byte, min(length, zeroChunk))
	for length > 0 {
		n := min(length, int64(len(buf)))
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return fmt.Errorf("zero %s at %d: %w", f.Name(), off, err)
		}
		off += n
		length -= n
	}
	return nil
}

// CreateFile makes a preallocated (fallocate, not sparse) regular file of size bytes, for
// tests and the demo. It refuses to replace an existing file so a mistyped path cannot
// wipe a local component; on failure nothing is left behind.
func CreateFile(path string, size int64) (err error) {
	if size <= 0 {
		return fmt.Errorf("create %s: size %d must be positive", path, size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("create %s: %w", path, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = unix.Fallocate(int(fd), 0, 0, size) }); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	switch {
	case errors.Is(ferr, unix.EOPNOTSUPP):
		// Writing zeros allocates every block too, which is what preallocation is for:
		// writes into holes serialise on some file systems.
		if err := zeroFill(f, 0, size); err != nil {
			return fmt.Errorf("create %s: %w", path, err)
		}
	case ferr != nil:
		return fmt.Errorf("create %s: fallocate %d bytes: %w", path, size, ferr)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("create %s: fsync: %w", path, err)
	}
	return nil
}
