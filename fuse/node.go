package fuse

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"hast/replicate"
)

// openFlags are returned for every open of a volume file.
//
// FOPEN_DIRECT_IO: the kernel keeps no page cache for the file, every read and write becomes a
// request to us. Reasons, in order of weight:
//   - A file that disappears on demotion and reappears on promotion must never serve data
//     cached before: with direct I/O there is no cache to go stale, and after a forced removal
//     even reads on handles still open fail instead of returning cached pages.
//   - Durability: a write returns only once Volume.WriteAt has acknowledged it, and fsync
//     reaches Volume.Flush with nothing left behind in dirty pages.
//   - Speed does not argue for a page cache. Measured on the build machine (2 vCPUs, volume on
//     a preallocated O_DIRECT file, two rounds each, direct I/O vs page cache):
//     dd bs=1M conv=fsync 0.84-1.3 vs 0.64-1.1 GB/s; cold dd bs=1M read 0.68-0.92 vs
//     0.53-0.59 GB/s; fio 4k random buffered write (psync, end_fsync) 8.4-9.4k vs 7.6-10.1k
//     IOPS; fio 4k random write O_DIRECT libaio QD16 7.8-9.1k vs 9.3-10.4k IOPS; fio 4k random
//     buffered read 8.8-9.0k vs 7.5-7.9k IOPS. docs/host-facts.md §2 found the same (buffered
//     1M writes 2.1 vs 1.2 GB/s in favour of direct I/O). Clients on top of a volume (a file
//     system, a guest) cache for themselves; a second cache here would only cost memory.
//
// Shared mappings are therefore refused (ENODEV); private mappings work.
//
// FOPEN_PARALLEL_DIRECT_WRITES: without it the kernel serialises direct writes to one file on
// the inode lock (fio, 4 threads of 4k O_DIRECT random writes: 8.2k IOPS without, 20k with).
// Writes that overlap sectors partially are kept apart by sectorLock instead.
const openFlags = gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES

// fallocate modes (linux/falloc.h) that a volume file understands.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// zeroChunk bounds the buffer used to write zeros for ZERO_RANGE and hole edges.
const zeroChunk = 1 << 20

// rootNode is the mount's directory. Its children are the volume files, managed by FS; nothing
// can be created, removed or renamed through the kernel.
type rootNode struct {
	gofs.Inode
	fs *FS
}

var (
	_ gofs.NodeCreater   = (*rootNode)(nil)
	_ gofs.NodeMkdirer   = (*rootNode)(nil)
	_ gofs.NodeMknoder   = (*rootNode)(nil)
	_ gofs.NodeLinker    = (*rootNode)(nil)
	_ gofs.NodeSymlinker = (*rootNode)(nil)
	_ gofs.NodeUnlinker  = (*rootNode)(nil)
	_ gofs.NodeRmdirer   = (*rootNode)(nil)
	_ gofs.NodeRenamer   = (*rootNode)(nil)
	_ gofs.NodeStatfser  = (*rootNode)(nil)
)

func (r *rootNode) Create(ctx context.Context, name string, flags, mode uint32, out *gofuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

func (r *rootNode) Mkdir(ctx context.Context, name string, mode uint32, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Mknod(ctx context.Context, name string, mode, dev uint32, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Symlink(ctx context.Context, target, name string, out *gofuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (r *rootNode) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (r *rootNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

// Statfs reports the volumes' total size as used space, so df shows what is served.
func (r *rootNode) Statfs(ctx context.Context, out *gofuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	total := uint64(r.fs.total.Load())
	*out = gofuse.StatfsOut{}
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = (total + bsize - 1) / bsize
	out.NameLen = maxNameBytes
	return 0
}

// volumeNode is one volume file.
type volumeNode struct {
	gofs.Inode

	name   string
	vol    replicate.Volume
	size   int64
	sector int64
	log    zerolog.Logger
	errs   errorLog
	locks  *sectorLock

	// io is held shared by every request while it uses vol and exclusively by retire, which
	// thereby waits for requests already inside the Volume. gone is set before that.
	io   sync.RWMutex
	gone atomic.Bool

	mu    sync.Mutex
	cond  sync.Cond // signalled when opens drops
	opens int
	atime time.Time
	mtime time.Time
	ctime time.Time

	removing bool // guarded by FS.mu
}

var (
	_ gofs.NodeGetattrer = (*volumeNode)(nil)
	_ gofs.NodeSetattrer = (*volumeNode)(nil)
	_ gofs.NodeOpener    = (*volumeNode)(nil)
)

func newVolumeNode(name string, v replicate.Volume, log zerolog.Logger) *volumeNode {
	now := time.Now()
	n := &volumeNode{
		name:   name,
		vol:    v,
		size:   v.Size(),
		sector: int64(v.SectorSize()),
		log:    log,
		locks:  newSectorLock(),
		atime:  now,
		mtime:  now,
		ctime:  now,
	}
	n.cond.L = &n.mu
	return n
}

// retire stops the node from serving: unless force, it first waits up to grace for open handles
// to be released and fails with ErrBusy if some remain. It returns the number of handles still
// open.
func (n *volumeNode) retire(force bool, grace time.Duration) (int, error) {
	n.mu.Lock()
	if !force && n.opens > 0 && !n.gone.Load() {
		deadline := time.Now().Add(grace)
		t := time.AfterFunc(grace, func() {
			n.mu.Lock()
			n.cond.Broadcast()
			n.mu.Unlock()
		})
		for n.opens > 0 && !n.gone.Load() && time.Now().Before(deadline) {
			n.cond.Wait()
		}
		t.Stop()
		if open := n.opens; open > 0 && !n.gone.Load() {
			n.mu.Unlock()
			return open, fmt.Errorf("%w: %q has %d open handle(s); close them or remove with force", ErrBusy, n.name, open)
		}
	}
	n.gone.Store(true)
	open := n.opens
	n.mu.Unlock()

	// An empty critical section used as a barrier: requests that entered before gone was set
	// finish, later ones see gone.
	n.io.Lock()
	n.io.Unlock()
	return open, nil
}

// enter admits a request to the Volume; it fails once the node is retired.
func (n *volumeNode) enter() bool {
	// Checked before RLock too: while retire waits for the requests inside the Volume, RLock
	// blocks (writer preference), and new requests must fail at once instead of queueing
	// behind a Volume call that may take long to return.
	if n.gone.Load() {
		return false
	}
	n.io.RLock()
	if n.gone.Load() {
		n.io.RUnlock()
		return false
	}
	return true
}

func (n *volumeNode) leave() { n.io.RUnlock() }

func (n *volumeNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EPERM
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gone.Load() {
		return nil, 0, syscall.ENOENT
	}
	n.opens++
	return &handle{n: n}, openFlags, 0
}

func (n *volumeNode) release() {
	n.mu.Lock()
	n.opens--
	n.cond.Broadcast()
	n.mu.Unlock()
}

func (n *volumeNode) Getattr(ctx context.Context, f gofs.FileHandle, out *gofuse.AttrOut) syscall.Errno {
	n.fillAttr(&out.Attr)
	return 0
}

// Setattr refuses every change but setting times (which touch and cp -p do) and "resizing" to
// the current size.
func (n *volumeNode) Setattr(ctx context.Context, f gofs.FileHandle, in *gofuse.SetAttrIn, out *gofuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.size {
		return syscall.EPERM
	}
	if _, ok := in.GetMode(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetUID(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetGID(); ok {
		return syscall.EPERM
	}
	n.mu.Lock()
	if t, ok := in.GetATime(); ok {
		n.atime = t
	}
	if t, ok := in.GetMTime(); ok {
		n.mtime = t
	}
	n.ctime = time.Now()
	n.mu.Unlock()
	n.fillAttr(&out.Attr)
	return 0
}

func (n *volumeNode) fillAttr(a *gofuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o600
	a.Nlink = 1
	a.Size = uint64(n.size)
	a.Blocks = uint64(n.size) / 512
	a.Blksize = uint32(max(n.sector, 4096))
	n.mu.Lock()
	a.SetTimes(&n.atime, &n.mtime, &n.ctime)
	n.mu.Unlock()
}

func (n *volumeNode) alignDown(off int64) int64 { return off &^ (n.sector - 1) }
func (n *volumeNode) alignUp(off int64) int64   { return (off + n.sector - 1) &^ (n.sector - 1) }

// readAt reads p at off, which lie within the volume, at any alignment.
func (n *volumeNode) readAt(p []byte, off int64) error {
	end := off + int64(len(p))
	if off%n.sector == 0 && end%n.sector == 0 {
		_, err := n.vol.ReadAt(p, off)
		return err
	}
	start := n.alignDown(off)
	buf := make([]byte, n.alignUp(end)-start)
	if _, err := n.vol.ReadAt(buf, start); err != nil {
		return err
	}
	copy(p, buf[off-start:])
	return nil
}

// writeAt writes p at off, which lie within the volume, at any alignment.
func (n *volumeNode) writeAt(p []byte, off int64) error {
	end := off + int64(len(p))
	if off%n.sector == 0 && end%n.sector == 0 {
		id := n.locks.lockShared(off, end)
		defer n.locks.unlockShared(id)
		_, err := n.vol.WriteAt(p, off)
		return err
	}
	start, alignedEnd := n.alignDown(off), n.alignUp(end)
	id := n.locks.lockExclusive(start, alignedEnd)
	defer n.locks.unlockExclusive(id)
	buf := make([]byte, alignedEnd-start)
	headRead := false
	if start < off {
		if _, err := n.vol.ReadAt(buf[:n.sector], start); err != nil {
			return err
		}
		headRead = true
	}
	if tail := alignedEnd - n.sector; alignedEnd > end && !(headRead && tail == start) {
		if _, err := n.vol.ReadAt(buf[tail-start:], tail); err != nil {
			return err
		}
	}
	copy(buf[off-start:], p)
	_, err := n.vol.WriteAt(buf, start)
	return err
}

// zero writes zeros over [off, end), in chunks aligned to zeroChunk so that only the edges of
// the whole range need read-modify-write.
func (n *volumeNode) zero(off, end int64) error {
	zeros := make([]byte, min(zeroChunk, end-off))
	for off < end {
		next := min(end, (off/zeroChunk+1)*zeroChunk)
		if err := n.writeAt(zeros[:next-off], off); err != nil {
			return err
		}
		off = next
	}
	return nil
}

// punch discards [off, end): the whole sectors go to Volume.Discard, partial sectors at the
// edges are overwritten with zeros, so the range reads back as zeros if the Volume's discard
// does.
func (n *volumeNode) punch(off, end int64) error {
	first, last := n.alignUp(off), n.alignDown(end)
	if first >= last {
		return n.zero(off, end)
	}
	if off < first {
		if err := n.zero(off, first); err != nil {
			return err
		}
	}
	if err := n.discard(first, last); err != nil {
		return err
	}
	if last < end {
		return n.zero(last, end)
	}
	return nil
}

func (n *volumeNode) discard(off, end int64) error {
	// Shared like a write: a read-modify-write on an edge sector must not straddle it.
	id := n.locks.lockShared(off, end)
	defer n.locks.unlockShared(id)
	return n.vol.Discard(off, end-off)
}

// fail logs a failed Volume call (rate-limited) and maps it onto an errno for the kernel.
func (n *volumeNode) fail(op string, off, length int64, err error) syscall.Errno {
	errno := toErrno(err)
	n.errs.log(n.log, n.name, op, off, length, err, errno)
	return errno
}

// toErrno maps a Volume error onto the errno the kernel passes to the client.
func toErrno(err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case errors.Is(err, replicate.ErrRange):
		return syscall.EINVAL
	case errors.Is(err, replicate.ErrNotPrimary):
		return syscall.EIO
	case errors.As(err, &errno) && errno != 0:
		return errno
	default:
		return syscall.EIO
	}
}

// handle is one open of a volume file. It holds no state of its own; it exists so that
// go-fuse reports the release of every open.
type handle struct {
	n *volumeNode
}

var (
	_ gofs.FileReader    = (*handle)(nil)
	_ gofs.FileWriter    = (*handle)(nil)
	_ gofs.FileFsyncer   = (*handle)(nil)
	_ gofs.FileFlusher   = (*handle)(nil)
	_ gofs.FileAllocater = (*handle)(nil)
	_ gofs.FileReleaser  = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (gofuse.ReadResult, syscall.Errno) {
	n := h.n
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if !n.enter() {
		return nil, syscall.EIO
	}
	defer n.leave()
	if off >= n.size {
		return gofuse.ReadResultData(nil), 0
	}
	p := dest[:min(int64(len(dest)), n.size-off)]
	if err := n.readAt(p, off); err != nil {
		return nil, n.fail("read", off, int64(len(p)), err)
	}
	return gofuse.ReadResultData(p), 0
}

// Write writes as much of data as fits in the volume; a write starting at or past the end
// fails with ENOSPC, like one to a full block device.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n := h.n
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if !n.enter() {
		return 0, syscall.EIO
	}
	defer n.leave()
	if len(data) == 0 {
		return 0, 0
	}
	if off >= n.size {
		return 0, syscall.ENOSPC
	}
	p := data[:min(int64(len(data)), n.size-off)]
	if err := n.writeAt(p, off); err != nil {
		return 0, n.fail("write", off, int64(len(p)), err)
	}
	return uint32(len(p)), 0
}

// Fsync serves fsync and fdatasync alike: the Volume has no metadata to skip.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	n := h.n
	if !n.enter() {
		return syscall.EIO
	}
	defer n.leave()
	if err := n.vol.Flush(); err != nil {
		return n.fail("flush", 0, 0, err)
	}
	return 0
}

// Flush is close(2), which promises no durability; fsync does.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

// Allocate serves fallocate. Plain allocation succeeds within the size (a volume is fully
// allocated), PUNCH_HOLE discards, ZERO_RANGE writes zeros; whatever would change the size or
// the layout (collapse, insert, unshare) is refused.
func (h *handle) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	n := h.n
	if mode&^(fallocKeepSize|fallocPunchHole|fallocZeroRange) != 0 {
		return syscall.EOPNOTSUPP
	}
	if mode&fallocPunchHole != 0 && mode&fallocZeroRange != 0 {
		return syscall.EINVAL
	}
	if size == 0 || off > uint64(n.size) && mode&fallocKeepSize == 0 {
		return syscall.EINVAL
	}
	end := off + size
	if end < off || end > uint64(n.size) {
		if mode&fallocKeepSize == 0 {
			return syscall.EFBIG
		}
		// KEEP_SIZE allows ranges past the end; only the part inside counts.
		end = uint64(n.size)
	}
	if !n.enter() {
		return syscall.EIO
	}
	defer n.leave()
	if off >= end {
		return 0
	}
	var err error
	switch {
	case mode&fallocPunchHole != 0:
		err = n.punch(int64(off), int64(end))
	case mode&fallocZeroRange != 0:
		err = n.zero(int64(off), int64(end))
	default:
		return 0
	}
	if err != nil {
		return n.fail("fallocate", int64(off), int64(end-off), err)
	}
	return 0
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.n.release()
	return 0
}

// errorLog rate-limits error logging per file: a client retrying against a failed volume must
// not flood the log.
type errorLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

const errorLogInterval = time.Second

func (e *errorLog) log(l zerolog.Logger, name, op string, off, length int64, err error, errno syscall.Errno) {
	e.mu.Lock()
	now := time.Now()
	if now.Sub(e.last) < errorLogInterval {
		e.suppressed++
		e.mu.Unlock()
		return
	}
	suppressed := e.suppressed
	e.last, e.suppressed = now, 0
	e.mu.Unlock()
	l.Error().Str("file", name).Str("op", op).Int64("off", off).Int64("len", length).
		Err(err).Str("errno", unix.ErrnoName(errno)).Int("suppressed", suppressed).
		Msg("fuse: volume request failed")
}
