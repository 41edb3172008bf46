package blockdev

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SyncWriter is implemented by devices that can make a single write durable on its own
// (pwritev2 with RWF_DSYNC). For the activemap this is far cheaper than WriteAt followed by
// Flush: fdatasync would also write back every dirty data page of the component, while a
// DSYNC write flushes only its own range (plus the journal and the disk cache).
type SyncWriter interface {
	WriteAtSync(p []byte, off int64) (int, error)
}

// WriteAtSync writes p at off and returns once it is durable.
func (d *fileDevice) WriteAtSync(p []byte, off int64) (int, error) {
	if err := checkRange("write", off, int64(len(p)), d.size); err != nil {
		return 0, fmt.Errorf("%s: %w", d.path, err)
	}
	var n int
	err := d.control(func(fd int) error {
		for n < len(p) {
			m, err := unix.Pwritev2(fd, [][]byte{p[n:]}, off+int64(n), unix.RWF_DSYNC)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if m == 0 {
				return unix.EIO
			}
			n += m
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("durable write %s at %d: %w", d.path, off, err)
	}
	return n, nil
}
