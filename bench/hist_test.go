package bench

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketsCoverValuesContiguously(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		v := int64(rng.Uint64N(1 << uint(rng.IntN(48))))
		b := bucketOf(v)
		lo, hi := bucketRange(b)
		if v < lo || v >= hi {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, b, lo, hi)
		}
		if v >= subBuckets && float64(hi-lo) > float64(lo)/subBuckets+1 {
			t.Fatalf("bucket %d = [%d, %d) is wider than 1/%d of its values", b, lo, hi, subBuckets)
		}
	}
	// Consecutive buckets tile the number line.
	for b := 1; b < numBuckets; b++ {
		_, prevHi := bucketRange(b - 1)
		lo, _ := bucketRange(b)
		if lo != prevHi {
			t.Fatalf("bucket %d starts at %d, previous ends at %d", b, lo, prevHi)
		}
	}
}

func TestPercentilesMatchSortedData(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	h := NewHistogram()
	var vals []int64
	var sum float64
	for i := 0; i < 100000; i++ {
		// Log-uniform between 1 µs and 100 ms, like latencies.
		v := int64(math.Pow(10, 3+5*rng.Float64()))
		vals = append(vals, v)
		sum += float64(v)
		h.Record(time.Duration(v))
	}
	slices.Sort(vals)
	for _, q := range []float64{0, 1, 50, 90, 99, 99.9, 99.99, 100} {
		rank := int(math.Ceil(q / 100 * float64(len(vals))))
		rank = max(rank, 1)
		want := vals[rank-1]
		got := int64(h.Percentile(q))
		if diff := math.Abs(float64(got - want)); diff > float64(want)/subBuckets+1 {
			t.Errorf("p%v = %d, exact %d (off by %.0f, more than 1/%d)", q, got, want, diff, subBuckets)
		}
	}
	if got, want := h.Mean(), time.Duration(sum/float64(len(vals))); got != want {
		t.Errorf("mean %v, want %v", got, want)
	}
	if h.Min() != time.Duration(vals[0]) || h.Max() != time.Duration(vals[len(vals)-1]) {
		t.Errorf("min/max %v/%v, want %v/%v", h.Min(), h.Max(), vals[0], vals[len(vals)-1])
	}
	if h.Count() != uint64(len(vals)) {
		t.Errorf("count %d, want %d", h.Count(), len(vals))
	}
}

func TestMergeEqualsRecordingEverything(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	all, a, b := NewHistogram(), NewHistogram(), NewHistogram()
	for i := 0; i < 10000; i++ {
		d := time.Duration(rng.Int64N(int64(10 * time.Millisecond)))
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(b)
	for _, q := range []float64{10, 50, 99, 99.9} {
		if a.Percentile(q) != all.Percentile(q) {
			t.Errorf("p%v merged %v, direct %v", q, a.Percentile(q), all.Percentile(q))
		}
	}
	if a.Count() != all.Count() || a.Min() != all.Min() || a.Max() != all.Max() {
		t.Errorf("merged count/min/max %d/%v/%v, direct %d/%v/%v", a.Count(), a.Min(), a.Max(), all.Count(), all.Min(), all.Max())
	}
	a.Reset()
	if a.Count() != 0 || a.Percentile(50) != 0 || a.Mean() != 0 {
		t.Errorf("reset histogram not empty: count %d p50 %v", a.Count(), a.Percentile(50))
	}
}

func TestPercentileOfFewValues(t *testing.T) {
	h := NewHistogram()
	for _, v := range []time.Duration{100 * time.Microsecond, 200 * time.Microsecond, 5 * time.Millisecond} {
		h.Record(v)
	}
	// Nearest rank: p50 of three values is the second, p99 the third.
	if got := h.Percentile(50); math.Abs(float64(got-200*time.Microsecond)) > float64(200*time.Microsecond)/subBuckets {
		t.Errorf("p50 = %v, want about 200µs", got)
	}
	if got := h.Percentile(99); got != 5*time.Millisecond {
		t.Errorf("p99 = %v, want the maximum 5ms (clamped to the exact max)", got)
	}
}
