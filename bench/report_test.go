package bench

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"strings"
	"testing"
)

func statsRow(workload, target, mode string, readPct, qd int, mibps, p50, p99 float64) *Row {
	return &Row{Source: SourceGenerator, Workload: workload, Target: target, Mode: mode, BlockSize: 4096, QueueDepth: qd,
		ReadPercent: readPct, Stats: &Stats{MiBps: mibps, IOPS: mibps * 256, LatMeanUs: p50, LatP50Us: p50, LatP99Us: p99,
			LatP999Us: 2 * p99, CPUShare: 0.3, CPUPerGiB: 1, ElapsedS: 2}}
}

// sampleReport has every row the targets need, with round numbers.
func sampleReport() *Report {
	rep := &Report{Machine: Machine{CPUs: 2, Kernel: "6.1"}, Settings: Settings{Size: 1 << 30, Region: 1 << 30, RuntimeS: 2, Repeat: 1, BaselineIO: "O_DIRECT", Dir: "/tmp"}}
	add := func(r *Row) { rep.Rows = append(rep.Rows, r) }
	for _, w := range []string{WSeqWrite, WRandW32, WLatWrite} {
		qd := 8
		if w == WLatWrite {
			qd = 1
		}
		add(statsRow(w, KindRaw, "", 0, qd, 1000, 50, 100))
		add(statsRow(w, KindIdeal, "", 0, qd, 800, 80, 200))
		add(statsRow(w, KindVolume, "fullsync", 0, qd, 400, 100, 300))
		add(statsRow(w, KindVolume, "memsync", 0, qd, 600, 90, 250))
		add(statsRow(w, KindVolume, "async", 0, qd, 300, 90, 250))
		add(statsRow(w, KindFUSE, "fullsync", 0, qd, 200, 150, 500))
		add(statsRow(w, KindNBD, "fullsync", 0, qd, 100, 150, 500))
		add(statsRow(w, KindNBDFile, "", 0, qd, 500, 40, 90))
		add(statsRow(w, KindNBDKit, "", 0, qd, 250, 40, 90))
	}
	for _, w := range []string{WSeqRead, WRandR32} {
		add(statsRow(w, KindNBDFile, "", 100, 32, 300, 40, 90))
		add(statsRow(w, KindNBDKit, "", 100, 32, 400, 40, 90))
	}
	rep.Resync = &ResyncResult{Bytes: 1 << 30, Seconds: 2, MiBps: 512, IdealMiBps: 1024, Ratio: 0.5, SyncRate: 100 << 20, RateMiBps: 99, RateRatio: 0.99}
	return rep
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestFinishComputesRatios(t *testing.T) {
	rep := sampleReport()
	rep.Finish()
	get := func(w, target, mode string) *Row {
		r := rep.find(SourceGenerator, w, target, mode)
		if r == nil {
			t.Fatalf("row %s %s/%s missing", w, target, mode)
		}
		return r
	}
	vol := get(WSeqWrite, KindVolume, "fullsync")
	if vol.VsRaw == nil || !near(*vol.VsRaw, 0.4) || vol.VsIdeal == nil || !near(*vol.VsIdeal, 0.5) {
		t.Fatalf("volume ratios raw %v ideal %v, want 0.4 and 0.5", vol.VsRaw, vol.VsIdeal)
	}
	if vol.VsVolume != nil || vol.VsNBDKit != nil {
		t.Fatal("the volume row has a frontend ratio")
	}
	fuse := get(WSeqWrite, KindFUSE, "fullsync")
	if fuse.VsVolume == nil || !near(*fuse.VsVolume, 0.5) {
		t.Fatalf("fuse vs volume %v, want 0.5", fuse.VsVolume)
	}
	nbd := get(WSeqWrite, KindNBD, "fullsync")
	if nbd.VsVolume == nil || !near(*nbd.VsVolume, 0.25) || nbd.VsNBDKit == nil || !near(*nbd.VsNBDKit, 0.4) {
		t.Fatalf("nbd vs volume %v vs nbdkit %v, want 0.25 and 0.4", nbd.VsVolume, nbd.VsNBDKit)
	}
	if r := get(WSeqWrite, KindRaw, ""); r.VsRaw != nil || r.VsIdeal != nil {
		t.Fatal("the raw row is compared with itself")
	}
}

func TestChecksAndFlags(t *testing.T) {
	rep := sampleReport()
	// A latency run that used every CPU, and a volume faster than raw.
	rep.find(SourceGenerator, WLatWrite, KindVolume, "async").Stats.CPUShare = 0.97
	rep.find(SourceGenerator, WRandW32, KindVolume, "memsync").Stats.MiBps = 2000
	rep.find(SourceGenerator, WRandW32, KindVolume, "memsync").Stats.FlushMs = 1500
	rep.Finish()
	checks := map[string]Check{}
	for _, c := range rep.Checks {
		if c.Missing != "" {
			t.Errorf("check %q not evaluated: %s", c.Name, c.Missing)
		}
		checks[c.Name] = c
	}
	for name, want := range map[string]struct {
		value float64
		pass  bool
	}{
		"FUSE 1 MiB seq write QD8 vs volume (fullsync)":                          {0.5, false},
		"NBD export (file backend) vs nbdkit, 1 MiB seq write":                   {2, true},
		"NBD export (file backend) vs nbdkit, 4 KiB rand read QD32":              {0.75, false},
		"volume fullsync 1 MiB seq write QD8 vs ideal":                           {0.5, false},
		"volume memsync vs fullsync, 1 MiB seq write QD8":                        {1.5, true},
		"volume async vs fullsync, 1 MiB seq write QD8":                          {0.75, false},
		"volume fullsync 4 KiB write QD1: p50 over ideal p50":                    {20, true},
		"volume fullsync 4 KiB write QD1: p99 vs ideal p99":                      {1.5, true},
		"resync of a dirty volume vs ideal copy":                                 {0.5, false},
		"sync rate honoured (measured / configured)":                             {0.99, true},
		"volume fullsync CPU-seconds per GiB written vs ideal (1 MiB seq write)": {1, true},
	} {
		c, ok := checks[name]
		if !ok {
			t.Errorf("check %q missing", name)
			continue
		}
		if !near(c.Value, want.value) || c.Pass != want.pass {
			t.Errorf("check %q = %v pass %v, want %v pass %v", name, c.Value, c.Pass, want.value, want.pass)
		}
	}
	rules := map[string]string{}
	for _, f := range rep.Flags {
		rules[f.Rule] += f.Row + ";"
	}
	if !strings.Contains(rules["cpu-starved"], WLatWrite+" volume/async") {
		t.Errorf("cpu-starved flags: %q", rules["cpu-starved"])
	}
	if !strings.Contains(rules["faster-than-raw"], WRandW32+" volume/memsync") || strings.Contains(rules["faster-than-raw"], "nbd-file") {
		t.Errorf("faster-than-raw flags: %q (only replicated targets may trip it)", rules["faster-than-raw"])
	}
	if !strings.Contains(rules["buffered-writes"], WRandW32+" volume/memsync") {
		t.Errorf("buffered-writes flags: %q", rules["buffered-writes"])
	}
	if len(rep.Flags) != 3 {
		t.Errorf("%d flags, want 3: %+v", len(rep.Flags), rep.Flags)
	}
}

func TestReadLatencyBelowRawFlag(t *testing.T) {
	rep := &Report{Rows: []*Row{
		statsRow("lat-read", KindRaw, "", 100, 1, 40, 80, 200),
		statsRow("lat-read", KindFUSE, "fullsync", 100, 1, 60, 30, 90),
	}}
	rep.Finish()
	if len(rep.Flags) != 1 || rep.Flags[0].Rule != "read-latency-below-raw" {
		t.Fatalf("flags %+v, want one read-latency-below-raw", rep.Flags)
	}
}

func TestMissingRowsMakeChecksNotApplicable(t *testing.T) {
	rep := &Report{Rows: []*Row{statsRow(WSeqWrite, KindRaw, "", 0, 8, 100, 10, 20)}}
	rep.Finish()
	for _, c := range rep.Checks {
		if c.Missing == "" || c.Pass {
			t.Errorf("check %q evaluated without its rows: %+v", c.Name, c)
		}
	}
}

func TestTableAndJSON(t *testing.T) {
	rep := sampleReport()
	rep.Rows = append(rep.Rows, &Row{Source: SourceGenerator, Workload: WSeqWrite, Target: KindNBDKit, Mode: "x", Skipped: "nbdkit is not installed"})
	rep.Notes = []string{"a note"}
	rep.Finish()
	var tb bytes.Buffer
	if err := rep.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	out := tb.String()
	for _, want := range []string{
		"== " + WSeqWrite + " (generator, write, bs 4KiB, QD 8)",
		"×raw", "×ideal", "×volume", "×nbdkit",
		"  nbdkit/x skipped: nbdkit is not installed",
		"MISS  FUSE 1 MiB seq write QD8 vs volume (fullsync)",
		"ok    volume memsync vs fullsync, 1 MiB seq write QD8",
		"== resync of a dirty volume",
		"note: a note",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	found := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "volume/fullsync" && f[1] == "400.0" && f[2] == "102.4k" {
			found = true
		}
	}
	if !found {
		t.Errorf("table has no row \"volume/fullsync 400.0 102.4k ...\":\n%s", out)
	}
	var jb bytes.Buffer
	if err := rep.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(jb.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != len(rep.Rows) || len(back.Checks) != len(rep.Checks) || back.Resync == nil || back.Resync.Ratio != 0.5 {
		t.Fatalf("JSON round trip lost data: %d rows, %d checks, resync %+v", len(back.Rows), len(back.Checks), back.Resync)
	}
	r := back.Rows[2] // volume/fullsync
	if r.Target != KindVolume || r.Mode != "fullsync" || r.Stats.MiBps != 400 || r.VsRaw == nil || !near(*r.VsRaw, 0.4) {
		t.Fatalf("row after JSON round trip: %+v", r)
	}
	var generic map[string]any
	json.Unmarshal(jb.Bytes(), &generic)
	for _, k := range []string{"machine", "settings", "rows", "checks", "red_flags", "resync"} {
		if _, ok := generic[k]; !ok {
			t.Errorf("JSON lacks %q", k)
		}
	}
}

func TestPNGDecodes(t *testing.T) {
	rep := sampleReport()
	rep.Rows = append(rep.Rows, &Row{Source: SourceGenerator, Workload: WSeqWrite, Target: KindNBDKit, Mode: "x", Skipped: "missing"})
	rep.Finish()
	var b bytes.Buffer
	if err := rep.WritePNG(&b); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	bounds := img.Bounds()
	if bounds.Dx() != chartW || bounds.Dy() < 3*len(rep.Rows)*rowH/3 {
		t.Fatalf("image is %v", bounds)
	}
	// The widest throughput bar of a workload spans tputW pixels in its target's colour;
	// raw (1000 MiB/s) is the widest in every group here.
	colours := map[[3]uint32]int{}
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		r, g, bl, _ := img.At(tputX+tputW-2, y).RGBA()
		colours[[3]uint32{r >> 8, g >> 8, bl >> 8}]++
	}
	raw := kindColor[KindRaw]
	if colours[[3]uint32{uint32(raw.R), uint32(raw.G), uint32(raw.B)}] == 0 {
		t.Fatal("no full-width raw bar found")
	}
	// Half as fast, half as long: ideal (800) ends before the end of raw's bar.
	idealCol := kindColor[KindIdeal]
	found := false
	for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
		r, g, bl, _ := img.At(tputX+tputW*8/10-2, y).RGBA()
		if uint8(r>>8) == idealCol.R && uint8(g>>8) == idealCol.G && uint8(bl>>8) == idealCol.B {
			found = true
			if r2, g2, b2, _ := img.At(tputX+tputW*8/10+2, y).RGBA(); uint8(r2>>8) == idealCol.R && uint8(g2>>8) == idealCol.G && uint8(b2>>8) == idealCol.B {
				t.Fatal("ideal's bar is longer than 80 % of raw's")
			}
		}
	}
	if !found {
		t.Fatal("ideal's bar does not reach 80 % of raw's")
	}
}
