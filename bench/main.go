package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hast/blockdev"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"hast/perf"
	"hast/replicate/proto"
)

const usage = `usage: hast bench [flags]

Measures the replicated volume, its FUSE and NBD frontends, and Debian's nbdkit against
baselines measured in the same run on the same disk (raw files, an ideal replication
pipeline), and prints ratios, the performance targets and kbench's red flags.

  hast bench --quick                      three workloads, about a minute and a half
  hast bench                              the longer matrix, three repetitions, resync
  hast bench --fio --fio-target FILE      the bundled fio job set on FILE and on a raw file
                                          (FILE's data is overwritten)
  hast bench --fio --fio-target fuse      the same on the FUSE file of a volume built here

Flags:
`

// Main is `hast bench`: it parses args (the arguments after the verb), runs what they ask for,
// and writes the report to stdout and progress to stderr. It returns the exit status: 0 when the
// benchmark ran (missed targets and red flags are results, not failures), 1 when it could not
// run, 2 for bad usage.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	var (
		quick      = fs.Bool("quick", false, "run the quick matrix (1 MiB seq write QD8, 4 KiB rand write QD32, 4 KiB write QD1)")
		size       = sizeFlag{v: 0}
		runBytes   = sizeFlag{}
		runtime    = fs.Duration("runtime", 0, "measured time per run (default 2s with --quick, 4s otherwise)")
		warmup     = fs.Duration("warmup", -1, "unmeasured warm-up per run (default 500ms with --quick, 1s otherwise)")
		repeat     = fs.Int("repeat", 0, "repetitions of the matrix; each row reports its median run (default 1 with --quick, 3 otherwise)")
		dir        = fs.String("dir", os.TempDir(), "directory for the backing files (four files of --size)")
		output     = fs.String("o", "table", "report format: table or json")
		pngPath    = fs.String("png", "", "also draw the report as a PNG chart into this file")
		targets    = fs.String("targets", strings.Join(DefaultKinds, ","), "targets to run (also: "+KindProbed+", the volume with the eBPF probes of hast perf loaded)")
		modes      = fs.String("modes", "fullsync,memsync,async", "replication modes of the volume target")
		feModes    = fs.String("frontend-modes", "fullsync", "replication modes the FUSE and NBD frontends run in")
		workloads  = fs.String("workloads", "", "workloads to run (default: the quick or the full set); known: "+workloadNames())
		baselineIO = fs.String("baseline-io", "direct", "I/O of the raw and ideal baselines: direct (O_DIRECT) or buffered")
		verify     = fs.Bool("verify", false, "stamp and check every block written (costs CPU; for correctness, not speed)")
		resync     = fs.Bool("resync", false, "run the resync benchmark with --quick too")
		noResync   = fs.Bool("no-resync", false, "leave the resync benchmark out of the full matrix")
		syncRate   = sizeFlag{}
		checksum   = fs.String("checksum", "none", "replication checksum: none, crc32 or sha256")
		compress   = fs.String("compression", "hole", "replication compression: none, hole or lzf")
		metaflush  = fs.Bool("metaflush", true, "flush the activemap after every update (HAST's default)")
		keepdirty  = fs.Uint("keepdirty", blockdev.DefaultKeepDirty, "extents the volume keeps marked dirty after their writes (hast create -k)")
		probeGrps  = fs.String("probe-groups", "", "probe groups the "+KindProbed+" target loads (default all: block,syscalls,sched,tcp)")
		localIO    = fs.String("local-io", "pwrite", "how the volume's local components are driven: pwrite (page cache, the daemon's default) or uring (io_uring, O_DIRECT), as hast daemon --local-io")
		runFio     = fs.Bool("fio", false, "run the bundled fio job set instead of the matrix")
		fioTarget  = fs.String("fio-target", "", "file or block device for --fio (its data is overwritten), or fuse[:MODE] for the FUSE file of a volume built in --dir")
		fioLabel   = fs.String("fio-label", "target", "name of the --fio-target rows")
		fioJobs    = fs.String("fio-jobs", strings.Join(FioJobs, ","), "fio jobs to run")
		fioRuntime = fs.Duration("fio-runtime", 0, "override the jobs' runtime (default: the job files' 20s)")
		fioRamp    = fs.Duration("fio-ramp", -1, "override the jobs' ramp time (default: the job files' 5s)")
		fioRaw     = fs.Bool("fio-no-raw", false, "do not run the jobs on a raw file for comparison")
		verbose    = fs.Bool("v", false, "log the engines' messages to stderr")
		cpuProfile = fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof)")
		tracePath  = fs.String("trace", "", "write a Go execution trace of the whole run to this file (go tool trace); keep the run short")
	)
	fs.Var(&size, "size", "size of each backing file, e.g. 1G (default 1G with --quick, 2G otherwise; with --fio: at most this much of the target)")
	fs.Var(&runBytes, "bytes", "end each measured run after this much I/O (e.g. 4M) instead of after --runtime: every run completes operations however busy the machine is")
	fs.Var(&syncRate, "sync-rate", "also resync at this rate (bytes/s, e.g. 100M) and report measured/configured")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hast bench: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return 2
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "hast bench: "+format+"\n", a...)
		return 2
	}
	if *output != "table" && *output != "json" {
		return bad("-o %q: want table or json", *output)
	}
	logLevel := zerolog.WarnLevel
	if *verbose {
		logLevel = zerolog.InfoLevel
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, NoColor: true}).Level(logLevel).With().Timestamp().Logger()
	if !*verbose {
		// The engines log link changes at warning level; during a benchmark those are
		// expected (the resync benchmark cuts the link on purpose).
		log = log.Level(zerolog.ErrorLevel)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	stopProfiles, err := startProfiles(*cpuProfile, *tracePath)
	if err != nil {
		fmt.Fprintf(stderr, "hast bench: %v\n", err)
		return 1
	}
	defer func() {
		if err := stopProfiles(); err != nil {
			fmt.Fprintf(stderr, "hast bench: %v\n", err)
		}
	}()

	var rep *Report
	if *runFio {
		if *fioTarget == "" {
			return bad("--fio needs --fio-target FILE|DEV")
		}
		rep, err = RunFioSuite(ctx, FioOptions{Target: *fioTarget, Label: *fioLabel, Dir: *dir, Size: size.v,
			Jobs: splitList(*fioJobs), Runtime: *fioRuntime, Ramp: *fioRamp, SkipRaw: *fioRaw, Progress: stderr, Log: log})
	} else {
		opt := Options{Dir: *dir, Size: size.v, Runtime: *runtime, Bytes: runBytes.v, Warmup: *warmup, Repeat: *repeat,
			Targets: splitList(*targets), Verify: *verify, Direct: true, Log: log, Progress: stderr,
			SyncRate: syncRate.v, Command: "hast bench " + strings.Join(args, " ")}
		switch *baselineIO {
		case "direct":
		case "buffered":
			opt.Direct = false
		default:
			return bad("--baseline-io %q: want direct or buffered", *baselineIO)
		}
		if *quick {
			opt.Workloads = QuickWorkloads()
			opt.Resync = *resync
			setDefault(&opt.Size, 1<<30)
			setDefault(&opt.Runtime, 2*time.Second)
			if opt.Warmup < 0 {
				opt.Warmup = 500 * time.Millisecond
			}
			setDefault(&opt.Repeat, 1)
		} else {
			opt.Workloads = DefaultWorkloads()
			opt.Resync = !*noResync
			setDefault(&opt.Size, 2<<30)
			setDefault(&opt.Runtime, 4*time.Second)
			if opt.Warmup < 0 {
				opt.Warmup = time.Second
			}
			setDefault(&opt.Repeat, 3)
		}
		if *workloads != "" {
			if opt.Workloads, err = pickWorkloads(splitList(*workloads)); err != nil {
				return bad("%v", err)
			}
		}
		for _, s := range splitList(*modes) {
			m, err := ParseMode(s)
			if err != nil {
				return bad("--modes: %v", err)
			}
			opt.Modes = append(opt.Modes, m)
		}
		for _, s := range splitList(*feModes) {
			m, err := ParseMode(s)
			if err != nil {
				return bad("--frontend-modes: %v", err)
			}
			opt.FrontendModes = append(opt.FrontendModes, m)
		}
		opt.Pair = DefaultPairOptions()
		opt.Pair.MetaFlush = *metaflush
		if *keepdirty == 0 || *keepdirty > 1<<20 {
			return bad("--keepdirty %d: expected 1 to %d", *keepdirty, 1<<20)
		}
		opt.Pair.KeepDirty = uint32(*keepdirty)
		switch *localIO {
		case "pwrite", "uring":
			opt.Pair.LocalIO = *localIO
		default:
			return bad("--local-io %q: expected pwrite or uring", *localIO)
		}
		if opt.Pair.Checksum, err = proto.ParseChecksum(*checksum); err != nil {
			return bad("--checksum: %v", err)
		}
		if opt.Pair.Compression, err = proto.ParseCompression(*compress); err != nil {
			return bad("--compression: %v", err)
		}
		if *probeGrps != "" {
			if opt.ProbeGroups, err = perf.ParseGroups(*probeGrps); err != nil {
				return bad("--probe-groups: %v", err)
			}
		}
		rep, err = RunMatrix(ctx, opt)
	}
	if rep == nil {
		fmt.Fprintf(stderr, "hast bench: %v\n", err)
		return 1
	}
	status := 0
	if err != nil {
		fmt.Fprintf(stderr, "hast bench: %v (partial report follows)\n", err)
		status = 1
	}
	if *output == "json" {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "hast bench: write report: %v\n", err)
		return 1
	}
	if *pngPath != "" {
		if err := writePNGFile(rep, *pngPath); err != nil {
			fmt.Fprintf(stderr, "hast bench: %v\n", err)
			return 1
		}
	}
	return status
}

func writePNGFile(rep *Report, path string) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close %s: %w", path, cerr)
		}
	}()
	if err := rep.WritePNG(f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func workloadNames() string {
	var names []string
	for _, w := range DefaultWorkloads() {
		names = append(names, w.Name)
	}
	return strings.Join(names, ", ")
}

func pickWorkloads(names []string) ([]Workload, error) {
	var out []Workload
	for _, n := range names {
		found := false
		for _, w := range DefaultWorkloads() {
			if w.Name == n {
				out = append(out, w)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown workload %q (known: %s)", n, workloadNames())
		}
	}
	return out, nil
}

// sizeFlag is a flag.Value for byte counts with k/M/G/T suffixes.
type sizeFlag struct{ v int64 }

func (s *sizeFlag) String() string {
	if s == nil || s.v == 0 {
		return ""
	}
	return fmtBytes(s.v)
}

func (s *sizeFlag) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	s.v = n
	return nil
}
