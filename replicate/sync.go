package replicate

import (
	"fmt"
	"sync"
	"time"

	"hast/replicate/proto"
)

// syncFlushBatch is how many copied extents share one flush on the peer before they are cleared.
const syncFlushBatch = 16

// syncFlushInterval bounds how long a copied extent waits for its batch's flush.
const syncFlushInterval = 100 * time.Millisecond

// syncWorkers is how many extents are copied at once; several chunks in flight keep both the
// disks and the link busy where HAST copies one MAXPHYS chunk per round trip.
const syncWorkers = 4

// syncLoop copies every extent marked for synchronisation in the direction the handshake decided,
// then applies HAST's counter rule for a completed sync (§11.1 rule 4). It ends early when the
// link it was started for goes away; the extents not copied stay marked (and on disk) and the
// next connection resumes with them.
// startSync runs a synchronisation pass on l unless one is running.
func (p *Primary) startSync(l *link) {
	p.mu.Lock()
	if p.syncing || p.lnk.Load() != l {
		p.mu.Unlock()
		return
	}
	p.syncing = true
	p.mu.Unlock()
	p.wg.Add(1)
	go p.syncLoop(l)
}

func (p *Primary) syncLoop(l *link) {
	defer p.wg.Done()
	p.mu.Lock()
	pending := p.am.SyncPending()
	src := p.syncSrc
	p.syncing = true
	p.syncTotal = 0
	for e, _, ok := p.am.NextSync(0); ok; e, _, ok = p.am.NextSync(e + 1) {
		_, n := p.am.ExtentRange(e)
		p.syncTotal += n
	}
	p.syncDone.Store(0)
	p.mu.Unlock()
	start := time.Now()
	if pending > 0 {
		p.log.Info().Int64("bytes", p.syncTotal).Str("source", src.String()).
			Msgf("Synchronization started. %d bytes to go.", p.syncTotal)
		p.cfg.OnEvent(EventSyncStart)
	} else {
		p.log.Info().Msg("Nodes are in sync.")
	}

	var (
		cmu     sync.Mutex
		cursor  int
		claimed = map[int]bool{}
		failed  error
	)
	claim := func() (int, uint64, bool) {
		cmu.Lock()
		defer cmu.Unlock()
		if failed != nil {
			return 0, 0, false
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		for pass := 0; pass < 2; pass++ {
			e, ep, ok := p.am.NextSync(cursor)
			for ok && claimed[e] {
				e, ep, ok = p.am.NextSync(e + 1)
			}
			if ok {
				claimed[e] = true
				cursor = e + 1
				return e, ep, true
			}
			cursor = 0
		}
		return 0, 0, false
	}
	release := func(e int, err error) {
		cmu.Lock()
		delete(claimed, e)
		if err != nil && failed == nil {
			failed = err
		}
		cmu.Unlock()
	}
	// Copied extents are cleared in batches, each after one FLUSH on the peer: the peer
	// acknowledged the copies into its cache only, and once an extent is clear here nothing
	// remembers it, so it must be durable there first (a peer losing power after an interrupted
	// sync would otherwise miss it for good). One flush per batch instead of per extent keeps
	// the resync at disk speed. Extents stay claimed until cleared so no one copies them twice.
	type copied struct {
		e     int
		epoch uint64
	}
	var (
		bmu    sync.Mutex
		copies []copied
	)
	clearBatch := func(batch []copied) {
		var err error
		if len(batch) > 0 {
			if err = l.do(&rreq{cmd: proto.CmdFlush}); err != nil {
				err = fmt.Errorf("sync: flush on the peer: %w", err)
			}
		}
		changed := false
		if err == nil {
			p.mu.Lock()
			for _, c := range batch {
				if p.am.SyncDone(c.e, c.epoch) {
					changed = true
				}
			}
			p.mu.Unlock()
		}
		if changed {
			p.pers.later()
		}
		for _, c := range batch {
			release(c.e, err)
		}
	}
	flushPending := func(force bool) {
		bmu.Lock()
		if len(copies) == 0 || (!force && len(copies) < syncFlushBatch) {
			bmu.Unlock()
			return
		}
		batch := copies
		copies = nil
		bmu.Unlock()
		clearBatch(batch)
	}
	for {
		// Copies do not wait long for their batch: progress (dirty bytes) and a resume after a
		// restart stay close to what was really copied.
		tickStop, tickDone := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(tickDone)
			t := time.NewTicker(syncFlushInterval)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					flushPending(true)
				case <-tickStop:
					return
				}
			}
		}()
		var wg sync.WaitGroup
		for range syncWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, l.maxIO)
				for {
					e, epoch, ok := claim()
					if !ok {
						return
					}
					if err := p.syncExtent(l, src, e, buf, start); err != nil {
						release(e, err)
						continue
					}
					bmu.Lock()
					copies = append(copies, copied{e, epoch})
					bmu.Unlock()
					flushPending(false)
				}
			}()
		}
		wg.Wait()
		close(tickStop)
		<-tickDone
		flushPending(true)
		p.mu.Lock()
		left := p.am.SyncPending()
		p.mu.Unlock()
		cmu.Lock()
		stop := failed != nil
		cmu.Unlock()
		if stop || left == 0 || p.lnk.Load() != l {
			break
		}
		// Extents re-marked while we ran (a failed remote leg): go round again.
		if !p.sleep(10 * time.Millisecond) {
			break
		}
	}

	done := p.syncDone.Load()
	defer func() {
		// A link that came up while this pass was ending found it still running: give it its own.
		if cur := p.lnk.Load(); cur != nil && cur != l {
			p.startSync(cur)
		}
	}()
	p.mu.Lock()
	p.syncing = false
	ok := failed == nil && p.am.SyncPending() == 0 && p.lnk.Load() == l
	if ok {
		// §11.1 rule 4: the nodes are in sync; take the counters that say so.
		p.md.LocalCnt = p.peerCnt.RemoteCnt
		p.md.RemoteCnt = p.peerCnt.LocalCnt
		p.md.PeerRemoteCnt = p.peerCnt.RemoteCnt
		p.md.Inconsistent = false
		p.staleOnDisk = false
		p.syncSrc = SyncSrcUndef
		p.syncRetry = 0
	}
	p.mu.Unlock()
	if !ok {
		if pending > 0 || done > 0 {
			p.log.Warn().Err(failed).Msgf("Synchronization interrupted after %v. %d bytes synchronized so far.", time.Since(start).Round(time.Millisecond), done)
			p.cfg.OnEvent(EventSyncIntr)
		}
		p.retrySync(l)
		return
	}
	if err := p.writeMetadata(); err != nil {
		p.log.Error().Err(err).Msg("unable to record that the nodes are in sync")
		return
	}
	if err := p.pers.settle(); err != nil {
		p.log.Error().Err(err).Msg("unable to write activemap after sync")
	}
	if l.features&FeatSyncDone != 0 {
		if err := l.do(&rreq{cmd: CmdSyncDone}); err != nil {
			p.log.Warn().Err(err).Msg("unable to tell the peer its copy is consistent")
		}
	}
	if done > 0 {
		el := time.Since(start)
		p.log.Info().Int64("bytes", done).Dur("took", el).
			Msgf("Synchronization complete. %d bytes synchronized in %v (%.1f MiB/sec).", done, el.Round(time.Millisecond), float64(done)/el.Seconds()/(1<<20))
		p.cfg.OnEvent(EventSyncDone)
	}
}

// syncExtent copies one extent chunk by chunk, each chunk under the extent's sync lock. An
// extent stale here is pulled under one hold of the lock, and stops being stale only once it
// is whole and durable: a write failing locally between two chunks would otherwise be lost
// when the mark goes.
func (p *Primary) syncExtent(l *link, src SyncSource, e int, buf []byte, start time.Time) error {
	p.mu.Lock()
	off, n := p.am.ExtentRange(e)
	_, stale := p.stale[e]
	p.mu.Unlock()
	if stale {
		// Only the peer has this extent right (a local write failed): pull it whatever the
		// handshake decided for the device as a whole.
		src = SyncSrcSecondary
		p.rl.lockSync(e)
		defer p.rl.unlockSync(e)
	}
	for o := int64(0); o < n; o += l.maxIO {
		if p.lnk.Load() != l {
			return ErrDisconnected
		}
		ln := min(l.maxIO, n-o)
		if !stale {
			p.rl.lockSync(e)
		}
		err := p.copyChunk(l, src, buf[:ln], off+o)
		if !stale {
			p.rl.unlockSync(e)
		}
		if err != nil {
			return fmt.Errorf("sync extent %d at %d: %w", e, off+o, err)
		}
		total := p.syncDone.Add(ln)
		p.st.synced.Add(uint64(ln))
		if p.cfg.SyncRate > 0 {
			// Stay on the line total/rate: sleep off whatever we are ahead of it.
			ahead := time.Duration(float64(total)/float64(p.cfg.SyncRate)*float64(time.Second)) - time.Since(start)
			if ahead > 0 && !p.sleep(ahead) {
				return ErrNotPrimary
			}
		}
	}
	if stale {
		return p.unstale(l, e)
	}
	return nil
}

// copyChunk copies one chunk of data-area range [off, off+len(b)) from src to the other node.
func (p *Primary) copyChunk(l *link, src SyncSource, b []byte, off int64) error {
	ln := int64(len(b))
	if src == SyncSrcSecondary {
		if err := l.do(&rreq{cmd: proto.CmdRead, off: off, length: ln, data: b}); err != nil {
			return err
		}
		if _, err := p.dev.WriteAt(b, p.base+off); err != nil {
			p.st.writeErr.Add(1)
			return err
		}
		return nil
	}
	if _, err := p.dev.ReadAt(b, p.base+off); err != nil {
		p.st.readErr.Add(1)
		return err
	}
	return l.do(&rreq{cmd: proto.CmdWrite, off: off, length: ln, data: b})
}

// Backoff of retrySync.
const (
	syncRetryMin = 100 * time.Millisecond
	syncRetryMax = 5 * time.Second
)

// retrySync schedules another pass on l after one that ended with extents left while l is up:
// a peer whose disk fails for a while is retried, with a backoff, instead of staying
// unsynchronised while connected. A new link starts its own pass.
func (p *Primary) retrySync(l *link) {
	p.mu.Lock()
	if p.lnk.Load() != l || p.am.SyncPending() == 0 {
		p.mu.Unlock()
		return
	}
	p.syncRetry = min(max(2*p.syncRetry, syncRetryMin), syncRetryMax)
	d := p.syncRetry
	p.mu.Unlock()
	time.AfterFunc(d, func() { p.startSync(l) })
}
