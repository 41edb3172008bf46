package replicate

import (
	"fmt"
	"math"
	"testing"
	"time"

	"hast/blockdev"
)

// Power loss on the secondary: its disk has a volatile write cache. Writes it acknowledged
// but never flushed are dropped by the crash; the primary resynchronises them when the
// secondary comes back (it tracks extents the peer acknowledged but had not flushed), so
// after the resync everything the primary acknowledged is on the secondary.
func TestFaultSecondaryPowerLoss(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			f.smem.SetPowerLossMode(true)
			ck := newAckChecker(f.p.Size())
			if r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 100, flushEvery: 25, seed: 4}); r.failed != 0 {
				t.Fatal(r.firstErr)
			}
			// A last burst without a flush: acknowledged, in the secondary's cache only.
			if r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 40, seed: 5}); r.failed != 0 {
				t.Fatal(r.firstErr)
			}
			if f.smem.Unflushed() == 0 {
				t.Fatal("nothing unflushed on the secondary before the crash")
			}
			atCrash := ck.snapshot()
			f.cut()
			f.smem.PowerLoss()
			durable := f.image(f.smem)
			requireClean(t, "flushed writes on the crashed secondary", ck.verify(durable, ck.flushedFloor()))
			window := ck.verify(durable, atCrash)
			if window.Stale == 0 {
				t.Fatal("the power loss dropped no acknowledged write: the scenario tests nothing")
			}

			// The primary goes on alone; the secondary comes back in the middle of the load.
			load := goLoad(f.p, ck, loadSpec{workers: 4, writes: 150, flushEvery: 30, seed: 6})
			base := ck.ackCount()
			waitFor(t, "writes while disconnected", 10e9, func() bool { return ck.ackCount() >= base+100 })
			synced, took := f.restoreAndResync()
			if r := <-load; r.failed != 0 {
				t.Fatal(r.firstErr)
			}
			f.waitSynced()
			if err := ck.flush(f.p); err != nil {
				t.Fatal(err)
			}
			requireClean(t, "primary", ck.verify(f.volumeImage(), ck.snapshot()))
			requireClean(t, "secondary after power loss and resync", ck.verify(f.image(f.smem), ck.snapshot()))
			f.requireEqualCopies()
			reliabilityRow(t, "secondary power loss (acknowledged, unflushed writes dropped), reconnect under load", mode, ck.ackCount(),
				fmt.Sprintf("0 (secondary alone had lost %d writes, %s)", window.LostWrites, fmtBytes(uint64(window.LostBytes))),
				fmtBytes(synced), fmtDur(took))
		})
	}
}

// Power loss on the secondary after a resynchronisation, before any frontend flush: the data
// the resync copied must not be lost for good. "complete": the resync finished before the
// crash. "interrupted": the link went down in the middle of it, so some extents were copied
// and cleared on the primary but never flushed by the secondary.
func TestFaultSecondaryPowerLossAfterResync(t *testing.T) {
	for _, mode := range allModes {
		for _, interrupted := range []bool{false, true} {
			name := mode.String() + "/complete"
			if interrupted {
				name = mode.String() + "/interrupted"
			}
			t.Run(name, func(t *testing.T) {
				f := newFaultPair(t, mode, nil)
				f.smem.SetPowerLossMode(true)
				ck := newAckChecker(f.p.Size())
				f.cut()
				// 12 extents (3 MiB) written while the secondary is away.
				if r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 100, seed: 7, hi: 12 * faultExtent / ackBlock}); r.failed != 0 {
					t.Fatal(r.firstErr)
				}
				dirty := f.p.Status().DirtyBytes
				var synced uint64
				var took time.Duration
				if interrupted {
					// The resync stalls reading the second half of the dirty extents: the
					// first half is copied and cleared, then the link goes down.
					half := f.localOff(f.pmem) + 6*faultExtent
					f.phold.arm(func(op blockdev.Op, off int64) bool { return op == blockdev.OpRead && off >= half })
					f.sec.restore()
					waitFor(t, "half the resync", 20*time.Second, func() bool {
						s := f.p.Status()
						return s.Connected && s.DirtyBytes <= dirty/2
					})
					f.cut()
					f.phold.release(nil)
					if s := f.p.Status(); s.DirtyBytes == 0 || s.DirtyBytes >= dirty {
						t.Fatalf("the cut did not interrupt the resync: %d of %d bytes dirty", s.DirtyBytes, dirty)
					}
				} else {
					synced, took = f.restoreAndResync()
					f.waitSynced()
					f.cut()
				}
				f.smem.PowerLoss()
				before := f.p.Status().Stats.SyncedBytes
				start := time.Now()
				f.sec.restore()
				f.waitSynced()
				after := time.Since(start)
				requireClean(t, "secondary after resync and power loss", ck.verify(f.image(f.smem), ck.snapshot()))
				f.requireEqualCopies()
				if interrupted {
					synced = f.p.Status().Stats.SyncedBytes - before
					reliabilityRow(t, "secondary power loss after a resync interrupted by a link cut (no frontend flush)", mode, ck.ackCount(), "0",
						fmtBytes(synced)+" after the crash", fmtDur(after))
				} else {
					reliabilityRow(t, "secondary power loss right after a completed resync (no frontend flush)", mode, ck.ackCount(), "0", fmtBytes(synced), fmtDur(took))
				}
			})
		}
	}
}

// Power loss on the primary after a Flush, in the middle of further writes: everything
// acknowledged before the Flush is on the primary's disk, and every block that lost an
// acknowledged write lies in an extent the on-disk activemap marks, so the restarted primary
// resynchronises it and the copies end equal. "partial" lets the disk write back a random half
// of its cache, in any order, as a real disk may.
func TestFaultPrimaryPowerLoss(t *testing.T) {
	for _, mode := range allModes {
		for _, partial := range []bool{false, true} {
			name := mode.String()
			if partial {
				name += "/partial"
			}
			t.Run(name, func(t *testing.T) {
				f := newFaultPair(t, mode, nil)
				f.pmem.SetPowerLossMode(true)
				ck := newAckChecker(f.p.Size())
				if r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 100, flushEvery: 25, seed: 8}); r.failed != 0 {
					t.Fatal(r.firstErr)
				}
				if err := ck.flush(f.p); err != nil {
					t.Fatal(err)
				}
				flushed := ck.flushedFloor()
				// Two writers roam over the whole disk (activemap updates, evictions, lazy
				// clean-ups, device flushes); two stay in two extents.
				stop, roamStop := make(chan struct{}), make(chan struct{})
				roam := goLoad(f.p, ck, loadSpec{workers: 2, writes: math.MaxInt, seed: 10, lo: 2 * faultExtent / ackBlock, stop: roamStop})
				hot := goLoad(f.p, ck, loadSpec{workers: 2, writes: math.MaxInt, seed: 9, hi: 2 * faultExtent / ackBlock, stop: stop})
				base := ck.ackCount()
				waitFor(t, "writes after the flush", 10*time.Second, func() bool { return ck.ackCount() >= base+150 })
				close(roamStop)
				if r := <-roam; r.failed != 0 {
					t.Fatal(r.firstErr)
				}
				// Once both hot extents are marked on disk nothing evicts them from the
				// activemap's LRU, so the hot writes need no activemap write and no flush.
				waitFor(t, "the hot extents to be marked on disk", 10*time.Second, func() bool {
					f.p.mu.Lock()
					defer f.p.mu.Unlock()
					return f.p.am.IsDurable(0, 2*faultExtent)
				})
				// From now on no flush reaches the disk: of the writes acknowledged from here
				// on, at most the two in flight can have been made durable by a flush already
				// under way.
				f.phold.arm(func(op blockdev.Op, _ int64) bool { return op == blockdev.OpFlush })
				base = ck.ackCount()
				waitFor(t, "writes that only the disk's cache holds", 10*time.Second, func() bool { return ck.ackCount() >= base+40 })
				// The crash: the disk stops answering and loses its cache.
				dead := f.pdev.Inject(blockdev.Fault{})
				if partial {
					f.pmem.PowerLossPartial(uint64(mode)+1, 0.5)
				} else {
					f.pmem.PowerLoss()
				}
				f.phold.release(errHeld)
				close(stop)
				<-hot
				f.p.Close()
				// Operations that passed the fault check just before the crash may have landed
				// after it: drop them too.
				f.pmem.PowerLoss()

				disk := f.image(f.pmem)
				requireClean(t, "flushed writes on the primary's disk", ck.verify(disk, flushed))
				md, err := blockdev.ReadMetadata(f.pmem, "r0")
				if err != nil {
					t.Fatal(err)
				}
				bm, err := blockdev.ReadBitmap(f.pmem, md)
				if err != nil {
					t.Fatal(err)
				}
				stale := ck.staleBlocks(disk)
				uncovered := 0
				for _, blk := range stale {
					e := blk * ackBlock / faultExtent
					if bm[e/8]&(1<<(e%8)) == 0 {
						if uncovered == 0 {
							t.Errorf("block %d lost an acknowledged write but extent %d is clean in the on-disk activemap", blk, e)
						}
						uncovered++
					}
				}
				if uncovered > 0 {
					t.Fatalf("%d of %d blocks that lost acknowledged writes are not covered by the activemap", uncovered, len(stale))
				}
				if len(stale) == 0 {
					t.Fatal("the power loss dropped no acknowledged write: the scenario tests nothing")
				}
				lost := ck.verify(disk, ck.snapshot())

				f.pdev.Clear(dead)
				start := time.Now()
				f.open()
				f.waitSynced()
				took := time.Since(start)
				synced := f.p.Status().Stats.SyncedBytes
				requireClean(t, "primary after restart (flushed writes)", ck.verify(f.volumeImage(), flushed))
				requireClean(t, "secondary after restart (flushed writes)", ck.verify(f.image(f.smem), flushed))
				f.requireEqualCopies()
				scen := "primary power loss mid-load after a Flush (whole cache lost), restart"
				if partial {
					scen = "primary power loss mid-load after a Flush (random half of the cache written back), restart"
				}
				reliabilityRow(t, scen, mode, ck.ackCount(),
					fmt.Sprintf("0 flushed; %d unflushed writes (%s) rolled back on both nodes, all in marked extents", lost.LostWrites, fmtBytes(uint64(lost.LostBytes))),
					fmtBytes(synced), fmtDur(took))
			})
		}
	}
}
