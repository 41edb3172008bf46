// Package uringtest helps tests exercise the paths taken when io_uring is missing. It
// is imported only by tests.
package uringtest

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Classic BPF and seccomp return values (linux/filter.h, linux/seccomp.h).
const (
	bpfLdWAbs        = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	bpfJeqK          = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	bpfRetK          = unix.BPF_RET | unix.BPF_K
	seccompRetErrno  = 0x00050000
	seccompRetAllow  = 0x7fff0000
	seccompSetFilter = 1      // SECCOMP_SET_MODE_FILTER
	seccompTSync     = 1 << 0 // SECCOMP_FILTER_FLAG_TSYNC
)

// DenySetup installs a seccomp filter on every thread of the process that makes
// io_uring_setup fail with errno, as a kernel built without io_uring (ENOSYS) or with
// /proc/sys/kernel/io_uring_disabled set (EPERM) does. It cannot be undone: call it
// only in a child process started for the purpose.
func DenySetup(errno syscall.Errno) error {
	prog := []unix.SockFilter{
		{Code: bpfLdWAbs, K: 0}, // seccomp_data.nr
		{Code: bpfJeqK, Jt: 0, Jf: 1, K: unix.SYS_IO_URING_SETUP},
		{Code: bpfRetK, K: seccompRetErrno | uint32(errno)},
		{Code: bpfRetK, K: seccompRetAllow},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	_, _, e := unix.Syscall(unix.SYS_SECCOMP, seccompSetFilter, seccompTSync, uintptr(unsafe.Pointer(&fprog)))
	if e != 0 {
		return fmt.Errorf("seccomp(SET_MODE_FILTER, TSYNC): %w", e)
	}
	return nil
}
