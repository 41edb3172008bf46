package bench

import (
	"math"
	"math/bits"
	"time"
)

// Latencies are kept in a log-linear histogram (the HDR histogram's layout): values below
// 2^subBits nanoseconds have a bucket each, and every power-of-two range above that is split into
// 2^subBits equal buckets, so a recorded value is known to within 1/64 (1.6 %) at any magnitude,
// recording is a few instructions with no allocation, and histograms of many workers merge by
// adding counts.
const (
	subBits    = 6
	subBuckets = 1 << subBits
	// maxShift covers values up to 2^(maxShift+subBits) ns, about 9 days.
	maxShift   = 43
	numBuckets = (maxShift + 2) * subBuckets
)

// Histogram records durations. The zero value is not usable; use NewHistogram. It is not safe for
// concurrent use: each worker records into its own and the results are merged.
type Histogram struct {
	counts   []uint64
	n        uint64
	sum      float64 // ns, for the mean
	min, max int64   // ns
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{counts: make([]uint64, numBuckets), min: math.MaxInt64}
}

func bucketOf(v int64) int {
	if v < subBuckets {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	shift := bits.Len64(uint64(v)) - subBits - 1
	if shift > maxShift {
		return numBuckets - 1
	}
	return (shift+1)*subBuckets + int(uint64(v)>>uint(shift)) - subBuckets
}

// bucketRange is the [lo, hi) range of values bucket i holds.
func bucketRange(i int) (lo, hi int64) {
	if i < subBuckets {
		return int64(i), int64(i) + 1
	}
	shift := i/subBuckets - 1
	lo = int64(subBuckets+i%subBuckets) << uint(shift)
	return lo, lo + 1<<uint(shift)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += float64(v)
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
}

// Reset empties the histogram.
func (h *Histogram) Reset() {
	clear(h.counts)
	h.n, h.sum, h.min, h.max = 0, 0, math.MaxInt64, 0
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Mean is the exact mean of the recorded values (0 when empty).
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Max is the largest recorded value (exact).
func (h *Histogram) Max() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.max)
}

// Min is the smallest recorded value (exact).
func (h *Histogram) Min() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.min)
}

// Percentile returns the value below which q percent of the recorded values lie (q in [0, 100]),
// as the midpoint of the bucket holding that rank (clamped to the exact min and max), so the
// answer is within 1/128 of a recorded value. It uses the nearest-rank definition: the smallest
// value v such that at least q % of the values are <= v.
func (h *Histogram) Percentile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q / 100 * float64(h.n)))
	rank = max(rank, 1)
	rank = min(rank, h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketRange(i)
			v := lo + (hi-1-lo)/2
			v = max(v, h.min)
			v = min(v, h.max)
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}
