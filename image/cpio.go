package image

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Entry is one file, directory, symlink or device node of an initramfs.
type Entry struct {
	Name string // path inside the archive, without a leading slash
	Mode uint32 // permission bits plus one of the type bits below
	Data []byte // file contents, or the symlink's target
	// Major and Minor are the device numbers of a character or block device node.
	Major, Minor uint32
}

// File type bits of Entry.Mode (as in stat's st_mode).
const (
	ModeDir     = 0o040000
	ModeFile    = 0o100000
	ModeSymlink = 0o120000
	ModeCharDev = 0o020000
)

// WriteCPIO writes entries as a "newc" cpio archive, the format the kernel unpacks into its
// initial root file system. The bytes depend only on the entries: they are sorted by name, every
// mtime is zero, owners are root, inode numbers are assigned in order, and directories every entry
// needs are added. Two calls with the same entries give identical archives.
func WriteCPIO(w io.Writer, entries []Entry) error {
	byName := map[string]Entry{}
	for _, e := range entries {
		name := strings.TrimPrefix(path.Clean("/"+e.Name), "/")
		if name == "" {
			continue
		}
		e.Name = name
		if old, ok := byName[name]; ok && (old.Mode&0o170000 != ModeDir || e.Mode&0o170000 != ModeDir) {
			return fmt.Errorf("cpio: %s given twice", name)
		}
		byName[name] = e
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if _, ok := byName[dir]; !ok {
				byName[dir] = Entry{Name: dir, Mode: ModeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names) // a directory sorts before what it holds
	cw := &countWriter{w: w}
	for i, n := range names {
		if err := writeEntry(cw, byName[n], uint32(i+1)); err != nil {
			return err
		}
	}
	if err := writeEntry(cw, Entry{Name: "TRAILER!!!"}, 0); err != nil {
		return err
	}
	// Pad to a 512-byte block like cpio(1) does; the kernel does not need it.
	return cw.pad(512)
}

func writeEntry(cw *countWriter, e Entry, ino uint32) error {
	nlink := uint32(1)
	if e.Mode&0o170000 == ModeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Major, e.Minor, len(e.Name)+1, 0)
	if _, err := io.WriteString(cw, hdr+e.Name+"\x00"); err != nil {
		return err
	}
	if err := cw.pad(4); err != nil {
		return err
	}
	if _, err := cw.Write(e.Data); err != nil {
		return err
	}
	return cw.pad(4)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countWriter) pad(to int64) error {
	if r := c.n % to; r != 0 {
		_, err := c.Write(make([]byte, to-r))
		return err
	}
	return nil
}
