package uring

import (
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestDeferTaskrunSignalsEventFD pins the kernel behaviour the loop's parked wait
// relies on: with DEFER_TASKRUN, a completion that arrives while the submitter is not
// in io_uring_enter makes a registered eventfd readable, although its CQE is only
// posted when the submitter next enters with GETEVENTS.
func TestDeferTaskrunSignalsEventFD(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	raw := setupDeferRaw(t)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	fd32 := int32(efd)
	if err := raw.Register(RegisterEventFD, unsafe.Pointer(&fd32), 1); err != nil {
		t.Fatalf("register eventfd: %v", err)
	}
	p := testPipe(t)

	// A read of the empty pipe waits in the kernel (poll-armed) until data comes.
	buf := make([]byte, 8)
	raw.NextSQE().PrepRead(p[0], buf, 0, 7)
	if _, err := raw.Enter(0, EnterGetEvents); err != nil {
		t.Fatal(err)
	}
	drainEventFD(efd)
	if readable(t, efd, 0) {
		t.Fatal("eventfd readable before anything completed")
	}
	if _, err := unix.Write(p[1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	if !readable(t, efd, 5000) {
		t.Fatal("the completion did not signal the eventfd within 5 s")
	}
	if raw.PeekCQE() != nil {
		t.Log("note: the CQE was posted without entering the ring")
	}
	if _, err := raw.Enter(0, EnterGetEvents); err != nil {
		t.Fatal(err)
	}
	cqe := raw.PeekCQE()
	if cqe == nil || cqe.UserData != 7 || cqe.Res != 1 {
		t.Fatalf("after entering: CQE %+v, want user data 7 and result 1", cqe)
	}
	raw.AdvanceCQ(1)
}

func drainEventFD(fd int) {
	var b [8]byte
	unix.Read(fd, b[:])
}

func readable(t *testing.T, fd, timeoutMS int) bool {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, timeoutMS)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("poll: %v", err)
		}
		return n == 1
	}
}
