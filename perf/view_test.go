package perf

import (
	"strings"
	"testing"
	"time"

	"hast/internal/hist"
)

// TestFrame: a frame is the difference of two samples, per second of the interval between them.
func TestFrame(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)
	var w0, w1 hist.Histogram
	var k0, k1 Hist
	w0.Observe(100 * time.Microsecond) // before the interval: not in the frame
	w1.Observe(100 * time.Microsecond)
	for range 200 {
		w1.Observe(100 * time.Microsecond) // [64, 128) µs
	}
	k1.Counts[Bucket(50000)] = 200 // 50 µs
	k1.SumNs, k1.Bytes = 200*50000, 200*4096
	old := Sample{Time: t0, Engine: map[string]hist.Snapshot{"write": w0.Snapshot()},
		Kernel: &Snapshot{Probes: map[string]*Hist{"block_write": &k0}, Counters: map[string]uint64{"tcp_retransmits": 3}}, Probes: "on"}
	cur := Sample{Time: t0.Add(2 * time.Second), Engine: map[string]hist.Snapshot{"write": w1.Snapshot()},
		Kernel: &Snapshot{Probes: map[string]*Hist{"block_write": &k1}, Counters: map[string]uint64{"tcp_retransmits": 5}}, Probes: "on"}
	f := NewFrame(old, cur)
	if f.IntervalS != 2 || len(f.Engine) != len(EngineStages) || len(f.Kernel) != 1 || f.Counters["tcp_retransmits"] != 2 {
		t.Fatalf("frame %+v", f)
	}
	w := f.Engine[0]
	if w.Name != "write" || w.Count != 200 || w.Rate != 100 || w.P50Us != 128 || len(w.Buckets) != 1 || w.Buckets[0].LeUs != 128 {
		t.Errorf("engine write row %+v", w)
	}
	b := f.Kernel[0]
	if b.Name != "block_write" || b.Count != 200 || b.Rate != 100 || b.Bytes != 200*4096 || b.MeanUs != 50 ||
		b.P50Us < 50 || b.P50Us > 50*1.125 {
		t.Errorf("kernel block_write row %+v", b)
	}
	wide := f.Text(0)
	row := strings.Fields(strings.Split(wide, "\n")[4])
	if len(row) < 10 || row[0] != "write" || row[1] != "100" || row[2] != "128µs" || row[8] != "block_write" || row[9] != "100" {
		t.Errorf("side by side:\n%s", wide)
	}
	narrow := f.Text(80)
	if strings.Contains(strings.Split(narrow, "\n")[4], "block_write") || !strings.Contains(narrow, "\nKERNEL") {
		t.Errorf("stacked at 80 columns:\n%s", narrow)
	}
}
