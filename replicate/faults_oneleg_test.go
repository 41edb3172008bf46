package replicate

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"hast/blockdev"
)

// Writes that complete on one node only (see stale.go): the node that missed the write must
// know it durably, whatever happens next.

// holdSecondaryWrites holds the secondary's writes to its data area and returns once the first
// one is held.
func (f *faultPair) holdSecondaryWrites() {
	f.t.Helper()
	lo := f.localOff(f.smem)
	f.shold.arm(func(op blockdev.Op, off int64) bool { return op == blockdev.OpWrite && off >= lo })
}

// promoteSecondary opens the secondary's disk as a primary with no reachable peer, as an
// operator promoting hast2 while hast1 is cut off, writes b at off there, and closes it again.
func (f *faultPair) promoteSecondary(b []byte, off int64) {
	f.t.Helper()
	cfg := f.cfg
	cfg.Remote = "127.0.0.1:1" // nothing listens there
	cfg.OnEvent = nil
	p2, err := OpenPrimary(cfg, f.smem, testLog("hast2-primary"))
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := p2.WriteAt(b, off); err != nil {
		f.t.Fatalf("write on the promoted secondary: %v", err)
	}
	if err := p2.Close(); err != nil {
		f.t.Fatal(err)
	}
}

func (f *faultPair) metadata(m *blockdev.MemDevice) *blockdev.Metadata {
	f.t.Helper()
	md, err := blockdev.ReadMetadata(m, "r0")
	if err != nil {
		f.t.Fatal(err)
	}
	return md
}

// TestPeerMissedWriteIsASplitBrainLater: a write whose remote leg fails (error reply, or the
// link lost with the write in flight) is acknowledged on the local leg — and counted first. If
// the secondary is then promoted and writes the same block, the next handshake is a split-brain:
// before the count, it looked like "primary out of date" and the acknowledged write was
// overwritten by the peer's.
func TestPeerMissedWriteIsASplitBrainLater(t *testing.T) {
	for _, mode := range allModes {
		for _, how := range []string{"error-reply", "link-lost"} {
			t.Run(mode.String()+"/"+how, func(t *testing.T) {
				f := newFaultPair(t, mode, nil)
				// The counters that say "in sync" are written just after the pass ends.
				waitFor(t, "the in-sync counters on disk", 5*time.Second, func() bool {
					md := f.metadata(f.pmem)
					return md.LocalCnt == md.PeerRemoteCnt
				})
				before := f.metadata(f.pmem)
				x := bytes.Repeat([]byte{0xa1}, 4096)
				lo := f.localOff(f.smem)
				// A disk that keeps failing also fails the resync the error starts, which
				// would otherwise make the copies equal again and reset the counter.
				fid := -1
				if how == "error-reply" {
					fid = f.sdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo, Len: f.p.Size(), Err: syscall.EIO})
				} else {
					f.holdSecondaryWrites()
				}
				done := make(chan error, 1)
				go func() { _, err := f.p.WriteAt(x, 3<<20); done <- err }()
				if how == "link-lost" {
					<-f.shold.entered
					cut := make(chan struct{})
					go func() { f.sec.cut(); close(cut) }()
					f.waitConnected(false)
					f.shold.release(nil)
					<-cut
				}
				if err := <-done; err != nil {
					t.Fatalf("write with a good local leg failed: %v", err)
				}
				bumped := func() bool { md := f.metadata(f.pmem); return md.LocalCnt == before.LocalCnt+1 }
				if mode == ModeFullsync {
					// Acknowledged after the remote leg failed: counted before the ack.
					if !bumped() {
						t.Fatalf("write acknowledged without the peer, localcnt still %d on disk", f.metadata(f.pmem).LocalCnt)
					}
				} else {
					waitFor(t, "localcnt bumped after the peer missed an acknowledged write", 5*time.Second, bumped)
				}
				if how == "error-reply" {
					f.cut()
					f.sdev.Clear(fid)
				}
				f.promoteSecondary(bytes.Repeat([]byte{0xb2}, 4096), 3<<20)
				f.drainEvents()
				f.sec.restore()
				waitFor(t, "split-brain found at the next handshake", 10*time.Second, func() bool { return f.p.Status().SplitBrain })
				got := make([]byte, len(x))
				if _, err := f.p.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, x) {
					t.Fatalf("hast1 lost its acknowledged write (err %v, first byte %#x)", err, got[0])
				}
			})
		}
	}
}

// TestSecondaryWriteErrorsResyncWhileConnected: the secondary's disk fails writes for a while.
// The secondary marks its copy inconsistent on disk before it answers (no promotion until it is
// whole again); the primary resynchronises the failed extents while connected, retrying while
// the disk keeps failing, and the secondary is consistent again after it.
func TestSecondaryWriteErrorsResyncWhileConnected(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			ck := newAckChecker(f.p.Size())
			lo := f.localOff(f.smem)
			id := f.sdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo, Len: f.p.Size()})
			r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 60, flushEvery: 20, seed: 5})
			if r.failed != 0 || r.flushFails != 0 {
				t.Fatalf("%d writes, %d flushes failed with a healthy local disk: %v", r.failed, r.flushFails, r.firstErr)
			}
			if f.sdev.Fired(id) == 0 {
				t.Fatal("the secondary's disk fault did not fire")
			}
			if !f.metadata(f.smem).Inconsistent {
				t.Fatal("the secondary missed writes and its metadata does not say it is inconsistent")
			}
			// Still failing: the resync is retried, not given up, while the link stays up.
			time.Sleep(300 * time.Millisecond)
			f.sdev.Clear(id)
			if !f.p.Status().Connected {
				t.Fatal("the link went down: the resync must happen while connected")
			}
			f.waitSynced()
			// CmdSyncDone follows the end of the pass.
			waitFor(t, "the secondary consistent again after the resync", 5*time.Second, func() bool { return !f.metadata(f.smem).Inconsistent })
			if err := ck.flush(f.p); err != nil {
				t.Fatal(err)
			}
			requireClean(t, "secondary after resync", ck.verify(f.image(f.smem), ck.snapshot()))
			f.requireEqualCopies()
		})
	}
}

// TestStaleRecordSurvivesPrimaryRestart: the primary's disk fails every write, its metadata
// included, while the peer takes them; writes and flushes are acknowledged through the peer.
// The primary then restarts on its repaired disk, which holds no record of what it missed:
// the peer's record makes it pull those extents back instead of pushing its stale blocks over
// the only good copy.
func TestStaleRecordSurvivesPrimaryRestart(t *testing.T) {
	for _, mode := range []Mode{ModeFullsync, ModeMemsync} {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			ck := newAckChecker(f.p.Size())
			if r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 40, flushEvery: 20, seed: 7}); r.failed != 0 {
				t.Fatalf("writes failed before any fault: %v", r.firstErr)
			}
			ro := errors.New("read-only file system")
			id := f.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Err: ro})
			fid := f.pdev.Inject(blockdev.Fault{Op: blockdev.OpFlush, Err: ro})
			r := runLoad(f.p, ck, loadSpec{workers: 4, writes: 80, flushEvery: 20, seed: 8})
			if r.failed != 0 || r.flushFails != 0 {
				t.Fatalf("%d writes, %d flushes failed though the peer took them: %v", r.failed, r.flushFails, r.firstErr)
			}
			if f.pdev.Fired(id) == 0 || f.pdev.Fired(fid) == 0 {
				t.Fatal("the primary's disk faults did not fire")
			}
			if rep := ck.verify(f.image(f.pmem), ck.snapshot()); rep.Stale == 0 {
				t.Fatal("the primary's disk is not missing any write: the fault did not bite")
			}
			if md := f.metadata(f.pmem); md.Inconsistent {
				t.Fatal("the primary's metadata was written although its disk fails every write")
			}
			if md := f.metadata(f.smem); !md.PrimaryStale {
				t.Fatal("the secondary has no record of the primary's stale extents")
			}
			f.p.Close()
			f.pdev.Clear(id)
			f.pdev.Clear(fid)
			f.open()
			f.waitSynced()
			requireClean(t, "restarted primary", ck.verify(f.volumeImage(), ck.snapshot()))
			requireClean(t, "secondary", ck.verify(f.image(f.smem), ck.snapshot()))
			requireClean(t, "primary's own disk", ck.verify(f.image(f.pmem), ck.snapshot()))
			f.requireEqualCopies()
			if md := f.metadata(f.smem); md.PrimaryStale {
				t.Fatal("the secondary still records stale extents after they were pulled")
			}
		})
	}
}

// TestRestartedStalePrimaryThatWroteAloneIsASplitBrain: as above, but the restarted primary
// writes before it reaches the peer. It cannot know whether those writes landed in extents
// only the peer has right; the peer refuses to be synchronised from it (split-brain) rather
// than lose either side.
func TestRestartedStalePrimaryThatWroteAloneIsASplitBrain(t *testing.T) {
	f := newFaultPair(t, ModeFullsync, nil)
	id := f.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite})
	good := bytes.Repeat([]byte{0x5a}, 8192)
	if _, err := f.p.WriteAt(good, 5<<20); err != nil {
		t.Fatalf("write through the peer: %v", err)
	}
	f.p.Close()
	f.pdev.Clear(id)
	f.sec.cut()
	f.open()
	if _, err := f.p.WriteAt(bytes.Repeat([]byte{0x11}, 4096), 5<<20); err != nil {
		t.Fatalf("write without the peer: %v", err)
	}
	f.sec.restore()
	waitFor(t, "split-brain", 10*time.Second, func() bool { return f.p.Status().SplitBrain })
	got := make([]byte, len(good))
	if _, err := f.smem.ReadAt(got, f.localOff(f.smem)+5<<20); err != nil || !bytes.Equal(got, good) {
		t.Fatal(fmt.Sprintf("the peer's good copy was overwritten (err %v)", err))
	}
}

// TestStaleMarkAfterAnEarlierRepair: a stale extent is repaired (pulled, the marks cleared);
// a later local failure whose record the peer cannot take must still be recorded in our own
// metadata before the write is acknowledged.
func TestStaleMarkAfterAnEarlierRepair(t *testing.T) {
	f := newFaultPair(t, ModeFullsync, nil)
	lo := f.localOff(f.pmem)
	b := bytes.Repeat([]byte{0x3c}, 4096)
	f.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo + 1<<20, Len: 4096, Times: 1})
	if _, err := f.p.WriteAt(b, 1<<20); err != nil {
		t.Fatalf("write through the peer: %v", err)
	}
	f.waitSynced()
	waitFor(t, "the inconsistent mark cleared on disk after the repair", 5*time.Second, func() bool { return !f.metadata(f.pmem).Inconsistent })

	slo := f.localOff(f.smem)
	f.shold.arm(func(op blockdev.Op, off int64) bool { return op == blockdev.OpWrite && off < slo })
	f.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: lo + 3<<20, Len: 4096, Times: 1})
	done := make(chan error, 1)
	go func() { _, err := f.p.WriteAt(b, 3<<20); done <- err }()
	<-f.shold.entered // the peer's record of the stale extent
	f.shold.release(syscall.EIO)
	if err := <-done; err != nil {
		t.Fatalf("write through the peer with our metadata writable: %v", err)
	}
	if !f.metadata(f.pmem).Inconsistent {
		t.Fatal("acknowledged with neither the peer's record nor our own inconsistent mark")
	}
}
