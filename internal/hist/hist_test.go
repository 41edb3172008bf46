package hist

import (
	"sync"
	"testing"
	"time"
)

func TestBucketsAndQuantiles(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{500 * time.Nanosecond, 3 * time.Microsecond, 3 * time.Microsecond, 100 * time.Microsecond, 10 * time.Millisecond} {
		h.Observe(d)
	}
	s := h.Snapshot()
	if s.Count() != 5 {
		t.Fatalf("count %d", s.Count())
	}
	want := map[int]uint64{0: 1, 2: 2, 7: 1, 14: 1} // 3 µs → [2,4); 100 µs → [64,128); 10 ms → [8192,16384) µs
	for i, c := range s.Counts {
		if c != want[i] {
			t.Fatalf("bucket %d = %d, want %d (all %v)", i, c, want[i], s.Counts)
		}
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.2, time.Microsecond}, {0.5, 4 * time.Microsecond}, {0.8, 128 * time.Microsecond}, {0.99, 16384 * time.Microsecond}} {
		if got := s.Quantile(tc.q); got != tc.want {
			t.Errorf("q%.2f = %v, want %v", tc.q, got, tc.want)
		}
	}
	if s.Sum != 500*time.Nanosecond+6*time.Microsecond+100*time.Microsecond+10*time.Millisecond {
		t.Fatalf("sum %v", s.Sum)
	}
	var empty Histogram
	if empty.Snapshot().Quantile(0.5) != 0 {
		t.Fatal("empty histogram quantile")
	}
	h.Observe(100 * time.Hour)
	if h.Snapshot().Counts[Buckets-1] != 1 {
		t.Fatal("overflow not in the last bucket")
	}
}

func TestConcurrentObserve(t *testing.T) {
	var h Histogram
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				h.Observe(time.Duration(i) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	if n := h.Snapshot().Count(); n != 8000 {
		t.Fatalf("count %d", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	var h Histogram
	for i := 0; i < b.N; i++ {
		h.Observe(time.Duration(i&1023) * time.Microsecond)
	}
}
