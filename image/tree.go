package image

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
)

// WriteTree writes the regular files, directories and symlinks of r under dir (device nodes are
// left out). Absolute symlink targets become relative, so the tree works wherever it is mounted.
func (r *Initramfs) WriteTree(dir string) error {
	names := make([]string, 0, len(r.entries))
	for n := range r.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := r.entries[n]
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		switch e.Mode & 0o170000 {
		case ModeDir:
			if err := os.MkdirAll(p, os.FileMode(e.Mode&0o777)); err != nil {
				return err
			}
		case ModeFile:
			if err := os.WriteFile(p, e.Data, os.FileMode(e.Mode&0o777)); err != nil {
				return err
			}
		case ModeSymlink:
			target := string(e.Data)
			if path.IsAbs(target) {
				rel, err := filepath.Rel(path.Dir("/"+n), target)
				if err != nil {
					return err
				}
				target = rel
			}
			if err := os.Symlink(target, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// MakeExt4Image writes an ext4 file system image holding the tree under dir to out, sized to fit
// (mkfs.ext4 -d needs no root and no loop device).
func MakeExt4Image(dir, out string) error {
	var total int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			total += fi.Size() + 4096
		}
		return nil
	})
	size := total + total/4 + 8<<20
	os.Remove(out)
	cmd := exec.Command("mkfs.ext4", "-q", "-F", "-d", dir, "-L", "tools", out, fmt.Sprintf("%dk", size>>10))
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("image: mkfs.ext4 -d %s: %v: %s", dir, err, bytes.TrimSpace(o))
	}
	return nil
}
