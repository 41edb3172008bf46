// Package hist is a lock-free latency histogram with power-of-two buckets, cheap enough for the
// data path (one atomic add per observation). The daemon exports it as Prometheus histograms
// and `hast list` prints percentiles from it.
package hist

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Buckets: bucket i counts durations in [2^(i-1), 2^i) microseconds (bucket 0: < 1 µs), up to
// about 2^31 µs (36 minutes); longer ones land in the last bucket.
const Buckets = 32

// Histogram counts durations. The zero value is ready to use.
type Histogram struct {
	counts [Buckets]atomic.Uint64
	sumNs  atomic.Uint64
}

// Observe records d.
func (h *Histogram) Observe(d time.Duration) {
	us := uint64(d / time.Microsecond)
	b := bits.Len64(us)
	if b >= Buckets {
		b = Buckets - 1
	}
	h.counts[b].Add(1)
	h.sumNs.Add(uint64(d))
}

// Since records the time since t.
func (h *Histogram) Since(t time.Time) { h.Observe(time.Since(t)) }

// Snapshot is a copy of a histogram's counts.
type Snapshot struct {
	Counts [Buckets]uint64
	Sum    time.Duration
}

// Snapshot copies the counts (not atomically as a whole; each bucket is exact).
func (h *Histogram) Snapshot() Snapshot {
	var s Snapshot
	for i := range s.Counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = time.Duration(h.sumNs.Load())
	return s
}

// Count is the number of observations.
func (s Snapshot) Count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// UpperBound is the exclusive upper bound of bucket i.
func UpperBound(i int) time.Duration {
	return time.Duration(uint64(1)<<uint(i)) * time.Microsecond
}

// Quantile estimates the q-quantile (0..1) as the upper bound of the bucket holding it, so
// the estimate is never below the true value and at most twice it.
func (s Snapshot) Quantile(q float64) time.Duration {
	i := QuantileBucket(s.Counts[:], q)
	if i < 0 {
		return 0
	}
	return UpperBound(i)
}

// QuantileBucket returns the index of the bucket of counts that holds the q-quantile (0..1), or
// -1 when counts are all zero.
func QuantileBucket(counts []uint64, q float64) int {
	var n uint64
	for _, c := range counts {
		n += c
	}
	if n == 0 {
		return -1
	}
	rank := uint64(q*float64(n) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			return i
		}
	}
	return len(counts) - 1
}
