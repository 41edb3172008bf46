package uring

import (
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestCompletionSignalsEventFD pins the kernel behaviour the loop's parked wait relies
// on: on a ring set up with loopSetupFlags, an operation submitted by a thread that
// then sleeps elsewhere (as a Go thread does, in a futex) completes without that
// thread entering the ring again: the CQE is posted and a registered eventfd becomes
// readable. With COOP_TASKRUN the CQE would wait for the sleeper's next system call.
func TestCompletionSignalsEventFD(t *testing.T) {
	raw, err := SetupRaw(4, loopSetupFlags)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
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

	// A read of the empty pipe waits in the kernel (poll-armed) until data comes. It is
	// submitted by a thread of its own, which then sleeps until the test ends.
	buf := make([]byte, 8)
	submitted := make(chan error)
	release := make(chan struct{})
	defer close(release)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		raw.NextSQE().PrepRead(p[0], buf, 0, 7)
		_, err := raw.Enter(0, 0)
		submitted <- err
		<-release
	}()
	if err := <-submitted; err != nil {
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
	cqe := raw.PeekCQE()
	if cqe == nil || cqe.UserData != 7 || cqe.Res != 1 {
		t.Fatalf("without entering the ring: CQE %+v, want user data 7 and result 1", cqe)
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
