package replicate

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"hast/blockdev"
)

// Local disk errors on the primary: reads and writes fail in a fixed 1 MiB range and at random
// elsewhere. The resource reports itself degraded, failed reads are served by the peer, writes
// succeed through the peer (fullsync, memsync; async acknowledges on the local leg alone and
// so reports the failure), and nothing acknowledged is lost, whichever copy is read.
func TestFaultPrimaryDiskEIO(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			ck := newAckChecker(f.p.Size())
			if r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 50, flushEvery: 25, seed: 1}); r.failed != 0 {
				t.Fatalf("writes failed before any fault: %v", r.firstErr)
			}
			lo := f.localOff(f.pmem)
			const badW, badR = 1 << 20, 4 << 20 // data offsets of the always-failing ranges
			f.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo + badW, Len: 1 << 20})
			f.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo, Prob: 0.05})
			f.pdev.Inject(blockdev.Fault{Op: blockdev.OpRead, Off: lo + badR, Len: 1 << 20})
			f.pdev.Inject(blockdev.Fault{Op: blockdev.OpRead, Off: lo, Prob: 0.2})

			// A reader checks, while the writers run, that every read succeeds and returns a
			// version no older than what was acknowledged when the read started.
			stop := make(chan struct{})
			var rdErr atomic.Pointer[error]
			var reads atomic.Int64
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(9, 9))
				buf := make([]byte, ackBlock)
				for {
					select {
					case <-stop:
						return
					default:
					}
					blk := rng.IntN(ck.nblocks())
					floor := ck.snapshot()[blk]
					if _, err := f.p.ReadAt(buf, int64(blk)*ackBlock); err != nil {
						err = fmt.Errorf("read of block %d failed: %w", blk, err)
						rdErr.CompareAndSwap(nil, &err)
						return
					}
					got, err := ackDecode(buf, blk)
					if err == nil && got < floor {
						err = fmt.Errorf("read of block %d returned sequence %d, %d was acknowledged", blk, got, floor)
					}
					if err != nil {
						rdErr.CompareAndSwap(nil, &err)
						return
					}
					reads.Add(1)
				}
			}()
			r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 150, flushEvery: 30, seed: 2})
			close(stop)
			wg.Wait()
			if e := rdErr.Load(); e != nil {
				t.Fatal(*e)
			}
			st := f.p.Status()
			if mode == ModeAsync {
				// Async acknowledges on the local leg: a local failure is the caller's error.
				if uint64(r.failed) > st.Stats.WriteErrors {
					t.Fatalf("%d writes failed but only %d local write errors", r.failed, st.Stats.WriteErrors)
				}
			} else if r.failed != 0 {
				t.Fatalf("%d writes failed although the peer took them: %v", r.failed, r.firstErr)
			}
			if !st.Connected || !st.Degraded {
				t.Fatalf("want connected and degraded: %+v", st)
			}
			if err := ck.flush(f.p); err != nil {
				t.Fatal(err)
			}
			// Where local writes failed the local copy is stale, yet the volume returns the newer
			// data (in async mode that of writes reported as failed): it came from the peer.
			local, vol := f.image(f.pmem), f.volumeImage()
			staleLocal := 0
			for off := int64(badW); off < badW+1<<20; off += ackBlock {
				if !bytes.Equal(local[off:off+ackBlock], vol[off:off+ackBlock]) {
					staleLocal++
				}
			}
			if staleLocal == 0 {
				t.Fatal("no block of the failing range differs between the local disk and the volume: the fault did not bite")
			}
			requireClean(t, "volume with a failing local disk", ck.verify(vol, ck.snapshot()))
			// Reading the whole volume went through the failing read range.
			st = f.p.Status()
			if st.Stats.WriteErrors == 0 || st.Stats.ReadErrors == 0 || st.Stats.RemoteReads == 0 {
				t.Fatalf("statistics do not show the local errors and the remote reads: %+v", st.Stats)
			}
			requireClean(t, "secondary's copy", ck.verify(f.image(f.smem), ck.snapshot()))
			t.Logf("%d reads checked, %d local write errors, %d local read errors, %d remote reads, %d blocks stale locally in the failing range",
				reads.Load(), st.Stats.WriteErrors, st.Stats.ReadErrors, st.Stats.RemoteReads, staleLocal)
			lost := "0"
			if mode == ModeAsync {
				lost = fmt.Sprintf("0 (%d writes failed to the caller)", r.failed)
			}
			reliabilityRow(t, "primary disk EIO (writes: 1 MiB range + 5 %, reads: 1 MiB range + 20 %)", mode, ck.ackCount(), lost, "n/a (served from peer)", "n/a")
		})
	}
}

// Local disk errors on the secondary: every write succeeds on the primary, the extents whose
// remote leg failed stay dirty, and after the fault clears and the link comes back they are
// synchronised until both copies are equal.
func TestFaultSecondaryDiskEIO(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			ck := newAckChecker(f.p.Size())
			lo := f.localOff(f.smem)
			const bad = 2 << 20
			ids := []int{
				f.sdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo + bad, Len: 1 << 20}),
				f.sdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo, Prob: 0.05}),
			}
			r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 150, flushEvery: 30, seed: 3})
			if r.failed != 0 || r.flushFails != 0 {
				t.Fatalf("%d writes, %d flushes failed with a healthy local disk: %v", r.failed, r.flushFails, r.firstErr)
			}
			st := f.p.Status()
			if !st.Connected || !st.Degraded {
				t.Fatalf("want connected and degraded: %+v", st)
			}
			// Every extent of the failing 1 MiB range was written (about 90 writes over 4
			// extents), so at least that much is dirty.
			if st.DirtyBytes < 1<<20 {
				t.Fatalf("only %d bytes dirty after remote write failures", st.DirtyBytes)
			}
			if rep := ck.verify(f.image(f.smem), ck.snapshot()); rep.Stale == 0 {
				t.Fatal("the secondary is not missing any write: the fault did not bite")
			}
			for _, id := range ids {
				f.sdev.Clear(id)
			}
			f.cut()
			synced, took := f.restoreAndResync()
			f.waitSynced()
			if synced < 1<<20 {
				t.Fatalf("only %d bytes resynchronised", synced)
			}
			if err := ck.flush(f.p); err != nil {
				t.Fatal(err)
			}
			requireClean(t, "primary", ck.verify(f.volumeImage(), ck.snapshot()))
			requireClean(t, "secondary after resync", ck.verify(f.image(f.smem), ck.snapshot()))
			f.requireEqualCopies()
			reliabilityRow(t, "secondary disk EIO (writes: 1 MiB range + 5 %), then reconnect", mode, ck.ackCount(), "0", fmtBytes(synced), fmtDur(took))
		})
	}
}
