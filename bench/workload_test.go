package bench

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memTarget is an in-memory Target; hooks let tests corrupt or lose data.
type memTarget struct {
	mu     sync.RWMutex
	data   []byte
	reads  atomic.Int64
	writes atomic.Int64
	// perBlock counts writes per 4 KiB block when not nil.
	perBlock []atomic.Int32
	// onWrite may change where or what is written; it returns the offset to use, or -1 to
	// drop the write. It runs under the lock.
	onWrite func(n int64, p []byte, off int64) int64
	failAt  int64 // a write at this offset fails (when > 0)
}

func newMemTarget(size int) *memTarget { return &memTarget{data: make([]byte, size)} }

func (m *memTarget) Size() int64  { return int64(len(m.data)) }
func (m *memTarget) Flush() error { return nil }

func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	m.reads.Add(1)
	m.mu.RLock()
	defer m.mu.RUnlock()
	return copy(p, m.data[off:]), nil
}

var errInjected = errors.New("injected failure")

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	n := m.writes.Add(1)
	if m.failAt > 0 && off == m.failAt {
		return 0, errInjected
	}
	if m.perBlock != nil {
		m.perBlock[off/4096].Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.onWrite != nil {
		if off = m.onWrite(n, p, off); off < 0 {
			return len(p), nil
		}
	}
	copy(m.data[off:], p)
	return len(p), nil
}

func TestSizeModeCountsExactly(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    Workload
	}{
		{"seq-write", Workload{Pattern: Sequential, BlockSize: 4096, QueueDepth: 4}},
		{"rand-read", Workload{Pattern: Random, ReadPercent: 100, BlockSize: 8192, QueueDepth: 8}},
		{"rand-mix", Workload{Pattern: Random, ReadPercent: 50, BlockSize: 4096, QueueDepth: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemTarget(1 << 20)
			w := tc.w
			w.Name = tc.name
			w.TotalBytes = 4 << 20
			res, err := Run(context.Background(), m, w)
			if err != nil {
				t.Fatal(err)
			}
			ops := w.TotalBytes / int64(w.BlockSize)
			if res.Ops != ops || res.Bytes() != w.TotalBytes {
				t.Fatalf("ops %d bytes %d, want %d and %d", res.Ops, res.Bytes(), ops, w.TotalBytes)
			}
			if res.ReadOps+res.WriteOps != res.Ops || int64(res.Lat.Count()) != res.Ops {
				t.Fatalf("reads %d + writes %d, latencies %d, want %d each way", res.ReadOps, res.WriteOps, res.Lat.Count(), res.Ops)
			}
			switch {
			case w.ReadPercent == 0 && res.ReadOps != 0, w.ReadPercent == 100 && res.WriteOps != 0:
				t.Fatalf("mix %d%% read gave %d reads, %d writes", w.ReadPercent, res.ReadOps, res.WriteOps)
			case w.ReadPercent == 50 && (res.ReadOps < ops/3 || res.WriteOps < ops/3):
				t.Fatalf("50%% mix gave %d reads, %d writes of %d", res.ReadOps, res.WriteOps, ops)
			}
			// The target saw at least the measured operations.
			if seen := m.reads.Load() + m.writes.Load(); seen < ops {
				t.Fatalf("target saw %d operations, fewer than the %d counted", seen, ops)
			}
			if res.Elapsed <= 0 || res.IOPS() <= 0 || res.MiBps() <= 0 {
				t.Fatalf("elapsed %v, IOPS %v, MiB/s %v", res.Elapsed, res.IOPS(), res.MiBps())
			}
		})
	}
}

func TestSequentialWritesCoverTheRegionOnce(t *testing.T) {
	const size = 1 << 20
	m := newMemTarget(2 * size)
	m.perBlock = make([]atomic.Int32, 2*size/4096)
	w := Workload{Name: "seq", BlockSize: 4096, QueueDepth: 1, TotalBytes: size, Region: size}
	if _, err := Run(context.Background(), m, w); err != nil {
		t.Fatal(err)
	}
	for b := range m.perBlock {
		want := int32(1)
		if b >= size/4096 {
			want = 0 // outside the region
		}
		if got := m.perBlock[b].Load(); got != want {
			t.Fatalf("block %d written %d times, want %d", b, got, want)
		}
	}
}

func TestRandomOffsetsStayAlignedInRegion(t *testing.T) {
	const region = 256 << 10
	m := newMemTarget(1 << 20)
	var bad atomic.Int64
	m.onWrite = func(_ int64, p []byte, off int64) int64 {
		if off%int64(len(p)) != 0 || off+int64(len(p)) > region {
			bad.Store(off + 1)
		}
		return off
	}
	w := Workload{Name: "rand", Pattern: Random, BlockSize: 8192, QueueDepth: 4, TotalBytes: 2 << 20, Region: region}
	if _, err := Run(context.Background(), m, w); err != nil {
		t.Fatal(err)
	}
	if off := bad.Load(); off != 0 {
		t.Fatalf("write at offset %d is misaligned or outside the %d-byte region", off-1, region)
	}
}

func TestVerifyPassesOnACorrectTarget(t *testing.T) {
	m := newMemTarget(1 << 20)
	w := Workload{Name: "v", Pattern: Random, ReadPercent: 30, BlockSize: 4096, QueueDepth: 4, TotalBytes: 2 << 20, Verify: true}
	res, err := Run(context.Background(), m, w)
	if err != nil {
		t.Fatal(err)
	}
	if res.Verified == 0 {
		t.Fatal("nothing was verified")
	}
}

func TestVerifyCatchesCorruption(t *testing.T) {
	for _, tc := range []struct {
		name string
		hook func(m *memTarget) func(n int64, p []byte, off int64) int64
		want string
	}{
		// 3 MiB of sequential writes over 1 MiB: writes 513..768 are the last pass, whose
		// damage no later write repairs.
		{"flipped byte", func(m *memTarget) func(int64, []byte, int64) int64 {
			return func(n int64, p []byte, off int64) int64 {
				if n == 700 {
					copy(m.data[off:], p)
					m.data[off+100] ^= 0x40
					return -1
				}
				return off
			}
		}, "CRC"},
		{"lost write", func(*memTarget) func(int64, []byte, int64) int64 {
			return func(n int64, _ []byte, off int64) int64 {
				if n > 600 && n%7 == 0 {
					return -1
				}
				return off
			}
		}, "lost"},
		{"misdirected write", func(*memTarget) func(int64, []byte, int64) int64 {
			return func(n int64, p []byte, off int64) int64 {
				if n == 700 {
					return off - int64(len(p))
				}
				return off
			}
		}, "holds the block written for offset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemTarget(1 << 20)
			m.onWrite = tc.hook(m)
			// Depth 1 keeps the order of writes, and so which pass a write belongs to, fixed.
			w := Workload{Name: "v", Pattern: Sequential, BlockSize: 4096, QueueDepth: 1, TotalBytes: 3 << 20, Verify: true}
			_, err := Run(context.Background(), m, w)
			if !errors.Is(err, ErrVerify) {
				t.Fatalf("err = %v, want ErrVerify", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestTargetErrorStopsTheRun(t *testing.T) {
	m := newMemTarget(1 << 20)
	m.failAt = 12 * 4096
	w := Workload{Name: "e", BlockSize: 4096, QueueDepth: 2, TotalBytes: 8 << 20}
	_, err := Run(context.Background(), m, w)
	if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), "offset 49152") {
		t.Fatalf("err = %v, want the injected failure with its offset", err)
	}
}

func TestTimeModeAndStop(t *testing.T) {
	m := newMemTarget(1 << 20)
	stop := make(chan struct{})
	w := Workload{Name: "t", BlockSize: 4096, QueueDepth: 2, Runtime: time.Hour, Stop: stop}
	time.AfterFunc(100*time.Millisecond, func() { close(stop) })
	res, err := Run(context.Background(), m, w)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops == 0 || res.Elapsed >= time.Hour {
		t.Fatalf("ops %d elapsed %v: Stop did not end the measured phase", res.Ops, res.Elapsed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := Run(ctx, m, Workload{Name: "c", BlockSize: 4096, QueueDepth: 1, Runtime: time.Hour}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: err = %v", err)
	}
}

func TestWorkloadValidation(t *testing.T) {
	m := newMemTarget(64 << 10)
	for _, w := range []Workload{
		{Name: "bs", BlockSize: 0, QueueDepth: 1, TotalBytes: 1},
		{Name: "qd", BlockSize: 4096, QueueDepth: 0, TotalBytes: 1},
		{Name: "mix", BlockSize: 4096, QueueDepth: 1, ReadPercent: 101, TotalBytes: 1},
		{Name: "len", BlockSize: 4096, QueueDepth: 1},
		{Name: "big", BlockSize: 128 << 10, QueueDepth: 1, TotalBytes: 1},
		{Name: "vsmall", BlockSize: 16, QueueDepth: 1, TotalBytes: 1, Verify: true},
		{Name: "vdepth", BlockSize: 32 << 10, QueueDepth: 4, TotalBytes: 1, Verify: true},
	} {
		if _, err := Run(context.Background(), m, w); err == nil || !strings.Contains(err.Error(), "workload "+w.Name) {
			t.Errorf("workload %s: err = %v, want a validation error naming it", w.Name, err)
		}
	}
}

// The generator allocates nothing per I/O: ten times the operations cost no more allocations.
func TestNoAllocationPerIO(t *testing.T) {
	m := newMemTarget(1 << 20)
	mallocs := func(total int64) uint64 {
		w := Workload{Name: "a", Pattern: Random, ReadPercent: 50, BlockSize: 4096, QueueDepth: 4, TotalBytes: total, Verify: true}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := Run(context.Background(), m, w); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.Mallocs - before.Mallocs
	}
	// MemStats counts the whole process: goroutines left by earlier tests may still allocate
	// a little, so a few attempts are allowed. An allocation per I/O would add 18000 each time.
	var small, large uint64
	for attempt := 0; attempt < 3; attempt++ {
		small, large = mallocs(2000*4096), mallocs(20000*4096)
		if large <= small+500 {
			return
		}
	}
	t.Fatalf("20000 ops made %d allocations, 2000 ops %d: the generator allocates per I/O", large, small)
}
