package testsupport

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// FSFiles are files a test wrote into a file system, by path, with their SHA-256.
type FSFiles map[string][32]byte

// MakeExt4 runs mkfs.ext4 on dev, mounts it on mnt, writes n files of random data (4 KiB to
// 512 KiB) and returns their checksums, leaving the file system mounted.
func MakeExt4(dev, mnt string, n int) (FSFiles, error) {
	if err := run("mkfs.ext4", "-q", "-F", dev); err != nil {
		return nil, err
	}
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		return nil, fmt.Errorf("mount %s: %w", dev, err)
	}
	files := FSFiles{}
	for i := range n {
		b := make([]byte, 4<<10<<(i%8))
		rand.Read(b)
		name := filepath.Join(mnt, fmt.Sprintf("f%02d", i))
		if err := os.WriteFile(name, b, 0o644); err != nil {
			return nil, err
		}
		files[name] = sha256.Sum256(b)
	}
	return files, nil
}

// CheckExt4 unmounts mnt, runs fsck.ext4 -f -n on dev (which fails on any problem), mounts it
// read-only, verifies every file's checksum and unmounts it again.
func (f FSFiles) CheckExt4(dev, mnt string) error {
	if err := unix.Unmount(mnt, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	if err := run("fsck.ext4", "-f", "-n", dev); err != nil {
		return err
	}
	if err := unix.Mount(dev, mnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	defer unix.Unmount(mnt, 0)
	for name, sum := range f {
		b, err := os.ReadFile(name)
		if err != nil {
			return err
		}
		if sha256.Sum256(b) != sum {
			return fmt.Errorf("%s: checksum mismatch after fsck", name)
		}
	}
	return nil
}

func run(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
