// Package fusectl ends FUSE connections through the kernel's fusectl file system, the one way
// to stop a connection whose mount is gone or busy: requests in flight and later ones fail
// with ECONNABORTED/ENOTCONN and the server's readers return. Both the FUSE frontend and the
// fault-injecting test file system stop their servers this way.
package fusectl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Dir is where fusectl is mounted.
const Dir = "/sys/fs/fuse/connections"

// ID returns the connection number of the FUSE mount at dir (its device's minor number).
func ID(dir string) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	return unix.Minor(st.Dev), nil
}

// Abort writes to the connection's abort file in fusectl, mounting fusectl for
// the duration if nobody has (systemd normally does; minimal systems may not). A connection
// that has ended already counts as aborted.
func Abort(id uint32) error {
	if id == 0 {
		return errors.New("fusectl: connection number unknown")
	}
	if entries, err := os.ReadDir(Dir); err == nil && len(entries) == 0 {
		if err := unix.Mount("fusectl", Dir, "fusectl", 0, ""); err != nil {
			return fmt.Errorf("mount fusectl on %s: %w", Dir, err)
		}
		// Best effort: it only restores the state found.
		defer func() { _ = unix.Unmount(Dir, 0) }()
	}
	conn := filepath.Join(Dir, strconv.FormatUint(uint64(id), 10))
	if _, err := os.Stat(conn); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(conn, "abort"), []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("abort FUSE connection %d: %w", id, err)
	}
	return nil
}
