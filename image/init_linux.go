package image

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// GuestSpec is what [Init] runs, read from [GuestSpecPath] in the initramfs.
type GuestSpec struct {
	Argv []string
	Env  []string // added to PATH=/usr/sbin:/usr/bin:/sbin:/bin
	Dir  string
}

// GuestSpecPath is where [Init] looks for its [GuestSpec].
const GuestSpecPath = "etc/hast-guest.json"

// ExitMarker starts the console line [Init] prints with the command's exit status.
const ExitMarker = "HAST-GUEST-EXIT "

// IsInit reports whether this process is the kernel's /init.
func IsInit() bool { return os.Getpid() == 1 && len(os.Args) > 0 && os.Args[0] == "/init" }

// Init is the guest's PID 1: it mounts proc, sysfs, devtmpfs and tmpfs, loads the modules
// listed in [ModuleOrder], brings up lo, runs the [GuestSpec] with the console as its output,
// prints [ExitMarker] and its status, and powers the machine off. It does not return.
func Init() {
	out := os.Stdout
	logf := func(format string, a ...any) { fmt.Fprintf(out, "hast-init: "+format+"\n", a...) }
	status := initRun(logf)
	fmt.Fprintf(out, "%s%d\n", ExitMarker, status)
	unix.Sync()
	for {
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}

func initRun(logf func(string, ...any)) int {
	for _, m := range []struct{ src, dir, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"}, {"tmpfs", "/run", "tmpfs"},
	} {
		if err := unix.Mount(m.src, m.dir, m.fs, 0, ""); err != nil {
			logf("mount %s: %v", m.dir, err)
			return 125
		}
	}
	if order, err := os.ReadFile("/" + ModuleOrder); err == nil {
		for _, mod := range strings.Fields(string(order)) {
			if err := loadModule(mod); err != nil {
				logf("load %s: %v", mod, err)
				return 125
			}
		}
	}
	if err := linkUp("lo"); err != nil {
		logf("lo up: %v", err)
		return 125
	}
	b, err := os.ReadFile("/" + GuestSpecPath)
	if err != nil {
		logf("no command: %v", err)
		return 125
	}
	var spec GuestSpec
	if err := json.Unmarshal(b, &spec); err != nil || len(spec.Argv) == 0 {
		logf("bad %s: %v", GuestSpecPath, err)
		return 125
	}
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}, spec.Env...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Run(); err != nil {
		if cmd.ProcessState != nil {
			return cmd.ProcessState.ExitCode()
		}
		logf("run %s: %v", spec.Argv[0], err)
		return 126
	}
	return 0
}

// loadModule loads an xz-compressed module; the kernel decompresses it.
func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", unix.MODULE_INIT_COMPRESSED_FILE)
	if err == unix.EEXIST {
		return nil
	}
	return err
}

// linkUp sets IFF_UP on a network interface.
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
