package blockdev

import (
	"errors"
	"fmt"
	"io"
)

// Device is the local component: a regular file or a block device. Safe for concurrent use.
//
// Offsets are physical (metadata block at 0). ReadAt follows io.ReaderAt: a read that
// runs past Size returns the bytes before the end and io.EOF. WriteAt, Discard and
// ranges in general never extend the device: a range past Size fails with an error
// wrapping [ErrOutOfRange].
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Flush() error                    // fdatasync
	Discard(off, length int64) error // FALLOC_FL_PUNCH_HOLE|KEEP_SIZE on files, BLKDISCARD on block devices
	Size() int64                     // media size in bytes
	SectorSize() int                 // 512 for regular files (as HAST), BLKSSZGET for block devices
	Close() error
}

var (
	// ErrInUse is returned by Open when another open file description holds the
	// device's lock (another daemon, or another resource configured on the same path).
	ErrInUse = errors.New("blockdev: device already in use")
	// ErrOutOfRange is wrapped by errors for writes, discards and reads that start
	// outside the device.
	ErrOutOfRange = errors.New("blockdev: range outside the device")
)

// checkRead validates a read of n bytes at off against size and returns how many
// bytes may be read; eof reports that the read is cut short by the end of the device.
func checkRead(n int, off, size int64) (allowed int, eof bool, err error) {
	if off < 0 {
		return 0, false, fmt.Errorf("read at negative offset %d: %w", off, ErrOutOfRange)
	}
	if off >= size {
		if n == 0 {
			return 0, false, nil
		}
		return 0, true, nil
	}
	if int64(n) > size-off {
		return int(size - off), true, nil
	}
	return n, false, nil
}

// checkRange validates that [off, off+length) lies inside a device of size bytes.
func checkRange(op string, off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("%s [%d,+%d) on a device of %d bytes: %w", op, off, length, size, ErrOutOfRange)
	}
	return nil
}

// readResult turns a short read decided by checkRead into io.ReaderAt's contract.
func readResult(n int, eof bool, err error) (int, error) {
	if err == nil && eof {
		err = io.EOF
	}
	return n, err
}
