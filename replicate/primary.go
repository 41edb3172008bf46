package replicate

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"hast/blockdev"
	"hast/internal/budget"
	"hast/internal/hist"
	"hast/replicate/proto"
)

// Stats are the counters `hast list` prints (HAST's statistics block).
type Stats struct {
	Reads, Writes, Deletes, Flushes                    uint64
	ActivemapUpdates                                   uint64
	ReadErrors, WriteErrors, DeleteErrors, FlushErrors uint64
	RemoteReads                                        uint64
	SyncedBytes                                        uint64
}

// Status is a primary's state as reported to `hast status` / `list`.
type Status struct {
	Connected  bool
	Degraded   bool
	SplitBrain bool
	Syncing    bool
	SyncSource SyncSource
	DirtyBytes int64
	ExtentSize uint32
	KeepDirty  uint32
	DataSize   int64
	Inflight   int
	Stats      Stats
	Metadata   blockdev.Metadata
	SyncTotal  int64 // bytes to sync when the current sync started
	SyncDone   int64 // bytes synced so far in the current sync
}

// Primary runs a resource on the node where it is primary and serves it as a Volume.
type Primary struct {
	cfg    Config
	log    zerolog.Logger
	dev    blockdev.Device
	base   int64 // localoff
	size   int64
	sect   int
	ext    uint32
	eshift uint

	mdMu sync.Mutex // serialises metadata writes; md itself is under mu
	mu   sync.Mutex
	md   blockdev.Metadata
	am   *blockdev.ActiveMap
	// stale marks extents whose local copy is known bad (a local write failed while the peer's
	// succeeded): reads of them go to the peer. The value says whether the peer has recorded it
	// durably (CmdStale), so that it survives a restart of this node.
	stale map[int]bool
	// staleOnDisk: our metadata's inconsistent mark, set for stale extents, is on disk (until
	// a completed synchronisation clears it). staleDiskErrLogged: writing it failed last time.
	staleOnDisk, staleDiskErrLogged bool
	// bumpWanted counts requests for a background counter bump (bumpSoon).
	bumpWanted atomic.Int32
	// syncRetry is the wait before a failed synchronisation is tried again on the same link.
	syncRetry time.Duration
	// unflushed lists extents the peer acknowledged but has not yet flushed; if the link drops,
	// the peer may lose them with its page cache, so they are resynced.
	unflushed    []bool
	unflushedIdx []int
	syncSrc      SyncSource
	peerCnt      Counters // the peer's counters from the last handshake
	verify       VerifyStatus
	sbReport     *SplitBrainReport
	// resolveWinner: the operator chose this node's data in a split-brain (one-shot).
	resolveWinner atomic.Bool
	splitBrain    bool
	syncing       bool
	syncTotal     int64
	syncDone      atomic.Int64

	pers *persister
	rl   *rangeLock
	lnk  atomic.Pointer[link]
	sem  chan struct{}
	// copies bounds the bytes of async writes' copies held for the peer (AsyncBufferBytes).
	copies *budget.Budget

	st struct {
		reads, writes, deletes, flushes        atomic.Uint64
		readErr, writeErr, deleteErr, flushErr atomic.Uint64
		remoteReads, synced                    atomic.Uint64
	}

	lat Latency

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	linkChg chan struct{}
	closed  atomic.Bool
}

// Latency holds per-stage latency histograms of the data path: whole requests (Write, Read,
// Flush) and the parts of a write (Activemap: waiting for the bitmap to be durable; Local: the
// local leg; Peer: waiting for the peer's acknowledgement after the local leg finished).
type Latency struct {
	Write, Read, Flush, Activemap, Local, Peer hist.Histogram
}

// LatencySnapshot returns the histograms by stage name.
func (p *Primary) LatencySnapshot() map[string]hist.Snapshot {
	return map[string]hist.Snapshot{
		"write": p.lat.Write.Snapshot(), "read": p.lat.Read.Snapshot(), "flush": p.lat.Flush.Snapshot(),
		"activemap": p.lat.Activemap.Snapshot(), "local": p.lat.Local.Snapshot(), "peer": p.lat.Peer.Snapshot(),
	}
}

// OpenPrimary reads the resource's metadata and activemap from dev and starts serving: the
// returned Primary is a Volume at once and connects to the peer in the background (retrying
// every Reconnect interval), synchronising dirty extents after each connection.
func OpenPrimary(cfg Config, dev blockdev.Device, log zerolog.Logger) (*Primary, error) {
	cfg = cfg.withDefaults()
	md, err := blockdev.ReadMetadata(dev, cfg.Name)
	if err != nil {
		return nil, err
	}
	if md.ExtentSize == 0 || md.ExtentSize&(md.ExtentSize-1) != 0 {
		return nil, fmt.Errorf("resource %s: extent size %d is not a power of two", cfg.Name, md.ExtentSize)
	}
	am, err := blockdev.NewActiveMap(int64(md.DataSize), md.ExtentSize, int(md.KeepDirty), dev.SectorSize())
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", cfg.Name, err)
	}
	bm, err := blockdev.ReadBitmap(dev, md)
	if err != nil {
		return nil, err
	}
	if err := am.Load(bm); err != nil {
		return nil, fmt.Errorf("resource %s: load activemap: %w", cfg.Name, err)
	}
	p := &Primary{
		cfg: cfg, log: log.With().Str("resource", cfg.Name).Str("role", "primary").Logger(),
		dev: dev, base: int64(md.LocalOff), size: int64(md.DataSize), sect: dev.SectorSize(),
		ext: md.ExtentSize, eshift: uint(bits.TrailingZeros32(md.ExtentSize)),
		md: *md, am: am, stale: map[int]bool{},
		unflushed: make([]bool, am.Extents()),
		sem:       make(chan struct{}, MaxInflight),
		copies:    budget.New(cfg.asyncBuffer),
		linkChg:   make(chan struct{}, 1),
	}
	p.rl = newRangeLock(am.Extents(), p.eshift)
	if p.md.ResUID == 0 {
		p.md.LocalCnt, p.md.RemoteCnt = 0, 0
	}
	p.md.PrevRole = "primary"
	// Extents the last primary could not write are dirty in our map now: as primary we push
	// them, since ours is the good copy.
	p.md.PrimaryStale = false
	if err := p.writeMetadata(); err != nil {
		return nil, err
	}
	p.pers = newPersister(p, bm)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if n, _ := am.Dirty(); n > 0 {
		p.log.Info().Int("extents", n).Msg("dirty extents from the previous run will be synchronised")
	}
	p.wg.Add(1)
	go p.guard()
	return p, nil
}

// Close stops serving: the link is closed, the activemap written, and the device left open for
// the caller to close. In-flight requests fail with ErrNotPrimary.
func (p *Primary) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	p.cancel()
	if l := p.lnk.Load(); l != nil {
		l.close()
	}
	p.wg.Wait()
	// Wait for in-flight writes so their extents are settled in the map we write last.
	for i := 0; i < cap(p.sem); i++ {
		p.sem <- struct{}{}
	}
	err := p.pers.settle()
	p.pers.close()
	return err
}

func (p *Primary) Size() int64     { return p.size }
func (p *Primary) SectorSize() int { return p.sect }

func (p *Primary) check(off int64, n int) error {
	if p.closed.Load() {
		return ErrNotPrimary
	}
	if off < 0 || n < 0 || off+int64(n) > p.size || off%int64(p.sect) != 0 || n%p.sect != 0 {
		return fmt.Errorf("%w: offset %d length %d (size %d, sector %d)", ErrRange, off, n, p.size, p.sect)
	}
	return nil
}

func (p *Primary) writeBitmap(img []byte) error {
	md := p.metadata()
	if sw, ok := p.dev.(blockdev.SyncWriter); ok && p.cfg.MetaFlush {
		// One durable write of the map area instead of write + fdatasync of the whole component.
		area := make([]byte, md.MapSize())
		copy(area, img)
		if _, err := sw.WriteAtSync(area, blockdev.MetadataSize); err != nil {
			p.st.writeErr.Add(1)
			return fmt.Errorf("write activemap: %w", err)
		}
		return nil
	}
	if err := blockdev.WriteBitmap(p.dev, &md, img); err != nil {
		p.st.writeErr.Add(1)
		return fmt.Errorf("write activemap: %w", err)
	}
	if p.cfg.MetaFlush {
		if err := p.dev.Flush(); err != nil {
			p.st.flushErr.Add(1)
			return fmt.Errorf("flush activemap: %w", err)
		}
	}
	return nil
}

func (p *Primary) metadata() blockdev.Metadata {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.md
}

// writeMetadata persists the current in-memory metadata durably.
func (p *Primary) writeMetadata() error {
	p.mdMu.Lock()
	defer p.mdMu.Unlock()
	md := p.metadata()
	if err := blockdev.SyncMetadata(p.dev, &md); err != nil {
		return fmt.Errorf("resource %s: %w", p.cfg.Name, err)
	}
	return nil
}

// bumpDisconnected applies HAST's counter rule for writes made without the peer (§11.1 rule 2),
// using the persisted last-known peer counter so a restarted primary still bumps (§13 item 6).
func (p *Primary) bumpDisconnected() error {
	p.mu.Lock()
	bump := p.md.LocalCnt == p.md.PeerRemoteCnt
	if bump {
		p.md.LocalCnt++
	}
	p.mu.Unlock()
	if !bump {
		return nil
	}
	return p.writeMetadata()
}

// ----- writes -----

// wop is one frontend write or discard on its way through both legs.
type wop struct {
	p        *Primary
	off, n   int64
	cmd      uint8
	buf      []byte // owned copy for the remote leg (async mode), see copyForPeer
	held     int64  // bytes of p.copies charged for buf
	pendAck  atomic.Int32
	pendDone atomic.Int32
	remErr   atomic.Bool
	remote   sync.WaitGroup // the remote requests' final replies
	sent     bool
	lnk      *link // the link the remote leg went on (nil: not sent)
	localErr error
	ack      chan struct{}
}

func (w *wop) ackOne() {
	if w.pendAck.Add(-1) == 0 {
		close(w.ack)
	}
}

func (w *wop) legDone() {
	if w.pendDone.Add(-1) == 0 {
		w.p.finishWrite(w)
	}
}

// WriteAt implements Volume.
func (p *Primary) WriteAt(b []byte, off int64) (int, error) {
	if err := p.check(off, len(b)); err != nil {
		return 0, err
	}
	if len(b) == 0 {
		return 0, nil
	}
	p.st.writes.Add(1)
	defer p.lat.Write.Since(time.Now())
	if err := p.mutate(proto.CmdWrite, b, off, int64(len(b))); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Discard implements Volume.
func (p *Primary) Discard(off, length int64) error {
	if err := p.check(off, int(length)); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	p.st.deletes.Add(1)
	return p.mutate(proto.CmdDelete, nil, off, length)
}

func (p *Primary) mutate(cmd uint8, b []byte, off, n int64) error {
	select {
	case p.sem <- struct{}{}:
	case <-p.ctx.Done():
		return ErrNotPrimary
	}
	p.rl.lockWrite(off, n)
	p.mu.Lock()
	l := p.lnk.Load()
	if l == nil && p.anyStale(off, n) {
		// Part of this range is only right on the peer; a partial write here could never be
		// merged with it. Refuse rather than acknowledge something we cannot keep.
		p.mu.Unlock()
		p.rl.unlockWrite(off, n)
		<-p.sem
		return fmt.Errorf("write %d+%d: the local copy of this range is stale and the peer is unreachable: %w", off, n, ErrDisconnected)
	}
	must := p.am.WriteStart(off, n)
	p.mu.Unlock()
	fail := func(err error) error {
		p.mu.Lock()
		p.am.WriteDone(off, n)
		p.mu.Unlock()
		p.rl.unlockWrite(off, n)
		<-p.sem
		return err
	}
	var lerr error
	if must {
		t := time.Now()
		if lerr = p.pers.now(); lerr != nil && l == nil {
			p.st.writeErr.Add(1)
			return fail(lerr)
		}
		// Connected, a disk that cannot record the extent fails the local leg only: the peer
		// may still take the write, and then records that our copy is stale (recordStale).
		p.lat.Activemap.Since(t)
	}
	if l == nil {
		if err := p.bumpDisconnected(); err != nil {
			return fail(err)
		}
	}
	w := &wop{p: p, off: off, n: n, cmd: cmd, lnk: l, ack: make(chan struct{})}
	mode := p.cfg.Mode
	if l != nil && mode == ModeMemsync && l.version < 2 {
		mode = ModeFullsync // a protocol-1 peer cannot acknowledge receipt
	}
	data := b
	var reqs []*rreq
	if l != nil {
		if mode == ModeAsync && cmd == proto.CmdWrite {
			if !p.copyForPeer(w, b) {
				return fail(ErrNotPrimary)
			}
			data = w.buf
		}
		reqs = p.splitRequests(cmd, data, off, n, mode, w)
	}
	w.sent = l != nil
	ackNeeded := int32(0)
	if l != nil && mode != ModeAsync {
		ackNeeded = int32(len(reqs))
	}
	w.pendAck.Store(ackNeeded + 1) // +1: the local leg
	w.pendDone.Store(int32(len(reqs)) + 1)
	w.remote.Add(len(reqs))
	if l != nil {
		l.submit(reqs...)
	}
	tl := time.Now()
	switch {
	case lerr != nil:
	case cmd == proto.CmdWrite:
		_, lerr = p.dev.WriteAt(b, p.base+off)
	default:
		lerr = p.dev.Discard(p.base+off, n)
	}
	tp := time.Now()
	p.lat.Local.Observe(tp.Sub(tl))
	w.localErr = lerr
	w.ackOne()
	<-w.ack
	if ackNeeded > 0 {
		p.lat.Peer.Since(tp)
	}
	err := p.ackOutcome(w, mode)
	w.legDone()
	if lerr != nil {
		if cmd == proto.CmdWrite {
			p.st.writeErr.Add(1)
		} else {
			p.st.deleteErr.Add(1)
		}
		p.log.Error().Err(lerr).Int64("offset", off).Int64("length", n).Msg("local write failed")
		if err != nil {
			return fmt.Errorf("write %d+%d: %w", off, n, err)
		}
	}
	return nil
}

func (p *Primary) splitRequests(cmd uint8, data []byte, off, n int64, mode Mode, w *wop) []*rreq {
	memsync := mode == ModeMemsync && cmd == proto.CmdWrite
	step := w.lnk.maxIO
	if cmd == proto.CmdDelete {
		step = n
	}
	reqs := make([]*rreq, 0, (n+step-1)/step)
	for o := int64(0); o < n; o += step {
		ln := min(step, n-o)
		r := &rreq{cmd: cmd, off: off + o, length: ln, memsync: memsync, ctx: w}
		if data != nil {
			r.data = data[o : o+ln]
		}
		// Each request acknowledges once: on its memsync "received" reply or on its final reply,
		// whichever comes first (a link failure may race with a late "received").
		r.onRecv = func(r *rreq) {
			if r.acked.CompareAndSwap(false, true) {
				r.ctx.(*wop).ackOne()
			}
		}
		async := mode == ModeAsync
		r.onDone = func(r *rreq, err error) {
			w := r.ctx.(*wop)
			if err != nil {
				w.remErr.Store(true)
			}
			w.remote.Done()
			if !async && r.acked.CompareAndSwap(false, true) {
				w.ackOne()
			}
			w.legDone()
		}
		reqs = append(reqs, r)
	}
	return reqs
}

// finishWrite runs when both legs are done: the extent is cleared unless the remote leg failed
// or never ran, in which case it stays dirty for the next synchronisation.
func (p *Primary) finishWrite(w *wop) {
	if w.buf != nil {
		p.dropCopy(w)
	}
	remoteFailed := w.sent && w.remErr.Load()
	p.mu.Lock()
	// A link that went down while the local leg was still running has already turned its
	// unflushed extents dirty; this one must be made dirty here, or a peer that lost power
	// would be missing it for good.
	if !w.sent || remoteFailed || p.lnk.Load() != w.lnk {
		p.am.NeedSync(w.off, w.n)
	} else {
		p.markUnflushed(w.off, w.n)
	}
	if w.localErr != nil && w.sent && !remoteFailed {
		// Only the peer has it: pull it back (async reported the write failed, so nothing
		// acknowledged depends on it, but the copies must agree).
		p.markStaleLocked(w.off, w.n)
	}
	changed := p.am.WriteDone(w.off, w.n)
	l := p.lnk.Load()
	p.mu.Unlock()
	if changed {
		p.pers.later()
	}
	if remoteFailed {
		// memsync and async may have acknowledged it before the peer failed it.
		p.bumpSoon()
	}
	if (w.localErr != nil || remoteFailed) && l != nil {
		// Resynchronise now, while connected; a peer that keeps failing is retried with backoff.
		p.startSync(l)
	}
	p.rl.unlockWrite(w.off, w.n)
	<-p.sem
}

// copyForPeer gives w a copy of b for its remote leg: in async mode the caller gets its buffer
// back once the local disk has the data, long before the peer does. The copy is charged to
// p.copies first, so a peer that falls behind makes writers wait here instead of growing memory
// (AsyncBufferBytes). It returns false, holding nothing, when the primary is closing.
func (p *Primary) copyForPeer(w *wop, b []byte) bool {
	n := min(int64(len(b)), p.copies.Size())
	if !p.copies.Acquire(n, p.ctx.Done()) {
		return false
	}
	if p.ctx.Err() != nil {
		// Granted by the link's shutdown, which Close starts after cancelling: give up too.
		p.copies.Release(n)
		return false
	}
	w.held = n
	w.buf = getBuf(len(b))
	copy(w.buf, b)
	return true
}

// dropCopy gives back w's copy once both legs are done (finishWrite). By then every remote
// request made of it (splitRequests) has had its onDone, and nothing else refers to the copy:
// the local leg writes from the caller's buffer, nothing resubmits a request, and
// synchronisation reads the disks. The budget is released in every case. The buffer goes back
// to the pool only if each of those requests got a successful reply: the peer has received the
// whole frame then, so the link is done with it — its encoding (checksum, compression) comes
// before the write, ordered before the reply by l.batches (see sendLocked), and the kernel has
// copied the bytes out before the peer could have them (a peer that replied to a frame before
// reading it would read whatever the buffer held next, as with the caller's buffer in the other
// modes, which is reused once WriteAt returns). A request failed by the link's loss may
// still be in the middle of being encoded or written by a send under way, so its copy is left to
// the garbage collector.
func (p *Primary) dropCopy(w *wop) {
	if !w.remErr.Load() {
		putBuf(w.buf)
	}
	w.buf = nil
	p.copies.Release(w.held)
}

func (p *Primary) markUnflushed(off, n int64) {
	first, last := p.rl.span(off, n)
	for e := first; e <= last; e++ {
		if !p.unflushed[e] {
			p.unflushed[e] = true
			p.unflushedIdx = append(p.unflushedIdx, e)
		}
	}
}

// ----- reads -----

// ReadAt implements Volume.
func (p *Primary) ReadAt(b []byte, off int64) (int, error) {
	if err := p.check(off, len(b)); err != nil {
		return 0, err
	}
	if len(b) == 0 {
		return 0, nil
	}
	p.st.reads.Add(1)
	defer p.lat.Read.Since(time.Now())
	n := int64(len(b))
	first, last := p.rl.span(off, n)
	p.mu.Lock()
	remote := false
	for e := first; e <= last; e++ {
		if _, bad := p.stale[e]; bad {
			remote = true
			break
		}
		if p.syncSrc == SyncSrcSecondary {
			if se, _, ok := p.am.NextSync(e); ok && se == e {
				remote = true
				break
			}
		}
	}
	l := p.lnk.Load()
	p.mu.Unlock()
	var lerr error
	if !remote {
		if _, lerr = p.dev.ReadAt(b, p.base+off); lerr == nil {
			return len(b), nil
		}
		p.st.readErr.Add(1)
		p.log.Error().Err(lerr).Int64("offset", off).Int("length", len(b)).Msg("local read failed; reading from the peer")
	}
	if l == nil {
		if lerr == nil {
			lerr = fmt.Errorf("local copy of %d+%d is stale: %w", off, n, ErrDisconnected)
		}
		return 0, fmt.Errorf("read %d+%d: %w", off, n, lerr)
	}
	p.st.remoteReads.Add(1)
	if err := p.remoteRead(l, b, off); err != nil {
		return 0, fmt.Errorf("read %d+%d from the peer: %w", off, n, err)
	}
	return len(b), nil
}

func (p *Primary) remoteRead(l *link, b []byte, off int64) error {
	n := int64(len(b))
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	for o := int64(0); o < n; o += l.maxIO {
		ln := min(l.maxIO, n-o)
		r := &rreq{cmd: proto.CmdRead, off: off + o, length: ln, data: b[o : o+ln]}
		wg.Add(1)
		r.onDone = func(r *rreq, err error) {
			if err != nil {
				firstErr.CompareAndSwap(nil, &err)
			}
			wg.Done()
		}
		l.submit(r)
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return *e
	}
	return nil
}

// ----- flush -----

// Flush implements Volume: local fdatasync and a FLUSH on the peer, in parallel. Extents the
// peer acknowledged before the flush stop counting as unflushed once it succeeds.
func (p *Primary) Flush() error {
	if p.closed.Load() {
		return ErrNotPrimary
	}
	p.st.flushes.Add(1)
	defer p.lat.Flush.Since(time.Now())
	p.mu.Lock()
	l := p.lnk.Load()
	var taken []int
	if l != nil {
		taken = p.unflushedIdx
		p.unflushedIdx = nil
		// Unmark at once: a write the peer acknowledges while this flush is on its way may
		// reach the peer's disk after it, and must mark its extent again.
		for _, e := range taken {
			p.unflushed[e] = false
		}
	}
	p.mu.Unlock()
	var rerr error
	var wg sync.WaitGroup
	if l != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rerr = l.do(&rreq{cmd: proto.CmdFlush})
		}()
	}
	lerr := p.dev.Flush()
	wg.Wait()
	must := false
	p.mu.Lock()
	for _, e := range taken {
		if rerr == nil {
			continue
		}
		off, n := p.am.ExtentRange(e)
		if p.lnk.Load() == l {
			p.markUnflushed(off, n) // a later flush, or the link's loss, settles it
		} else if p.am.NeedSync(off, n) {
			must = true // the link's clean-up has run without these
		}
	}
	p.mu.Unlock()
	if must {
		p.pers.later()
	}
	if lerr != nil {
		p.st.flushErr.Add(1)
		if l == nil || rerr != nil {
			return fmt.Errorf("flush: %w", lerr)
		}
		// HAST's rule for writes holds for flushes: the peer has every acknowledged write
		// durably. Ours may have lost any write since the last good flush, so the whole
		// local copy is stale from now on and is served from, and resynchronised from, the peer.
		if err := p.recordStale(l, 0, p.size); err != nil {
			return fmt.Errorf("flush: %w (and %v)", lerr, err)
		}
		p.log.Error().Err(lerr).Msg("local flush failed; the local copy is stale and served from the peer until it is resynchronised")
		p.startSync(l)
	}
	if rerr != nil {
		p.log.Warn().Err(rerr).Msg("remote flush failed; unflushed extents will be resynchronised")
	}
	return nil
}

// ----- status -----

// Status reports the current state.
func (p *Primary) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, dirty := p.am.Dirty()
	s := Status{
		Connected:  p.lnk.Load() != nil,
		SplitBrain: p.splitBrain,
		Syncing:    p.syncing,
		SyncSource: p.syncSrc,
		DirtyBytes: dirty,
		ExtentSize: p.ext,
		KeepDirty:  p.md.KeepDirty,
		DataSize:   p.size,
		Inflight:   len(p.sem),
		Metadata:   p.md,
		SyncTotal:  p.syncTotal,
		SyncDone:   p.syncDone.Load(),
	}
	s.Degraded = !s.Connected || len(p.stale) > 0 || dirty > 0
	s.Stats = Stats{
		Reads: p.st.reads.Load(), Writes: p.st.writes.Load(), Deletes: p.st.deletes.Load(), Flushes: p.st.flushes.Load(),
		ReadErrors: p.st.readErr.Load(), WriteErrors: p.st.writeErr.Load(), DeleteErrors: p.st.deleteErr.Load(),
		FlushErrors: p.st.flushErr.Load(), RemoteReads: p.st.remoteReads.Load(), SyncedBytes: p.st.synced.Load(),
	}
	p.pers.mu.Lock()
	s.Stats.ActivemapUpdates = p.pers.updates
	p.pers.mu.Unlock()
	return s
}

// errnoOf extracts an errno for remote replies.
func errnoOf(err error) syscall.Errno {
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return syscall.EIO
}

var _ Volume = (*Primary)(nil)

func (p *Primary) sleep(d time.Duration) bool {
	select {
	case <-p.ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
