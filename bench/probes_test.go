package bench

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestProbedVolumeRows: the volume+probes target runs the volume again with the eBPF probes
// loaded, in the same round, and reports rows beside the volume's (its cost, not a timed
// assertion).
func TestProbedVolumeRows(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--targets", "volume,volume+probes", "--modes", "fullsync", "--workloads", WLatWrite,
		"--size", "24M", "--bytes", "1M", "--warmup", "0", "--repeat", "1", "--no-resync", "--dir", t.TempDir(), "-o", "json"}
	if rc := Main(args, &stdout, &stderr); rc != 0 {
		t.Fatalf("exit status %d\nstderr:\n%s", rc, stderr.String())
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout.String())
	}
	seen := map[string]int64{}
	for _, r := range rep.Rows {
		if r.Stats == nil || r.Error != "" || r.Skipped != "" {
			t.Errorf("%s: no numbers (error %q, skipped %q)", r.Label(), r.Error, r.Skipped)
			continue
		}
		seen[r.Label()] = r.Stats.Ops
	}
	for _, l := range []string{"volume/fullsync", "volume+probes/fullsync"} {
		if seen[l] != 1<<20/4096 {
			t.Errorf("%s: %d operations, want %d (rows %v)", l, seen[l], 1<<20/4096, seen)
		}
	}
}
