package ackcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Target is what the workload writes through: a replicate.Volume, an *nbd.Client, a file.
type Target interface {
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
}

// Config shapes the workload.
type Config struct {
	// Offset and Blocks give the region written and verified: Blocks blocks of BlockSize bytes
	// from Offset (a multiple of BlockSize).
	Offset int64
	Blocks int
	// Writers is the number of concurrent writers (default 4). Each owns a contiguous share of
	// the region and has one write in flight at a time, so every block has a single ordered
	// history and "the last acknowledged write" is well defined.
	Writers int
	// MaxRun is the largest write in blocks (default 8); a write never leaves its writer's share.
	MaxRun int
	// FlushEvery makes a writer call Flush after this many acknowledged writes (0: never).
	FlushEvery int
	// Writes, if positive, ends each writer of a Run after that many writes.
	Writes int
	// Seed makes the choice of offsets and sizes reproducible.
	Seed uint64
}

type wstate uint8

const (
	pending wstate = iota
	acked
	failed
)

type write struct {
	run     uint32 // the Run that issued it: a flush covers only writes through its own target
	writer  uint32
	first   int // block index in the region
	n       int // blocks
	state   wstate
	ackNo   uint64 // position in the order of acknowledgements, from 1
	ackedAt time.Time
}

// Stats count what the workload did.
type Stats struct {
	Writes      uint64 // writes issued
	Acked       uint64 // writes the target acknowledged
	Failed      uint64 // writes that returned an error (their data may or may not be there)
	AckedBytes  uint64
	Flushes     uint64 // successful flushes
	FlushErrors uint64
	LastError   string
}

// Checker runs the workload and remembers, per block, every write it issued and what became of
// it. Run and Verify must not overlap; Stats may be called at any time.
type Checker struct {
	cfg Config

	mu     sync.Mutex
	writes []write    // by seq-1
	blocks [][]uint64 // per block, the seqs written to it in order
	acks   uint64
	// flushed[run]: writes of that run acknowledged with ackNo <= flushed[run] were covered by a
	// successful Flush through the run's target. A flush on another target (the new primary
	// after a failover) proves nothing about writes the old one acknowledged.
	flushed map[uint32]uint64
	runs    uint32
	st      Stats

	running atomic.Bool
}

// New checks cfg and returns a Checker with an empty history.
func New(cfg Config) (*Checker, error) {
	if cfg.Writers <= 0 {
		cfg.Writers = 4
	}
	if cfg.MaxRun <= 0 {
		cfg.MaxRun = 8
	}
	switch {
	case cfg.Offset < 0 || cfg.Offset%BlockSize != 0:
		return nil, fmt.Errorf("ackcheck: offset %d is not a non-negative multiple of %d", cfg.Offset, BlockSize)
	case cfg.Blocks < cfg.Writers:
		return nil, fmt.Errorf("ackcheck: %d blocks cannot be shared by %d writers", cfg.Blocks, cfg.Writers)
	}
	return &Checker{cfg: cfg, blocks: make([][]uint64, cfg.Blocks), flushed: map[uint32]uint64{}}, nil
}

// Config returns the configuration in use (with defaults applied).
func (c *Checker) Config() Config { return c.cfg }

// Stats returns the counters accumulated over all runs.
func (c *Checker) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *Checker) share(w int) (lo, hi int) {
	per := c.cfg.Blocks / c.cfg.Writers
	lo = w * per
	hi = lo + per
	if w == c.cfg.Writers-1 {
		hi = c.cfg.Blocks
	}
	return lo, hi
}

func (c *Checker) off(block int) int64 { return c.cfg.Offset + int64(block)*BlockSize }

func (c *Checker) begin(run, writer uint32, first, n int) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, write{run: run, writer: writer, first: first, n: n})
	seq := uint64(len(c.writes))
	for b := first; b < first+n; b++ {
		c.blocks[b] = append(c.blocks[b], seq)
	}
	c.st.Writes++
	return seq
}

func (c *Checker) end(seq uint64, err error) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &c.writes[seq-1]
	if err != nil {
		w.state = failed
		c.st.Failed++
		c.st.LastError = err.Error()
		return
	}
	c.acks++
	w.state, w.ackNo, w.ackedAt = acked, c.acks, now
	c.st.Acked++
	c.st.AckedBytes += uint64(w.n) * BlockSize
}

// Flush flushes t, which must be the target of the latest Run, and when that succeeds records
// every write that run had acknowledged before the call as flushed: losing one of those is
// reported separately (Report.LostFlushed).
func (c *Checker) Flush(t Target) error {
	c.mu.Lock()
	run := uint32(0)
	if c.runs > 0 {
		run = c.runs - 1
	}
	c.mu.Unlock()
	return c.flush(t, run)
}

func (c *Checker) flush(t Target, run uint32) error {
	c.mu.Lock()
	upTo := c.acks
	c.mu.Unlock()
	err := t.Flush()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.st.FlushErrors++
		c.st.LastError = err.Error()
		return fmt.Errorf("flush: %w", err)
	}
	c.st.Flushes++
	c.flushed[run] = max(c.flushed[run], upTo)
	return nil
}

// errorBackoff keeps a writer whose target fails from spinning.
const errorBackoff = 20 * time.Millisecond

// Run writes through t with Config.Writers writers until ctx ends (or each has made
// Config.Writes writes) and returns what this run did. Write and flush errors are recorded, not
// returned: a failed write is "in doubt", a flush error leaves writes unflushed. Successive runs
// (e.g. against the old primary, then the new one after a failover) extend one history.
func (c *Checker) Run(ctx context.Context, t Target) (Stats, error) {
	if !c.running.CompareAndSwap(false, true) {
		return Stats{}, errors.New("ackcheck: Run called while running")
	}
	defer c.running.Store(false)
	before := c.Stats()
	c.mu.Lock()
	run := c.runs
	c.runs++
	c.mu.Unlock()
	var wg sync.WaitGroup
	for w := range c.cfg.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.writer(ctx, t, w, run)
		}()
	}
	wg.Wait()
	after := c.Stats()
	return Stats{
		Writes: after.Writes - before.Writes, Acked: after.Acked - before.Acked, Failed: after.Failed - before.Failed,
		AckedBytes: after.AckedBytes - before.AckedBytes, Flushes: after.Flushes - before.Flushes,
		FlushErrors: after.FlushErrors - before.FlushErrors, LastError: after.LastError,
	}, nil
}

func (c *Checker) writer(ctx context.Context, t Target, w int, run uint32) {
	rng := rand.New(rand.NewPCG(c.cfg.Seed, uint64(run)<<32|uint64(w)))
	// Writer ids differ per run, so a block also tells which phase of a scenario wrote it.
	id := run*uint32(c.cfg.Writers) + uint32(w)
	lo, hi := c.share(w)
	buf := make([]byte, c.cfg.MaxRun*BlockSize)
	sinceFlush := 0
	for i := 0; c.cfg.Writes <= 0 || i < c.cfg.Writes; i++ {
		if ctx.Err() != nil {
			return
		}
		n := 1 + rng.IntN(min(c.cfg.MaxRun, hi-lo))
		first := lo + rng.IntN(hi-lo-n+1)
		seq := c.begin(run, id, first, n)
		for k := range n {
			EncodeBlock(buf[k*BlockSize:], c.off(first+k), seq, id)
		}
		_, err := t.WriteAt(buf[:n*BlockSize], c.off(first))
		c.end(seq, err)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(errorBackoff):
			}
			continue
		}
		sinceFlush++
		if c.cfg.FlushEvery > 0 && sinceFlush >= c.cfg.FlushEvery {
			sinceFlush = 0
			c.flush(t, run)
		}
	}
}

// LostWrite is an acknowledged write whose data is missing from at least one of its blocks.
type LostWrite struct {
	Seq     uint64
	Writer  uint32
	Offset  int64 // of the write's first block
	Blocks  int   // how many of its blocks hold older data
	AckedAt time.Time
	Flushed bool // a successful Flush covered it
}

// Corrupt is a block that holds something the workload never wrote there.
type Corrupt struct {
	Offset int64
	Reason string
}

// Report is the outcome of Verify.
type Report struct {
	Blocks  int    // blocks checked
	Written int    // blocks the workload wrote at least once
	Acked   uint64 // acknowledged writes in the history
	// InDoubt counts blocks holding a write that was never acknowledged (it failed or was in
	// flight): allowed, as the application was never told either way.
	InDoubt int
	// Lost lists acknowledged writes whose data is not there (the block holds an older write, or
	// nothing), in sequence order. For fullsync and memsync it must be empty; for async it is the
	// loss window.
	Lost        []LostWrite
	LostBytes   int64 // acknowledged bytes missing (blocks × BlockSize over Lost)
	LostFlushed int   // lost writes that a successful Flush had covered
	Corrupt     []Corrupt
	// WindowStart and WindowEnd are the acknowledgement times of the oldest and newest lost
	// write (zero when nothing is lost).
	WindowStart, WindowEnd time.Time
}

// OK reports whether nothing acknowledged is missing and nothing is corrupt.
func (r *Report) OK() bool { return len(r.Lost) == 0 && len(r.Corrupt) == 0 }

// LossWindow is the span of acknowledgement times of the lost writes.
func (r *Report) LossWindow() time.Duration { return r.WindowEnd.Sub(r.WindowStart) }

// String summarises the report in one line.
func (r *Report) String() string {
	s := fmt.Sprintf("%d blocks (%d written), %d acknowledged writes, %d in doubt, %d lost (%d bytes, %d flushed), %d corrupt",
		r.Blocks, r.Written, r.Acked, r.InDoubt, len(r.Lost), r.LostBytes, r.LostFlushed, len(r.Corrupt))
	if len(r.Lost) > 0 {
		s += fmt.Sprintf(", loss window %v", r.LossWindow())
	}
	return s
}

// Err is nil when OK, and otherwise describes the first problems found.
func (r *Report) Err() error {
	if r.OK() {
		return nil
	}
	var b strings.Builder
	b.WriteString(r.String())
	for i, l := range r.Lost {
		if i == 5 {
			fmt.Fprintf(&b, "; …")
			break
		}
		fmt.Fprintf(&b, "; lost write %d at %d (%d blocks, acknowledged %s)", l.Seq, l.Offset, l.Blocks, l.AckedAt.Format("15:04:05.000"))
	}
	for i, cr := range r.Corrupt {
		if i == 5 {
			fmt.Fprintf(&b, "; …")
			break
		}
		fmt.Fprintf(&b, "; corrupt block at %d: %s", cr.Offset, cr.Reason)
	}
	return errors.New(b.String())
}

// verifyChunk is how many blocks Verify reads at once.
const verifyChunk = 256

// Verify reads the region from r (addressed like the target) and compares every block with the
// history: a block must hold its last acknowledged write or a later unacknowledged one; older
// content means acknowledged writes were lost; content the workload never wrote there (bad
// checksum, wrong offset, a sequence number never written to that block) is corrupt. Blocks
// never written must read as zeros. Only an I/O error of r is returned as an error.
func (c *Checker) Verify(r io.ReaderAt) (*Report, error) {
	if c.running.Load() {
		return nil, errors.New("ackcheck: Verify called while Run is writing")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := &Report{Blocks: c.cfg.Blocks, Acked: c.acks}
	lost := map[uint64]*LostWrite{}
	buf := make([]byte, verifyChunk*BlockSize)
	for start := 0; start < c.cfg.Blocks; start += verifyChunk {
		n := min(verifyChunk, c.cfg.Blocks-start)
		if _, err := r.ReadAt(buf[:n*BlockSize], c.off(start)); err != nil {
			return nil, fmt.Errorf("ackcheck: read %d bytes at %d: %w", n*BlockSize, c.off(start), err)
		}
		for k := range n {
			c.checkBlock(rep, lost, start+k, buf[k*BlockSize:(k+1)*BlockSize])
		}
	}
	for _, l := range lost {
		rep.Lost = append(rep.Lost, *l)
		rep.LostBytes += int64(l.Blocks) * BlockSize
		if l.Flushed {
			rep.LostFlushed++
		}
		if rep.WindowStart.IsZero() || l.AckedAt.Before(rep.WindowStart) {
			rep.WindowStart = l.AckedAt
		}
		if l.AckedAt.After(rep.WindowEnd) {
			rep.WindowEnd = l.AckedAt
		}
	}
	sort.Slice(rep.Lost, func(i, j int) bool { return rep.Lost[i].Seq < rep.Lost[j].Seq })
	return rep, nil
}

func (c *Checker) checkBlock(rep *Report, lost map[uint64]*LostWrite, b int, data []byte) {
	off := c.off(b)
	seqs := c.blocks[b]
	if len(seqs) > 0 {
		rep.Written++
	}
	corrupt := func(format string, a ...any) {
		rep.Corrupt = append(rep.Corrupt, Corrupt{Offset: off, Reason: fmt.Sprintf(format, a...)})
	}
	h, zero, err := DecodeBlock(data)
	if err != nil {
		corrupt("%v", err)
		return
	}
	found := h.Seq // 0 for a zero block
	if !zero {
		if h.Offset != off {
			corrupt("holds the block of offset %d (write %d): misdirected", h.Offset, h.Seq)
			return
		}
		i := sort.Search(len(seqs), func(i int) bool { return seqs[i] >= found })
		if i == len(seqs) || seqs[i] != found {
			corrupt("holds write %d, which never wrote this block", found)
			return
		}
		if w := c.writes[found-1]; w.writer != h.Writer {
			corrupt("write %d says writer %d, issued by writer %d", found, h.Writer, w.writer)
			return
		}
	}
	var lastAcked uint64
	for i := len(seqs) - 1; i >= 0; i-- {
		if c.writes[seqs[i]-1].state == acked {
			lastAcked = seqs[i]
			break
		}
	}
	switch {
	case found > lastAcked:
		rep.InDoubt++
	case found < lastAcked:
		for i := len(seqs) - 1; i >= 0 && seqs[i] > found; i-- {
			seq := seqs[i]
			w := &c.writes[seq-1]
			if w.state != acked {
				continue
			}
			l := lost[seq]
			if l == nil {
				l = &LostWrite{Seq: seq, Writer: w.writer, Offset: c.off(w.first), AckedAt: w.ackedAt, Flushed: w.ackNo <= c.flushed[w.run]}
				lost[seq] = l
			}
			l.Blocks++
		}
	}
}
