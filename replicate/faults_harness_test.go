package replicate

// Harness for the fault scenarios (faults_*_test.go): an acknowledged-write checker, a load
// generator that feeds it, and a two-node pair whose secondary can be cut off and whose
// devices inject errors, drop their volatile cache, or hold operations at chosen points.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/blockdev"
	"hast/internal/nv"
)

// ----- acknowledged-write checker -----

// ackBlock is the unit of the checker: every write is one self-describing block.
const ackBlock = 4096

var ackMagic = [8]byte{'H', 'A', 'S', 'T', 'A', 'C', 'K', '1'}

// Block layout: magic (8), data offset (8), sequence (8), crc32 of everything else (4), then
// bytes derived from (sequence, block), so a block torn, misdirected or from another write is
// recognised.
const ackHdr = 28

func ackFill(b []byte, blk int, seq uint64) {
	rng := rand.New(rand.NewPCG(seq, uint64(blk)))
	for i := ackHdr; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	copy(b, ackMagic[:])
	binary.LittleEndian.PutUint64(b[8:], uint64(blk)*ackBlock)
	binary.LittleEndian.PutUint64(b[16:], seq)
	binary.LittleEndian.PutUint32(b[24:], ackCRC(b))
}

func ackCRC(b []byte) uint32 {
	h := crc32.NewIEEE()
	h.Write(b[:24])
	h.Write(b[ackHdr:])
	return h.Sum32()
}

// ackDecode returns the sequence number block blk holds: 0 for a never-written (zero) block.
func ackDecode(b []byte, blk int) (uint64, error) {
	if !bytes.Equal(b[:8], ackMagic[:]) {
		for _, c := range b {
			if c != 0 {
				return 0, fmt.Errorf("block %d holds foreign data", blk)
			}
		}
		return 0, nil
	}
	if off := binary.LittleEndian.Uint64(b[8:]); off != uint64(blk)*ackBlock {
		return 0, fmt.Errorf("block %d holds the block written for offset %d", blk, off)
	}
	if binary.LittleEndian.Uint32(b[24:]) != ackCRC(b) {
		return 0, fmt.Errorf("block %d is torn (crc mismatch)", blk)
	}
	return binary.LittleEndian.Uint64(b[16:]), nil
}

type ackWrite struct {
	seq   uint64
	acked bool
}

type ackState struct {
	writes  []ackWrite // in issue order; a block has one writer, so at most one is in flight
	acked   uint64     // last acknowledged sequence
	flushed uint64     // last sequence acknowledged before a Flush that succeeded was called
}

// ackChecker records, per block, every write issued, which were acknowledged, and which were
// covered by a successful Flush, and checks a device image against that record.
type ackChecker struct {
	mu     sync.Mutex
	seq    uint64
	blocks []ackState
	acks   int
	fails  int
}

func newAckChecker(size int64) *ackChecker {
	return &ackChecker{blocks: make([]ackState, size/ackBlock)}
}

func (c *ackChecker) nblocks() int { return len(c.blocks) }

// begin assigns the next sequence to a write of blk and fills b with its content.
func (c *ackChecker) begin(blk int, b []byte) uint64 {
	c.mu.Lock()
	c.seq++
	seq := c.seq
	c.blocks[blk].writes = append(c.blocks[blk].writes, ackWrite{seq: seq})
	c.mu.Unlock()
	ackFill(b, blk, seq)
	return seq
}

func (c *ackChecker) done(blk int, seq uint64, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.fails++
		return
	}
	st := &c.blocks[blk]
	for i := len(st.writes) - 1; i >= 0; i-- {
		if st.writes[i].seq == seq {
			st.writes[i].acked = true
			break
		}
	}
	if seq > st.acked {
		st.acked = seq
	}
	c.acks++
}

func (c *ackChecker) ackCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.acks
}

// snapshot returns the last acknowledged sequence of every block.
func (c *ackChecker) snapshot() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := make([]uint64, len(c.blocks))
	for i := range c.blocks {
		s[i] = c.blocks[i].acked
	}
	return s
}

func (c *ackChecker) flushedFloor() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := make([]uint64, len(c.blocks))
	for i := range c.blocks {
		s[i] = c.blocks[i].flushed
	}
	return s
}

// flush calls v.Flush and, if it succeeds, records that everything acknowledged before the
// call is covered.
func (c *ackChecker) flush(v Volume) error {
	snap := c.snapshot()
	if err := v.Flush(); err != nil {
		return err
	}
	c.mu.Lock()
	for i, s := range snap {
		if s > c.blocks[i].flushed {
			c.blocks[i].flushed = s
		}
	}
	c.mu.Unlock()
	return nil
}

// issued reports whether seq was ever written to blk.
func (st *ackState) issued(seq uint64) bool {
	for _, w := range st.writes {
		if w.seq == seq {
			return true
		}
	}
	return false
}

// ackSector is the unit a crash may tear a block into: MemDevice keeps or drops each 512-byte
// sector of its cache on its own.
const ackSector = 512

// blockSeq returns the version b holds. A block torn by a crash (its sectors from different
// writes) counts as its oldest sector's version; a sector no write to blk produced is an error.
func (st *ackState) blockSeq(b []byte, blk int) (uint64, error) {
	got, err := ackDecode(b, blk)
	if err == nil {
		if got != 0 && !st.issued(got) {
			return 0, fmt.Errorf("block %d holds sequence %d, never written there", blk, got)
		}
		return got, nil
	}
	versions := make([][]byte, len(st.writes))
	for i, w := range st.writes {
		versions[i] = make([]byte, ackBlock)
		ackFill(versions[i], blk, w.seq)
	}
	zero := make([]byte, ackSector)
	oldest := uint64(math.MaxUint64)
	for s := 0; s < ackBlock; s += ackSector {
		sec := b[s : s+ackSector]
		seq, ok := uint64(0), bytes.Equal(sec, zero)
		for i := len(versions) - 1; i >= 0 && !ok; i-- {
			if bytes.Equal(sec, versions[i][s:s+ackSector]) {
				seq, ok = st.writes[i].seq, true
			}
		}
		if !ok {
			return 0, fmt.Errorf("%w; its sector at +%d is from no write to it", err, s)
		}
		oldest = min(oldest, seq)
	}
	return oldest, nil
}

type ackReport struct {
	Stale      int   // blocks holding an older version than their floor
	LostWrites int   // acknowledged writes newer than what the block holds, up to its floor
	LostBytes  int64 // bytes whose acknowledged content is gone
	Corrupt    int   // blocks holding data no write produced
	errs       []string
}

func (r ackReport) String() string {
	s := fmt.Sprintf("%d stale blocks, %d lost writes (%d bytes), %d corrupt", r.Stale, r.LostWrites, r.LostBytes, r.Corrupt)
	for _, e := range r.errs {
		s += "\n\t" + e
	}
	return s
}

// verify checks the data area image data: each block must hold a version some write produced,
// no older than floor[blk] (an acknowledged sequence: from snapshot or flushedFloor).
func (c *ackChecker) verify(data []byte, floor []uint64) ackReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	var r ackReport
	note := func(format string, args ...any) {
		if len(r.errs) < 8 {
			r.errs = append(r.errs, fmt.Sprintf(format, args...))
		}
	}
	for blk := range c.blocks {
		st := &c.blocks[blk]
		got, err := st.blockSeq(data[blk*ackBlock:(blk+1)*ackBlock], blk)
		if err != nil {
			r.Corrupt++
			note("%v", err)
			continue
		}
		if got >= floor[blk] {
			continue
		}
		r.Stale++
		r.LostBytes += ackBlock
		for _, w := range st.writes {
			if w.acked && w.seq > got && w.seq <= floor[blk] {
				r.LostWrites++
			}
		}
		note("block %d holds sequence %d, acknowledged %d", blk, got, floor[blk])
	}
	return r
}

// staleBlocks lists the blocks of data older than their last acknowledged write.
func (c *ackChecker) staleBlocks(data []byte) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for blk := range c.blocks {
		got, err := c.blocks[blk].blockSeq(data[blk*ackBlock:(blk+1)*ackBlock], blk)
		if err != nil || got < c.blocks[blk].acked {
			out = append(out, blk)
		}
	}
	return out
}

// ----- load -----

type loadSpec struct {
	workers    int
	writes     int // per worker
	flushEvery int // worker 0 flushes after every flushEvery of its writes (0: never)
	lo, hi     int // blocks [lo, hi); hi 0 means every block
	seed       uint64
	stop       <-chan struct{} // if set, the workers also end when it is closed
}

type loadResult struct {
	acked, failed, flushes, flushFails int
	firstErr                           error
}

// runLoad writes self-describing blocks through v. Worker w owns the blocks ≡ w (mod workers),
// so the writes to one block are sequential and "last acknowledged" is well defined.
func runLoad(v Volume, ck *ackChecker, s loadSpec) loadResult {
	hi := s.hi
	if hi == 0 {
		hi = ck.nblocks()
	}
	var mu sync.Mutex
	var res loadResult
	var wg sync.WaitGroup
	for w := 0; w < s.workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(s.seed, uint64(w)))
			own := make([]int, 0, (hi-s.lo)/s.workers+1)
			for b := s.lo; b < hi; b++ {
				if b%s.workers == w {
					own = append(own, b)
				}
			}
			buf := make([]byte, ackBlock)
			var r loadResult
		writes:
			for i := 0; i < s.writes && len(own) > 0; i++ {
				if s.stop != nil {
					select {
					case <-s.stop:
						break writes
					default:
					}
				}
				blk := own[rng.IntN(len(own))]
				seq := ck.begin(blk, buf)
				_, err := v.WriteAt(buf, int64(blk)*ackBlock)
				ck.done(blk, seq, err)
				if err != nil {
					r.failed++
					if r.firstErr == nil {
						r.firstErr = err
					}
				} else {
					r.acked++
				}
				if w == 0 && s.flushEvery > 0 && (i+1)%s.flushEvery == 0 {
					if err := ck.flush(v); err != nil {
						r.flushFails++
					} else {
						r.flushes++
					}
				}
			}
			mu.Lock()
			res.acked += r.acked
			res.failed += r.failed
			res.flushes += r.flushes
			res.flushFails += r.flushFails
			if res.firstErr == nil {
				res.firstErr = r.firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return res
}

// goLoad runs runLoad in the background.
func goLoad(v Volume, ck *ackChecker, s loadSpec) <-chan loadResult {
	ch := make(chan loadResult, 1)
	go func() { ch <- runLoad(v, ck, s) }()
	return ch
}

// waitFor polls cond until it holds; the deadline only guards against a hang.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testLog is silent unless HAST_TEST_LOG is set: then the engines log to stderr, to debug a
// failing scenario (a testing.T writer would panic on logs after the test ended).
func testLog(node string) zerolog.Logger {
	if os.Getenv("HAST_TEST_LOG") == "" {
		return zerolog.Nop()
	}
	return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"}).With().Timestamp().Str("node", node).Logger()
}

// ----- secondary behind a gate -----

// gateTarget is a secondary node that can be taken down (a crash or a cut link: the session
// ends and new connections are refused) and brought back.
type gateTarget struct {
	cfg     Config
	dev     blockdev.Device
	mu      sync.Mutex
	down    bool
	session SecondarySlot
}

func (g *gateTarget) Admit(net.IP, Link) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.down {
		return "Secondary is down.", false
	}
	return "", false
}

func (g *gateTarget) Serve(c1, c2 net.Conn, version uint8, hello *nv.List) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.down {
		g.session.Stop()
		c1.Close()
		c2.Close()
		return
	}
	g.session.Start(g.cfg, g.dev, c1, c2, version, hello, testLog("secondary"), nil)
}

// cut ends the running session and refuses new ones; when it returns the secondary does no
// more I/O.
func (g *gateTarget) cut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.down = true
	g.session.Stop()
}

func (g *gateTarget) restore() {
	g.mu.Lock()
	g.down = false
	g.mu.Unlock()
}

// ----- a device that holds chosen operations -----

// holdDevice blocks the operations matched by arm until release, so a test can stop one leg
// of a request at a precise point.
type holdDevice struct {
	blockdev.Device
	// gate is read-held by every operation from its hold check to its end, and taken by
	// arm: once arm returns, no operation that passed unheld before it is still running.
	// Without it a flush that passed just before arm could reach the disk long after
	// (under -race, after dozens of later writes), which is what a test arming a hold on
	// flushes rules out.
	gate    sync.RWMutex
	mu      sync.Mutex
	match   func(op blockdev.Op, off int64) bool
	fail    error
	entered chan struct{}
	rel     chan struct{}
}

func (h *holdDevice) arm(match func(op blockdev.Op, off int64) bool) {
	h.gate.Lock()
	defer h.gate.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.match, h.fail = match, nil
	h.entered = make(chan struct{}, 64)
	h.rel = make(chan struct{})
}

// release lets held operations go on; they fail with err if it is not nil.
func (h *holdDevice) release(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.match == nil {
		return
	}
	h.match, h.fail = nil, err
	close(h.rel)
}

func (h *holdDevice) hold(op blockdev.Op, off int64) error {
	h.mu.Lock()
	m, ent, rel := h.match, h.entered, h.rel
	h.mu.Unlock()
	if m == nil || !m(op, off) {
		return nil
	}
	ent <- struct{}{}
	<-rel
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fail
}

func (h *holdDevice) ReadAt(p []byte, off int64) (int, error) {
	h.gate.RLock()
	defer h.gate.RUnlock()
	if err := h.hold(blockdev.OpRead, off); err != nil {
		return 0, err
	}
	return h.Device.ReadAt(p, off)
}

func (h *holdDevice) WriteAt(p []byte, off int64) (int, error) {
	h.gate.RLock()
	defer h.gate.RUnlock()
	if err := h.hold(blockdev.OpWrite, off); err != nil {
		return 0, err
	}
	return h.Device.WriteAt(p, off)
}

func (h *holdDevice) Flush() error {
	h.gate.RLock()
	defer h.gate.RUnlock()
	if err := h.hold(blockdev.OpFlush, 0); err != nil {
		return err
	}
	return h.Device.Flush()
}

// ----- the pair -----

const (
	faultDisk   = 16 << 20
	faultExtent = 256 << 10
	faultKeep   = 8
)

// faultPair is a primary and a secondary over loopback. Primary: pmem ← pdev (faults) ←
// phold (holds) ← Primary. Secondary: smem ← sdev ← shold ← RunSecondary.
type faultPair struct {
	t            testing.TB
	cfg          Config
	pmem, smem   *blockdev.MemDevice
	pdev, sdev   *blockdev.FaultDevice
	phold, shold *holdDevice
	sec          *gateTarget
	p            *Primary
	events       chan Event
	// wrap, if set, wraps the primary's device chain when a Primary is opened.
	wrap func(blockdev.Device) blockdev.Device
}

func newFaultMem(t testing.TB, keep uint32) *blockdev.MemDevice {
	t.Helper()
	m := blockdev.NewMemDevice(faultDisk, 512)
	if _, err := blockdev.Create(m, "r0", blockdev.CreateOptions{ExtentSize: faultExtent, KeepDirty: keep}); err != nil {
		t.Fatal(err)
	}
	return m
}

// newFaultPair starts both nodes and waits for the initial full synchronisation.
func newFaultPair(t testing.TB, mode Mode, tweak func(*Config)) *faultPair {
	t.Helper()
	return newFaultPairWith(t, mode, faultKeep, nil, tweak)
}

// newFaultPairWith is newFaultPair with a keepdirty value and a wrapper for the primary's device.
func newFaultPairWith(t testing.TB, mode Mode, keep uint32, wrap func(blockdev.Device) blockdev.Device, tweak func(*Config)) *faultPair {
	t.Helper()
	f := &faultPair{t: t, pmem: newFaultMem(t, keep), smem: newFaultMem(t, keep), events: make(chan Event, 256), wrap: wrap}
	f.pdev = blockdev.NewFaultDevice(f.pmem, 11)
	f.sdev = blockdev.NewFaultDevice(f.smem, 12)
	f.phold = &holdDevice{Device: f.pdev}
	f.shold = &holdDevice{Device: f.sdev}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := Config{Name: "r0", Mode: mode, Timeout: 3 * time.Second, Keepalive: time.Second,
		Reconnect: 50 * time.Millisecond, MetaFlush: true}
	f.sec = &gateTarget{cfg: base, dev: f.shold}
	acc := &Acceptor{Lookup: func(string) (Target, bool) { return f.sec, true }, Known: func(net.IP) bool { return true }, Log: testLog("acceptor")}
	go acc.Serve(ln)
	f.cfg = base
	f.cfg.Remote = ln.Addr().String()
	f.cfg.OnEvent = func(e Event) {
		select {
		case f.events <- e:
		default:
		}
	}
	if tweak != nil {
		tweak(&f.cfg)
	}
	f.open()
	t.Cleanup(func() {
		f.phold.release(nil)
		f.shold.release(nil)
		f.p.Close()
		f.sec.cut()
		ln.Close()
	})
	f.waitSynced()
	return f
}

// open starts a Primary on the primary's device (again, after a Close).
func (f *faultPair) open() {
	f.t.Helper()
	var dev blockdev.Device = f.phold
	if f.wrap != nil {
		dev = f.wrap(dev)
	}
	p, err := OpenPrimary(f.cfg, dev, testLog("primary"))
	if err != nil {
		f.t.Fatal(err)
	}
	f.p = p
}

func (f *faultPair) waitSynced() {
	f.t.Helper()
	waitFor(f.t, "the nodes to be in sync", 20*time.Second, func() bool {
		s := f.p.Status()
		return s.Connected && !s.Syncing && s.DirtyBytes == 0 && !s.Degraded
	})
}

func (f *faultPair) waitConnected(want bool) {
	f.t.Helper()
	waitFor(f.t, fmt.Sprintf("connected=%v", want), 10*time.Second, func() bool { return f.p.Status().Connected == want })
}

// cut takes the secondary down and waits until the primary has noticed.
func (f *faultPair) cut() {
	f.t.Helper()
	f.sec.cut()
	f.waitConnected(false)
}

// drainEvents forgets the hook events seen so far.
func (f *faultPair) drainEvents() {
	for {
		select {
		case <-f.events:
		default:
			return
		}
	}
}

// restoreAndResync brings the secondary back and waits for the synchronisation that follows to
// end (writes may still be going on). It returns the bytes copied and how long it took from
// the restore.
func (f *faultPair) restoreAndResync() (uint64, time.Duration) {
	f.t.Helper()
	f.drainEvents()
	before := f.p.Status().Stats.SyncedBytes
	start := time.Now()
	f.sec.restore()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case e := <-f.events:
			if e == EventSyncDone {
				return f.p.Status().Stats.SyncedBytes - before, time.Since(start)
			}
		case <-deadline:
			f.t.Fatalf("no synchronisation after the secondary came back: %+v", f.p.Status())
		}
	}
}

func (f *faultPair) localOff(m *blockdev.MemDevice) int64 {
	f.t.Helper()
	md, err := blockdev.ReadMetadata(m, "r0")
	if err != nil {
		f.t.Fatal(err)
	}
	return int64(md.LocalOff)
}

// image returns the data area as it is on m (unflushed writes included).
func (f *faultPair) image(m *blockdev.MemDevice) []byte {
	f.t.Helper()
	b := make([]byte, f.p.Size())
	if _, err := m.ReadAt(b, f.localOff(m)); err != nil {
		f.t.Fatal(err)
	}
	return b
}

// volumeImage reads the whole volume through the primary.
func (f *faultPair) volumeImage() []byte {
	f.t.Helper()
	b := make([]byte, f.p.Size())
	const chunk = 64 << 10
	for off := int64(0); off < int64(len(b)); off += chunk {
		end := min(off+chunk, int64(len(b)))
		if _, err := f.p.ReadAt(b[off:end], off); err != nil {
			f.t.Fatalf("read %d+%d through the volume: %v", off, end-off, err)
		}
	}
	return b
}

func (f *faultPair) requireEqualCopies() {
	f.t.Helper()
	a, b := f.image(f.pmem), f.image(f.smem)
	if !bytes.Equal(a, b) {
		for i := 0; i < len(a); i += ackBlock {
			if !bytes.Equal(a[i:min(i+ackBlock, len(a))], b[i:min(i+ackBlock, len(b))]) {
				f.t.Fatalf("copies differ, first at data offset %d (block %d)", i, i/ackBlock)
			}
		}
	}
}

func requireClean(t testing.TB, what string, r ackReport) {
	t.Helper()
	if r.Stale != 0 || r.Corrupt != 0 {
		t.Fatalf("%s: %v", what, r)
	}
}

// reliabilityRow logs one row of docs/RELIABILITY.md (shown with -v).
func reliabilityRow(t *testing.T, scenario string, mode Mode, acked int, lost string, resynced string, took string) {
	t.Logf("RELIABILITY | %s | %s | %d | %s | %s | %s |", scenario, mode, acked, lost, resynced, took)
}

func fmtBytes(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func fmtDur(d time.Duration) string { return d.Round(time.Millisecond).String() }

var allModes = []Mode{ModeFullsync, ModeMemsync, ModeAsync}

var errHeld = errors.New("held operation failed by the test")
