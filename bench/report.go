package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Target kinds, as they appear in reports.
const (
	KindRaw     = "raw"
	KindIdeal   = "ideal"
	KindVolume  = "volume"
	KindProbed  = "volume+probes" // the volume with hast perf's eBPF probes loaded: their cost
	KindFUSE    = "fuse"
	KindNBD     = "nbd"
	KindNBDFile = "nbd-file"
	KindNBDKit  = "nbdkit"
)

// AllKinds lists every target kind in report order.
var AllKinds = []string{KindRaw, KindIdeal, KindVolume, KindProbed, KindFUSE, KindNBD, KindNBDFile, KindNBDKit}

// DefaultKinds are the targets run unless --targets says otherwise: all but volume+probes.
var DefaultKinds = []string{KindRaw, KindIdeal, KindVolume, KindFUSE, KindNBD, KindNBDFile, KindNBDKit}

// Sources of rows.
const (
	SourceGenerator = "generator"
	SourceFio       = "fio"
)

// Report is everything one `hast bench` run measured.
type Report struct {
	Machine  Machine       `json:"machine"`
	Settings Settings      `json:"settings"`
	Rows     []*Row        `json:"rows"`
	Resync   *ResyncResult `json:"resync,omitempty"`
	Checks   []Check       `json:"checks"`
	Flags    []Flag        `json:"red_flags"`
	Notes    []string      `json:"notes,omitempty"`
}

// Settings echo the options a report was measured with.
type Settings struct {
	Command     string  `json:"command,omitempty"`
	Size        int64   `json:"size_bytes"`
	Region      int64   `json:"region_bytes"`
	RuntimeS    float64 `json:"runtime_s"`
	BytesPerRun int64   `json:"bytes_per_run,omitempty"` // --bytes: runs end after this much I/O, not after runtime_s
	WarmupS     float64 `json:"warmup_s"`
	Repeat      int     `json:"repeat"`
	BaselineIO  string  `json:"baseline_io"`
	Dir         string  `json:"dir"`
	KeepDirty   uint32  `json:"keepdirty,omitempty"` // the volume's keepdirty LRU length
}

// Row is one workload on one target: the representative run (median throughput of the
// repetitions) and the ratios against the baselines measured in the same report.
type Row struct {
	Source      string    `json:"source"`
	Workload    string    `json:"workload"`
	Target      string    `json:"target"`
	Mode        string    `json:"mode,omitempty"`
	BlockSize   int       `json:"block_size"`
	QueueDepth  int       `json:"queue_depth"`
	ReadPercent int       `json:"read_percent"`
	Stats       *Stats    `json:"stats,omitempty"`
	RunsMiBps   []float64 `json:"runs_mibps,omitempty"`
	Skipped     string    `json:"skipped,omitempty"`
	Error       string    `json:"error,omitempty"`
	VsRaw       *float64  `json:"vs_raw,omitempty"`
	VsIdeal     *float64  `json:"vs_ideal,omitempty"`
	VsVolume    *float64  `json:"vs_volume,omitempty"`
	VsNBDKit    *float64  `json:"vs_nbdkit,omitempty"`
}

// Label is target/mode.
func (r *Row) Label() string {
	if r.Mode == "" {
		return r.Target
	}
	return r.Target + "/" + r.Mode
}

// Stats are a run's figures in report units.
type Stats struct {
	MiBps      float64 `json:"mibps"`
	IOPS       float64 `json:"iops"`
	LatMeanUs  float64 `json:"lat_mean_us"`
	LatP50Us   float64 `json:"lat_p50_us"`
	LatP99Us   float64 `json:"lat_p99_us"`
	LatP999Us  float64 `json:"lat_p999_us"`
	LatP9999Us float64 `json:"lat_p9999_us,omitempty"`
	LatMaxUs   float64 `json:"lat_max_us"`
	CPUSeconds float64 `json:"cpu_s"`
	// CPUShare is the fraction of all CPUs the run used.
	CPUShare  float64 `json:"cpu_share"`
	CPUPerGiB float64 `json:"cpu_s_per_gib"`
	FlushMs   float64 `json:"flush_after_ms"`
	Ops       int64   `json:"ops"`
	ElapsedS  float64 `json:"elapsed_s"`
	Verified  int64   `json:"verified_blocks,omitempty"`
	// ActivemapUpdates per 1000 writes (replicated targets only).
	ActivemapPerKWrite float64 `json:"activemap_updates_per_1000_writes,omitempty"`
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// StatsOf converts a generator result.
func StatsOf(r *Result, cores int) *Stats {
	return &Stats{
		MiBps: r.MiBps(), IOPS: r.IOPS(),
		LatMeanUs: us(r.Lat.Mean()), LatP50Us: us(r.Lat.Percentile(50)), LatP99Us: us(r.Lat.Percentile(99)),
		LatP999Us: us(r.Lat.Percentile(99.9)), LatP9999Us: us(r.Lat.Percentile(99.99)), LatMaxUs: us(r.Lat.Max()),
		CPUSeconds: r.CPU.Seconds(), CPUShare: r.CPUShare(cores), CPUPerGiB: r.CPUPerGiB(),
		FlushMs: float64(r.FlushTime) / float64(time.Millisecond), Ops: r.Ops, ElapsedS: r.Elapsed.Seconds(),
		Verified: r.Verified, ActivemapPerKWrite: perK(r.ActivemapUpdates, r.WriteOps),
	}
}

func perK(n, of int64) float64 {
	if of <= 0 {
		return 0
	}
	return 1000 * float64(n) / float64(of)
}

// Check is one of the performance targets, evaluated on this report's ratios.
type Check struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Op     string  `json:"op"` // ">=" or "<="
	Target float64 `json:"target"`
	Unit   string  `json:"unit"` // "x" (ratio), "us" (latency) or "us+" (latency difference)
	Pass   bool    `json:"pass"`
	Detail string  `json:"detail,omitempty"`
	// Missing says why the check could not be evaluated (a row was not run or failed).
	Missing string `json:"missing,omitempty"`
}

// Flag is a tripped sanity rule (kbench's red flags, plus a buffered-writes rule).
type Flag struct {
	Row  string `json:"row"`
	Rule string `json:"rule"`
	Text string `json:"text"`
}

// Thresholds of the red-flag rules.
const (
	// fasterSlack tolerates run-to-run noise before "faster than raw" trips.
	fasterSlack = 1.05
	// cpuStarved is the share of all CPUs above which a latency run is CPU-starved.
	cpuStarved = 0.90
	// bufferedFlush: a flush after the run longer than this share of the run means the writes
	// had been acknowledged from the page cache.
	bufferedFlush = 0.10
)

func (rep *Report) find(source, workload, target, mode string) *Row {
	for _, r := range rep.Rows {
		if r.Source == source && r.Workload == workload && r.Target == target && r.Mode == mode && r.Stats != nil {
			return r
		}
	}
	return nil
}

func ratio(a, b float64) *float64 {
	if b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return nil
	}
	v := a / b
	return &v
}

// throughput is the figure ratios compare: MiB/s (the same ratio as IOPS for one workload).
func throughput(s *Stats) float64 { return s.MiBps }

// Finish computes ratios, checks and red flags. It may be called again after rows are added.
func (rep *Report) Finish() {
	for _, r := range rep.Rows {
		r.VsRaw, r.VsIdeal, r.VsVolume, r.VsNBDKit = nil, nil, nil, nil
		if r.Stats == nil {
			continue
		}
		t := throughput(r.Stats)
		if r.Target != KindRaw {
			if b := rep.find(r.Source, r.Workload, KindRaw, ""); b != nil {
				r.VsRaw = ratio(t, throughput(b.Stats))
			}
		}
		if r.Target != KindIdeal && r.Target != KindRaw {
			if b := rep.find(r.Source, r.Workload, KindIdeal, ""); b != nil {
				r.VsIdeal = ratio(t, throughput(b.Stats))
			}
		}
		if r.Target == KindFUSE || r.Target == KindNBD {
			if b := rep.find(r.Source, r.Workload, KindVolume, r.Mode); b != nil {
				r.VsVolume = ratio(t, throughput(b.Stats))
			}
		}
		if r.Target == KindNBD || r.Target == KindNBDFile {
			if b := rep.find(r.Source, r.Workload, KindNBDKit, ""); b != nil {
				r.VsNBDKit = ratio(t, throughput(b.Stats))
			}
		}
	}
	rep.Checks = rep.checks()
	rep.Flags = rep.flags()
}

// Names of the quick matrix's workloads, which the targets are defined on.
const (
	WSeqWrite = "seqwrite-1m-qd8"
	WRandW32  = "randwrite-4k-qd32"
	WSeqRead  = "seqread-1m-qd8"
	WRandR32  = "randread-4k-qd32"
	WLatWrite = "lat-4k-qd1-write"
)

func (rep *Report) checks() []Check {
	var out []Check
	for _, r := range rep.Rows {
		if r.Source == SourceFio && r.Workload == "fsync-etcd" && r.Stats != nil {
			out = append(out, Check{Name: "etcd fsync rule on " + r.Target + ": p99 fdatasync latency", Op: "<=",
				Target: 10000, Unit: "us", Value: r.Stats.LatP99Us, Pass: r.Stats.LatP99Us <= 10000,
				Detail: fmt.Sprintf("p99 %s", fmtUs(r.Stats.LatP99Us))})
		}
	}
	if !rep.hasGenerator() {
		return out
	}

	g := SourceGenerator
	ratioCheck := func(name string, num, den *Row, numWhat, denWhat string, min float64, iops bool) {
		c := Check{Name: name, Op: ">=", Target: min, Unit: "x"}
		switch {
		case num == nil:
			c.Missing = numWhat + " was not measured"
		case den == nil:
			c.Missing = denWhat + " was not measured"
		default:
			if v := ratio(throughput(num.Stats), throughput(den.Stats)); v != nil {
				c.Value = *v
				c.Pass = c.Value >= min
				if iops {
					c.Detail = fmt.Sprintf("%s IOPS vs %s IOPS", fmtNum(num.Stats.IOPS), fmtNum(den.Stats.IOPS))
				} else {
					c.Detail = fmt.Sprintf("%.0f MiB/s vs %.0f MiB/s", num.Stats.MiBps, den.Stats.MiBps)
				}
			} else {
				c.Missing = denWhat + " measured zero"
			}
		}
		out = append(out, c)
	}
	row := func(w, target, mode string) *Row { return rep.find(g, w, target, mode) }
	full := "fullsync"

	ratioCheck("FUSE 1 MiB seq write QD8 vs volume (fullsync)", row(WSeqWrite, KindFUSE, full), row(WSeqWrite, KindVolume, full), "fuse/fullsync "+WSeqWrite, "volume/fullsync "+WSeqWrite, 0.70, false)
	ratioCheck("FUSE 4 KiB rand write QD32 vs volume (fullsync)", row(WRandW32, KindFUSE, full), row(WRandW32, KindVolume, full), "fuse/fullsync "+WRandW32, "volume/fullsync "+WRandW32, 0.40, true)
	ratioCheck("NBD export (file backend) vs nbdkit, 1 MiB seq write", row(WSeqWrite, KindNBDFile, ""), row(WSeqWrite, KindNBDKit, ""), "nbd-file "+WSeqWrite, "nbdkit "+WSeqWrite, 1.0, false)
	ratioCheck("NBD export (file backend) vs nbdkit, 4 KiB rand write QD32", row(WRandW32, KindNBDFile, ""), row(WRandW32, KindNBDKit, ""), "nbd-file "+WRandW32, "nbdkit "+WRandW32, 1.0, true)
	ratioCheck("NBD export (file backend) vs nbdkit, 1 MiB seq read", row(WSeqRead, KindNBDFile, ""), row(WSeqRead, KindNBDKit, ""), "nbd-file "+WSeqRead, "nbdkit "+WSeqRead, 1.0, false)
	ratioCheck("NBD export (file backend) vs nbdkit, 4 KiB rand read QD32", row(WRandR32, KindNBDFile, ""), row(WRandR32, KindNBDKit, ""), "nbd-file "+WRandR32, "nbdkit "+WRandR32, 1.0, true)
	ratioCheck("NBD export (replicated, fullsync) vs nbdkit, 1 MiB seq write", row(WSeqWrite, KindNBD, full), row(WSeqWrite, KindNBDKit, ""), "nbd/fullsync "+WSeqWrite, "nbdkit "+WSeqWrite, 1.0, false)
	ratioCheck("NBD export (replicated, fullsync) vs nbdkit, 4 KiB rand write QD32", row(WRandW32, KindNBD, full), row(WRandW32, KindNBDKit, ""), "nbd/fullsync "+WRandW32, "nbdkit "+WRandW32, 1.0, true)
	ratioCheck("volume fullsync 1 MiB seq write QD8 vs ideal", row(WSeqWrite, KindVolume, full), row(WSeqWrite, KindIdeal, ""), "volume/fullsync "+WSeqWrite, "ideal "+WSeqWrite, 0.90, false)
	ratioCheck("volume fullsync 4 KiB rand write QD32 vs ideal", row(WRandW32, KindVolume, full), row(WRandW32, KindIdeal, ""), "volume/fullsync "+WRandW32, "ideal "+WRandW32, 0.75, true)
	for _, m := range []string{"memsync", "async"} {
		ratioCheck("volume "+m+" vs fullsync, 1 MiB seq write QD8", row(WSeqWrite, KindVolume, m), row(WSeqWrite, KindVolume, full), "volume/"+m+" "+WSeqWrite, "volume/fullsync "+WSeqWrite, 1.0, false)
		ratioCheck("volume "+m+" vs fullsync, 4 KiB rand write QD32", row(WRandW32, KindVolume, m), row(WRandW32, KindVolume, full), "volume/"+m+" "+WRandW32, "volume/fullsync "+WRandW32, 1.0, true)
	}

	vol, id := row(WLatWrite, KindVolume, full), row(WLatWrite, KindIdeal, "")
	p50 := Check{Name: "volume fullsync 4 KiB write QD1: p50 over ideal p50", Op: "<=", Target: 30, Unit: "us+"}
	p99 := Check{Name: "volume fullsync 4 KiB write QD1: p99 vs ideal p99", Op: "<=", Target: 2, Unit: "x"}
	if vol == nil || id == nil {
		p50.Missing = "volume/fullsync and ideal " + WLatWrite + " are needed"
		p99.Missing = p50.Missing
	} else {
		p50.Value = vol.Stats.LatP50Us - id.Stats.LatP50Us
		p50.Pass = p50.Value <= p50.Target
		p50.Detail = fmt.Sprintf("p50 %s vs %s", fmtUs(vol.Stats.LatP50Us), fmtUs(id.Stats.LatP50Us))
		if v := ratio(vol.Stats.LatP99Us, id.Stats.LatP99Us); v != nil {
			p99.Value = *v
			p99.Pass = p99.Value <= p99.Target
		}
		p99.Detail = fmt.Sprintf("p99 %s vs %s", fmtUs(vol.Stats.LatP99Us), fmtUs(id.Stats.LatP99Us))
	}
	out = append(out, p50, p99)

	vs, is := row(WSeqWrite, KindVolume, full), row(WSeqWrite, KindIdeal, "")
	cpu := Check{Name: "volume fullsync CPU-seconds per GiB written vs ideal (1 MiB seq write)", Op: "<=", Target: 1.3, Unit: "x"}
	if vs == nil || is == nil {
		cpu.Missing = "volume/fullsync and ideal " + WSeqWrite + " are needed"
	} else if v := ratio(vs.Stats.CPUPerGiB, is.Stats.CPUPerGiB); v != nil {
		cpu.Value = *v
		cpu.Pass = cpu.Value <= cpu.Target
		cpu.Detail = fmt.Sprintf("%.2f vs %.2f CPU-s/GiB", vs.Stats.CPUPerGiB, is.Stats.CPUPerGiB)
	} else {
		cpu.Missing = "ideal used no measurable CPU"
	}
	out = append(out, cpu)

	rs := Check{Name: "resync of a dirty volume vs ideal copy", Op: ">=", Target: 0.85, Unit: "x"}
	switch {
	case rep.Resync == nil:
		rs.Missing = "the resync benchmark was not run"
	case rep.Resync.Error != "":
		rs.Missing = "the resync benchmark failed: " + rep.Resync.Error
	default:
		rs.Value = rep.Resync.Ratio
		rs.Pass = rs.Value >= rs.Target
		rs.Detail = fmt.Sprintf("%.0f MiB/s vs %.0f MiB/s", rep.Resync.MiBps, rep.Resync.IdealMiBps)
	}
	out = append(out, rs)
	if rep.Resync != nil && rep.Resync.Error == "" && rep.Resync.SyncRate > 0 {
		c := Check{Name: "sync rate honoured (measured / configured)", Op: "<=", Target: 1.05, Unit: "x",
			Value: rep.Resync.RateRatio, Detail: fmt.Sprintf("%.1f MiB/s measured, %.1f MiB/s configured",
				rep.Resync.RateMiBps, float64(rep.Resync.SyncRate)/(1<<20))}
		c.Pass = c.Value <= c.Target && c.Value >= 0.90
		out = append(out, c)
	}
	return out
}

func (rep *Report) hasGenerator() bool {
	for _, r := range rep.Rows {
		if r.Source == SourceGenerator {
			return true
		}
	}
	return false
}

func isProduct(target string) bool {
	return target == KindVolume || target == KindFUSE || target == KindNBD
}

func (rep *Report) flags() []Flag {
	var out []Flag
	for _, r := range rep.Rows {
		if r.Stats == nil {
			continue
		}
		label := r.Source + " " + r.Workload + " " + r.Label()
		raw := rep.find(r.Source, r.Workload, KindRaw, "")
		// The "replicated" rules: a protocol that copies data twice cannot beat the bare disk.
		product := isProduct(r.Target) || (r.Source == SourceFio && r.Target != KindRaw)
		if product && raw != nil {
			if r.ReadPercent == 0 && r.VsRaw != nil && *r.VsRaw > fasterSlack {
				out = append(out, Flag{Row: label, Rule: "faster-than-raw",
					Text: fmt.Sprintf("writes at %.2f× raw: probably not crash-consistent (acknowledged from a cache)", *r.VsRaw)})
			}
			if r.ReadPercent == 100 && r.Stats.LatP50Us < raw.Stats.LatP50Us/fasterSlack {
				out = append(out, Flag{Row: label, Rule: "read-latency-below-raw",
					Text: fmt.Sprintf("read p50 %s below raw's %s: measuring a cache", fmtUs(r.Stats.LatP50Us), fmtUs(raw.Stats.LatP50Us))})
			}
		}
		if r.QueueDepth == 1 && r.Stats.CPUShare > cpuStarved {
			out = append(out, Flag{Row: label, Rule: "cpu-starved",
				Text: fmt.Sprintf("latency run used %.0f %% of all CPUs: CPU-starved, latencies include waiting for a CPU", 100*r.Stats.CPUShare)})
		}
		if r.ReadPercent < 100 && r.Stats.ElapsedS > 0 && r.Stats.FlushMs/1000 > bufferedFlush*r.Stats.ElapsedS {
			out = append(out, Flag{Row: label, Rule: "buffered-writes",
				Text: fmt.Sprintf("the flush after the run took %s (%.0f %% of the run): writes were acknowledged before reaching the disk", fmtUs(r.Stats.FlushMs*1000), 100*r.Stats.FlushMs/1000/r.Stats.ElapsedS)})
		}
	}
	return out
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	return nil
}

func fmtUs(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v < 1000:
		return fmt.Sprintf("%.0fµs", v)
	case v < 1e6:
		return fmt.Sprintf("%.2fms", v/1000)
	}
	return fmt.Sprintf("%.2fs", v/1e6)
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtRatio(v *float64) string {
	if v == nil {
		return ""
	}
	return fmt.Sprintf("%.2f", *v)
}

// WriteTable prints the report for a terminal: one block per workload, then the targets and the
// red flags.
func (rep *Report) WriteTable(w io.Writer) error {
	ew := &errWriter{w: w}
	fmt.Fprintf(ew, "machine: %s\n", rep.Machine)
	s := rep.Settings
	fmt.Fprintf(ew, "size %s per file (region %s), runtime %v, warm-up %v, %d repetition(s), baselines %s, dir %s\n",
		fmtBytes(s.Size), fmtBytes(s.Region), time.Duration(s.RuntimeS*float64(time.Second)), time.Duration(s.WarmupS*float64(time.Second)),
		s.Repeat, s.BaselineIO, s.Dir)
	if s.BytesPerRun != 0 {
		fmt.Fprintf(ew, "each run ends after %s of I/O, not after the runtime\n", fmtBytes(s.BytesPerRun))
	}
	if s.KeepDirty != 0 {
		fmt.Fprintf(ew, "volume: keepdirty %d\n", s.KeepDirty)
	}
	for _, rows := range rep.workloadGroups() {
		r0 := rows[0]
		mix := "write"
		switch {
		case r0.ReadPercent == 100:
			mix = "read"
		case r0.ReadPercent > 0:
			mix = fmt.Sprintf("%d%% read", r0.ReadPercent)
		}
		fmt.Fprintf(ew, "\n== %s (%s, %s, bs %s, QD %d)\n", r0.Workload, r0.Source, mix, fmtBytes(int64(r0.BlockSize)), r0.QueueDepth)
		// Ratio columns appear only where some row has that ratio.
		type col struct {
			name string
			get  func(*Row) *float64
		}
		var cols []col
		for _, c := range []col{
			{"×raw", func(r *Row) *float64 { return r.VsRaw }},
			{"×ideal", func(r *Row) *float64 { return r.VsIdeal }},
			{"×volume", func(r *Row) *float64 { return r.VsVolume }},
			{"×nbdkit", func(r *Row) *float64 { return r.VsNBDKit }},
		} {
			for _, r := range rows {
				if c.get(r) != nil {
					cols = append(cols, c)
					break
				}
			}
		}
		// Labels are padded here so that they stay left-aligned in a right-aligned table.
		lw := len("target")
		for _, r := range rows {
			lw = max(lw, len(r.Label()))
		}
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "%-*s\tMiB/s\tIOPS\tmean\tp50\tp99\tp99.9\tCPU\tCPU-s/GiB\t", lw, "target")
		for _, c := range cols {
			fmt.Fprint(tw, c.name+"\t")
		}
		fmt.Fprintln(tw)
		var skipped []*Row
		for _, r := range rows {
			if r.Stats == nil {
				skipped = append(skipped, r)
				continue
			}
			st := r.Stats
			fmt.Fprintf(tw, "%-*s\t%.1f\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t%.2f\t",
				lw, r.Label(), st.MiBps, fmtNum(st.IOPS), fmtUs(st.LatMeanUs), fmtUs(st.LatP50Us), fmtUs(st.LatP99Us), fmtUs(st.LatP999Us),
				100*st.CPUShare, st.CPUPerGiB)
			for _, c := range cols {
				fmt.Fprint(tw, fmtRatio(c.get(r))+"\t")
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		// Below the table: a long reason in it would widen its first column.
		for _, r := range skipped {
			why := "skipped: " + r.Skipped
			if r.Error != "" {
				why = "error: " + r.Error
			}
			fmt.Fprintf(ew, "  %s %s\n", r.Label(), oneLine(why))
		}
	}
	if rs := rep.Resync; rs != nil {
		fmt.Fprintf(ew, "\n== resync of a dirty volume\n")
		if rs.Error != "" {
			fmt.Fprintf(ew, "failed: %s\n", rs.Error)
		} else {
			fmt.Fprintf(ew, "%s resynchronised in %.2fs: %.0f MiB/s; ideal copy %.0f MiB/s; ratio %.2f\n",
				fmtBytes(rs.Bytes), rs.Seconds, rs.MiBps, rs.IdealMiBps, rs.Ratio)
			if rs.FgP99Us > 0 {
				fmt.Fprintf(ew, "foreground 4 KiB QD1 writes during resync: p50 %s, p99 %s (without resync: p50 %s, p99 %s; p99 ×%.2f)\n",
					fmtUs(rs.FgP50Us), fmtUs(rs.FgP99Us), fmtUs(rs.BaseP50Us), fmtUs(rs.BaseP99Us), rs.FgP99Ratio)
			}
			if rs.SyncRate > 0 {
				fmt.Fprintf(ew, "sync rate %s/s configured: %.1f MiB/s measured (×%.2f)\n", fmtBytes(rs.SyncRate), rs.RateMiBps, rs.RateRatio)
			}
		}
	}
	if len(rep.Checks) > 0 {
		fmt.Fprintf(ew, "\n== targets (ratios measured in this run)\n")
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		for _, c := range rep.Checks {
			if c.Missing != "" {
				fmt.Fprintf(tw, "n/a\t%s\t(%s)\n", c.Name, c.Missing)
				continue
			}
			verdict := "MISS"
			if c.Pass {
				verdict = "ok"
			}
			val := fmt.Sprintf("%.2f×", c.Value)
			tgt := fmt.Sprintf("%.2f×", c.Target)
			switch c.Unit {
			case "us":
				val, tgt = fmtUs(c.Value), fmtUs(c.Target)
			case "us+":
				val, tgt = fmt.Sprintf("%+.0fµs", c.Value), fmt.Sprintf("+%.0fµs", c.Target)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s (target %s %s)\t%s\n", verdict, c.Name, val, c.Op, tgt, c.Detail)
		}
		tw.Flush()
	}
	if len(rep.Flags) > 0 {
		fmt.Fprintf(ew, "\n== red flags\n")
		for _, f := range rep.Flags {
			fmt.Fprintf(ew, "RED FLAG [%s] %s: %s\n", f.Rule, f.Row, f.Text)
		}
	}
	for _, n := range rep.Notes {
		fmt.Fprintf(ew, "note: %s\n", n)
	}
	return ew.err
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

func fmtBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f%s", v, units[i])
	}
	return fmt.Sprintf("%.1f%s", v, units[i])
}

// errWriter remembers the first write error so the printing code can ignore them.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return len(p), nil
	}
	_, e.err = e.w.Write(p)
	return len(p), nil
}

// median returns the index of the median of vs (the lower one for an even count).
func median(vs []float64) int {
	idx := make([]int, len(vs))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return vs[idx[a]] < vs[idx[b]] })
	return idx[(len(vs)-1)/2]
}

// workloadGroups returns the rows grouped by source and workload, groups and rows in the
// order they were measured: one table in the terminal report, one block in the chart.
func (rep *Report) workloadGroups() [][]*Row {
	var groups [][]*Row
	index := map[[2]string]int{}
	for _, r := range rep.Rows {
		k := [2]string{r.Source, r.Workload}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	return groups
}
