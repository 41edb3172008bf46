package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelMeta is the Debian meta package whose dependency names the current 6.12 cloud kernel
// (bookworm-security; its ABI version moves every few weeks, so it is resolved, never pinned).
const KernelMeta = "linux-image-6.12-cloud-amd64"

// Kernel is an unpacked Debian kernel package.
type Kernel struct {
	Package string // the package unpacked, e.g. linux-image-6.12.118+deb12-cloud-amd64-unsigned
	Release string // uname -r, e.g. 6.12.118+deb12-cloud-amd64
	Vmlinuz string // path of the bzImage
	Root    string // where the package was unpacked
}

// ModulePath returns the path of a module given relative to lib/modules/$release/kernel without
// its suffix, e.g. "drivers/block/ublk_drv".
func (k *Kernel) ModulePath(rel string) string {
	return filepath.Join(k.Root, "lib/modules", k.Release, "kernel", rel+".ko.xz")
}

// Config reports whether the kernel's config has line (e.g. "CONFIG_BLK_DEV_UBLK=m").
func (k *Kernel) Config(line string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(k.Root, "boot", "config-"+k.Release))
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if l == line {
			return true, nil
		}
	}
	return false, nil
}

// CacheDir is where kernels are kept: $HAST_CACHE, else $XDG_CACHE_HOME/hast (~/.cache/hast).
func CacheDir() (string, error) {
	if d := os.Getenv("HAST_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("image: no cache directory: %w", err)
	}
	return filepath.Join(d, "hast"), nil
}

// ResolveKernel asks apt which kernel package meta currently depends on and returns the name of
// its unsigned variant (the same image without the Secure Boot signature, which qemu does not
// need).
func ResolveKernel(ctx context.Context, meta string) (string, error) {
	pkg, err := Resolve(ctx, meta, "linux-image-")
	if err != nil {
		return "", err
	}
	return pkg + "-unsigned", nil
}

// Resolve asks apt which package starting with prefix the meta package depends on. It runs
// apt-get update once if apt does not know meta yet.
func Resolve(ctx context.Context, meta, prefix string) (string, error) {
	depRe := regexp.MustCompile(`(?m)^\s*Depends:\s*(` + regexp.QuoteMeta(prefix) + `\S+)`)
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", meta).CombinedOutput()
	if err != nil || !depRe.Match(out) {
		if upd, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("image: apt-get update: %v: %s", uerr, bytes.TrimSpace(upd))
		}
		out, err = exec.CommandContext(ctx, "apt-cache", "depends", meta).CombinedOutput()
	}
	if err != nil {
		return "", fmt.Errorf("image: apt-cache depends %s: %v: %s", meta, err, bytes.TrimSpace(out))
	}
	m := depRe.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("image: apt-cache depends %s names no %s* package:\n%s", meta, prefix, out)
	}
	return string(m[1]), nil
}

// FetchKernel resolves meta and fetches that kernel package with [FetchDeb].
func FetchKernel(ctx context.Context, cacheDir, meta string) (*Kernel, error) {
	pkg, err := ResolveKernel(ctx, meta)
	if err != nil {
		return nil, err
	}
	root, err := FetchDeb(ctx, cacheDir, pkg)
	if err != nil {
		return nil, err
	}
	return openKernel(pkg, root)
}

// FetchDeb downloads the Debian package pkg with apt-get download into cacheDir and unpacks it
// with dpkg -x into cacheDir/pkg, once: later calls (from any process; a lock file orders them)
// find it there. The package is never installed. It returns the unpacked tree.
func FetchDeb(ctx context.Context, cacheDir, pkg string) (string, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(filepath.Join(cacheDir, "fetch.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	root := filepath.Join(cacheDir, pkg)
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	dl, err := os.MkdirTemp(cacheDir, "download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dl)
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-qq", pkg)
	cmd.Dir = dl
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("image: apt-get download %s: %v: %s", pkg, err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("image: apt-get download %s left %d .deb files", pkg, len(debs))
	}
	tmp := filepath.Join(dl, "tree")
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], tmp).CombinedOutput(); err != nil {
		return "", fmt.Errorf("image: dpkg -x %s: %v: %s", debs[0], err, bytes.TrimSpace(out))
	}
	if err := os.Rename(tmp, root); err != nil {
		return "", err
	}
	return root, nil
}

func openKernel(pkg, root string) (*Kernel, error) {
	mods, err := os.ReadDir(filepath.Join(root, "lib/modules"))
	if err != nil {
		return nil, err
	}
	if len(mods) != 1 {
		return nil, fmt.Errorf("image: %s holds %d module trees, want 1", root, len(mods))
	}
	k := &Kernel{Package: pkg, Root: root, Release: mods[0].Name()}
	k.Vmlinuz = filepath.Join(root, "boot", "vmlinuz-"+k.Release)
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return nil, err
	}
	return k, nil
}

// lockFile takes an exclusive flock on path, waiting for it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("image: lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
