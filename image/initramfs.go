package image

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// Initramfs collects the entries of an initial root file system. The zero value is not ready;
// use NewInitramfs.
type Initramfs struct {
	entries map[string]Entry
	modules []string // archive paths of modules, in load order
}

// ModuleOrder is the file in the initramfs listing the modules [Init] loads, one path a line.
const ModuleOrder = "lib/modules/order"

// NewInitramfs returns an initramfs holding /dev/console (so the kernel can give /init its
// console before devtmpfs is mounted) and the mount points [Init] uses.
func NewInitramfs() *Initramfs {
	r := &Initramfs{entries: map[string]Entry{}}
	r.Add(Entry{Name: "dev/console", Mode: ModeCharDev | 0o600, Major: 5, Minor: 1})
	for _, d := range []string{"proc", "sys", "tmp", "run", "root"} {
		r.Add(Entry{Name: d, Mode: ModeDir | 0o755})
	}
	return r
}

// Add adds or replaces an entry.
func (r *Initramfs) Add(e Entry) {
	e.Name = strings.TrimPrefix(path.Clean("/"+e.Name), "/")
	r.entries[e.Name] = e
}

// AddFile adds a regular file with the given contents and permission bits.
func (r *Initramfs) AddFile(name string, data []byte, perm uint32) {
	r.Add(Entry{Name: name, Mode: ModeFile | perm&0o7777, Data: data})
}

// AddHostFile copies the host file src into the archive as name, keeping its permission bits.
func (r *Initramfs) AddHostFile(name, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	r.AddFile(name, b, uint32(st.Mode().Perm()))
	return nil
}

var lddRe = regexp.MustCompile(`(?m)(?:=>\s*)?(/\S+)\s+\(0x`)

// AddHostProgram copies a dynamically or statically linked host program into the archive at the
// same path, with every shared library ldd(1) names (at their paths, so the dynamic loader finds
// them). The build host runs the same Debian release as the guest's userland is taken from.
func (r *Initramfs) AddHostProgram(prog string) error {
	p, err := exec.LookPath(prog)
	if err != nil {
		return fmt.Errorf("image: %s: %w", prog, err)
	}
	if !filepath.IsAbs(p) {
		if p, err = filepath.Abs(p); err != nil {
			return err
		}
	}
	if err := r.AddHostFile(p, p); err != nil {
		return err
	}
	out, err := exec.Command("ldd", p).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil
		}
		return fmt.Errorf("image: ldd %s: %v: %s", p, err, bytes.TrimSpace(out))
	}
	for _, m := range lddRe.FindAllSubmatch(out, -1) {
		lib := string(m[1])
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return fmt.Errorf("image: %s needs %s: %w", p, lib, err)
		}
		if err := r.AddHostFile(real, real); err != nil {
			return err
		}
		if real != lib {
			r.Add(Entry{Name: lib, Mode: ModeSymlink | 0o777, Data: []byte(real)})
		}
	}
	return nil
}

// AddModules copies kernel modules (paths relative to the module tree's kernel/ directory,
// without .ko.xz, in load order: dependencies first) into the archive and lists them in
// [ModuleOrder] for [Init].
func (r *Initramfs) AddModules(k *Kernel, rels ...string) error {
	for _, rel := range rels {
		name := path.Join("lib/modules", path.Base(rel)+".ko.xz")
		if err := r.AddHostFile(name, k.ModulePath(rel)); err != nil {
			return fmt.Errorf("image: module %s: %w", rel, err)
		}
		r.modules = append(r.modules, "/"+name)
	}
	r.AddFile(ModuleOrder, []byte(strings.Join(r.modules, "\n")+"\n"), 0o644)
	return nil
}

// WriteTo writes the archive as gzip-compressed newc cpio. The output depends only on the
// entries (no timestamps, no file names in the gzip header).
func (r *Initramfs) WriteTo(w io.Writer) (int64, error) {
	entries := make([]Entry, 0, len(r.entries))
	for _, e := range r.entries {
		entries = append(entries, e)
	}
	cw := &countWriter{w: w}
	zw, err := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	if err != nil {
		return 0, err
	}
	if err := WriteCPIO(zw, entries); err != nil {
		return cw.n, err
	}
	err = zw.Close()
	return cw.n, err
}

// WriteFile writes the archive to the file name.
func (r *Initramfs) WriteFile(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if _, err := r.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
