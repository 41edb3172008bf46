package replicate

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"hast/blockdev"
	"hast/internal/testsupport"
	"hast/replicate/proto"
)

// Async writes keep a copy of their data for the peer, charged to a budget of the resource's
// (AsyncBufferBytes, made small here): these tests stop one leg of the writes and count what
// gets through.
const (
	asyncTestBuffer = 1 << 20
	asyncTestWrite  = 192 << 10 // two remote requests (MaxIO and the rest)
	asyncTestFit    = asyncTestBuffer / asyncTestWrite
	asyncTestWrites = 24 // 4.5 times the budget
)

// newAsyncPair is an async fault pair with a small copy budget and a link timeout far longer
// than any test, so that a stalled peer is not disconnected, which would free the copies.
func newAsyncPair(t *testing.T) *faultPair {
	t.Helper()
	return newFaultPair(t, ModeAsync, func(c *Config) {
		c.Timeout = time.Minute
		c.asyncBuffer = asyncTestBuffer
	})
}

// asyncWriters writes asyncTestWrites blocks of asyncTestWrite bytes at once, each at its own
// offset, and records when each returns.
type asyncWriters struct {
	data     [][]byte
	returned atomic.Int32
	errs     []chan error // one result a writer
}

func startAsyncWriters(f *faultPair, seed uint64) *asyncWriters {
	rng := rand.New(rand.NewPCG(seed, seed))
	w := &asyncWriters{}
	for i := range asyncTestWrites {
		b := randBlock(rng, asyncTestWrite)
		ch := make(chan error, 1)
		w.data = append(w.data, b)
		w.errs = append(w.errs, ch)
		go func() {
			_, err := f.p.WriteAt(b, int64(i)*asyncTestWrite)
			w.returned.Add(1)
			ch <- err
		}()
	}
	return w
}

// waiting returns how many writers wait for the copy budget.
func waiting(p *Primary) int {
	_, q := p.copies.State()
	return len(q)
}

// wait returns every writer's error, oldest first.
func (w *asyncWriters) wait(t *testing.T) []error {
	t.Helper()
	errs := make([]error, len(w.errs))
	for i, ch := range w.errs {
		errs[i] = testsupport.Receive(t, fmt.Sprintf("writer %d", i), ch)
	}
	return errs
}

// TestAsyncCopiesBounded: while the secondary applies nothing, async writes are acknowledged
// until their copies fill the budget, and the others wait for the peer instead of holding more;
// when it resumes they all go through and the secondary ends up with every one of them, without
// a resynchronisation.
func TestAsyncCopiesBounded(t *testing.T) {
	f := newAsyncPair(t)
	soff := f.localOff(f.smem)
	f.shold.arm(func(op blockdev.Op, off int64) bool { return op == blockdev.OpWrite && off >= soff })
	synced := f.p.Status().Stats.SyncedBytes

	w := startAsyncWriters(f, 1)
	// Every writer has either been acknowledged or queued for the budget; none can move on
	// before the secondary does.
	waitFor(t, "the writers to be acknowledged or to wait", time.Minute, func() bool {
		return int(w.returned.Load())+waiting(f.p) == asyncTestWrites
	})
	if n := int(w.returned.Load()); n > asyncTestFit {
		t.Fatalf("%d async writes (%d KiB) acknowledged while the secondary applied none: their copies exceed the %d KiB budget",
			n, n*asyncTestWrite>>10, asyncTestBuffer>>10)
	} else if n < asyncTestFit {
		t.Fatalf("%d async writes acknowledged while the secondary applied none, want the %d that fit the budget", n, asyncTestFit)
	}
	if avail, _ := f.p.copies.State(); avail != asyncTestBuffer-asyncTestFit*asyncTestWrite {
		t.Errorf("%d bytes of the budget left, want %d", avail, asyncTestBuffer-asyncTestFit*asyncTestWrite)
	}

	f.shold.release(nil)
	for i, err := range w.wait(t) {
		if err != nil {
			t.Errorf("write %d: %v", i, err)
		}
	}
	// A write larger than the whole budget is charged all of it and goes through alone.
	big := randBlock(rand.New(rand.NewPCG(2, 2)), 2*asyncTestBuffer)
	bigOff := int64(asyncTestWrites * asyncTestWrite)
	bigDone := make(chan error, 1)
	go func() { _, err := f.p.WriteAt(big, bigOff); bigDone <- err }()
	if err := testsupport.Receive(t, "a write of twice the budget", bigDone); err != nil {
		t.Fatalf("write of twice the budget: %v", err)
	}
	waitFor(t, "the copies to be given back", time.Minute, func() bool {
		avail, _ := f.p.copies.State()
		return avail == asyncTestBuffer
	})

	if s := f.p.Status(); !s.Connected || s.Stats.SyncedBytes != synced {
		t.Fatalf("the link went down or a synchronisation ran (connected %v, %d bytes synced)", s.Connected, s.Stats.SyncedBytes-synced)
	}
	img := f.image(f.smem)
	for i, b := range w.data {
		if !bytes.Equal(img[i*asyncTestWrite:(i+1)*asyncTestWrite], b) {
			t.Errorf("the secondary does not have write %d", i)
		}
	}
	if !bytes.Equal(img[bigOff:bigOff+int64(len(big))], big) {
		t.Error("the secondary does not have the write larger than the budget")
	}
	f.requireEqualCopies()
}

// TestAsyncCopiesShutdown: closing the primary while writers wait for the copy budget makes
// them fail with ErrNotPrimary at once, whether the copies are held by a stalled peer or by
// local writes that do not finish (then only the cancellation can end the wait).
func TestAsyncCopiesShutdown(t *testing.T) {
	for _, stall := range []string{"peer", "local disk"} {
		t.Run(stall, func(t *testing.T) {
			f := newAsyncPair(t)
			hold, mem := f.shold, f.smem
			var w *asyncWriters
			// Writers holding copies have returned (the peer stalls) or are held in their local
			// write (the disk stalls); the others wait for the budget.
			holding := func() int { return int(w.returned.Load()) }
			if stall == "local disk" {
				hold, mem = f.phold, f.pmem
				holding = func() int { return len(f.phold.entered) }
			}
			off := f.localOff(mem)
			hold.arm(func(op blockdev.Op, o int64) bool { return op == blockdev.OpWrite && o >= off })
			w = startAsyncWriters(f, 3)
			waitFor(t, "the writers to hold copies or to wait", time.Minute, func() bool {
				return holding()+waiting(f.p) == asyncTestWrites
			})
			if n := waiting(f.p); n != asyncTestWrites-asyncTestFit {
				t.Fatalf("%d writers wait for the budget, want %d", n, asyncTestWrites-asyncTestFit)
			}

			closed := make(chan error, 1)
			start := time.Now()
			go func() { closed <- f.p.Close() }()
			// Promptly: well within the link's timeout, and (disk) while the writers holding
			// the copies are still held.
			want := asyncTestWrites
			if stall == "local disk" {
				want -= asyncTestFit
			}
			waitFor(t, "the waiting writers to return", 10*time.Second, func() bool { return int(w.returned.Load()) == want })
			t.Logf("the waiting writers returned %v after Close began", time.Since(start).Round(time.Millisecond))
			failed := 0
			for i, ch := range w.errs {
				select {
				case err := <-ch:
					if errors.Is(err, ErrNotPrimary) {
						failed++
					} else if err != nil {
						t.Errorf("writer %d: %v", i, err)
					}
				default:
				}
			}
			if failed != asyncTestWrites-asyncTestFit {
				t.Errorf("%d writers failed with ErrNotPrimary, want the %d that waited", failed, asyncTestWrites-asyncTestFit)
			}
			hold.release(nil)
			if err := testsupport.Receive(t, "Close", closed); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

// TestAsyncPooledCopies: async copies come from the buffer pool and go back to it once the peer
// has them. Writers each rewrite their own region with every size from 4 KiB to 512 KiB (split
// into several requests), with checksums and compression making the link read the payloads,
// so a copy pooled while still in use is sent with another write's data (or, with -race,
// reported): the secondary must end up with what the primary has.
func TestAsyncPooledCopies(t *testing.T) {
	f := newFaultPair(t, ModeAsync, func(c *Config) {
		c.Checksum = proto.ChecksumCRC32
		c.Compression = proto.CompressionLZF
	})
	synced := f.p.Status().Stats.SyncedBytes
	const writers, region = 8, faultDisk / 8
	errs := make(chan error, writers)
	for i := range writers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(i), 4))
			var err error
			for round := range 24 {
				size := 4096 << (round % 8)
				b := randBlock(rng, size)
				clear(b[:size/2]) // half compressible
				off := int64(i*region) + rng.Int64N(int64(region-size)/4096)*4096
				if _, err = f.p.WriteAt(b, off); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for i := range writers {
		if err := testsupport.Receive(t, fmt.Sprintf("writer %d", i), errs); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the copies to be given back", time.Minute, func() bool {
		avail, _ := f.p.copies.State()
		return avail == f.p.copies.Size()
	})
	// A resynchronisation would repair what the link got wrong.
	if s := f.p.Status(); !s.Connected || s.Stats.SyncedBytes != synced {
		t.Fatalf("the link went down or a synchronisation ran (connected %v, %d bytes synced)", s.Connected, s.Stats.SyncedBytes-synced)
	}
	f.requireEqualCopies()
}
