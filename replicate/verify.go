package replicate

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// Extensions negotiated in the handshake. The secondary advertises them as `x_features`
// (uint32) in its answer to the first connection; a HAST peer sends none and ignores ours.
const (
	// FeatDigest: the peer answers CmdDigest (online verify).
	FeatDigest uint32 = 1 << iota
	// FeatSplitBrainMaps: the peer accepts the primary's activemap in the second handshake
	// message and sends its own with a split-brain refusal, so both sides can report what
	// diverged.
	FeatSplitBrainMaps
	// FeatSyncDone: the peer understands CmdSyncDone and keeps an "inconsistent" mark while it
	// is the target of an unfinished synchronisation.
	FeatSyncDone
	// FeatLargeIO: the peer accepts requests up to MaxRecvIO (1 MiB), not only HAST's 128 KiB.
	FeatLargeIO
	// FeatStale: the peer keeps durable records of the extents the primary failed to write
	// locally (CmdStale, CmdStaleClear) and returns them in the handshake (x_pull_map).
	FeatStale

	ourFeatures = FeatDigest | FeatSplitBrainMaps | FeatSyncDone | FeatLargeIO | FeatStale
)

// CmdDigest asks the secondary for the SHA-256 of a range of its data (our extension; outside
// HAST's command numbers so a HAST peer would refuse it rather than misread it).
const CmdDigest uint8 = 16

// CmdSyncDone tells the secondary that a synchronisation towards it completed: its copy is
// consistent again (our extension).
const CmdSyncDone uint8 = 17

// maxDigestLen bounds one digest request.
const maxDigestLen = 4 << 20

// verifyChunk is how much is compared per request.
const verifyChunk = 1 << 20

// ErrNoVerify means the peer does not support online verify.
var ErrNoVerify = errors.New("replicate: peer does not support online verify")

// VerifyStatus reports an online verify.
type VerifyStatus struct {
	Running    bool      `json:"running"`
	Started    time.Time `json:"started,omitzero"`
	Finished   time.Time `json:"finished,omitzero"`
	Done       int64     `json:"done"`
	Total      int64     `json:"total"`
	Mismatched []int     `json:"mismatched_extents,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// Verify starts comparing every extent with the peer while the volume stays in use: each chunk
// is read locally and digested remotely under the extent's sync lock (so no write to it is in
// flight), at most rate bytes per second (0 = unlimited). Mismatching extents are marked dirty
// and resynchronised from this node. It returns at once; VerifyProgress reports.
func (p *Primary) Verify(rate int64) error {
	l := p.lnk.Load()
	if l == nil {
		return fmt.Errorf("verify %s: %w", p.cfg.Name, ErrDisconnected)
	}
	if l.features&FeatDigest == 0 {
		return fmt.Errorf("verify %s: %w", p.cfg.Name, ErrNoVerify)
	}
	p.mu.Lock()
	if p.verify.Running {
		p.mu.Unlock()
		return fmt.Errorf("verify %s: already running", p.cfg.Name)
	}
	p.verify = VerifyStatus{Running: true, Started: time.Now(), Total: p.size}
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		err := p.runVerify(l, rate)
		p.mu.Lock()
		p.verify.Running = false
		p.verify.Finished = time.Now()
		if err != nil {
			p.verify.Error = err.Error()
		}
		n := len(p.verify.Mismatched)
		p.mu.Unlock()
		ev := p.log.Info()
		if err != nil {
			ev = p.log.Warn().Err(err)
		}
		ev.Int("mismatched_extents", n).Msg("online verify finished")
		if n > 0 {
			p.startSync(l)
		}
	}()
	return nil
}

// VerifyProgress returns the state of the last or current verify.
func (p *Primary) VerifyProgress() VerifyStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.verify
	v.Mismatched = append([]int(nil), v.Mismatched...)
	return v
}

func (p *Primary) runVerify(l *link, rate int64) error {
	buf := make([]byte, verifyChunk)
	var remote [sha256.Size]byte
	start := time.Now()
	var done int64
	for e := 0; e < p.am.Extents(); e++ {
		p.mu.Lock()
		off, n := p.am.ExtentRange(e)
		se, _, ok := p.am.NextSync(e)
		p.mu.Unlock()
		if ok && se == e {
			// Already scheduled for synchronisation; its copies may differ legitimately.
			done += n
			continue
		}
		mismatch := false
		for o := int64(0); o < n; o += verifyChunk {
			if p.lnk.Load() != l || p.closed.Load() {
				return ErrDisconnected
			}
			ln := min(int64(verifyChunk), n-o)
			p.rl.lockSync(e)
			_, err := p.dev.ReadAt(buf[:ln], p.base+off+o)
			if err == nil {
				err = l.do(&rreq{cmd: CmdDigest, off: off + o, length: ln, data: remote[:]})
			}
			p.rl.unlockSync(e)
			if err != nil {
				return fmt.Errorf("verify extent %d: %w", e, err)
			}
			local := sha256.Sum256(buf[:ln])
			if !bytes.Equal(local[:], remote[:]) {
				mismatch = true
			}
			done += ln
			p.mu.Lock()
			p.verify.Done = done
			p.mu.Unlock()
			if rate > 0 {
				ahead := time.Duration(float64(done)/float64(rate)*float64(time.Second)) - time.Since(start)
				if ahead > 0 && !p.sleep(ahead) {
					return ErrNotPrimary
				}
			}
		}
		if mismatch {
			p.mu.Lock()
			p.verify.Mismatched = append(p.verify.Mismatched, e)
			must := p.am.NeedSync(off, n)
			p.mu.Unlock()
			p.log.Warn().Int("extent", e).Int64("offset", off).Msg("verify: copies differ; extent will be resynchronised from the primary")
			if must {
				p.pers.later()
			}
		}
	}
	return nil
}
