// Package imagetest runs a Go test inside a qemu guest booted with Debian's 6.12 kernel, for what
// the build host's kernel cannot do (ublk). A test calls [Boot] first:
//
//	func TestGuestSomething(t *testing.T) {
//		if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk}}) {
//			return // ran in the guest and passed there
//		}
//		// here: inside the guest, as root, with /dev/ublk-control
//	}
//
// On the host Boot builds the package's test binary and the hast binary, boots a guest whose
// /init is hast, runs that one test there with -test.v, streams the guest's console into the
// test log, and fails the test unless the guest test passed. In the guest it returns false.
package imagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hast/image"
)

// guestEnv marks the test process started by the guest's /init.
const guestEnv = "HAST_IN_GUEST"

// Module paths (relative to the kernel's module tree) guest tests ask for.
const (
	ModUblk = "drivers/block/ublk_drv"
)

// Options shape the guest.
type Options struct {
	Modules  []string // loaded in order before the test starts
	Programs []string // host programs copied in with their shared libraries (mkfs.ext4, ...)
	MemoryMB int      // default 512
	CPUs     int      // default 1
	Disks    []string // host files attached read-only as virtio disks /dev/vda, /dev/vdb, ...
	Timeout  time.Duration
}

// InGuest reports whether this process runs inside a guest started by Boot.
func InGuest() bool { return os.Getenv(guestEnv) == "1" }

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	kernel    *image.Kernel
)

// build makes (once per test process) a static hast binary, this package's test binary, and
// fetches the kernel.
func build() error {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "hast-guest-")
		if buildErr != nil {
			return
		}
		env := append(os.Environ(), "CGO_ENABLED=0")
		for _, args := range [][]string{
			{"build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(buildDir, "hast"), "hast"},
			{"test", "-c", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(buildDir, "guest.test"), "."},
		} {
			cmd := exec.Command("go", args...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
		dir, err := image.CacheDir()
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		kernel, buildErr = image.FetchKernel(ctx, dir, image.KernelMeta)
	})
	return buildErr
}

// Boot runs t's test inside a guest (see the package documentation). It returns true on the
// host, after the guest test passed (t fails otherwise), and false inside the guest.
func Boot(t *testing.T, opt Options) bool {
	t.Helper()
	if InGuest() {
		return false
	}
	if err := build(); err != nil {
		t.Fatalf("guest bench: %v", err)
	}
	r := image.NewInitramfs()
	if err := r.AddHostFile("init", filepath.Join(buildDir, "hast")); err != nil {
		t.Fatal(err)
	}
	if err := r.AddHostFile("usr/bin/hast", filepath.Join(buildDir, "hast")); err != nil {
		t.Fatal(err)
	}
	if err := r.AddHostFile("guest.test", filepath.Join(buildDir, "guest.test")); err != nil {
		t.Fatal(err)
	}
	if err := r.AddModules(kernel, opt.Modules...); err != nil {
		t.Fatal(err)
	}
	for _, p := range opt.Programs {
		if err := r.AddHostProgram(p); err != nil {
			t.Fatal(err)
		}
	}
	timeout := opt.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	spec, _ := json.Marshal(image.GuestSpec{
		Argv: []string{"/guest.test", "-test.run=^" + t.Name() + "$", "-test.v", "-test.timeout=" + timeout.String()},
		Env:  []string{guestEnv + "=1"},
		Dir:  "/",
	})
	r.AddFile(image.GuestSpecPath, spec, 0o644)
	initrd := filepath.Join(t.TempDir(), "initrd.gz")
	if err := r.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	lw := &lineLogger{t: t}
	vm := &image.VM{Kernel: kernel.Vmlinuz, Initrd: initrd, MemoryMB: opt.MemoryMB, CPUs: opt.CPUs, Stdout: multi{&console, lw}}
	for _, d := range opt.Disks {
		vm.Args = append(vm.Args, "-drive", "file="+d+",format=raw,if=virtio,readonly=on")
	}
	if len(vm.Args) > 0 {
		vm.Args = append(vm.Args, "-nic", "none")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	start := time.Now()
	err := vm.Run(ctx)
	lw.flush()
	t.Logf("guest ran %.1f s (%s, %s)", time.Since(start).Seconds(), image.Accel(), kernel.Release)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	i := bytes.LastIndex(console.Bytes(), []byte(image.ExitMarker))
	if i < 0 {
		t.Fatalf("guest printed no %q line", strings.TrimSpace(image.ExitMarker))
	}
	line, _, _ := strings.Cut(string(console.Bytes()[i+len(image.ExitMarker):]), "\n")
	if strings.TrimSpace(line) != "0" {
		t.Fatalf("guest test exited with status %s", strings.TrimSpace(line))
	}
	return true
}

type multi []interface{ Write([]byte) (int, error) }

func (m multi) Write(p []byte) (int, error) {
	for _, w := range m {
		w.Write(p)
	}
	return len(p), nil
}

// lineLogger passes the guest console to t.Log line by line.
type lineLogger struct {
	t   *testing.T
	mu  sync.Mutex
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.t.Log("guest: " + strings.TrimRight(string(l.buf[:i]), "\r"))
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

func (l *lineLogger) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.t.Log("guest: " + string(l.buf))
		l.buf = nil
	}
}
