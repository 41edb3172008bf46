package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// VM is one qemu guest booted straight from a kernel and an initramfs, with its serial console
// on Stdout.
type VM struct {
	Kernel, Initrd string
	MemoryMB       int      // default 512
	CPUs           int      // default 1
	Append         string   // extra kernel command line
	Args           []string // extra qemu arguments (drives, network)
	Stdout         io.Writer
}

// Accel returns the qemu accelerator to use: $HAST_QEMU_ACCEL when set, "kvm" when /dev/kvm
// opens and is not PVM (a PVM host runs only PVM-aware guest kernels and stock Debian kernels
// fail in it: docs/ublk-and-vm.md), else "tcg".
func Accel() string {
	if a := os.Getenv("HAST_QEMU_ACCEL"); a != "" {
		return a
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return "tcg"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	return "kvm"
}

// Run boots the guest and waits until it powers off (qemu exits 0) or ctx ends. At most two
// guests run at a time on this machine, across processes (each TCG vCPU takes a core).
func (vm *VM) Run(ctx context.Context) error {
	release, err := guestSlot(ctx)
	if err != nil {
		return err
	}
	defer release()
	mem := vm.MemoryMB
	if mem == 0 {
		mem = 512
	}
	accel := Accel()
	cpus := max(vm.CPUs, 1)
	args := []string{"-accel", accel, "-nographic", "-no-reboot", "-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-kernel", vm.Kernel, "-initrd", vm.Initrd,
		"-append", "console=ttyS0 quiet panic=-1 " + vm.Append}
	if accel == "kvm" {
		args = append(args, "-cpu", "host")
	}
	if len(vm.Args) == 0 {
		args = append(args, "-nic", "none")
	}
	args = append(args, vm.Args...)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = vm.Stdout, vm.Stdout
	cmd.Stdin = nil
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("image: guest did not power off: %w", ctx.Err())
		}
		return fmt.Errorf("image: qemu-system-x86_64: %w", err)
	}
	return nil
}

// guestSlots bounds concurrent guests on one machine.
const guestSlots = 2

// guestSlot takes one of guestSlots flock slots in the cache directory, polling so that ctx can
// end the wait.
func guestSlot(ctx context.Context) (func(), error) {
	dir, err := CacheDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files [guestSlots]*os.File
	for i := range files {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("guest-slot-%d.lock", i)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			for _, g := range files[:i] {
				g.Close()
			}
			return nil, err
		}
		files[i] = f
	}
	closeAll := func(keep int) {
		for i, f := range files {
			if i != keep {
				f.Close()
			}
		}
	}
	for {
		for i, f := range files {
			err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				closeAll(i)
				return func() { files[i].Close() }, nil
			}
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				closeAll(-1)
				return nil, fmt.Errorf("image: guest slot: %w", err)
			}
		}
		if err := sleepCtx(ctx); err != nil {
			closeAll(-1)
			return nil, err
		}
	}
}

func sleepCtx(ctx context.Context) error {
	t := time.NewTimer(50 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
