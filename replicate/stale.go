package replicate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"hast/blockdev"
)

// Writes that complete on one node only. HAST's rule is that a write succeeds when any leg
// does; what makes that rule safe is that the node which missed the write knows it, durably,
// before the write is acknowledged:
//
//   - the peer missed it (error reply, timeout, link lost with the write in flight): the extent
//     is marked for synchronisation and localcnt is bumped (HAST's rule 2 for a write made
//     without the peer), so that a peer promoted meanwhile meets a split-brain at the next
//     handshake instead of looking like the newer copy (wroteWithoutPeer, bumpSoon);
//   - our disk missed it (local write or flush failed, the peer's succeeded): the extent is
//     stale here. Reads go to the peer, and the peer records the extent durably (CmdStale) so
//     that a restarted primary, which has lost its in-memory set and may not have been able to
//     write its own metadata, pulls the extent back instead of pushing its stale blocks over the
//     only good copy (recordStale). The secondary returns its records in the handshake
//     (x_pull_map) until the primary has pulled and flushed the extents (CmdStaleClear).

// CmdStale tells the secondary that the primary failed to write a range its copy holds: record
// the extents durably as "pull from here" (our extension).
const CmdStale uint8 = 18

// CmdStaleClear tells the secondary that the primary has pulled the range back and flushed it.
const CmdStaleClear uint8 = 19

// errNoStaleRecord: neither node could record that the local copy is stale.
var errNoStaleRecord = errors.New("replicate: the local copy is stale and neither node could record it")

// ackOutcome decides, once the legs that acknowledge are done, what the writer is told. Any
// good leg makes a success (in async mode the local leg alone decides), but only after the
// node that missed the write has recorded it.
func (p *Primary) ackOutcome(w *wop, mode Mode) error {
	lerr := w.localErr
	if w.lnk == nil {
		return lerr // counted before the write (mutate)
	}
	if lerr != nil && mode == ModeMemsync {
		// "Received" is no good leg when ours failed: the peer may still fail to write it.
		w.remote.Wait()
	}
	remoteOK := mode != ModeAsync && !w.remErr.Load()
	switch {
	case lerr == nil && (remoteOK || mode == ModeAsync):
		// A later failure of the peer's leg is handled by finishWrite.
		return nil
	case lerr == nil:
		return p.wroteWithoutPeer(w.off, w.n)
	case remoteOK:
		return p.recordStale(w.lnk, w.off, w.n)
	}
	return lerr
}

// wroteWithoutPeer runs before a write that only our disk took is acknowledged: the extent is
// kept for synchronisation and localcnt bumped, both durably.
func (p *Primary) wroteWithoutPeer(off, n int64) error {
	p.mu.Lock()
	must := p.am.NeedSync(off, n)
	p.mu.Unlock()
	if must {
		if err := p.pers.now(); err != nil {
			return fmt.Errorf("the peer missed the write and the activemap could not record it: %w", err)
		}
	}
	if err := p.bumpDisconnected(); err != nil {
		return fmt.Errorf("the peer missed the write and the counter could not record it: %w", err)
	}
	return nil
}

// bumpSoon bumps localcnt in the background, for a peer failure found after the write was
// acknowledged (memsync after "received", async). Requests made while a bump runs are served
// by one more round.
func (p *Primary) bumpSoon() {
	if p.bumpWanted.Add(1) != 1 {
		return
	}
	go func() {
		for {
			n := p.bumpWanted.Load()
			if err := p.bumpDisconnected(); err != nil {
				p.log.Error().Err(err).Msg("unable to record that the peer missed acknowledged writes")
			}
			if p.bumpWanted.CompareAndSwap(n, 0) {
				return
			}
		}
	}()
}

// markStaleLocked marks the extents of a range stale: served from the peer and synchronised
// from it. It returns whether the peer has already recorded all of them (p.mu held).
func (p *Primary) markStaleLocked(off, n int64) (recorded bool) {
	recorded = true
	first, last := p.rl.span(off, n)
	for e := first; e <= last; e++ {
		rec, ok := p.stale[e]
		if !ok {
			p.stale[e] = false
		}
		recorded = recorded && rec
	}
	p.am.NeedSync(off, n)
	return recorded
}

// recordStale runs before a write (or flush) that only the peer took is acknowledged: the range
// is stale here, and that must survive a crash of this node or of its disk. The peer records it
// (CmdStale); our metadata's inconsistent mark (no promotion without --force) is written too
// where the disk still takes it. With neither, the caller fails.
func (p *Primary) recordStale(l *link, off, n int64) error {
	p.mu.Lock()
	recorded := p.markStaleLocked(off, n)
	p.md.Inconsistent = true
	onDisk := p.staleOnDisk
	p.mu.Unlock()
	peerErr := error(nil)
	switch {
	case recorded:
	case l.features&FeatStale == 0:
		peerErr = errors.New("the peer cannot record stale extents")
	default:
		if peerErr = l.do(&rreq{cmd: CmdStale, off: off, length: n}); peerErr == nil {
			first, last := p.rl.span(off, n)
			p.mu.Lock()
			for e := first; e <= last; e++ {
				if _, ok := p.stale[e]; ok {
					p.stale[e] = true
				}
			}
			p.mu.Unlock()
		}
	}
	localErr := error(nil)
	if !onDisk {
		localErr = p.writeMetadata()
		p.mu.Lock()
		p.staleOnDisk = localErr == nil
		logIt := localErr != nil && !p.staleDiskErrLogged
		p.staleDiskErrLogged = localErr != nil
		p.mu.Unlock()
		if logIt {
			// Once per failure streak: a read-only disk fails this for every write.
			p.log.Error().Err(localErr).Msg("unable to record in our metadata that the local copy is stale")
		}
	}
	if peerErr != nil && localErr != nil {
		return fmt.Errorf("%w: peer: %v; local: %v", errNoStaleRecord, peerErr, localErr)
	}
	return nil
}

// unstale ends extent e's stale state once it has been pulled from the peer: our copy is made
// durable, then the peer forgets its record. The caller holds e's sync lock, so no write can
// make it stale again meanwhile.
func (p *Primary) unstale(l *link, e int) error {
	if err := p.dev.Flush(); err != nil {
		p.st.flushErr.Add(1)
		return fmt.Errorf("flush extent %d pulled from the peer: %w", e, err)
	}
	p.mu.Lock()
	recorded := p.stale[e]
	off, n := p.am.ExtentRange(e)
	p.mu.Unlock()
	if recorded {
		if err := l.do(&rreq{cmd: CmdStaleClear, off: off, length: n}); err != nil {
			return fmt.Errorf("clear the peer's record of extent %d: %w", e, err)
		}
	}
	p.mu.Lock()
	delete(p.stale, e)
	p.mu.Unlock()
	return nil
}

// anyStale reports whether a range touches an extent whose local copy is known bad (p.mu held).
func (p *Primary) anyStale(off, n int64) bool {
	if len(p.stale) == 0 {
		return false
	}
	first, last := p.rl.span(off, n)
	for e := first; e <= last; e++ {
		if _, bad := p.stale[e]; bad {
			return true
		}
	}
	return false
}

// staleRecordedBitmap returns the extents the peer has recorded for us, as a bitmap of the
// activemap's size, or nil when there are none (p.mu held).
func (p *Primary) staleRecordedBitmap() []byte {
	var bm []byte
	for e, rec := range p.stale {
		if !rec {
			continue
		}
		if bm == nil {
			bm = make([]byte, p.am.MapSize())
		}
		bm[e>>3] |= 1 << (e & 7)
	}
	return bm
}

// adoptPullMap takes the peer's records from the handshake: those extents are stale here.
func (p *Primary) adoptPullMap(bm []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range bitmapExtents(bm, p.am.Extents()) {
		p.md.Inconsistent = true
		p.stale[e] = true
		off, n := p.am.ExtentRange(e)
		p.am.NeedSync(off, n)
	}
}

// ----- the secondary's side -----

// recordPrimaryStale keeps CmdStale's range in our on-disk bitmap, "pull from here". The bitmap
// goes to disk before the flag that gives it that meaning; when the flag was not set, the map
// starts empty (whatever it held was merged by the primary in the handshake).
func (s *secondary) recordPrimaryStale(off, n int64) error {
	s.mdMu.Lock()
	defer s.mdMu.Unlock()
	bm := make([]byte, s.md.MapSize())
	if s.md.PrimaryStale {
		var err error
		if bm, err = blockdev.ReadBitmap(s.dev, &s.md); err != nil {
			return err
		}
	}
	setExtentBits(bm, off, n, s.md.ExtentSize, true)
	if err := s.writeBitmapDurably(bm); err != nil {
		return err
	}
	if s.md.PrimaryStale {
		return nil
	}
	s.md.PrimaryStale = true
	return blockdev.SyncMetadata(s.dev, &s.md)
}

// clearPrimaryStale forgets CmdStaleClear's range; with nothing left, the flag goes too.
func (s *secondary) clearPrimaryStale(off, n int64) error {
	s.mdMu.Lock()
	defer s.mdMu.Unlock()
	if !s.md.PrimaryStale {
		return nil
	}
	bm, err := blockdev.ReadBitmap(s.dev, &s.md)
	if err != nil {
		return err
	}
	setExtentBits(bm, off, n, s.md.ExtentSize, false)
	if err := s.writeBitmapDurably(bm); err != nil {
		return err
	}
	for _, b := range bm {
		if b != 0 {
			return nil
		}
	}
	s.md.PrimaryStale = false
	return blockdev.SyncMetadata(s.dev, &s.md)
}

// markInconsistent records, before a failed write is answered, that our copy misses a write
// the primary may acknowledge without us: no promotion until a synchronisation completes.
// A disk that fails its metadata too gets the mark in the state directory instead
// (InconsistentMarkFile), normally on another disk.
func (s *secondary) markInconsistent() error {
	s.mdMu.Lock()
	defer s.mdMu.Unlock()
	if s.md.Inconsistent {
		return nil
	}
	s.md.Inconsistent = true
	err := blockdev.SyncMetadata(s.dev, &s.md)
	if err == nil {
		return nil
	}
	if ferr := writeMarkFile(InconsistentMarkFile(s.cfg.SplitBrainDir, s.cfg.Name), err); ferr != nil {
		return fmt.Errorf("%w; and in the state directory: %v", err, ferr)
	}
	s.log.Warn().Err(err).Str("mark", InconsistentMarkFile(s.cfg.SplitBrainDir, s.cfg.Name)).
		Msg("cannot write metadata: the inconsistent mark is kept in the state directory")
	return nil
}

// InconsistentMarkFile is where a secondary whose disk cannot take its metadata records that
// its copy misses writes; promotion is refused while it exists.
func InconsistentMarkFile(stateDir, resource string) string {
	return filepath.Join(stateDir, resource+".inconsistent")
}

// writeMarkFile creates path durably (file and directory entry), saying why.
func writeMarkFile(path string, why error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "this copy misses writes the primary acknowledged; its metadata could not record it: %v\n", why)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *secondary) writeBitmapDurably(bm []byte) error {
	if err := blockdev.WriteBitmap(s.dev, &s.md, bm); err != nil {
		return err
	}
	if err := s.dev.Flush(); err != nil {
		return fmt.Errorf("flush activemap: %w", err)
	}
	return nil
}

// setExtentBits sets or clears the bits of the extents a range touches.
func setExtentBits(bm []byte, off, n int64, extentSize uint32, set bool) {
	for e := off / int64(extentSize); e <= (off+n-1)/int64(extentSize); e++ {
		if set {
			bm[e>>3] |= 1 << (e & 7)
		} else {
			bm[e>>3] &^= 1 << (e & 7)
		}
	}
}
