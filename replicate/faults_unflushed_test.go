package replicate

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"hast/blockdev"
)

// These tests stop one leg of a request at a precise point to exercise the bookkeeping of
// extents the secondary acknowledged but has not flushed: if the link drops, such an extent
// must be resynchronised, because a secondary that loses power loses it. Each ends with a
// power loss on the secondary and checks that the resync brought every acknowledged write
// back.

// writeBlock writes block blk through the primary, recording it in ck.
func writeBlock(t *testing.T, f *faultPair, ck *ackChecker, blk int) {
	t.Helper()
	buf := make([]byte, ackBlock)
	seq := ck.begin(blk, buf)
	_, err := f.p.WriteAt(buf, int64(blk)*ackBlock)
	ck.done(blk, seq, err)
	if err != nil {
		t.Fatal(err)
	}
}

// waitIdle waits until no write is in flight on the primary (both legs done).
func waitIdle(t *testing.T, f *faultPair) {
	t.Helper()
	waitFor(t, "writes to finish", 10*time.Second, func() bool { return f.p.Status().Inflight == 0 })
}

// crashSecondaryAndResync cuts the secondary, drops its cache, brings it back and checks that
// everything acknowledged is on it once the nodes are in sync.
func crashSecondaryAndResync(t *testing.T, f *faultPair, ck *ackChecker) {
	t.Helper()
	f.cut()
	f.smem.PowerLoss()
	f.sec.restore()
	f.waitSynced()
	requireClean(t, "secondary after power loss and resync", ck.verify(f.image(f.smem), ck.snapshot()))
	f.requireEqualCopies()
}

// A write the peer acknowledges while a Flush is on its way, after the peer has flushed, is
// not covered by that flush and must still count as unflushed when the Flush returns.
func TestFaultWriteAckedDuringFlushStaysUnflushed(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			f.smem.SetPowerLossMode(true)
			ck := newAckChecker(f.p.Size())
			writeBlock(t, f, ck, 0)
			waitIdle(t, f)
			// Hold the primary's local flush: the Flush below stays open after the peer
			// has flushed.
			f.phold.arm(func(op blockdev.Op, _ int64) bool { return op == blockdev.OpFlush })
			before := f.smem.Flushes()
			flushed := make(chan error, 1)
			go func() { flushed <- f.p.Flush() }()
			waitFor(t, "the peer's flush", 10*time.Second, func() bool { return f.smem.Flushes() > before })
			writeBlock(t, f, ck, 1) // same extent, lands in the peer's cache after its flush
			waitIdle(t, f)
			f.phold.release(nil)
			if err := <-flushed; err != nil {
				t.Fatal(err)
			}
			crashSecondaryAndResync(t, f, ck)
		})
	}
}

// linkPending returns how many requests the primary's current link has in flight.
func linkPending(p *Primary) int {
	l := p.lnk.Load()
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pending)
}

// The peer acknowledges a write, then the link drops while the write's local leg is still
// running: when the local leg ends there is no link whose loss would resynchronise the
// extent, so the write itself must leave it dirty.
func TestFaultRemoteAckedWriteFinishingAfterLinkDrop(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			f.smem.SetPowerLossMode(true)
			ck := newAckChecker(f.p.Size())
			const blk = 3 * faultExtent / ackBlock
			dataOff := f.localOff(f.pmem) + blk*ackBlock
			f.phold.arm(func(op blockdev.Op, off int64) bool { return op == blockdev.OpWrite && off == dataOff })
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				writeBlock(t, f, ck, blk)
			}()
			<-f.phold.entered
			waitFor(t, "the peer's reply", 10*time.Second, func() bool {
				img := f.image(f.smem)
				return !bytes.Equal(img[blk*ackBlock:(blk+1)*ackBlock], make([]byte, ackBlock)) && linkPending(f.p) == 0
			})
			f.cut()
			f.phold.release(nil)
			<-wrote
			waitIdle(t, f)
			crashSecondaryAndResync(t, f, ck)
		})
	}
}

// A Flush whose remote part fails because the link drops must leave the extents it was
// covering dirty, even when the link's own clean-up ran before the Flush came back.
func TestFaultFlushFailingWithTheLink(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			f := newFaultPair(t, mode, nil)
			f.smem.SetPowerLossMode(true)
			ck := newAckChecker(f.p.Size())
			writeBlock(t, f, ck, 0)
			waitIdle(t, f)
			f.phold.arm(func(op blockdev.Op, _ int64) bool { return op == blockdev.OpFlush })
			f.shold.arm(func(op blockdev.Op, _ int64) bool { return op == blockdev.OpFlush })
			flushed := make(chan error, 1)
			go func() { flushed <- f.p.Flush() }()
			<-f.shold.entered // the FLUSH reached the secondary's disk
			f.drainEvents()
			cut := make(chan struct{})
			go func() {
				defer close(cut)
				f.sec.cut()
			}()
			waitFor(t, "the primary to process the disconnection", 10*time.Second, func() bool {
				for {
					select {
					case e := <-f.events:
						if e == EventDisconnect {
							return true
						}
					default:
						return false
					}
				}
			})
			f.shold.release(errHeld) // the secondary died before its flush completed
			<-cut
			f.phold.release(nil)
			if err := <-flushed; err != nil {
				t.Fatal(err)
			}
			f.smem.PowerLoss()
			f.sec.restore()
			f.waitSynced()
			requireClean(t, "secondary after power loss and resync", ck.verify(f.image(f.smem), ck.snapshot()))
			f.requireEqualCopies()
		})
	}
}

// clearOrderDevice records, per extent, data written since the last completed flush, and
// reports every activemap write that shows such an extent clean: a crash could then keep the
// map and lose the data, and the extent would never be resynchronised.
type clearOrderDevice struct {
	blockdev.Device
	localOff, extent int64
	mu               sync.Mutex
	gen              uint64
	written          map[int64]uint64 // extent → generation of its last data write
	bad              []string
	mapWrites        int
}

func (d *clearOrderDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	switch {
	case off == blockdev.MetadataSize:
		d.mapWrites++
		for e := range d.written {
			if p[e/8]&(1<<(e%8)) == 0 && len(d.bad) < 8 {
				d.bad = append(d.bad, fmt.Sprintf("activemap write %d clears extent %d, whose data is not flushed", d.mapWrites, e))
			}
		}
	case off >= d.localOff:
		d.gen++
		for e := (off - d.localOff) / d.extent; e <= (off-d.localOff+int64(len(p))-1)/d.extent; e++ {
			d.written[e] = d.gen
		}
	}
	d.mu.Unlock()
	return d.Device.WriteAt(p, off)
}

func (d *clearOrderDevice) Flush() error {
	d.mu.Lock()
	g := d.gen
	d.mu.Unlock()
	if err := d.Device.Flush(); err != nil {
		return err
	}
	d.mu.Lock()
	for e, w := range d.written {
		if w <= g {
			delete(d.written, e)
		}
	}
	d.mu.Unlock()
	return nil
}

// An extent may be shown clean in the on-disk activemap only once the data written to it is
// durable. With keepdirty 1 every write to another extent evicts the previous one, so each
// activemap update clears the extent written just before.
func TestFaultActivemapClearsOnlyDurableExtents(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			var od *clearOrderDevice
			f := newFaultPairWith(t, mode, 1, func(d blockdev.Device) blockdev.Device {
				md, err := blockdev.ReadMetadata(d, "r0")
				if err != nil {
					t.Fatal(err)
				}
				od = &clearOrderDevice{Device: d, localOff: int64(md.LocalOff), extent: int64(md.ExtentSize), written: map[int64]uint64{}}
				return od
			}, nil)
			ck := newAckChecker(f.p.Size())
			for e := 0; e < 16; e++ {
				writeBlock(t, f, ck, e*faultExtent/ackBlock)
			}
			waitIdle(t, f)
			if err := f.p.Close(); err != nil { // writes the final map
				t.Fatal(err)
			}
			od.mu.Lock()
			defer od.mu.Unlock()
			if od.mapWrites < 16 {
				t.Fatalf("only %d activemap writes for 16 extents with keepdirty 1", od.mapWrites)
			}
			if len(od.bad) > 0 {
				t.Fatalf("%d activemap writes; ordering violations:\n%s", od.mapWrites, joinLines(od.bad))
			}
		})
	}
}

func joinLines(s []string) string {
	var b bytes.Buffer
	for _, l := range s {
		b.WriteString("\t" + l + "\n")
	}
	return b.String()
}
