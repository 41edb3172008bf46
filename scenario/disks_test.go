package scenario

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"hast/appliance"
	"hast/blockdev"
	"hast/internal/faultfs"
)

// Real disk faults under a node's local component: the component file is moved onto a file
// system that fails (a fault-injecting FUSE loopback, an ext4 that turns read-only) and the
// configured path becomes a symlink to it. Call before the node's daemon starts.

// relocate moves node n's component into dir, leaving a symlink at the configured path.
func (e *env) relocate(n *appliance.Node, dir string) {
	e.t.Helper()
	path := filepath.Join(n.Dir, res+".img")
	dst := filepath.Join(dir, res+".img")
	if err := copyFile(path, dst); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Symlink(dst, path); err != nil {
		e.t.Fatal(err)
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// faultDisk puts node n's component on a faultfs mount.
func (e *env) faultDisk(n *appliance.Node) *faultfs.FS {
	e.t.Helper()
	backing, mnt := filepath.Join(e.t.TempDir(), "backing"), filepath.Join(e.t.TempDir(), "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	f, err := faultfs.Mount(backing, mnt)
	if err != nil {
		e.t.Fatalf("fault-injecting file system: %v", err)
	}
	e.t.Cleanup(func() {
		e.c.Stop() // the daemon's file must be closed first
		if err := f.Unmount(); err != nil {
			e.t.Error(err)
		}
	})
	e.relocate(n, mnt)
	return f
}

// dataOffset is where the data area of node n's component starts.
func (e *env) dataOffset(n *appliance.Node) int64 {
	e.t.Helper()
	dev, err := blockdev.OpenReadOnly(filepath.Join(n.Dir, res+".img"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer dev.Close()
	md, err := blockdev.ReadMetadata(dev, res)
	if err != nil {
		e.t.Fatal(err)
	}
	return int64(md.LocalOff)
}

// ext4Disk is an ext4 file system on a loop device, mounted with errors=remount-ro.
type ext4Disk struct {
	env      *env
	img, dev string
	mnt      string
}

// ext4Disk puts node n's component on a fresh ext4 that a test can make fail.
func (e *env) ext4Disk(n *appliance.Node) *ext4Disk {
	e.t.Helper()
	dir := e.t.TempDir()
	d := &ext4Disk{env: e, img: filepath.Join(dir, "fs.img"), mnt: filepath.Join(dir, "mnt")}
	if err := os.Mkdir(d.mnt, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(d.img, nil, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Truncate(d.img, 4*diskSize); err != nil {
		e.t.Fatal(err)
	}
	d.run("mkfs.ext4", "-q", "-F", d.img)
	d.dev = strings.TrimSpace(d.run("losetup", "-f", "--show", d.img))
	// Daemons run in mount namespaces of their own (ip netns exec), each with a copy of the
	// mounts of its start. A shared mount point lets the repair's unmount reach those copies;
	// under a private one they would keep the file system busy.
	d.run("mount", "--bind", d.mnt, d.mnt)
	d.run("mount", "--make-shared", d.mnt)
	e.t.Cleanup(func() {
		e.c.Stop()
		exec.Command("umount", d.mnt).Run() // the file system
		exec.Command("umount", d.mnt).Run() // the bind
		exec.Command("losetup", "-d", d.dev).Run()
	})
	d.mount()
	e.relocate(n, d.mnt)
	return d
}

func (d *ext4Disk) run(name string, args ...string) string {
	d.env.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		d.env.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (d *ext4Disk) mount() { d.run("mount", "-o", "errors=remount-ro", d.dev, d.mnt) }

// fail makes the file system record an error: with errors=remount-ro it turns read-only at
// once, open files included, as after a real metadata corruption.
func (d *ext4Disk) fail() {
	d.env.t.Helper()
	p := filepath.Join("/sys/fs/ext4", filepath.Base(d.dev), "trigger_fs_error")
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		d.env.t.Fatalf("trigger an ext4 error: %v", err)
	}
}

// repair unmounts, runs e2fsck as an operator would, and mounts again. A process that
// entered a new mount namespace while the file system was mounted (ip netns exec does, for
// every command run in a node's namespace) holds a copy of the mount until it exits, and
// e2fsck then finds the device in use: it is retried for a while.
func (d *ext4Disk) repair() {
	d.env.t.Helper()
	d.run("umount", d.mnt)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command("e2fsck", "-fy", d.dev).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee) && ee.ExitCode() == 1:
			// It corrected something: the error just recorded.
		case bytes.Contains(out, []byte("is in use")) && time.Now().Before(deadline):
			time.Sleep(200 * time.Millisecond)
			continue
		default:
			d.env.t.Fatalf("e2fsck: %v\n%s\n%s", err, out, mountsOf(d.dev))
		}
		break
	}
	d.mount()
}

// mountsOf lists the mount table lines, of any process, that still hold dev (for a failure
// message).
func mountsOf(dev string) string {
	out, _ := exec.Command("sh", "-c", "grep -l "+dev+" /proc/[0-9]*/mounts | head; grep -h "+dev+" /proc/[0-9]*/mounts | sort | uniq -c").CombinedOutput()
	return string(out)
}
