package replicate

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// The primary is closed in the middle of a large resynchronisation and reopened on the same
// device: the new run resumes from the activemap the old one left (it copies less than the
// whole dirty set again), completes, and both copies are equal. Writes go on during both runs.
func TestFaultPrimaryRestartMidResync(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			f.p.Close()
			f.cfg.SyncRate = 8 << 20
			f.open()
			f.waitSynced()
			ck := newAckChecker(f.p.Size())
			f.cut()
			// Two blocks in every extent: the whole disk (16 MiB) is dirty.
			perExt := faultExtent / ackBlock
			buf := make([]byte, ackBlock)
			for blk := 0; blk < ck.nblocks(); blk += perExt / 2 {
				seq := ck.begin(blk, buf)
				_, err := f.p.WriteAt(buf, int64(blk)*ackBlock)
				ck.done(blk, seq, err)
				if err != nil {
					t.Fatal(err)
				}
			}
			total := f.p.Status().DirtyBytes
			if total < faultDisk*9/10 {
				t.Fatalf("only %d bytes dirty", total)
			}
			f.sec.restore()
			stop := make(chan struct{})
			load := goLoad(f.p, ck, loadSpec{workers: 2, writes: math.MaxInt, flushEvery: 10, seed: 11, stop: stop})
			waitFor(t, "a quarter of the resync", 20*time.Second, func() bool {
				s := f.p.Status()
				return s.Connected && s.DirtyBytes <= total*3/4
			})
			close(stop)
			if r := <-load; r.failed != 0 {
				t.Fatal(r.firstErr)
			}
			// A clean shutdown flushes first; extents the peer has not flushed would be
			// resynchronised again.
			if err := ck.flush(f.p); err != nil {
				t.Fatal(err)
			}
			st := f.p.Status()
			if !st.Syncing {
				t.Fatalf("resync already over before the restart: %+v", st)
			}
			if err := f.p.Close(); err != nil {
				t.Fatal(err)
			}
			first := f.p.Status().Stats.SyncedBytes

			f.cfg.SyncRate = 0
			start := time.Now()
			f.open()
			left := f.p.Status().DirtyBytes
			if left >= total || left == 0 {
				t.Fatalf("after the restart %d of %d bytes are dirty: the first run's progress was lost", left, total)
			}
			load = goLoad(f.p, ck, loadSpec{workers: 2, writes: 60, seed: 12})
			if r := <-load; r.failed != 0 {
				t.Fatal(r.firstErr)
			}
			f.waitSynced()
			took := time.Since(start)
			second := f.p.Status().Stats.SyncedBytes
			if second >= uint64(total) {
				t.Fatalf("the restarted primary copied %d bytes of a %d-byte dirty set: it did not resume", second, total)
			}
			if err := ck.flush(f.p); err != nil {
				t.Fatal(err)
			}
			requireClean(t, "primary", ck.verify(f.volumeImage(), ck.snapshot()))
			requireClean(t, "secondary", ck.verify(f.image(f.smem), ck.snapshot()))
			f.requireEqualCopies()
			reliabilityRow(t, fmt.Sprintf("primary closed and reopened mid-resync (%s dirty, %s copied before the restart)", fmtBytes(uint64(total)), fmtBytes(first)),
				mode, ck.ackCount(), "0", fmtBytes(second)+" after the restart", fmtDur(took))
		})
	}
}

// The link fails while writes are in flight (the secondary's session is closed under load).
// Every write acknowledged is on the primary; writes acknowledged before the cut are on the
// secondary in fullsync (and memsync, which acknowledged receipt); after the link comes back
// the secondary converges to an equal copy. The loss window — writes acknowledged before the
// cut that the secondary does not have, i.e. what a failover at that instant would lose — is
// measured for every mode.
func TestFaultLinkCutMidLoad(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			ck := newAckChecker(f.p.Size())
			load := goLoad(f.p, ck, loadSpec{workers: 4, writes: 300, flushEvery: 50, seed: 13})
			waitFor(t, "writes before the cut", 10*time.Second, func() bool { return ck.ackCount() >= 300 })
			atCut := ck.snapshot()
			f.cut()
			window := ck.verify(f.image(f.smem), atCut)
			if window.Corrupt != 0 {
				t.Fatalf("secondary after the cut: %v", window)
			}
			if mode == ModeFullsync && window.Stale != 0 {
				t.Fatalf("fullsync: writes acknowledged before the cut are missing on the secondary: %v", window)
			}
			// Let the primary go on alone for a while (async may be nearly through its load).
			base := ck.ackCount()
			waitFor(t, "writes while disconnected", 10*time.Second, func() bool {
				n := ck.ackCount()
				return n >= base+100 || n == 4*300
			})
			synced, took := f.restoreAndResync()
			r := <-load
			if r.failed != 0 {
				t.Fatal(r.firstErr)
			}
			f.waitSynced()
			if err := ck.flush(f.p); err != nil {
				t.Fatal(err)
			}
			requireClean(t, "primary", ck.verify(f.volumeImage(), ck.snapshot()))
			requireClean(t, "secondary after reconnect", ck.verify(f.image(f.smem), ck.snapshot()))
			f.requireEqualCopies()
			t.Logf("loss window at the cut: %v", window)
			reliabilityRow(t, "link cut mid-load (4 writers), reconnect under load", mode, ck.ackCount(),
				fmt.Sprintf("0 (window at the cut: %d writes, %s)", window.LostWrites, fmtBytes(uint64(window.LostBytes))),
				fmtBytes(synced), fmtDur(took))
		})
	}
}
