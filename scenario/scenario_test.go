package scenario

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hast/appliance"
	"hast/internal/faultnet"
)

const (
	loadTimeout = 90 * time.Second
	async       = "async"
)

// TestPrimaryKilledUnderLoad: SIGKILL of the primary while the checker writes, promotion of the
// secondary, verification on the new primary, a while of writes there alone, then the old
// primary rejoins as secondary, is resynchronised, and both copies are compared.
//
// A killed process still has its kernel: data in its socket buffers reaches the peer after the
// kill. The "node lost" cases cut the link silently at the same instant, as when the whole
// machine dies, so whatever had not reached the secondary is gone — async's loss window.
func TestPrimaryKilledUnderLoad(t *testing.T) {
	cases := []struct {
		mode     string
		nodeLost bool
	}{
		{"fullsync", false}, {"memsync", false}, {async, false},
		{"fullsync", true}, {"memsync", true}, {async, true},
	}
	for _, tc := range cases {
		mode := tc.mode
		name, what := mode+"/process", "SIGKILL primary under load, promote secondary, old primary rejoins"
		if tc.nodeLost {
			name, what = mode+"/node", "primary node lost under load (silent cut + SIGKILL), promote secondary, old primary rejoins"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOptions{mode: mode})
			e.pair()
			vol := e.volume(e.h1)
			chk := e.checker(vol.Size())
			ld := startLoad(chk, vol)
			e.waitAcked(chk, 1000, loadTimeout)
			// A disconnect before the kill would make hast1 acknowledge writes alone, which a
			// failover legitimately loses; the scenario is about the kill.
			if st := e.status(e.h1); !st.Connected || st.Syncing {
				t.Fatalf("hast1 before the kill: connected %v, syncing %v: the link failed on its own", st.Connected, st.Syncing)
			}
			if tc.nodeLost {
				if err := e.net.Cut(faultnet.Silent); err != nil {
					t.Fatal(err)
				}
			}
			e.c.Kill(e.h1, syscall.SIGKILL)
			st := ld.stop()
			vol.Close()
			t.Logf("load on hast1 until SIGKILL: %+v", st)

			e.role(e.h2, "primary")
			vol2 := e.volume(e.h2)
			defer vol2.Close()
			rep := e.verify(chk, "hast2 after promotion", vol2)
			if len(rep.Corrupt) > 0 || (mode != async && !rep.OK()) {
				t.Fatalf("after failover: %v", rep.Err())
			}
			lost := rep.Lost
			lostSet := map[uint64]bool{}
			for _, l := range lost {
				lostSet[l.Seq] = true
			}

			// hast2 serves alone for a while: these writes must reach hast1 when it returns.
			ld = startLoad(chk, vol2)
			e.waitAcked(chk, 300, loadTimeout)
			ld.stop()

			if tc.nodeLost {
				if err := e.net.Heal(); err != nil {
					t.Fatal(err)
				}
			}
			e.start(e.h1)
			t0 := time.Now()
			e.role(e.h1, "secondary")
			e.waitComplete(e.h2)
			took := time.Since(t0)
			pst := e.status(e.h2)

			final := e.verify(chk, "hast2 after the rejoin", vol2)
			if len(final.Corrupt) > 0 {
				t.Fatal(final.Err())
			}
			for _, l := range final.Lost {
				if !lostSet[l.Seq] {
					t.Fatalf("write %d at %d was there after the failover and is lost after the resync", l.Seq, l.Offset)
				}
			}
			if mode != async {
				e.requireNoLoss(final, "after the rejoin")
			}
			e.compareLocal()
			// Identical copies: hast1's file tells the same story as hast2's volume.
			if r1 := e.verifyLocal(chk, e.h1); len(r1.Lost) != len(final.Lost) || len(r1.Corrupt) != 0 {
				t.Fatalf("hast1's component: %v, hast2's volume: %v", r1, final)
			}
			record(row{order: 1, scenario: what, mode: mode,
				acked: chk.Stats().Acked, lost: lostCell(rep),
				resynced: bytesStr(int64(synced(pst))), took: took.Round(time.Millisecond).String()})
		})
	}
}

// TestLinkCutAndHealUnderLoad: the replication link is cut while the checker writes, the primary
// notices and goes on degraded, the link heals, the dirty extents are resynchronised (still under
// load), and both copies must then hold every acknowledged write.
func TestLinkCutAndHealUnderLoad(t *testing.T) {
	cases := []struct {
		mode string
		cut  faultnet.CutMode
	}{
		{"fullsync", faultnet.Silent},
		{"memsync", faultnet.Silent},
		{async, faultnet.Silent},
		{"fullsync", faultnet.LinkDown},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/%s", tc.mode, tc.cut), func(t *testing.T) {
			e := newEnv(t, envOptions{mode: tc.mode})
			e.pair()
			base := synced(e.status(e.h1))
			vol := e.volume(e.h1)
			defer vol.Close()
			chk := e.checker(vol.Size())
			ld := startLoad(chk, vol)
			e.waitAcked(chk, 500, loadTimeout)
			if err := e.net.Cut(tc.cut); err != nil {
				t.Fatal(err)
			}
			cutAt := time.Now()
			e.waitStatus(e.h1, "disconnected", time.Minute, func(s appliance.ResourceStatus) bool { return !s.Connected })
			t.Logf("hast1 noticed the cut after %v", time.Since(cutAt).Round(time.Millisecond))
			e.waitAcked(chk, 500, loadTimeout) // degraded writes
			dirty := e.status(e.h1).Dirty
			if dirty == 0 {
				t.Fatal("hast1 wrote without its peer and reports nothing dirty")
			}
			if err := e.net.Heal(); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			e.waitStatus(e.h1, "reconnected", time.Minute, func(s appliance.ResourceStatus) bool { return s.Connected })
			e.waitAcked(chk, 300, loadTimeout) // writes during the resync
			st := ld.stop()
			e.waitComplete(e.h1)
			took := time.Since(t0)
			pst := e.status(e.h1)
			t.Logf("load: %+v; dirty before heal %d", st, dirty)

			e.requireNoLoss(e.verify(chk, "hast1's volume", vol), "primary")
			e.requireNoLoss(e.verifyLocal(chk, e.h2), "secondary after resync")
			e.compareLocal()
			record(row{order: 2, scenario: fmt.Sprintf("link cut (%s) and heal under load", tc.cut), mode: tc.mode,
				acked: chk.Stats().Acked, lost: "0",
				resynced: fmt.Sprintf("%s (dirty at heal: %s)", bytesStr(int64(synced(pst)-base)), bytesStr(dirty)),
				took:     took.Round(time.Millisecond).String()})
		})
	}
}

// TestLossAndDelayWholeRun: 1 % random loss on the link and 20 ms of delay each way (a proxy in
// hast1's namespace that hast1's remote points at) for the whole run, initial sync included.
func TestLossAndDelayWholeRun(t *testing.T) {
	const delay = 20 * time.Millisecond
	for _, mode := range []string{"fullsync", "memsync"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t, envOptions{mode: mode, proxyDelay: delay})
			if err := e.net.Loss(1); err != nil {
				t.Fatal(err)
			}
			e.pair()
			base := synced(e.status(e.h1))
			vol := e.volume(e.h1)
			defer vol.Close()
			chk := e.checker(vol.Size())
			ld := startLoad(chk, vol)
			e.waitAcked(chk, 600, loadTimeout)
			st := ld.stop()
			e.waitComplete(e.h1)
			pst := e.status(e.h1)
			// Each writer has one write in flight and every acknowledgement needs the peer, so
			// no writer can complete writes faster than one per round trip through the proxy.
			if limit := uint64(writers) * (uint64(ld.took/(2*delay)) + 1); st.Acked > limit {
				t.Fatalf("%d writes acknowledged in %v by %d writers: faster than one round trip (%v) each", st.Acked, ld.took, writers, 2*delay)
			}
			d, err := e.net.Dropped()
			if err != nil {
				t.Fatal(err)
			}
			if d.LossPackets == 0 {
				t.Fatal("the loss rule dropped nothing: the run was not lossy")
			}
			if e.proxy.Accepted() < 2 {
				t.Fatalf("the proxy saw %d connections: hast1 did not replicate through it", e.proxy.Accepted())
			}
			t.Logf("load: %+v in %v; %d packets dropped", st, ld.took, d.LossPackets)

			e.requireNoLoss(e.verify(chk, "hast1's volume", vol), "primary")
			e.requireNoLoss(e.verifyLocal(chk, e.h2), "secondary")
			e.compareLocal()
			record(row{order: 3, scenario: fmt.Sprintf("1 %% loss + %v delay each way, whole run (%d packets dropped)", delay, d.LossPackets), mode: mode,
				acked: chk.Stats().Acked, lost: "0", resynced: bytesStr(int64(synced(pst) - base)), took: "–"})
		})
	}
}

// TestRestartDuringResync: writes pile up while the link is cut; after the heal the resync runs
// rate-limited and the primary daemon is restarted when half of it is done — stopped cleanly, or
// killed, when only what the lazy activemap clean-ups had written survives. The resync must
// resume — copy less after the restart than there was in total — and end with equal copies.
//
// The resource uses 256 KiB extents and keepdirty 8 so the 16 MiB volume has many more extents
// than the keepdirty LRU: extents in that LRU are set in the on-disk map and therefore resynced
// again after any restart (as in HAST), which on a volume of only 8 default-sized extents would
// be all of them.
func TestRestartDuringResync(t *testing.T) {
	const rate = 4 << 20
	cases := []struct {
		mode string
		sig  syscall.Signal
	}{
		{"fullsync", syscall.SIGTERM}, {"memsync", syscall.SIGTERM}, {"fullsync", syscall.SIGKILL},
	}
	for _, tc := range cases {
		mode := tc.mode
		t.Run(fmt.Sprintf("%s/%s", mode, unix.SignalName(tc.sig)), func(t *testing.T) {
			e := newEnv(t, envOptions{mode: mode, create: []string{"-e", "256K", "-k", "8"}})
			e.pair()
			vol := e.volume(e.h1)
			chk := e.checker(vol.Size())
			if err := e.net.Cut(faultnet.LinkDown); err != nil {
				t.Fatal(err)
			}
			ld := startLoad(chk, vol)
			e.waitStatus(e.h1, "disconnected", time.Minute, func(s appliance.ResourceStatus) bool { return !s.Connected })
			e.waitAcked(chk, 1500, loadTimeout)
			ld.stop()
			vol.Close()

			// Restart hast1 (still cut off) with a resync rate limit, so the resync lasts long
			// enough to be interrupted half way.
			e.extra[e.h1] = []string{"--sync-rate", fmt.Sprint(rate)}
			e.c.Kill(e.h1, syscall.SIGTERM)
			e.start(e.h1)
			e.role(e.h1, "primary")
			if err := e.net.Heal(); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			mid := e.waitStatus(e.h1, "half of the resync", 2*time.Minute, func(s appliance.ResourceStatus) bool {
				return s.Syncing && s.SyncTotal > 0 && s.Dirty <= s.SyncTotal/2
			})
			total, before := mid.SyncTotal, synced(mid)
			e.c.Kill(e.h1, tc.sig)
			e.start(e.h1)
			e.role(e.h1, "primary")
			e.waitComplete(e.h1)
			took := time.Since(t0)
			after := synced(e.status(e.h1))
			t.Logf("resync: %d bytes to go at the start, %d copied before the restart (dirty %d then), %d after", total, before, mid.Dirty, after)
			if after == 0 {
				t.Fatal("nothing was resynchronised after the restart: the restart did not interrupt the resync")
			}
			if int64(after) >= total {
				t.Fatalf("the resync started over after the restart: %d bytes copied after it, %d in total", after, total)
			}

			vol = e.volume(e.h1)
			defer vol.Close()
			e.requireNoLoss(e.verify(chk, "hast1's volume", vol), "primary")
			e.requireNoLoss(e.verifyLocal(chk, e.h2), "secondary after resync")
			e.compareLocal()
			record(row{order: 4, scenario: fmt.Sprintf("primary daemon restarted (%s) half way through a resync", unix.SignalName(tc.sig)), mode: mode,
				acked: chk.Stats().Acked, lost: "0",
				resynced: fmt.Sprintf("%s before + %s after the restart (of %s)", bytesStr(int64(before)), bytesStr(int64(after)), bytesStr(total)),
				took:     took.Round(time.Millisecond).String()})
		})
	}
}
