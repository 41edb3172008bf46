package bench

import (
	"bytes"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuickMatrixSmoke runs `hast bench --quick` end to end with tiny sizes and short runs: every
// target (FUSE needs root and /dev/fuse; nbdkit the Debian package, which scripts/test.sh
// installs), the resync benchmark with a sync rate, the JSON report and the PNG chart. It checks
// that every row has numbers and every target check could be evaluated; the numbers themselves
// are not judged.
func TestQuickMatrixSmoke(t *testing.T) {
	if _, err := exec.LookPath("nbdkit"); err != nil {
		t.Fatal("nbdkit is not installed: apt-get install nbdkit (scripts/test.sh does)")
	}
	dir := t.TempDir()
	pngPath := filepath.Join(dir, "chart.png")
	var stdout, stderr bytes.Buffer
	// Each run ends after a number of bytes, not after a time: a machine busy with other work
	// slows the runs down but cannot leave one without operations.
	const runBytes = 4 << 20
	args := []string{"--quick", "--size", "24M", "--bytes", "4M", "--warmup", "0", "--dir", dir,
		"--resync", "--sync-rate", "32M", "-o", "json", "--png", pngPath}
	if rc := Main(args, &stdout, &stderr); rc != 0 {
		t.Fatalf("exit status %d\nstderr:\n%s", rc, stderr.String())
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout.String())
	}
	blockSize := map[string]int{}
	for _, w := range QuickWorkloads() {
		blockSize[w.Name] = w.BlockSize
	}
	seen := map[string]bool{}
	for _, r := range rep.Rows {
		seen[r.Label()] = true
		if r.Stats == nil || r.Error != "" || r.Skipped != "" {
			t.Errorf("%s %s: no numbers (error %q, skipped %q)", r.Workload, r.Label(), r.Error, r.Skipped)
			continue
		}
		s := r.Stats
		if s.MiBps <= 0 || s.IOPS <= 0 || s.LatP50Us <= 0 || s.LatP99Us < s.LatP50Us || s.Ops <= 0 || s.CPUSeconds <= 0 {
			t.Errorf("%s %s: implausible stats %+v", r.Workload, r.Label(), s)
		}
		if bs := blockSize[r.Workload]; bs == 0 || s.Ops != runBytes/int64(bs) {
			t.Errorf("%s %s: %d operations, want exactly %d of %d bytes", r.Workload, r.Label(), s.Ops, runBytes/max(bs, 1), bs)
		}
		if r.Target != KindRaw && r.VsRaw == nil {
			t.Errorf("%s %s: no ratio against raw", r.Workload, r.Label())
		}
	}
	want := []string{"raw", "ideal", "volume/fullsync", "volume/memsync", "volume/async", "fuse/fullsync", "nbd/fullsync", "nbd-file", "nbdkit"}
	for _, l := range want {
		if !seen[l] {
			t.Errorf("no %s rows", l)
		}
	}
	if len(rep.Rows) != len(want)*len(QuickWorkloads()) {
		t.Errorf("%d rows, want %d", len(rep.Rows), len(want)*len(QuickWorkloads()))
	}
	quick := map[string]bool{}
	for _, w := range QuickWorkloads() {
		quick[w.Name] = true
	}
	for _, c := range rep.Checks {
		// The read targets need workloads the quick matrix leaves out; every other check must
		// have been evaluated.
		if c.Missing != "" && !strings.Contains(c.Missing, WSeqRead) && !strings.Contains(c.Missing, WRandR32) {
			t.Errorf("check %q not evaluated: %s", c.Name, c.Missing)
		}
	}
	if quick[WSeqRead] || quick[WRandR32] {
		t.Errorf("the quick matrix now has read workloads: the exemption above must go")
	}
	rs := rep.Resync
	if rs == nil || rs.Error != "" || rs.Bytes < rep.Settings.Region || rs.MiBps <= 0 || rs.IdealMiBps <= 0 ||
		rs.FgP99Us <= 0 || rs.BaseP99Us <= 0 || rs.RateBytes <= 0 || rs.RateRatio <= 0 {
		t.Errorf("resync result %+v", rs)
	}
	if !strings.Contains(stderr.String(), "[27/27]") {
		t.Errorf("progress lines missing:\n%s", stderr.String())
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Fatalf("chart: %v", err)
	}
}

func TestMainUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"}, {"extra"}, {"-o", "yaml"}, {"--fio"}, {"--modes", "sometimes"}, {"--baseline-io", "maybe"},
		{"--workloads", "nope"}, {"--size", "lots"}, {"--checksum", "md5"},
	} {
		var out, errb bytes.Buffer
		if rc := Main(args, &out, &errb); rc != 2 || errb.Len() == 0 {
			t.Errorf("Main(%q) = %d (stderr %q), want 2 and a message", args, rc, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if rc := Main([]string{"-h"}, &out, &errb); rc != 0 || !strings.Contains(errb.String(), "usage: hast bench") {
		t.Errorf("-h: rc %d, stderr %q", rc, errb.String())
	}
}
