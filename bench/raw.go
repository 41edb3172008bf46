package bench

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment O_DIRECT needs for offsets, lengths and buffer addresses here
// (the logical sector size of the disks we run on); anything else takes the buffered descriptor.
const directAlign = 512

// file is one backing file opened twice: with O_DIRECT for aligned requests and buffered for the
// rest. Both *os.File values stay referenced, so their descriptors cannot be closed under us.
type file struct {
	path     string
	direct   *os.File // nil when O_DIRECT is off or unsupported
	buffered *os.File
	size     int64
}

func openFile(path string, direct bool) (*file, error) {
	bf, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := bf.Stat()
	if err != nil {
		bf.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	f := &file{path: path, buffered: bf, size: st.Size()}
	if direct {
		df, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			bf.Close()
			return nil, fmt.Errorf("open %s with O_DIRECT: %w", path, err)
		}
		f.direct = df
	}
	return f, nil
}

// openFiles opens the two copies a baseline writes: both or neither.
func openFiles(pathA, pathB string, direct bool) (a, b *file, err error) {
	if a, err = openFile(pathA, direct); err != nil {
		return nil, nil, err
	}
	if b, err = openFile(pathB, direct); err != nil {
		a.close()
		return nil, nil, err
	}
	return a, b, nil
}

func aligned(b []byte, off int64) bool {
	return off%directAlign == 0 && len(b)%directAlign == 0 &&
		(len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%directAlign == 0)
}

// fd picks the descriptor for a request.
func (f *file) fd(b []byte, off int64) int {
	if f.direct != nil && aligned(b, off) {
		return int(f.direct.Fd())
	}
	return int(f.buffered.Fd())
}

func (f *file) pread(b []byte, off int64) (int, error) {
	n, err := unix.Pread(f.fd(b, off), b, off)
	if err != nil {
		return n, fmt.Errorf("pread %s at %d: %w", f.path, off, err)
	}
	if n != len(b) {
		return n, fmt.Errorf("pread %s at %d: short read (%d of %d bytes)", f.path, off, n, len(b))
	}
	return n, nil
}

func (f *file) pwrite(b []byte, off int64) (int, error) {
	n, err := unix.Pwrite(f.fd(b, off), b, off)
	if err != nil {
		return n, fmt.Errorf("pwrite %s at %d: %w", f.path, off, err)
	}
	if n != len(b) {
		return n, fmt.Errorf("pwrite %s at %d: short write (%d of %d bytes)", f.path, off, n, len(b))
	}
	return n, nil
}

func (f *file) sync() error {
	if err := unix.Fdatasync(int(f.buffered.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", f.path, err)
	}
	return nil
}

func (f *file) close() error {
	var errs []error
	if f.direct != nil {
		errs = append(errs, f.direct.Close())
	}
	errs = append(errs, f.buffered.Close())
	return errors.Join(errs...)
}

// Raw is the "raw" baseline: the workload on the two bare backing files. A write goes to both
// files at once (one io_submit with two iocbs, then a wait for both), as the two nodes would
// write their copies on this machine's one disk; a read comes from the first file.
type Raw struct {
	a, b  *file
	size  int64
	slots chan *rawSlot
	all   []*rawSlot
}

type rawSlot struct {
	ctx  aioCtx
	cbs  [2]iocb
	ptrs [2]*iocb
	evs  [2]ioEvent
}

// OpenRaw opens the two backing files for the raw baseline, with O_DIRECT for aligned requests
// when direct is set. depth is the largest number of concurrent callers.
func OpenRaw(pathA, pathB string, direct bool, depth int) (*Raw, error) {
	a, b, err := openFiles(pathA, pathB, direct)
	if err != nil {
		return nil, err
	}
	r := &Raw{a: a, b: b, size: min(a.size, b.size), slots: make(chan *rawSlot, depth)}
	for range depth {
		ctx, err := aioSetup(2)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("raw baseline: %w", err)
		}
		s := &rawSlot{ctx: ctx}
		s.ptrs = [2]*iocb{&s.cbs[0], &s.cbs[1]}
		r.all = append(r.all, s)
		r.slots <- s
	}
	return r, nil
}

func (r *Raw) Size() int64 { return r.size }

func (r *Raw) ReadAt(p []byte, off int64) (int, error) { return r.a.pread(p, off) }

func (r *Raw) WriteAt(p []byte, off int64) (int, error) {
	s := <-r.slots
	s.cbs[0].prep(iocbCmdPwrite, r.a.fd(p, off), p, off, 0)
	s.cbs[1].prep(iocbCmdPwrite, r.b.fd(p, off), p, off, 1)
	var errs []error
	inflight, err := s.ctx.submit(s.ptrs[:])
	if err != nil {
		errs = append(errs, fmt.Errorf("raw write at %d: %w", off, err))
	}
	for inflight > 0 {
		n, err := s.ctx.getEvents(inflight, s.evs[:inflight], 0)
		if err != nil {
			// Requests are still in flight on this context and their buffers in use:
			// the slot cannot be reused, so it is dropped.
			return 0, fmt.Errorf("raw write at %d: %w", off, err)
		}
		for i := range n {
			if err := eventErr(&s.evs[i], len(p)); err != nil {
				path := r.a.path
				if s.evs[i].data == 1 {
					path = r.b.path
				}
				errs = append(errs, fmt.Errorf("raw write %s at %d: %w", path, off, err))
			}
		}
		inflight -= n
	}
	r.slots <- s
	if len(errs) > 0 {
		return 0, errors.Join(errs...)
	}
	return len(p), nil
}

func (r *Raw) Flush() error { return errors.Join(r.a.sync(), r.b.sync()) }

// Close releases the AIO contexts and files.
func (r *Raw) Close() error {
	destroyAll(r.all)
	r.all = nil
	return errors.Join(r.a.close(), r.b.close())
}

// prefill writes zeros over the whole file once, so that no benchmark pays for converting
// fallocate's unwritten extents on its first write to a block (which serialises O_DIRECT writes
// on ext4 and would penalise whichever target runs first).
func prefill(path string) error {
	f, err := openFile(path, true)
	if err != nil {
		// Without O_DIRECT (tmpfs), buffered writes do the same.
		if f, err = openFile(path, false); err != nil {
			return err
		}
	}
	defer f.close()
	buf := alignedBuf(1 << 20)
	for off := int64(0); off < f.size; off += int64(len(buf)) {
		n := min(int64(len(buf)), f.size-off)
		if _, err := f.pwrite(buf[:n], off); err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
	}
	return f.sync()
}

// destroyAll releases AIO contexts in parallel: io_destroy waits for an RCU grace period, which
// adds up to a second for a few dozen contexts destroyed one after the other.
func destroyAll(slots []*rawSlot) {
	var wg sync.WaitGroup
	for _, s := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.ctx.destroy()
		}()
	}
	wg.Wait()
}
