package scenario

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
	"time"

	"hast/appliance"
	"hast/internal/ackcheck"
	"hast/internal/faultnet"
	"hast/internal/testsupport"
	"hast/nbd"
)

// Writes that complete on one node only, with real faults: the node that missed a write must
// know it durably (replicate/stale.go). Each scenario runs in every mode it applies to and
// with both ways of driving the local component.

var localIOs = []string{"pwrite", "uring"}

// forEachConfig runs fn for every mode × --local-io pair.
func forEachConfig(t *testing.T, modes []string, fn func(t *testing.T, mode, localIO string)) {
	for _, mode := range modes {
		for _, lio := range localIOs {
			t.Run(mode+"/"+lio, func(t *testing.T) { fn(t, mode, lio) })
		}
	}
}

func (e *env) localIO(lio string) {
	for _, n := range e.c.Nodes {
		e.extra[n] = append(e.extra[n], "--local-io", lio)
	}
}

// loadOn starts the checker on node n's volume and waits for its first acked writes.
func (e *env) loadOn(n *appliance.Node, acked uint64) (*nbd.Client, *ackcheck.Checker, *load) {
	e.t.Helper()
	vol := e.volume(n)
	chk := e.checker(vol.Size())
	ld := startLoad(chk, vol)
	e.waitAcked(chk, acked, loadTimeout)
	return vol, chk, ld
}

// TestAckedWriteAtCutIsASplitBrain: the replication link drops silently; a write through
// hast1 is acknowledged once its remote leg times out, and flushed. hast2 is promoted, writes
// the same block, and is demoted; the link heals. hast1 must find a split-brain and still hold
// its write: that write was counted as made without the peer before it was acknowledged.
func TestAckedWriteAtCutIsASplitBrain(t *testing.T) {
	forEachConfig(t, []string{"fullsync", "memsync", async}, func(t *testing.T, mode, lio string) {
		e := newEnv(t, envOptions{mode: mode})
		e.localIO(lio)
		e.pair()
		vol1 := e.volume(e.h1)
		defer vol1.Close()
		const off = 1 << 20
		x, y := bytes.Repeat([]byte{0xa1}, 4096), bytes.Repeat([]byte{0xb2}, 4096)
		if err := e.net.Cut(faultnet.Silent); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if _, err := vol1.WriteAt(x, off); err != nil {
			t.Fatalf("write on hast1 at the cut: %v", err)
		}
		if err := vol1.Flush(); err != nil {
			t.Fatalf("flush on hast1 at the cut: %v", err)
		}
		t.Logf("write at the cut acknowledged after %v", time.Since(t0).Round(time.Millisecond))
		e.waitStatus(e.h1, "disconnected", time.Minute, func(s appliance.ResourceStatus) bool { return !s.Connected })

		e.role(e.h2, "primary")
		vol2 := e.volume(e.h2)
		if _, err := vol2.WriteAt(y, off); err != nil {
			t.Fatalf("write on the promoted hast2: %v", err)
		}
		if err := vol2.Flush(); err != nil {
			t.Fatal(err)
		}
		vol2.Close()
		e.role(e.h2, "secondary")
		if err := e.net.Heal(); err != nil {
			t.Fatal(err)
		}
		e.waitStatus(e.h1, "split-brain", time.Minute, func(s appliance.ResourceStatus) bool { return s.SplitBrain })
		got := make([]byte, len(x))
		if _, err := vol1.ReadAt(got, off); err != nil || !bytes.Equal(got, x) {
			t.Fatalf("hast1 lost its acknowledged write (err %v, first byte %#x)", err, got[0])
		}

		// The operator keeps hast1's data: hast2 saves what it wrote alone and takes hast1's.
		cl, err := e.c.Client(e.h1)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := cl.SplitBrain(res)
		if err != nil || rep == nil || len(rep.Local) == 0 || len(rep.Remote) == 0 {
			t.Fatalf("split-brain report on hast1: %+v, %v", rep, err)
		}
		before := synced(e.status(e.h1))
		t0 = time.Now()
		if code := e.c.CLI(e.h1, "resolve", "--keep", "local", res); code != 0 {
			t.Fatalf("hast resolve --keep local: exit %d\n%s", code, e.out)
		}
		e.waitComplete(e.h1)
		took := time.Since(t0)
		saved := e.status(e.h2).LastSaved
		if saved == "" {
			t.Fatal("hast2 did not say where it saved its side of the split-brain")
		}
		if err := testsupport.ReadFileAt(saved, got, off); err != nil || !bytes.Equal(got, y) {
			t.Fatalf("hast2's saved side lacks its write (err %v, first byte %#x)", err, got[0])
		}
		e.compareLocal()
		if _, err := vol1.ReadAt(got, off); err != nil || !bytes.Equal(got, x) {
			t.Fatalf("hast1 lost its write in the resolution (err %v, first byte %#x)", err, got[0])
		}
		record(row{order: 5, scenario: fmt.Sprintf("write acknowledged at a silent cut (remote leg timed out), peer promoted and written: split-brain found (extents changed: %d here, %d on the peer), resolved keeping hast1, the peer's side saved, local-io %s", len(rep.Local), len(rep.Remote), lio),
			mode: mode, acked: 1, lost: "0", resynced: bytesStr(int64(synced(e.status(e.h1)) - before)), took: took.Round(time.Millisecond).String()})
	})
}

// TestSecondaryDiskErrors: hast2's disk fails every write to its data area for a while (EIO
// from the kernel, through a fault-injecting FUSE file system), under load. hast2 marks its
// copy inconsistent before it answers; hast1 keeps acknowledging, resynchronises while still
// connected once the disk recovers, and hast2 is consistent again. A second fault window ends
// with hast1 killed: hast2 must refuse promotion (its copy misses acknowledged writes), and
// hast1, restarted, brings it up to date with nothing lost.
func TestSecondaryDiskErrors(t *testing.T) {
	forEachConfig(t, []string{"fullsync", "memsync", async}, func(t *testing.T, mode, lio string) {
		secondaryDiskErrors(t, mode, lio, false)
	})
}

// TestSecondaryWholeDiskErrors: as TestSecondaryDiskErrors, but every write fails, hast2's
// metadata included: hast2 keeps its mark in its state directory instead.
func TestSecondaryWholeDiskErrors(t *testing.T) {
	forEachConfig(t, []string{"fullsync"}, func(t *testing.T, mode, lio string) {
		secondaryDiskErrors(t, mode, lio, true)
	})
}

func secondaryDiskErrors(t *testing.T, mode, lio string, whole bool) {
	e := newEnv(t, envOptions{mode: mode})
	e.localIO(lio)
	disk := e.faultDisk(e.h2)
	from, what := e.dataOffset(e.h2), "its data area fails writes"
	if whole {
		from, what = 0, "every write fails, metadata included"
	}
	e.pair()
	vol, chk, ld := e.loadOn(e.h1, 300)

	before := synced(e.status(e.h1))
	disk.FailWrites(syscall.EIO, from)
	e.waitStatus(e.h2, "inconsistent", time.Minute, func(s appliance.ResourceStatus) bool { return s.Inconsistent })
	e.waitAcked(chk, 200, loadTimeout)
	disk.FailWrites(0, 0)
	t0 := time.Now()
	e.waitAcked(chk, 100, loadTimeout)
	ld.stop()
	st := e.waitStatus(e.h1, "resynchronised", time.Minute, func(s appliance.ResourceStatus) bool {
		return s.Connected && s.Status == "complete" && s.Dirty == 0
	})
	took := time.Since(t0)
	e.waitStatus(e.h2, "consistent again", 10*time.Second, func(s appliance.ResourceStatus) bool { return !s.Inconsistent })
	e.requireNoLoss(e.verifyLocal(chk, e.h2), "hast2 after the resync")

	ld = startLoad(chk, vol)
	e.waitAcked(chk, 200, loadTimeout)
	disk.FailWrites(syscall.EIO, from)
	e.waitStatus(e.h2, "inconsistent", time.Minute, func(s appliance.ResourceStatus) bool { return s.Inconsistent })
	e.waitAcked(chk, 100, loadTimeout)
	e.c.Kill(e.h1, syscall.SIGKILL)
	ld.stop()
	vol.Close()
	if err := e.c.Role(e.h2, "primary", res); err == nil {
		t.Fatal("hast2 was promoted although its disk failed writes that hast1 acknowledged")
	}
	disk.FailWrites(0, 0)
	e.start(e.h1)
	e.role(e.h1, "primary")
	e.waitComplete(e.h1)
	e.waitStatus(e.h2, "consistent again", 10*time.Second, func(s appliance.ResourceStatus) bool { return !s.Inconsistent })
	vol = e.volume(e.h1)
	defer vol.Close()
	e.requireNoLoss(e.verify(chk, "hast1's volume", vol), "hast1 after the restart")
	e.requireNoLoss(e.verifyLocal(chk, e.h2), "hast2 after the resync")
	e.compareLocal()
	record(row{order: 6, scenario: fmt.Sprintf("secondary's disk: %s (EIO, FUSE), recovers; again, and the primary is killed (promotion of hast2 refused), local-io %s", what, lio),
		mode: mode, acked: chk.Stats().Acked, lost: "0", resynced: bytesStr(int64(synced(st) - before)), took: took.Round(time.Millisecond).String()})
}

// TestPrimaryFilesystemTurnsReadOnly: the ext4 under hast1's component records an error and
// turns read-only mid-run: local writes and hast1's own metadata writes fail. Writes go on
// being acknowledged through hast2. The operator stops hast1, repairs the file system and
// starts it as primary again; it must pull what it missed from hast2, never push its stale
// blocks over hast2's.
func TestPrimaryFilesystemTurnsReadOnly(t *testing.T) {
	forEachConfig(t, []string{"fullsync", "memsync"}, func(t *testing.T, mode, lio string) {
		e := newEnv(t, envOptions{mode: mode})
		e.localIO(lio)
		fs := e.ext4Disk(e.h1)
		e.pair()
		vol, chk, ld := e.loadOn(e.h1, 300)
		fs.fail()
		e.waitAcked(chk, 500, loadTimeout)
		ld.stop()
		vol.Close()
		if st := e.status(e.h1); !st.Connected || st.Status != "degraded" {
			t.Fatalf("hast1 after its file system failed: %+v", st)
		}
		if r := e.verifyLocal(chk, e.h1); len(r.Lost) == 0 {
			t.Fatal("hast1's own disk misses no write: the file system error did not bite")
		}

		e.c.Kill(e.h1, syscall.SIGKILL)
		fs.repair()
		e.start(e.h1)
		e.role(e.h1, "primary")
		t0 := time.Now()
		e.waitComplete(e.h1)
		took := time.Since(t0)
		vol = e.volume(e.h1)
		defer vol.Close()
		e.requireNoLoss(e.verify(chk, "hast1's volume", vol), "hast1 after the repair")
		e.requireNoLoss(e.verifyLocal(chk, e.h2), "hast2")
		e.requireNoLoss(e.verifyLocal(chk, e.h1), "hast1's own disk")
		e.compareLocal()
		record(row{order: 7, scenario: "primary's ext4 turns read-only under load; repaired, restarted as primary: stale extents pulled from the secondary, local-io " + lio,
			mode: mode, acked: chk.Stats().Acked, lost: "0", resynced: bytesStr(int64(synced(e.status(e.h1)))), took: took.Round(time.Millisecond).String()})
	})
}
