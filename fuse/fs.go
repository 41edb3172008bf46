package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"hast/internal/fusectl"
	"hast/replicate"
)

// ErrBusy is returned (wrapped, with the file name and open count) by Remove when the file is
// still open and removal was not forced.
var ErrBusy = errors.New("fuse: volume is open")

// Options configures a mount.
type Options struct {
	// MaxWrite is the largest read or write request the kernel sends, in bytes. Zero means
	// 1 MiB, which doubles sequential throughput compared with go-fuse's 128 KiB default.
	MaxWrite int
	// Debug logs every FUSE request and reply.
	Debug bool
}

const (
	defaultMaxWrite = 1 << 20
	// spliceSlack is what a FUSE reply needs in a pipe on top of its payload (header and one
	// spare page), so that a MaxWrite-sized read can be spliced.
	spliceSlack  = 64 << 10
	pipeMaxSize  = "/proc/sys/fs/pipe-max-size"
	maxNameBytes = 255
	// releaseGrace is how long a non-forced Remove waits for open handles to go away. The
	// kernel sends RELEASE asynchronously after the last close, so a file closed just before
	// a demotion would otherwise still count as open.
	releaseGrace = 500 * time.Millisecond
	// attrTimeout is how long the kernel may cache attributes and names. Sizes never change
	// for an inode (a resized volume is a new inode), and Add and Remove invalidate names
	// explicitly, so a long timeout only saves round trips.
	attrTimeout = time.Hour
	// serverStopWait bounds how long Unmount waits for go-fuse's server after the connection
	// was aborted (its readers return at once then; this only guards shutdown against a
	// reader that does not).
	serverStopWait = 2 * time.Second
)

// FS is a mounted directory of volume files.
type FS struct {
	dir    string
	log    zerolog.Logger
	server *gofuse.Server
	root   *rootNode
	// connID is the FUSE connection's number under /sys/fs/fuse/connections, used to abort
	// the connection when a lazy unmount leaves it alive.
	connID uint32

	mu        sync.Mutex
	files     map[string]*volumeNode
	unmounted bool
	// total is the sum of the files' sizes, for statfs; atomic because FUSE handlers must not
	// take mu (Unmount holds it while it waits for the handlers to finish).
	total atomic.Int64
}

// Mount mounts an empty volume directory at dir, creating dir if it is missing. It mounts the
// FUSE file system directly (as root; no fusermount binary is needed), lets other users see it
// (file modes are enforced by the kernel), serves requests in parallel, and raises
// /proc/sys/fs/pipe-max-size if it is too small to splice a MaxWrite-sized read.
func Mount(dir string, opt Options, log zerolog.Logger) (*FS, error) {
	if opt.MaxWrite < 0 {
		return nil, fmt.Errorf("fuse: mount %s: negative MaxWrite %d", dir, opt.MaxWrite)
	}
	if opt.MaxWrite == 0 {
		opt.MaxWrite = defaultMaxWrite
	}
	// A daemon that died without unmounting leaves a mount whose every access fails with
	// ENOTCONN; a restarted daemon replaces it instead of failing. The probe is statfs
	// because it always reaches the server, where stat may be answered from the kernel cache.
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); errors.Is(err, unix.ENOTCONN) {
		log.Warn().Str("dir", dir).Msg("fuse: detaching a dead FUSE mount left by an earlier process")
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return nil, fmt.Errorf("fuse: mount %s: detach dead mount: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	raisePipeMaxSize(opt.MaxWrite+spliceSlack, log)

	f := &FS{dir: abs, log: log, files: make(map[string]*volumeNode)}
	f.root = &rootNode{fs: f}
	gologger := newGoLogger(log, opt.Debug)
	timeout := attrTimeout
	mopts := &gofs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		Logger:       gologger,
		MountOptions: gofuse.MountOptions{
			AllowOther: true,
			// default_permissions makes the kernel enforce the files' 0600 mode; without it
			// allow_other would let any user open a volume.
			Options:           []string{"default_permissions", "noexec"},
			MaxWrite:          opt.MaxWrite,
			FsName:            "hast",
			Name:              "hast",
			DirectMount:       true,
			DirectMountStrict: true,
			// No xattrs: otherwise the kernel asks for security.capability before writes.
			DisableXAttrs:        true,
			IgnoreSecurityLabels: true,
			// The kernel sends asynchronous direct I/O (libaio, io_uring, loop devices) as
			// background requests, at most MaxBackground at a time. The default of 12 made
			// no measurable difference at QD16 on 2 vCPUs, where the daemon is the limit,
			// but would cap a faster machine below the queue depths clients use.
			MaxBackground: 128,
			Debug:         opt.Debug,
			Logger:        gologger,
		},
	}
	server, err := gofs.Mount(abs, f.root, mopts)
	if err != nil {
		return nil, fmt.Errorf("fuse: mount %s: %w", abs, err)
	}
	f.server = server
	if id, err := fusectl.ID(abs); err == nil {
		f.connID = id
	}
	log.Info().Str("dir", abs).Int("max_write", opt.MaxWrite).Msg("fuse: mounted")
	return f, nil
}

// Add makes v appear as the regular file name (mode 0600, size v.Size()).
func (f *FS) Add(name string, v replicate.Volume) error {
	if err := validName(name); err != nil {
		return err
	}
	if v == nil {
		return fmt.Errorf("fuse: add %q: nil volume", name)
	}
	sector, size := int64(v.SectorSize()), v.Size()
	if sector <= 0 || sector&(sector-1) != 0 {
		return fmt.Errorf("fuse: add %q: sector size %d is not a power of two", name, sector)
	}
	if size < 0 || size%sector != 0 {
		return fmt.Errorf("fuse: add %q: size %d is not a multiple of the sector size %d", name, size, sector)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unmounted {
		return fmt.Errorf("fuse: add %q: %s is unmounted", name, f.dir)
	}
	if _, ok := f.files[name]; ok {
		return fmt.Errorf("fuse: add %q: a file of that name already exists in %s", name, f.dir)
	}
	n := newVolumeNode(name, v, f.log)
	ctx := context.Background()
	// Persistent, so that the node stays in the tree when the kernel forgets it; Remove
	// drops it explicitly. Ino 0 hands out a fresh inode number, so a volume that reappears
	// is a new inode to the kernel.
	child := f.root.NewPersistentInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG})
	if !f.root.AddChild(name, child, false) {
		return fmt.Errorf("fuse: add %q: name already in the tree of %s", name, f.dir)
	}
	f.files[name] = n
	f.total.Add(size)
	// Drops a negative dentry the kernel may hold from a lookup while the file was absent.
	if errno := f.root.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		f.log.Debug().Str("file", name).Err(errno).Msg("fuse: entry notification failed")
	}
	f.log.Info().Str("file", name).Int64("size", size).Int64("sector", sector).Msg("fuse: file added")
	return nil
}

// Remove makes the file name disappear. If it is still open and force is false, Remove fails
// with an error wrapping ErrBusy that names the file and the number of open handles. With
// force, requests on handles that are still open fail with EIO from then on. Remove waits for
// requests already inside the Volume to return, so the caller may close the Volume afterwards.
func (f *FS) Remove(name string, force bool) error {
	f.mu.Lock()
	n, ok := f.files[name]
	switch {
	case !ok:
		f.mu.Unlock()
		return fmt.Errorf("fuse: remove %q: no such file in %s", name, f.dir)
	case n.removing:
		f.mu.Unlock()
		return fmt.Errorf("fuse: remove %q: another removal is in progress", name)
	}
	n.removing = true
	f.mu.Unlock()

	// Waiting for handles and draining requests happens outside f.mu, so that Names, Add and
	// Remove of other files are not held up by a slow Volume.
	open, err := n.retire(force, releaseGrace)

	f.mu.Lock()
	defer f.mu.Unlock()
	n.removing = false
	if err != nil {
		return err
	}
	if f.files[name] == n {
		delete(f.files, name)
		f.detach(name, n)
		f.total.Add(-n.size)
	}
	f.log.Info().Str("file", name).Bool("force", force).Int("open_handles", open).Msg("fuse: file removed")
	return nil
}

// detach takes a retired node out of the tree and out of the kernel's dentry cache.
func (f *FS) detach(name string, n *volumeNode) {
	child := n.EmbeddedInode()
	f.root.RmChild(name)
	child.ForgetPersistent()
	if f.unmounted {
		return
	}
	if errno := f.root.NotifyDelete(name, child); errno != 0 {
		// Older kernels lack NOTIFY_DELETE; invalidating the entry is enough there.
		if errno2 := f.root.NotifyEntry(name); errno2 != 0 && errno2 != syscall.ENOENT {
			f.log.Debug().Str("file", name).Err(errno).Msg("fuse: delete notification failed")
		}
	}
}

// Names lists the files currently present, sorted.
func (f *FS) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.files))
	for name := range f.files {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Unmount removes every file (forcibly, waiting for requests inside the Volumes), unmounts the
// directory (lazily if files are still open), and then ends the FUSE connection through
// fusectl, so handles still open anywhere get errors and the server stops. It waits at most
// serverStopWait for the server. Unmount is idempotent.
//
// go-fuse's Server.Unmount is not used: after an unmount that succeeds it waits for the
// server's readers, which return only when the connection ends, and a copy of the mount in
// another mount namespace (a service with PrivateTmp, a container) with the file open keeps
// the connection alive for ever.
func (f *FS) Unmount() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unmounted {
		return nil
	}
	for name, n := range f.files {
		if _, err := n.retire(true, 0); err != nil {
			return fmt.Errorf("fuse: unmount %s: retire %q: %w", f.dir, name, err)
		}
	}
	if err := unix.Unmount(f.dir, 0); err != nil {
		f.log.Warn().Str("dir", f.dir).Err(err).Msg("fuse: unmount failed, detaching lazily")
		switch err := unix.Unmount(f.dir, unix.MNT_DETACH); {
		case errors.Is(err, unix.EINVAL):
			// Someone unmounted it already; what is left is ending the connection.
			f.log.Warn().Str("dir", f.dir).Msg("fuse: the view was no longer mounted")
		case err != nil:
			return fmt.Errorf("fuse: unmount %s: lazy detach: %w", f.dir, err)
		}
	}
	if !f.abortConnection() {
		f.log.Warn().Str("dir", f.dir).Msg("fuse: unmounted; the connection lives until the last open handle is closed")
		f.finishUnmount()
		return nil
	}
	stopped := make(chan struct{})
	go func() {
		f.server.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(serverStopWait):
		f.log.Warn().Str("dir", f.dir).Dur("waited", serverStopWait).Msg("fuse: the server has not stopped; going on without it")
	}
	f.finishUnmount()
	return nil
}

func (f *FS) finishUnmount() {
	f.unmounted = true
	for name, n := range f.files {
		f.detach(name, n)
	}
	clear(f.files)
	f.total.Store(0)
	f.log.Info().Str("dir", f.dir).Msg("fuse: unmounted")
}

// abortConnection ends the FUSE connection: requests in flight and later ones fail with
// ECONNABORTED/ENOTCONN and the server loops exit.
func (f *FS) abortConnection() bool {
	if err := fusectl.Abort(f.connID); err != nil {
		f.log.Warn().Err(err).Msg("fuse: cannot abort the connection")
		return false
	}
	return true
}

func validName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("fuse: invalid file name %q", name)
	case len(name) > maxNameBytes:
		return fmt.Errorf("fuse: file name %q is longer than %d bytes", name, maxNameBytes)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("fuse: file name %q contains '/' or NUL", name)
	}
	return nil
}

// raisePipeMaxSize makes sure go-fuse can grow a pipe to hold a whole read reply; otherwise
// every MaxWrite-sized spliced read falls back to copying (docs/host-facts.md §2). Only replies
// backed by a file descriptor are spliced; today's reads return memory buffers, which go-fuse
// writes with writev, so this prepares for fd-backed reads rather than speeding up the current
// path. Failing to raise it costs speed only, so it is logged, not returned.
func raisePipeMaxSize(want int, log zerolog.Logger) {
	raw, err := os.ReadFile(pipeMaxSize)
	if err != nil {
		log.Warn().Err(err).Msg("fuse: cannot read pipe-max-size")
		return
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		log.Warn().Str("value", string(raw)).Msg("fuse: cannot parse pipe-max-size")
		return
	}
	if cur >= want {
		return
	}
	if err := os.WriteFile(pipeMaxSize, []byte(strconv.Itoa(want)), 0); err != nil {
		log.Warn().Err(err).Int("current", cur).Int("wanted", want).Msg("fuse: cannot raise pipe-max-size; large reads will be copied")
		return
	}
	log.Info().Int("old", cur).Int("new", want).Msg("fuse: raised /proc/sys/fs/pipe-max-size")
}

// goLogWriter forwards go-fuse's log.Logger output to zerolog.
type goLogWriter struct {
	log   zerolog.Logger
	level zerolog.Level
}

func (w goLogWriter) Write(p []byte) (int, error) {
	w.log.WithLevel(w.level).Str("component", "go-fuse").Msg(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func newGoLogger(l zerolog.Logger, debug bool) *log.Logger {
	// In debug mode go-fuse writes one line per request; the caller asked for them, so they
	// are logged at info. Otherwise go-fuse only logs when something is off.
	level := zerolog.WarnLevel
	if debug {
		level = zerolog.InfoLevel
	}
	return log.New(goLogWriter{log: l, level: level}, "", 0)
}
