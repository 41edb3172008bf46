package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"hast/blockdev"
	"hast/perf"
	"hast/replicate"
)

// Options configure a matrix run.
type Options struct {
	// Dir is where the backing files go (a temporary directory is made inside it).
	Dir string
	// Size of each of the four backing files.
	Size    int64
	Runtime time.Duration
	// Bytes, when positive, ends each measured run after this much I/O instead of after
	// Runtime, so that every run completes operations however little CPU it gets.
	Bytes  int64
	Warmup time.Duration
	// Repeat runs the whole matrix this many times (round-robin, so slow drift of the disk
	// affects every target alike) and reports each row's median run.
	Repeat    int
	Workloads []Workload
	// Modes are the replication modes the volume target runs in; FrontendModes those the
	// FUSE and NBD frontends run in.
	Modes         []replicate.Mode
	FrontendModes []replicate.Mode
	Targets       []string
	// Direct makes the baselines use O_DIRECT (the crash-consistent physical work).
	Direct bool
	Verify bool
	Pair   PairOptions
	// ProbeGroups are the probe groups the volume+probes target loads (nil: all).
	ProbeGroups []perf.Group
	// Resync adds the resynchronisation benchmark; SyncRate (bytes/s) its rate-limited part.
	Resync   bool
	SyncRate int64
	Command  string
	Log      zerolog.Logger
	// Progress receives one line per finished run.
	Progress io.Writer
}

// QuickWorkloads is --quick's set: the three workloads the targets are defined on.
func QuickWorkloads() []Workload {
	return []Workload{
		{Name: WSeqWrite, Pattern: Sequential, BlockSize: 1 << 20, QueueDepth: 8},
		{Name: WRandW32, Pattern: Random, BlockSize: 4 << 10, QueueDepth: 32},
		{Name: WLatWrite, Pattern: Random, BlockSize: 4 << 10, QueueDepth: 1},
	}
}

// DefaultWorkloads is the longer matrix: the quick set plus reads, a mix, kbench's bandwidth
// job and read latency.
func DefaultWorkloads() []Workload {
	return append(QuickWorkloads(),
		Workload{Name: "seqread-1m-qd8", Pattern: Sequential, ReadPercent: 100, BlockSize: 1 << 20, QueueDepth: 8},
		Workload{Name: "randread-4k-qd32", Pattern: Random, ReadPercent: 100, BlockSize: 4 << 10, QueueDepth: 32},
		Workload{Name: "randrw70-4k-qd32", Pattern: Random, ReadPercent: 70, BlockSize: 4 << 10, QueueDepth: 32},
		Workload{Name: "bw-128k-qd64", Pattern: Sequential, BlockSize: 128 << 10, QueueDepth: 64},
		Workload{Name: "lat-4k-qd1-read", Pattern: Random, ReadPercent: 100, BlockSize: 4 << 10, QueueDepth: 1},
	)
}

// AllModes are the three replication modes.
var AllModes = []replicate.Mode{replicate.ModeFullsync, replicate.ModeMemsync, replicate.ModeAsync}

// ParseMode parses a replication mode name.
func ParseMode(s string) (replicate.Mode, error) {
	for _, m := range AllModes {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown replication mode %q (want fullsync, memsync or async)", s)
}

type runner struct {
	opt    Options
	ctx    context.Context
	rep    *Report
	dir    string
	region int64
	a, b   string
	pair   *Pair
	// results per row key, one per repetition
	results map[string][]*Result
	rows    map[string]*Row
	total   int
	done    int
	round   int
}

func (r *runner) has(kind string) bool { return slices.Contains(r.opt.Targets, kind) }

func (r *runner) progress(format string, args ...any) {
	if r.opt.Progress != nil {
		fmt.Fprintf(r.opt.Progress, "bench: "+format+"\n", args...)
	}
}

// RunMatrix runs workloads × modes × targets and returns the report (with ratios, checks and red
// flags computed). A target that cannot be set up (nbdkit missing, FUSE unavailable) is reported
// as skipped with the reason; a failing run is reported with its error.
func RunMatrix(ctx context.Context, opt Options) (*Report, error) {
	if opt.Repeat <= 0 {
		opt.Repeat = 1
	}
	if opt.Runtime <= 0 {
		opt.Runtime = 2 * time.Second
	}
	if opt.Size < 16<<20 {
		return nil, fmt.Errorf("size %d is too small (at least 16 MiB)", opt.Size)
	}
	if len(opt.Targets) == 0 {
		opt.Targets = DefaultKinds
	}
	for _, k := range opt.Targets {
		if !slices.Contains(AllKinds, k) {
			return nil, fmt.Errorf("unknown target %q (want one of %v)", k, AllKinds)
		}
	}
	if len(opt.Modes) == 0 {
		opt.Modes = AllModes
	}
	if len(opt.FrontendModes) == 0 {
		opt.FrontendModes = []replicate.Mode{replicate.ModeFullsync}
	}
	dir, err := os.MkdirTemp(opt.Dir, "hast-bench-")
	if err != nil {
		return nil, fmt.Errorf("make benchmark directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := checkSpace(dir, 4*opt.Size); err != nil {
		return nil, err
	}
	g, err := blockdev.ComputeGeometry(opt.Size, 512, blockdev.DefaultExtentSize)
	if err != nil {
		return nil, err
	}
	r := &runner{opt: opt, ctx: ctx, dir: dir, results: map[string][]*Result{}, rows: map[string]*Row{},
		region: g.DataSize &^ (1<<20 - 1),
		a:      filepath.Join(dir, "raw-a.img"), b: filepath.Join(dir, "raw-b.img")}
	baselineIO := "buffered"
	if opt.Direct {
		baselineIO = "O_DIRECT"
	}
	r.rep = &Report{Machine: DescribeMachine(dir), Settings: Settings{Command: opt.Command, Size: opt.Size, Region: r.region,
		RuntimeS: opt.Runtime.Seconds(), BytesPerRun: opt.Bytes, WarmupS: opt.Warmup.Seconds(), Repeat: opt.Repeat, BaselineIO: baselineIO, Dir: opt.Dir,
		KeepDirty: opt.Pair.KeepDirty}}
	r.total = r.count() * opt.Repeat

	for _, p := range []string{r.a, r.b} {
		if err := blockdev.CreateFile(p, opt.Size); err != nil {
			return nil, err
		}
		if err := prefill(p); err != nil {
			return nil, err
		}
	}
	needPair := r.has(KindVolume) || r.has(KindProbed) || r.has(KindFUSE) || r.has(KindNBD) || opt.Resync
	if needPair {
		r.progress("creating the replicated pair (%s per node) and waiting for its initial sync", fmtBytes(opt.Size))
		if r.pair, err = CreatePair(dir, opt.Size, opt.Pair, opt.Log); err != nil {
			return nil, err
		}
		defer r.pair.Close()
	}
	for r.round = 1; r.round <= opt.Repeat; r.round++ {
		if err := r.roundOnce(); err != nil {
			return r.rep, err
		}
	}
	r.collect()
	if opt.Resync {
		r.progress("resync benchmark")
		id, err := OpenIdeal(r.a, r.b, opt.Direct, 8, 1<<20)
		if err != nil {
			r.rep.Resync = &ResyncResult{Error: err.Error()}
		} else {
			r.rep.Resync = RunResync(ctx, r.pair, id, ResyncOptions{Region: r.region, FgRuntime: opt.Runtime, FgBytes: opt.Bytes,
				SyncRate: opt.SyncRate, Progress: r.progress})
			id.Close()
		}
	}
	r.rep.Finish()
	return r.rep, ctx.Err()
}

// count is the number of runs in one round.
func (r *runner) count() int {
	n := 0
	for _, k := range r.opt.Targets {
		switch k {
		case KindVolume, KindProbed:
			n += len(r.opt.Modes)
		case KindFUSE, KindNBD:
			n += len(r.opt.FrontendModes)
		default:
			n++
		}
	}
	return n * len(r.opt.Workloads)
}

func checkSpace(dir string, need int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil // unknown: let the writes fail if it is short
	}
	if free := int64(st.Bavail) * st.Bsize; free < need+need/10 {
		return fmt.Errorf("%s has %s free; the benchmark needs %s (four files of --size)", dir, fmtBytes(free), fmtBytes(need))
	}
	return nil
}

func (r *runner) maxDepth() int {
	d := 1
	for _, w := range r.opt.Workloads {
		d = max(d, w.QueueDepth)
	}
	return d
}

func (r *runner) maxBlock() int {
	b := 4096
	for _, w := range r.opt.Workloads {
		b = max(b, w.BlockSize)
	}
	return b
}

func rowKey(workload, target, mode string) string { return workload + "\x00" + target + "\x00" + mode }

// row returns the row for workload × target/mode, creating it in report order.
func (r *runner) row(w Workload, target, mode string) *Row {
	k := rowKey(w.Name, target, mode)
	if row, ok := r.rows[k]; ok {
		return row
	}
	row := &Row{Source: SourceGenerator, Workload: w.Name, Target: target, Mode: mode, BlockSize: w.BlockSize,
		QueueDepth: w.QueueDepth, ReadPercent: w.ReadPercent}
	r.rows[k] = row
	return row
}

// skip marks every workload of target/mode skipped.
func (r *runner) skip(target, mode, why string) {
	for _, w := range r.opt.Workloads {
		row := r.row(w, target, mode)
		if row.Skipped == "" && row.Error == "" {
			row.Skipped = why
		}
		r.done++
	}
	label := target
	if mode != "" {
		label += "/" + mode
	}
	r.progress("[round %d] %s skipped: %s", r.round, label, why)
}

// coldCache drops the backing files' clean pages from the page cache (the run before ended with
// a flush), so that every run starts cold: a buffered target would otherwise run faster or
// slower depending on which target touched the files before it.
func (r *runner) coldCache() {
	paths := []string{r.a, r.b}
	if r.pair != nil {
		paths = append(paths, r.pair.paths[:]...)
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
}

// runAll runs every workload on t. amap, if not nil, reads the volume's activemap update counter.
func (r *runner) runAll(t Target, target, mode string, amap func() uint64) error {
	for _, w := range r.opt.Workloads {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		w.Runtime, w.Warmup, w.Region, w.Verify = r.opt.Runtime, r.opt.Warmup, r.region, r.opt.Verify && !w.ReadOnly()
		if r.opt.Bytes > 0 {
			w.Runtime, w.TotalBytes = 0, r.opt.Bytes
		}
		w.Seed = uint64(r.round)
		row := r.row(w, target, mode)
		r.done++
		r.coldCache()
		var am0 uint64
		if amap != nil {
			am0 = amap()
		}
		res, err := Run(r.ctx, t, w)
		label := row.Label()
		if err != nil {
			if r.ctx.Err() != nil {
				return r.ctx.Err()
			}
			row.Error = err.Error()
			r.progress("[%d/%d] %-18s %-16s error: %v", r.done, r.total, w.Name, label, err)
			continue
		}
		if amap != nil {
			res.ActivemapUpdates = int64(amap() - am0)
		}
		k := rowKey(w.Name, target, mode)
		r.results[k] = append(r.results[k], res)
		r.progress("[%d/%d] %-18s %-16s %8.1f MiB/s %8s IOPS  p50 %-8s p99 %-8s CPU %3.0f%%", r.done, r.total, w.Name, label,
			res.MiBps(), fmtNum(res.IOPS()), fmtUs(us(res.Lat.Percentile(50))), fmtUs(us(res.Lat.Percentile(99))), 100*res.CPUShare(r.rep.Machine.CPUs))
	}
	return nil
}

func (r *runner) roundOnce() error {
	log := r.opt.Log
	for _, kind := range AllKinds {
		if !r.has(kind) {
			continue
		}
		var err error
		switch kind {
		case KindRaw:
			var t *Raw
			if t, err = OpenRaw(r.a, r.b, r.opt.Direct, r.maxDepth()); err != nil {
				r.skip(kind, "", err.Error())
				continue
			}
			err = r.runAll(t, kind, "", nil)
			t.Close()
		case KindIdeal:
			var t *Ideal
			if t, err = OpenIdeal(r.a, r.b, r.opt.Direct, r.maxDepth(), r.maxBlock()); err != nil {
				r.skip(kind, "", err.Error())
				continue
			}
			err = r.runAll(t, kind, "", nil)
			t.Close()
		case KindVolume:
			err = r.pairRuns()
		case KindProbed, KindFUSE, KindNBD:
			// Run with the volume, in pairRuns (or on their own if volume is not selected).
			if !r.has(KindVolume) && r.firstPairKind() == kind {
				err = r.pairRuns()
			}
		case KindNBDFile:
			var dev blockdev.Device
			if dev, err = blockdev.Open(r.a); err != nil {
				r.skip(kind, "", err.Error())
				continue
			}
			var e *NBDExport
			if e, err = OpenNBD(r.ctx, filepath.Join(r.dir, fmt.Sprintf("nbd-file-%d.sock", r.round)), dev, log); err != nil {
				dev.Close()
				r.skip(kind, "", err.Error())
				continue
			}
			err = r.runAll(e, kind, "", nil)
			e.Close()
			dev.Close()
		case KindNBDKit:
			var k *NBDKit
			if k, err = StartNBDKit(r.ctx, filepath.Join(r.dir, fmt.Sprintf("nbdkit-%d.sock", r.round)), r.a); err != nil {
				if errors.Is(err, ErrNoNBDKit) && !slices.Contains(r.rep.Notes, err.Error()) {
					r.rep.Notes = append(r.rep.Notes, err.Error())
				}
				r.skip(kind, "", err.Error())
				continue
			}
			err = r.runAll(k, kind, "", nil)
			k.Close()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// pairRuns runs the volume and its frontends, mode by mode.
func (r *runner) pairRuns() error {
	modes := []replicate.Mode{}
	for _, m := range AllModes {
		if ((r.has(KindVolume) || r.has(KindProbed)) && slices.Contains(r.opt.Modes, m)) ||
			((r.has(KindFUSE) || r.has(KindNBD)) && slices.Contains(r.opt.FrontendModes, m)) {
			modes = append(modes, m)
		}
	}
	for _, m := range modes {
		mode := m.String()
		frontends := slices.Contains(r.opt.FrontendModes, m)
		if err := r.pair.Start(r.ctx, m, 0); err != nil {
			r.pair.Stop()
			if r.ctx.Err() != nil {
				return r.ctx.Err()
			}
			for _, k := range []string{KindVolume, KindProbed, KindFUSE, KindNBD} {
				if r.has(k) && (k == KindVolume || k == KindProbed || frontends) {
					r.skip(k, mode, err.Error())
				}
			}
			continue
		}
		amap := func() uint64 { return r.pair.Volume().Status().Stats.ActivemapUpdates }
		var err error
		if r.has(KindVolume) && slices.Contains(r.opt.Modes, m) {
			err = r.runAll(r.pair.Volume(), KindVolume, mode, amap)
		}
		if err == nil && r.has(KindProbed) && slices.Contains(r.opt.Modes, m) {
			err = r.probedRuns(mode, amap)
		}
		if err == nil && frontends && r.has(KindFUSE) {
			fv, ferr := OpenFUSE(filepath.Join(r.dir, "mnt"), r.pair.Volume(), r.opt.Log)
			if ferr != nil {
				r.skip(KindFUSE, mode, ferr.Error())
			} else {
				err = r.runAll(fv, KindFUSE, mode, amap)
				if cerr := fv.Close(); cerr != nil {
					r.opt.Log.Warn().Err(cerr).Msg("bench: closing the FUSE view")
				}
			}
		}
		if err == nil && frontends && r.has(KindNBD) {
			e, nerr := OpenNBD(r.ctx, filepath.Join(r.dir, fmt.Sprintf("nbd-%s-%d.sock", mode, r.round)), r.pair.Volume(), r.opt.Log)
			if nerr != nil {
				r.skip(KindNBD, mode, nerr.Error())
			} else {
				err = r.runAll(e, KindNBD, mode, amap)
				e.Close()
			}
		}
		if serr := r.pair.Stop(); serr != nil && err == nil {
			r.opt.Log.Warn().Err(serr).Msg("bench: stopping the primary")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// collect turns the repetitions into rows (the median-throughput run of each) in report order:
// workload by workload, targets in AllKinds order, modes in AllModes order.
func (r *runner) collect() {
	cores := r.rep.Machine.CPUs
	for _, w := range r.opt.Workloads {
		for _, kind := range AllKinds {
			modes := []string{""}
			switch kind {
			case KindVolume, KindProbed:
				modes = modeNames(r.opt.Modes)
			case KindFUSE, KindNBD:
				modes = modeNames(r.opt.FrontendModes)
			}
			for _, m := range modes {
				k := rowKey(w.Name, kind, m)
				row, ok := r.rows[k]
				if !ok {
					continue
				}
				if rs := r.results[k]; len(rs) > 0 {
					vs := make([]float64, len(rs))
					for i, res := range rs {
						vs[i] = res.MiBps()
					}
					row.Stats = StatsOf(rs[median(vs)], cores)
					row.RunsMiBps = vs
				}
				r.rep.Rows = append(r.rep.Rows, row)
			}
		}
	}
}

func modeNames(ms []replicate.Mode) []string {
	var out []string
	for _, m := range AllModes {
		if slices.Contains(ms, m) {
			out = append(out, m.String())
		}
	}
	return out
}

// firstPairKind is the first selected target that runs on the pair: the one whose turn in a
// round runs pairRuns when the volume target is not selected.
func (r *runner) firstPairKind() string {
	for _, k := range []string{KindVolume, KindProbed, KindFUSE, KindNBD} {
		if r.has(k) {
			return k
		}
	}
	return ""
}

// probedRuns runs the volume again with the eBPF probes of hast perf loaded for this process,
// on the pair's files and its replication port: beside the volume's rows of the same round,
// the probes' cost.
func (r *runner) probedRuns(mode string, amap func() uint64) error {
	port := uint16(r.pair.ln.Addr().(*net.TCPAddr).Port)
	k, err := perf.Load(perf.Options{Devices: r.pair.paths[:], Ports: []uint16{port}, Groups: r.opt.ProbeGroups})
	if err != nil {
		r.skip(KindProbed, mode, err.Error())
		return nil
	}
	defer k.Close()
	for g, err := range k.Failed() {
		r.progress("eBPF probe group %s not loaded: %v", g, err)
	}
	return r.runAll(r.pair.Volume(), KindProbed, mode, amap)
}
