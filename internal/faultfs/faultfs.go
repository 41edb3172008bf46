// Package faultfs mounts a directory again through FUSE (a loopback of it) and makes the
// kernel fail chosen operations on its files on demand: write(2), fdatasync(2) and fsync(2)
// return the errno a test sets, for as long as it is set. A daemon whose local component sits
// on such a mount meets real I/O errors from real system calls — the page cache, O_DIRECT and
// io_uring paths included — where an in-process fake device would only exercise our own code.
//
// Only files that exist in the directory before the mount, or are created through it, are
// served; everything else a loopback does (reads, attributes, fallocate) passes through
// unchanged. Mounting needs root and /dev/fuse.
package faultfs

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"hast/internal/fusectl"
)

// FS is a mounted fault-injecting loopback.
type FS struct {
	Mountpoint string
	server     *fuse.Server
	connID     uint32
	writes     atomic.Int32 // errno for writes, 0: none
	writesFrom atomic.Int64 // writes below this offset pass
	syncs      atomic.Int32 // errno for fsync/fdatasync, 0: none
	// WriteFaults and SyncFaults count the operations failed so far.
	WriteFaults, SyncFaults atomic.Int64
}

// Mount serves directory backing at mountpoint.
func Mount(backing, mountpoint string) (*FS, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(backing, &st); err != nil {
		return nil, fmt.Errorf("faultfs: stat %s: %w", backing, err)
	}
	f := &FS{Mountpoint: mountpoint}
	root := &fs.LoopbackRoot{Path: backing, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &node{LoopbackNode: &fs.LoopbackNode{RootData: r}, fs: f}
	}
	root.RootNode = root.NewNode(root, nil, "", &st)
	sec := time.Second
	srv, err := fs.Mount(mountpoint, root.RootNode, &fs.Options{
		EntryTimeout: &sec, AttrTimeout: &sec,
		MountOptions: fuse.MountOptions{Name: "faultfs", FsName: backing, DisableXAttrs: true,
			// mount(2) directly: no fusermount on a fresh machine, and we are root.
			DirectMount: true, DirectMountStrict: true},
	})
	if err != nil {
		return nil, fmt.Errorf("faultfs: mount %s on %s: %w", backing, mountpoint, err)
	}
	f.server = srv
	if f.connID, err = fusectl.ID(mountpoint); err != nil {
		srv.Unmount()
		return nil, fmt.Errorf("faultfs: %w", err)
	}
	return f, nil
}

// FailWrites makes every write that ends past offset from fail with errno from now on (from 0:
// every write); errno 0 ends it. An offset spares a file's head, such as a metadata block.
func (f *FS) FailWrites(errno syscall.Errno, from int64) {
	f.writesFrom.Store(from)
	f.writes.Store(int32(errno))
}

// FailSyncs makes every fsync and fdatasync fail with errno from now on; 0 ends it.
func (f *FS) FailSyncs(errno syscall.Errno) { f.syncs.Store(int32(errno)) }

// Unmount ends the mount; files still open on it fail from then on. The server runs in the
// caller's process, so a file left open there would otherwise make the process hang on exit,
// closing it through a server that is gone: a busy mount is detached and its connection ended.
func (f *FS) Unmount() error {
	if err := f.server.Unmount(); err == nil {
		return nil
	}
	if err := unix.Unmount(f.Mountpoint, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("faultfs: detach %s: %w", f.Mountpoint, err)
	}
	if err := fusectl.Abort(f.connID); err != nil {
		return fmt.Errorf("faultfs: %w", err)
	}
	f.server.Wait()
	return nil
}

type node struct {
	*fs.LoopbackNode
	fs *FS
}

var (
	_ fs.NodeOpener  = (*node)(nil)
	_ fs.NodeCreater = (*node)(nil)
)

// Open implements fs.NodeOpener: the loopback's file, wrapped.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return n.wrap(fh), fl, 0
}

// Create implements fs.NodeCreater: the loopback's file, wrapped.
func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return in, n.wrap(fh), fl, 0
}

func (n *node) wrap(fh fs.FileHandle) fs.FileHandle {
	lf, ok := fh.(*fs.LoopbackFile)
	if !ok {
		return fh
	}
	return &file{LoopbackFile: lf, fs: n.fs}
}

type file struct {
	*fs.LoopbackFile
	fs *FS
}

// PassthroughFd implements fs.FilePassthroughFder to refuse kernel passthrough, which the
// loopback file offers: with it, reads and writes would go to the backing file without
// passing through us.
func (f *file) PassthroughFd() (int, bool) { return 0, false }

// Write implements fs.FileWriter.
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if e := f.fs.writeFault(off, len(data)); e != 0 {
		return 0, e
	}
	return f.LoopbackFile.Write(ctx, data, off)
}

// Writev implements fs.FileWritever, which go-fuse prefers for a write of several pages.
func (f *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	n := 0
	for _, b := range data {
		n += len(b)
	}
	if e := f.fs.writeFault(off, n); e != 0 {
		return 0, e
	}
	return f.LoopbackFile.Writev(ctx, data, off)
}

func (f *FS) writeFault(off int64, n int) syscall.Errno {
	e := syscall.Errno(f.writes.Load())
	if e == 0 || off+int64(n) <= f.writesFrom.Load() {
		return 0
	}
	f.WriteFaults.Add(1)
	return e
}

// Fsync implements fs.FileFsyncer (fsync and fdatasync both arrive here).
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if e := syscall.Errno(f.fs.syncs.Load()); e != 0 {
		f.fs.SyncFaults.Add(1)
		return e
	}
	return f.LoopbackFile.Fsync(ctx, flags)
}
