package bench

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"hast/blockdev"
	"hast/replicate"
)

// The job set of docs/benchmarking.md §E.3: common.fio is the [global] section, each other file
// one job.
//
//go:embed fio/*.fio
var fioFiles embed.FS

// FioJobs lists the bundled jobs in the order they run.
var FioJobs = []string{
	"randwrite-4k-qd32", "randread-4k-qd32", "iops-4k-qd64", "bw-128k-qd64", "seqwrite-1m",
	"lat-4k-qd1-write", "lat-4k-qd1-read", "fsync-etcd", "verify-crc32c",
}

// FioJobFile returns the combined job file for jobs on filename: the global section, the
// overrides hast bench adds (filename, size, and runtime/ramp when positive), then the jobs.
// Jobs whose own size= is larger than size are shrunk to it.
func FioJobFile(jobs []string, filename string, size int64, runtime, ramp time.Duration) (string, error) {
	common, err := fioFiles.ReadFile("fio/common.fio")
	if err != nil {
		return "", fmt.Errorf("bundled fio jobs: %w", err)
	}
	var b strings.Builder
	b.Write(common)
	if strings.ContainsAny(filename, "\n:") {
		// fio splits filename= on ':' and a newline would end the option.
		return "", fmt.Errorf("fio target %q: the path must not contain ':' or a newline", filename)
	}
	fmt.Fprintf(&b, "filename=%s\nsize=%d\n", filename, size)
	if runtime > 0 {
		fmt.Fprintf(&b, "runtime=%dms\n", runtime.Milliseconds())
	}
	if ramp >= 0 {
		fmt.Fprintf(&b, "ramp_time=%dms\n", ramp.Milliseconds())
	}
	for _, j := range jobs {
		text, err := fioFiles.ReadFile("fio/" + j + ".fio")
		if err != nil {
			return "", fmt.Errorf("unknown fio job %q (bundled: %s)", j, strings.Join(FioJobs, ", "))
		}
		b.WriteString("\n")
		for _, line := range strings.Split(strings.TrimRight(string(text), "\n"), "\n") {
			if v, ok := strings.CutPrefix(line, "size="); ok {
				if n, err := ParseSize(v); err == nil && n > size {
					line = fmt.Sprintf("size=%d", size)
				}
			}
			b.WriteString(line + "\n")
		}
	}
	return b.String(), nil
}

// fioOutput is the part of fio's --output-format=json we read.
type fioOutput struct {
	Version string   `json:"fio version"`
	Jobs    []fioJob `json:"jobs"`
}

type fioJob struct {
	Name       string            `json:"jobname"`
	Error      int               `json:"error"`
	Read       fioDir            `json:"read"`
	Write      fioDir            `json:"write"`
	Sync       fioSync           `json:"sync"`
	UsrCPU     float64           `json:"usr_cpu"`
	SysCPU     float64           `json:"sys_cpu"`
	JobRuntime float64           `json:"job_runtime"` // ms, summed over the group's jobs
	Options    map[string]string `json:"job options"`
}

type fioDir struct {
	IOBytes  int64   `json:"io_bytes"`
	BW       float64 `json:"bw_bytes"`
	IOPS     float64 `json:"iops"`
	Runtime  float64 `json:"runtime"` // ms
	TotalIOs int64   `json:"total_ios"`
	Clat     fioLat  `json:"clat_ns"`
	Lat      fioLat  `json:"lat_ns"`
}

// latency is the total latency (submission + completion) when fio computed its percentiles
// (lat_percentiles=1, as the bundled jobs ask), else the completion latency.
func (d fioDir) latency() fioLat {
	if len(d.Lat.Percentile) > 0 {
		return d.Lat
	}
	return d.Clat
}

type fioSync struct {
	Lat fioLat `json:"lat_ns"`
}

type fioLat struct {
	Min        float64            `json:"min"`
	Max        float64            `json:"max"`
	Mean       float64            `json:"mean"`
	N          int64              `json:"N"`
	Percentile map[string]float64 `json:"percentile"`
}

func (l fioLat) pct(q float64) float64 {
	return l.Percentile[strconv.FormatFloat(q, 'f', 6, 64)]
}

// ParseFio turns fio's JSON output into report rows for target. Anything fio printed before the
// JSON document (warnings) is skipped. Latencies are fio's total latency (lat) where it has
// percentiles, else the completion latency (clat), of the direction with more I/Os; for jobs
// that fdatasync (fsync-etcd) they are the fdatasync latency, the figure etcd's rule is about.
func ParseFio(data []byte, target string, cores int) ([]*Row, error) {
	i := bytes.IndexByte(data, '{')
	if i < 0 {
		return nil, errors.New("fio output holds no JSON document")
	}
	var out fioOutput
	if err := json.Unmarshal(data[i:], &out); err != nil {
		return nil, fmt.Errorf("parse fio JSON: %w", err)
	}
	if len(out.Jobs) == 0 {
		return nil, errors.New("fio JSON has no jobs")
	}
	var rows []*Row
	for _, j := range out.Jobs {
		row := &Row{Source: SourceFio, Workload: j.Name, Target: target}
		if bs, err := ParseSize(j.Options["bs"]); err == nil {
			row.BlockSize = int(bs)
		}
		depth, jobs := 1, 1
		if v, err := strconv.Atoi(j.Options["iodepth"]); err == nil && v > 0 {
			depth = v
		}
		if v, err := strconv.Atoi(j.Options["numjobs"]); err == nil && v > 0 {
			jobs = v
		}
		row.QueueDepth = depth * jobs
		if tot := j.Read.IOBytes + j.Write.IOBytes; tot > 0 {
			row.ReadPercent = int(100 * j.Read.IOBytes / tot)
		}
		if j.Error != 0 {
			row.Error = fmt.Sprintf("fio reported error %d (%s)", j.Error, unix.ErrnoName(unix.Errno(j.Error)))
			rows = append(rows, row)
			continue
		}
		wall := max(j.Read.Runtime, j.Write.Runtime)
		if j.Options["do_verify"] == "1" {
			wall = j.Read.Runtime + j.Write.Runtime // the write phase, then the verify phase
		}
		lat := j.Write.latency()
		if j.Read.TotalIOs > j.Write.TotalIOs || len(lat.Percentile) == 0 {
			lat = j.Read.latency()
		}
		if _, ok := j.Options["fdatasync"]; ok && j.Sync.Lat.N > 0 {
			lat = j.Sync.Lat
		}
		st := &Stats{
			MiBps:     (j.Read.BW + j.Write.BW) / (1 << 20),
			IOPS:      j.Read.IOPS + j.Write.IOPS,
			LatMeanUs: lat.Mean / 1000, LatP50Us: lat.pct(50) / 1000, LatP99Us: lat.pct(99) / 1000,
			LatP999Us: lat.pct(99.9) / 1000, LatP9999Us: lat.pct(99.99) / 1000, LatMaxUs: lat.Max / 1000,
			CPUSeconds: (j.UsrCPU + j.SysCPU) / 100 * j.JobRuntime / 1000,
			Ops:        j.Read.TotalIOs + j.Write.TotalIOs,
			ElapsedS:   wall / 1000,
		}
		if st.ElapsedS > 0 && cores > 0 {
			st.CPUShare = st.CPUSeconds / (st.ElapsedS * float64(cores))
		}
		if b := j.Read.IOBytes + j.Write.IOBytes; b > 0 {
			st.CPUPerGiB = st.CPUSeconds / (float64(b) / (1 << 30))
		}
		row.Stats = st
		rows = append(rows, row)
	}
	return rows, nil
}

// FioOptions configure RunFioSuite.
type FioOptions struct {
	// Target is the file or block device to run the jobs on (its data is overwritten). The
	// special target "fuse" or "fuse:MODE" is the FUSE file of a replicated volume built in
	// this process (in Dir, Size bytes per node, fullsync unless MODE says otherwise).
	Target string
	// Label names the target's rows (default "target").
	Label string
	// Dir holds the raw baseline file; Size is the region the jobs use (0: the target's size).
	Dir     string
	Size    int64
	Jobs    []string
	Runtime time.Duration
	Ramp    time.Duration
	// SkipRaw leaves the raw baseline out.
	SkipRaw  bool
	Progress io.Writer
	// Log receives the in-process volume's messages.
	Log zerolog.Logger
}

// inProcessFUSE builds the "fuse[:MODE]" target: a pair in dir with its FUSE view mounted.
func inProcessFUSE(ctx context.Context, spec, dir string, size int64, log zerolog.Logger) (path string, closeFn func(), err error) {
	mode := replicate.ModeFullsync
	if m, ok := strings.CutPrefix(spec, "fuse:"); ok {
		if mode, err = ParseMode(m); err != nil {
			return "", nil, err
		}
	}
	if size <= 0 {
		size = 1 << 30
	}
	pp, err := CreatePair(dir, size, DefaultPairOptions(), log)
	if err != nil {
		return "", nil, err
	}
	if err := pp.Start(ctx, mode, 0); err != nil {
		pp.Close()
		return "", nil, err
	}
	mnt := filepath.Join(dir, "mnt")
	fv, err := OpenFUSE(mnt, pp.Volume(), log)
	if err != nil {
		pp.Close()
		return "", nil, err
	}
	// fio opens the file itself; the view's own descriptor is not needed.
	return filepath.Join(mnt, resourceName), func() {
		fv.Close()
		pp.Close()
	}, nil
}

// targetSize is a file's size or a block device's.
func targetSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("fio target: %w", err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("fio target %s: size: %w", path, err)
	}
	return n, nil
}

// RunFioSuite runs the bundled jobs on the target and on a raw file of the same size in Dir (the
// baseline), and returns both as report rows with ratios.
func RunFioSuite(ctx context.Context, opt FioOptions) (*Report, error) {
	bin, err := exec.LookPath("fio")
	if err != nil {
		return nil, errors.New("fio is not installed (Debian package fio)")
	}
	if opt.Label == "" {
		opt.Label = "target"
	}
	if len(opt.Jobs) == 0 {
		opt.Jobs = FioJobs
	}
	dir, err := os.MkdirTemp(opt.Dir, "hast-bench-fio-")
	if err != nil {
		return nil, fmt.Errorf("make benchmark directory: %w", err)
	}
	defer os.RemoveAll(dir)
	target := opt.Target
	if target == "fuse" || strings.HasPrefix(target, "fuse:") {
		if opt.Label == "target" || opt.Label == "" {
			opt.Label = target
		}
		path, closeFn, err := inProcessFUSE(ctx, target, dir, opt.Size, opt.Log)
		if err != nil {
			return nil, fmt.Errorf("fio target %s: %w", target, err)
		}
		defer closeFn()
		target = path
	}
	size, err := targetSize(target)
	if err != nil {
		return nil, err
	}
	if opt.Size > 0 {
		size = min(size, opt.Size)
	}
	size &^= 1<<20 - 1
	if size < 16<<20 {
		return nil, fmt.Errorf("fio target %s: %d bytes is too small (at least 16 MiB)", opt.Target, size)
	}
	rep := &Report{Machine: DescribeMachine(dir), Settings: Settings{Size: size, Region: size,
		RuntimeS: opt.Runtime.Seconds(), WarmupS: opt.Ramp.Seconds(), Repeat: 1, BaselineIO: "fio direct=1", Dir: opt.Dir}}
	cores := rep.Machine.CPUs
	type run struct{ label, path string }
	runs := []run{}
	if !opt.SkipRaw {
		raw := filepath.Join(dir, "raw.img")
		if err := blockdev.CreateFile(raw, size); err != nil {
			return nil, err
		}
		if err := prefill(raw); err != nil {
			return nil, err
		}
		runs = append(runs, run{KindRaw, raw})
	}
	runs = append(runs, run{opt.Label, target})
	for _, r := range runs {
		text, err := FioJobFile(opt.Jobs, r.path, size, opt.Runtime, opt.Ramp)
		if err != nil {
			return nil, err
		}
		jobPath := filepath.Join(dir, r.label+".fio")
		if err := os.WriteFile(jobPath, []byte(text), 0o600); err != nil {
			return nil, fmt.Errorf("write fio job file: %w", err)
		}
		if opt.Progress != nil {
			fmt.Fprintf(opt.Progress, "bench: fio on %s (%s): %s\n", r.label, r.path, strings.Join(opt.Jobs, " "))
		}
		cmd := exec.CommandContext(ctx, bin, "--output-format=json", jobPath)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		runErr := cmd.Run()
		rows, perr := ParseFio(stdout.Bytes(), r.label, cores)
		if perr != nil {
			if runErr != nil {
				return rep, fmt.Errorf("fio on %s: %w: %s", r.path, runErr, strings.TrimSpace(stderr.String()))
			}
			return rep, fmt.Errorf("fio on %s: %w", r.path, perr)
		}
		if runErr != nil {
			// fio exits non-zero when a job failed (a verify error, say); the rows say which.
			rep.Notes = append(rep.Notes, fmt.Sprintf("fio on %s exited with %v: %s", r.label, runErr, oneLine(strings.TrimSpace(stderr.String()))))
		}
		rep.Rows = append(rep.Rows, rows...)
	}
	// Group rows by job: raw first, then the target, in job order.
	var ordered []*Row
	for _, j := range opt.Jobs {
		for _, r := range rep.Rows {
			if r.Workload == j {
				ordered = append(ordered, r)
			}
		}
	}
	rep.Rows = ordered
	rep.Finish()
	return rep, nil
}

// ParseSize parses a byte count with an optional binary suffix: 4096, 4k, 4K, 4KiB, 1m, 2G, 1T
// (k/m/g/t are powers of 1024, as in fio and dd).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:len(t)-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("invalid size %q (want a number with an optional k, M, G or T suffix)", s)
	}
	return int64(v * float64(mult)), nil
}
