package ublk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrBusy is returned by [Device.Busy] when the block device is in use.
var ErrBusy = errors.New("ublk: device in use")

// Busy reports whether /dev/ublkbN is in use: claimed exclusively (a mounted file system, md, or
// device-mapper holds that claim) or held open by a process. The error names the users it found.
// The kernel keeps no open count userspace can read, so open files are found by scanning
// /proc/*/fd, the way fuser(1) does.
func (d *Device) Busy() error {
	path := d.BlockPath()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("ublk: %s: %w", path, err)
	}
	var users []string
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	} else if errors.Is(err, syscall.EBUSY) {
		users = append(users, "claimed exclusively (mounted, or part of md/dm)")
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	seen := map[string]bool{}
	for _, p := range procs {
		var fst unix.Stat_t
		if unix.Stat(p, &fst) != nil || fst.Mode&unix.S_IFMT != unix.S_IFBLK || fst.Rdev != st.Rdev {
			continue
		}
		pid := strings.Split(p, "/")[2]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		users = append(users, fmt.Sprintf("open by pid %s (%s)", pid, strings.TrimSpace(string(comm))))
	}
	if len(users) > 0 {
		return fmt.Errorf("%w: %s is %s", ErrBusy, path, strings.Join(users, ", "))
	}
	return nil
}
