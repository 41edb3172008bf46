package ublk

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"hast/replicate"
)

// ramVolume is a replicate.Volume in memory that counts what reaches it and fails on demand.
type ramVolume struct {
	mu     sync.RWMutex
	data   []byte
	sector int

	reads, writes, flushes, discards atomic.Int64
	fail                             atomic.Pointer[error] // every call returns *fail when set
}

func newRAMVolume(size, sector int) *ramVolume {
	return &ramVolume{data: make([]byte, size), sector: sector}
}

func (v *ramVolume) failure() error {
	if p := v.fail.Load(); p != nil {
		return *p
	}
	return nil
}

func (v *ramVolume) setFail(err error) {
	if err == nil {
		v.fail.Store(nil)
		return
	}
	v.fail.Store(&err)
}

func (v *ramVolume) inRange(off, n int64) bool {
	s := int64(v.sector)
	return off >= 0 && n >= 0 && off%s == 0 && n%s == 0 && off+n <= int64(len(v.data))
}

func (v *ramVolume) ReadAt(p []byte, off int64) (int, error) {
	v.reads.Add(1)
	if err := v.failure(); err != nil {
		return 0, err
	}
	if !v.inRange(off, int64(len(p))) {
		return 0, replicate.ErrRange
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	return copy(p, v.data[off:]), nil
}

func (v *ramVolume) WriteAt(p []byte, off int64) (int, error) {
	v.writes.Add(1)
	if err := v.failure(); err != nil {
		return 0, err
	}
	if !v.inRange(off, int64(len(p))) {
		return 0, replicate.ErrRange
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return copy(v.data[off:], p), nil
}

func (v *ramVolume) Flush() error {
	v.flushes.Add(1)
	return v.failure()
}

func (v *ramVolume) Discard(off, n int64) error {
	v.discards.Add(1)
	if err := v.failure(); err != nil {
		return err
	}
	if !v.inRange(off, n) {
		return replicate.ErrRange
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	clear(v.data[off : off+n])
	return nil
}

func (v *ramVolume) Size() int64     { return int64(len(v.data)) }
func (v *ramVolume) SectorSize() int { return v.sector }

// snapshot copies the volume's bytes in [off, off+n).
func (v *ramVolume) snapshot(off, n int) []byte {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return append([]byte(nil), v.data[off:off+n]...)
}

// fileVolume is a replicate.Volume on a file, so that data outlives a server process.
type fileVolume struct {
	f *os.File
}

func (v fileVolume) ReadAt(p []byte, off int64) (int, error)  { return v.f.ReadAt(p, off) }
func (v fileVolume) WriteAt(p []byte, off int64) (int, error) { return v.f.WriteAt(p, off) }
func (v fileVolume) Flush() error                             { return v.f.Sync() }
func (v fileVolume) Discard(off, n int64) error {
	return unix.Fallocate(int(v.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
func (v fileVolume) SectorSize() int { return 512 }
func (v fileVolume) Size() int64 {
	fi, err := v.f.Stat()
	if err != nil {
		return 0
	}
	return fi.Size()
}
