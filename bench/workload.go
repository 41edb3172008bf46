package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Target is what the workload generator drives: a volume, a file, a frontend's client. All
// methods must be safe for concurrent use; buffers passed to ReadAt and WriteAt are aligned to
// 4 KiB so targets may use them for O_DIRECT I/O.
type Target interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
	Size() int64
}

// ExternalCPU is implemented by targets whose server runs in another process (nbdkit): it returns
// that process's cumulative CPU time, which is added to the run's CPU cost.
type ExternalCPU interface {
	ExternalCPU() (time.Duration, error)
}

// Pattern is the order of offsets a workload visits.
type Pattern int

const (
	Sequential Pattern = iota
	Random
)

func (p Pattern) String() string {
	if p == Random {
		return "rand"
	}
	return "seq"
}

// Workload describes one run of the generator.
type Workload struct {
	Name    string
	Pattern Pattern
	// ReadPercent is the share of reads (fio's rwmixread): 0 = writes only, 100 = reads only.
	ReadPercent int
	BlockSize   int
	// QueueDepth is the number of goroutines issuing I/O at once.
	QueueDepth int
	// Runtime is the length of the measured phase; when it is zero, TotalBytes ends the run.
	Runtime    time.Duration
	TotalBytes int64
	// Warmup runs the workload unmeasured before the measured phase.
	Warmup time.Duration
	// Verify stamps every written block (offset, generation, CRC-32C), checks every read of a
	// block written in this run against what was last written there, and reads everything
	// written back after the run. Each block is owned by one goroutine so there is no ambiguity.
	Verify bool
	// Region limits the workload to the first Region bytes of the target (0 = all of it).
	Region int64
	Seed   uint64
	// Stop, if not nil, ends the measured phase early when it is closed (Runtime stays the
	// longest it may last).
	Stop <-chan struct{} `json:"-"`
}

// Latency reports whether the workload is a latency test (queue depth 1), the kind whose CPU
// budget kbench's "CPU-starved" rule watches.
func (w Workload) Latency() bool { return w.QueueDepth == 1 }

// ReadOnly and WriteOnly classify the mix.
func (w Workload) ReadOnly() bool  { return w.ReadPercent >= 100 }
func (w Workload) WriteOnly() bool { return w.ReadPercent <= 0 }

func (w Workload) validate(size int64) error {
	switch {
	case w.BlockSize <= 0:
		return fmt.Errorf("workload %s: block size %d must be positive", w.Name, w.BlockSize)
	case w.QueueDepth <= 0:
		return fmt.Errorf("workload %s: queue depth %d must be positive", w.Name, w.QueueDepth)
	case w.ReadPercent < 0 || w.ReadPercent > 100:
		return fmt.Errorf("workload %s: read percentage %d is not in 0..100", w.Name, w.ReadPercent)
	case w.Runtime <= 0 && w.TotalBytes <= 0:
		return fmt.Errorf("workload %s: needs a runtime or a total size", w.Name)
	case w.Runtime < 0 || w.TotalBytes < 0 || w.Warmup < 0:
		return fmt.Errorf("workload %s: negative runtime, size or warm-up", w.Name)
	case w.Verify && w.BlockSize < verifyHeader:
		return fmt.Errorf("workload %s: verify needs blocks of at least %d bytes", w.Name, verifyHeader)
	}
	region := w.region(size)
	blocks := region / int64(w.BlockSize)
	if blocks < 1 {
		return fmt.Errorf("workload %s: region of %d bytes holds no %d-byte block", w.Name, region, w.BlockSize)
	}
	if w.Verify && blocks < int64(w.QueueDepth) {
		return fmt.Errorf("workload %s: verify needs at least one block per goroutine (%d blocks, depth %d)", w.Name, blocks, w.QueueDepth)
	}
	return nil
}

func (w Workload) region(size int64) int64 {
	if w.Region > 0 && w.Region < size {
		return w.Region
	}
	return size
}

// Result is what one run measured. Only operations that started and completed inside the measured
// phase count; Elapsed is that phase's length.
type Result struct {
	Ops                   int64
	ReadOps, WriteOps     int64
	ReadBytes, WriteBytes int64
	Elapsed               time.Duration
	// CPU is the process's user+system CPU time during the measured phase (plus an external
	// server's, for targets that have one).
	CPU time.Duration
	// FlushTime is how long the Flush after the run took (not part of the measured phase): a
	// large value means the run's writes were sitting in a cache.
	FlushTime time.Duration
	// Verified counts blocks checked (during the run and in the read-back pass).
	Verified int64
	// ActivemapUpdates is how many times a replicated volume wrote its activemap during the
	// run (filled in by the matrix runner; each is a metadata write and, with metaflush, a
	// flush that the writes needing it wait for).
	ActivemapUpdates int64
	Lat              *Histogram
}

// Bytes is the number of bytes moved in the measured phase.
func (r *Result) Bytes() int64 { return r.ReadBytes + r.WriteBytes }

// MiBps is the throughput in MiB/s.
func (r *Result) MiBps() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Bytes()) / (1 << 20) / r.Elapsed.Seconds()
}

// IOPS is the number of operations per second.
func (r *Result) IOPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// CPUPerGiB is CPU seconds per GiB moved.
func (r *Result) CPUPerGiB() float64 {
	if r.Bytes() == 0 {
		return 0
	}
	return r.CPU.Seconds() / (float64(r.Bytes()) / (1 << 30))
}

// CPUShare is the fraction of the machine's CPU the run used (1 = every core busy).
func (r *Result) CPUShare(cores int) float64 {
	if r.Elapsed <= 0 || cores <= 0 {
		return 0
	}
	return r.CPU.Seconds() / (r.Elapsed.Seconds() * float64(cores))
}

// ErrVerify is wrapped by the error a verifying run returns when a block read back is not what
// was written.
var ErrVerify = errors.New("bench: verify failed")

const (
	verifyHeader = 32
	verifyMagic  = 0x48415354424e4348 // "HASTBNCH"
	bufAlign     = 4096
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// alignedBuf returns n bytes aligned to bufAlign, as O_DIRECT needs.
func alignedBuf(n int) []byte {
	b := make([]byte, n+bufAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % bufAlign); r != 0 {
		skip = bufAlign - r
	}
	return b[skip : skip+n : skip+n]
}

func stamp(b []byte, off int64, gen uint64) {
	binary.LittleEndian.PutUint64(b[0:], verifyMagic)
	binary.LittleEndian.PutUint64(b[8:], uint64(off))
	binary.LittleEndian.PutUint64(b[16:], gen)
	binary.LittleEndian.PutUint32(b[24:], blockCRC(b))
}

func blockCRC(b []byte) uint32 {
	c := crc32.Update(0, castagnoli, b[:24])
	return crc32.Update(c, castagnoli, b[28:])
}

func check(b []byte, off int64, gen uint64) error {
	switch {
	case binary.LittleEndian.Uint64(b[0:]) != verifyMagic:
		return fmt.Errorf("%w: block at offset %d has no stamp (never written, or overwritten by something else)", ErrVerify, off)
	case int64(binary.LittleEndian.Uint64(b[8:])) != off:
		return fmt.Errorf("%w: block at offset %d holds the block written for offset %d", ErrVerify, off, binary.LittleEndian.Uint64(b[8:]))
	case binary.LittleEndian.Uint32(b[24:]) != blockCRC(b):
		return fmt.Errorf("%w: block at offset %d fails its CRC-32C (corrupted)", ErrVerify, off)
	case binary.LittleEndian.Uint64(b[16:]) != gen:
		return fmt.Errorf("%w: block at offset %d is generation %d, want %d (a write was lost)", ErrVerify, off, binary.LittleEndian.Uint64(b[16:]), gen)
	}
	return nil
}

// worker is one issuing goroutine's state; nothing in it is shared, so the hot loop takes no locks.
type worker struct {
	id         int
	rbuf, wbuf []byte
	rng        *rand.Rand
	hist       *Histogram
	ops        int64
	rops, wops int64
	rb, wb     int64
	verified   int64
	seqNext    int64 // verify mode: next owned block index
	err        error
}

// Run drives t with w and returns what the measured phase saw. It stops at the first I/O or
// verify error, or when ctx is cancelled. After the measured phase it flushes the target (timed
// separately) and, for verifying workloads, reads every written block back.
func Run(ctx context.Context, t Target, w Workload) (*Result, error) {
	size := t.Size()
	if err := w.validate(size); err != nil {
		return nil, err
	}
	region := w.region(size)
	bs := int64(w.BlockSize)
	blocks := region / bs
	qd := w.QueueDepth

	var gens []uint64 // verify: last generation written per block, 0 = not written in this run
	if w.Verify {
		gens = make([]uint64, blocks)
	}
	workers := make([]*worker, qd)
	for i := range workers {
		wk := &worker{
			id:   i,
			rbuf: alignedBuf(w.BlockSize),
			wbuf: alignedBuf(w.BlockSize),
			rng:  rand.New(rand.NewPCG(w.Seed, uint64(i)+1)),
			hist: NewHistogram(),
		}
		// Incompressible, non-zero payload: a zero block would let "hole" compression skip
		// the network entirely.
		for j := 0; j+8 <= len(wk.wbuf); j += 8 {
			binary.LittleEndian.PutUint64(wk.wbuf[j:], wk.rng.Uint64()|1)
		}
		workers[i] = wk
	}

	const notYet = math.MaxInt64
	var (
		base    = time.Now()
		begin   atomic.Int64 // ns since base when the measured phase began
		endAt   atomic.Int64 // ns since base when it ended
		stop    atomic.Bool
		next    atomic.Int64 // shared sequential cursor (non-verify)
		claimed atomic.Int64 // bytes claimed in the measured phase (size mode)
		failed  atomic.Bool
		wg      sync.WaitGroup
	)
	begin.Store(notYet)
	endAt.Store(notYet)
	sizeMode := w.Runtime <= 0

	pick := func(wk *worker) int64 {
		if w.Verify {
			owned := (blocks - int64(wk.id) + int64(qd) - 1) / int64(qd)
			var j int64
			if w.Pattern == Random {
				j = wk.rng.Int64N(owned)
			} else {
				j = wk.seqNext % owned
				wk.seqNext++
			}
			return j*int64(qd) + int64(wk.id)
		}
		if w.Pattern == Random {
			return wk.rng.Int64N(blocks)
		}
		return (next.Add(1) - 1) % blocks
	}

	ext, hasExt := t.(ExternalCPU)
	cpuNow := func() time.Duration {
		c := processCPU()
		if hasExt {
			if e, err := ext.ExternalCPU(); err == nil {
				c += e
			}
		}
		return c
	}
	// Without a warm-up the measured phase starts before the first operation, so that nothing
	// is issued outside it.
	var cpu0 time.Duration
	if w.Warmup <= 0 {
		cpu0 = cpuNow()
		begin.Store(int64(time.Since(base)))
	}
	for _, wk := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				// In size mode an operation counts exactly when it claimed budget, which
				// only operations issued in the measured phase do.
				budgeted := false
				if sizeMode && begin.Load() != notYet {
					if claimed.Add(bs) > w.TotalBytes {
						return
					}
					budgeted = true
				}
				blk := pick(wk)
				off := blk * bs
				read := w.ReadPercent >= 100 || (w.ReadPercent > 0 && wk.rng.IntN(100) < w.ReadPercent)
				var err error
				start := time.Since(base)
				if read {
					_, err = t.ReadAt(wk.rbuf, off)
				} else {
					if w.Verify {
						gens[blk]++
						stamp(wk.wbuf, off, gens[blk])
					}
					_, err = t.WriteAt(wk.wbuf, off)
				}
				done := time.Since(base)
				if err != nil {
					op := "write"
					if read {
						op = "read"
					}
					wk.err = fmt.Errorf("%s %d bytes at offset %d: %w", op, bs, off, err)
					failed.Store(true)
					stop.Store(true)
					return
				}
				if read && w.Verify && gens[blk] != 0 {
					if err := check(wk.rbuf, off, gens[blk]); err != nil {
						wk.err = err
						failed.Store(true)
						stop.Store(true)
						return
					}
					wk.verified++
				}
				if (sizeMode && budgeted) || (!sizeMode && int64(start) >= begin.Load() && int64(done) <= endAt.Load()) {
					wk.hist.Record(done - start)
					wk.ops++
					if read {
						wk.rops++
						wk.rb += bs
					} else {
						wk.wops++
						wk.wb += bs
					}
				}
			}
		}()
	}

	wait := func(d time.Duration) bool {
		if d <= 0 {
			return true
		}
		tm := time.NewTimer(d)
		defer tm.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return false
			case <-tm.C:
				return true
			case <-w.Stop:
				return true
			case <-tick.C:
				if failed.Load() {
					return true
				}
			}
		}
	}
	ok := wait(w.Warmup)
	if w.Warmup > 0 {
		cpu0 = cpuNow()
		begin.Store(int64(time.Since(base)))
	}
	b := time.Duration(begin.Load())
	if ok && !sizeMode {
		ok = wait(w.Runtime)
		e := time.Since(base)
		endAt.Store(int64(e))
		stop.Store(true)
	}
	if !ok {
		stop.Store(true)
	}
	if sizeMode && ok {
		// Wait for the budget to run out (or a failure or cancellation).
		doneCh := make(chan struct{})
		go func() { wg.Wait(); close(doneCh) }()
		select {
		case <-doneCh:
		case <-ctx.Done():
			stop.Store(true)
			ok = false
		}
	}
	wg.Wait()
	end := time.Since(base)
	if !sizeMode && ok {
		end = time.Duration(endAt.Load())
	}
	cpu1 := cpuNow()

	res := &Result{Elapsed: end - b, CPU: cpu1 - cpu0, Lat: NewHistogram()}
	var errs []error
	for _, wk := range workers {
		res.Lat.Merge(wk.hist)
		res.Ops += wk.ops
		res.ReadOps += wk.rops
		res.WriteOps += wk.wops
		res.ReadBytes += wk.rb
		res.WriteBytes += wk.wb
		res.Verified += wk.verified
		if wk.err != nil {
			errs = append(errs, wk.err)
		}
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("workload %s: %w", w.Name, errors.Join(errs...))
	}
	if !ok {
		return res, fmt.Errorf("workload %s: %w", w.Name, ctx.Err())
	}
	if res.WriteOps > 0 || !w.ReadOnly() {
		fs := time.Now()
		if err := t.Flush(); err != nil {
			return res, fmt.Errorf("workload %s: flush after the run: %w", w.Name, err)
		}
		res.FlushTime = time.Since(fs)
	}
	if w.Verify {
		n, err := readBack(ctx, t, gens, bs, qd)
		res.Verified += n
		if err != nil {
			return res, fmt.Errorf("workload %s: read-back: %w", w.Name, err)
		}
	}
	return res, nil
}

// readBack reads every block written in the run and checks it holds the last generation written.
func readBack(ctx context.Context, t Target, gens []uint64, bs int64, qd int) (int64, error) {
	var (
		next     atomic.Int64
		verified atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		first    error
	)
	for range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := alignedBuf(int(bs))
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(len(gens)) {
					return
				}
				if gens[i] == 0 {
					continue
				}
				off := i * bs
				err := func() error {
					if _, err := t.ReadAt(buf, off); err != nil {
						return fmt.Errorf("read %d bytes at offset %d: %w", bs, off, err)
					}
					return check(buf, off, gens[i])
				}()
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					next.Store(int64(len(gens)))
					return
				}
				verified.Add(1)
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return verified.Load(), first
	}
	return verified.Load(), ctx.Err()
}
