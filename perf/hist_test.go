package perf

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestBucketBounds(t *testing.T) {
	// Every bucket is contiguous with the next, and every value lands in the bucket whose
	// bounds hold it.
	for i := 0; i < Buckets-1; i++ {
		if Upper(i) <= Lower(i) {
			t.Fatalf("bucket %d: [%d, %d)", i, Lower(i), Upper(i))
		}
		if Bucket(Lower(i)) != i || Bucket(Upper(i)-1) != i {
			t.Fatalf("bucket %d [%d,%d): Bucket(lower)=%d Bucket(upper-1)=%d", i, Lower(i), Upper(i), Bucket(Lower(i)), Bucket(Upper(i)-1))
		}
		if w := float64(Upper(i)-Lower(i)) / float64(Lower(i)); Lower(i) >= 16 && w > 0.125 {
			t.Fatalf("bucket %d is %.3f of its lower bound wide", i, w)
		}
	}
	if Lower(Buckets-1) != 15<<36 {
		t.Fatalf("last bucket starts at %d", Lower(Buckets-1))
	}
	for _, v := range []uint64{1 << 40, 1 << 50, ^uint64(0)} {
		if Bucket(v) != Buckets-1 {
			t.Fatalf("Bucket(%d) = %d", v, Bucket(v))
		}
	}
	for range 100000 {
		v := rand.Uint64N(1 << 40)
		i := Bucket(v)
		if v < Lower(i) || v >= Upper(i) {
			t.Fatalf("%d in bucket %d [%d,%d)", v, i, Lower(i), Upper(i))
		}
	}
}

func TestQuantilesAndOctaves(t *testing.T) {
	var h Hist
	obs := func(d time.Duration, n int) {
		for range n {
			h.Counts[Bucket(uint64(d))]++
			h.SumNs += uint64(d)
		}
	}
	obs(10*time.Microsecond, 90)
	obs(1*time.Millisecond, 9)
	obs(100*time.Millisecond, 1)
	if h.Count() != 100 {
		t.Fatal(h.Count())
	}
	for _, c := range []struct {
		q     float64
		exact time.Duration
	}{{0.5, 10 * time.Microsecond}, {0.95, time.Millisecond}, {0.999, 100 * time.Millisecond}} {
		got := h.Quantile(c.q)
		if got < c.exact || float64(got) > 1.125*float64(c.exact) {
			t.Errorf("q%v = %v, want [%v, +12.5%%]", c.q, got, c.exact)
		}
	}
	oct := h.Octaves()
	// 10 µs = 10000 ns is in [2^13, 2^14).
	if oct[13] != 90 || oct[19] != 9 || oct[26] != 1 {
		t.Fatalf("octaves %v", oct)
	}
	old := h
	obs(10*time.Microsecond, 5)
	if d := h.Sub(&old); d.Count() != 5 || d.SumNs != 5*10000 {
		t.Fatalf("delta %d %d", d.Count(), d.SumNs)
	}
}
