// Package imagetest runs a Go test inside a qemu guest booted with Debian's 6.12 kernel, for what
// the build host's kernel cannot do (ublk). A test calls [Boot] first:
//
//	func TestGuestSomething(t *testing.T) {
//		if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk}}) {
//			return // ran in the guest and passed there
//		}
//		// here: inside the guest, as root, with /dev/ublk-control
//	}
//
// On the host Boot marks the test parallel (image.VM bounds the guests running at once), builds
// the package's test binary and the hast binary, boots a guest whose /init is hast, runs that
// one test there with -test.v, streams the guest's console into the test log, and fails the test
// unless the guest test passed. In the guest it returns false.
package imagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hast/image"
)

// guestEnv marks the test process started by the guest's /init.
const guestEnv = "HAST_IN_GUEST"

// Module paths (relative to the kernel's module tree) guest tests ask for.
const (
	ModUblk = "drivers/block/ublk_drv"
)

// Options shape the guest.
type Options struct {
	Modules  []string // loaded in order before the test starts
	Programs []string // host programs copied in with their shared libraries (mkfs.ext4, ...)
	MemoryMB int      // default 512
	CPUs     int      // default 1
	Disks    []string // host files attached read-only as virtio disks /dev/vda, /dev/vdb, ...
	// Tools are host programs too big for the initramfs (fio needs 84 MB of libraries): they go
	// with their libraries onto a read-only ext4 disk, the first virtio disk, and [Tool] runs them.
	Tools   []string
	Timeout time.Duration
}

// InGuest reports whether this process runs inside a guest started by Boot.
func InGuest() bool { return os.Getenv(guestEnv) == "1" }

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	kernel    *image.Kernel
)

// build makes (once per test process) a static hast binary, this package's test binary, and
// fetches the kernel.
func build() error {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "hast-guest-")
		if buildErr != nil {
			return
		}
		env := append(os.Environ(), "CGO_ENABLED=0")
		for _, args := range [][]string{
			{"build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(buildDir, "hast"), "hast"},
			{"test", "-c", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(buildDir, "guest.test"), "."},
		} {
			cmd := exec.Command("go", args...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
		dir, err := image.CacheDir()
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		kernel, buildErr = image.FetchKernel(ctx, dir, image.KernelMeta)
	})
	return buildErr
}

// Boot runs t's test inside a guest (see the package documentation). It returns true on the
// host, after the guest test passed (t fails otherwise), and false inside the guest.
//
// A benchmark (t a *testing.B) runs in the guest once, as -test.bench with -test.benchtime=1x,
// so go test ./... never boots it.
func Boot(t testing.TB, opt Options) bool {
	t.Helper()
	if InGuest() {
		return false
	}
	if tt, ok := t.(*testing.T); ok {
		tt.Parallel() // guests wait for one of the machine's two guest slots, not for each other's tests
	}
	if err := build(); err != nil {
		t.Fatalf("guest bench: %v", err)
	}
	r := image.NewInitramfs()
	if err := r.AddHostFile("init", filepath.Join(buildDir, "hast")); err != nil {
		t.Fatal(err)
	}
	if err := r.AddHostFile("usr/bin/hast", filepath.Join(buildDir, "hast")); err != nil {
		t.Fatal(err)
	}
	if err := r.AddHostFile("guest.test", filepath.Join(buildDir, "guest.test")); err != nil {
		t.Fatal(err)
	}
	mods := opt.Modules
	disks := opt.Disks
	if len(opt.Tools) > 0 {
		img, err := toolsDisk(opt.Tools)
		if err != nil {
			t.Fatal(err)
		}
		disks = append([]string{img}, disks...)
	}
	if len(disks) > 0 {
		mods = append(mods, "drivers/block/virtio_blk")
	}
	if err := r.AddModules(kernel, mods...); err != nil {
		t.Fatal(err)
	}
	for _, p := range opt.Programs {
		if err := r.AddHostProgram(p); err != nil {
			t.Fatal(err)
		}
	}
	timeout := opt.Timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	spec, _ := json.Marshal(image.GuestSpec{
		Argv: guestArgs(t, timeout),
		Env:  []string{guestEnv + "=1"},
		Dir:  "/",
	})
	r.AddFile(image.GuestSpecPath, spec, 0o644)
	initrd := filepath.Join(t.TempDir(), "initrd.gz")
	if err := r.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	var console bytes.Buffer
	lw := &lineLogger{t: t}
	vm := &image.VM{Kernel: kernel.Vmlinuz, Initrd: initrd, MemoryMB: opt.MemoryMB, CPUs: opt.CPUs, Stdout: &multi{ws: []interface{ Write([]byte) (int, error) }{&console, lw}}}
	for _, d := range disks {
		vm.Args = append(vm.Args, "-drive", "file="+d+",format=raw,if=virtio,readonly=on")
	}
	if len(vm.Args) > 0 {
		vm.Args = append(vm.Args, "-nic", "none")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	start := time.Now()
	err := vm.Run(ctx)
	lw.flush()
	t.Logf("guest ran %.1f s (%s, %s)", time.Since(start).Seconds(), image.Accel(), kernel.Release)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	i := bytes.LastIndex(console.Bytes(), []byte(image.ExitMarker))
	if i < 0 {
		t.Fatalf("guest printed no %q line", strings.TrimSpace(image.ExitMarker))
	}
	line, _, _ := strings.Cut(string(console.Bytes()[i+len(image.ExitMarker):]), "\n")
	if strings.TrimSpace(line) != "0" {
		t.Fatalf("guest test exited with status %s", strings.TrimSpace(line))
	}
	return true
}

// multi copies qemu's stdout and stderr (two goroutines in os/exec) to every writer, one write
// at a time.
type multi struct {
	mu sync.Mutex
	ws []interface{ Write([]byte) (int, error) }
}

func (m *multi) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.ws {
		w.Write(p)
	}
	return len(p), nil
}

// lineLogger passes the guest console to t.Log line by line.
type lineLogger struct {
	t   testing.TB
	mu  sync.Mutex
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.t.Log("guest: " + strings.TrimRight(string(l.buf[:i]), "\r"))
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

func (l *lineLogger) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.t.Log("guest: " + string(l.buf))
		l.buf = nil
	}
}

// toolsManifest describes the tools disk to the guest.
type toolsManifest struct {
	Programs map[string]string // name -> path on the disk
	Loader   string            // the dynamic loader, run explicitly
	LibPath  []string          // directories holding the libraries
}

const (
	toolsMount        = "/tools"
	toolsManifestPath = ".hast-tools.json"
)

var (
	toolsMu    sync.Mutex
	toolsDisks = map[string]string{}
)

// toolsDisk builds (once per set of programs and test process) the read-only tools disk.
func toolsDisk(progs []string) (string, error) {
	key := strings.Join(progs, ",")
	toolsMu.Lock()
	defer toolsMu.Unlock()
	if img, ok := toolsDisks[key]; ok {
		return img, nil
	}
	set := image.NewInitramfs()
	m := toolsManifest{Programs: map[string]string{}}
	libdirs := map[string]bool{}
	for _, p := range progs {
		path, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("tools disk: %w", err)
		}
		if err := set.AddHostProgram(path); err != nil {
			return "", err
		}
		m.Programs[filepath.Base(p)] = path
		out, err := exec.Command("ldd", path).Output()
		if err != nil {
			return "", fmt.Errorf("tools disk: ldd %s: %w", path, err)
		}
		for _, f := range strings.Fields(string(out)) {
			if !strings.HasPrefix(f, "/") {
				continue
			}
			if strings.Contains(f, "/ld-linux") {
				real, err := filepath.EvalSymlinks(f)
				if err != nil {
					return "", err
				}
				m.Loader = real
				continue
			}
			libdirs[filepath.Dir(f)] = true
		}
	}
	for d := range libdirs {
		m.LibPath = append(m.LibPath, d)
	}
	sort.Strings(m.LibPath)
	b, _ := json.Marshal(m)
	set.AddFile(toolsManifestPath, b, 0o644)
	dir := filepath.Join(buildDir, fmt.Sprintf("tools%d", len(toolsDisks)))
	if err := set.WriteTree(dir); err != nil {
		return "", err
	}
	img := dir + ".img"
	if err := image.MakeExt4Image(dir, img); err != nil {
		return "", err
	}
	toolsDisks[key] = img
	return img, nil
}

var (
	mountOnce sync.Once
	mountErr  error
	manifest  toolsManifest
)

// Tool returns the command line that runs the named program from the tools disk inside the
// guest (through the disk's dynamic loader and libraries), mounting the disk on first use.
func Tool(name string, args ...string) (*exec.Cmd, error) {
	mountOnce.Do(func() {
		if mountErr = os.MkdirAll(toolsMount, 0o755); mountErr != nil {
			return
		}
		if mountErr = unix.Mount("/dev/vda", toolsMount, "ext4", unix.MS_RDONLY, ""); mountErr != nil {
			mountErr = fmt.Errorf("mount the tools disk: %w", mountErr)
			return
		}
		b, err := os.ReadFile(filepath.Join(toolsMount, toolsManifestPath))
		if err != nil {
			mountErr = err
			return
		}
		mountErr = json.Unmarshal(b, &manifest)
	})
	if mountErr != nil {
		return nil, mountErr
	}
	prog, ok := manifest.Programs[name]
	if !ok {
		return nil, fmt.Errorf("%s is not on the tools disk (Options.Tools)", name)
	}
	var libs []string
	for _, d := range manifest.LibPath {
		libs = append(libs, filepath.Join(toolsMount, d))
	}
	argv := append([]string{"--library-path", strings.Join(libs, ":"), filepath.Join(toolsMount, prog)}, args...)
	return exec.Command(filepath.Join(toolsMount, manifest.Loader), argv...), nil
}

// guestArgs is the test binary's command line in the guest: t alone.
func guestArgs(t testing.TB, timeout time.Duration) []string {
	args := []string{"/guest.test", "-test.v", "-test.timeout=" + timeout.String()}
	if _, ok := t.(*testing.B); ok {
		return append(args, "-test.run=^$", "-test.bench=^"+t.Name()+"$", "-test.benchtime=1x")
	}
	return append(args, "-test.run=^"+t.Name()+"$")
}

// FioResult is what one fio job did, reads and writes together.
type FioResult struct {
	IOPS, MBps float64
}

// Fio runs fio from the tools disk with args plus --output-format=json and returns the IOPS and
// throughput of its single job.
func Fio(args ...string) (FioResult, error) {
	cmd, err := Tool("fio", append(args, "--output-format=json")...)
	if err != nil {
		return FioResult{}, err
	}
	out, err := cmd.Output()
	if err != nil {
		return FioResult{}, fmt.Errorf("fio %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var res struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			}
		} `json:"jobs"`
	}
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:] // fio may print notes first
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
		return FioResult{}, fmt.Errorf("fio output (%v):\n%s", err, out)
	}
	j := res.Jobs[0]
	return FioResult{IOPS: j.Read.IOPS + j.Write.IOPS, MBps: (j.Read.BW + j.Write.BW) / 1e6}, nil
}

// FioJob is one line of the comparison: 4 KiB random read and write at depth 32, 1 MiB
// sequential.
type FioJob struct{ Name, RW, BS string }

// FioJobs are the jobs every guest benchmark runs.
var FioJobs = []FioJob{
	{"randread-4k-qd32", "randread", "4k"},
	{"randwrite-4k-qd32", "randwrite", "4k"},
	{"read-1m-qd32", "read", "1m"},
	{"write-1m-qd32", "write", "1m"},
}

// Args are fio arguments for j: depth 32, 3 s after a 1 s ramp, within the first size bytes.
func (j FioJob) Args(size string) []string {
	return []string{"--name=" + j.Name, "--rw=" + j.RW, "--bs=" + j.BS, "--iodepth=32", "--time_based",
		"--runtime=3", "--ramp_time=1", "--size=" + size}
}

// Compare runs every job on a baseline and on ours (fio arguments naming the target) and
// returns a table of both and their ratio.
func Compare(baseName string, base []string, oursName string, ours []string, size string) (string, error) {
	var table strings.Builder
	fmt.Fprintf(&table, "%-18s %13s %13s %7s\n", "job", baseName, oursName, "ratio")
	for _, j := range FioJobs {
		b, err := Fio(append(j.Args(size), base...)...)
		if err != nil {
			return "", err
		}
		o, err := Fio(append(j.Args(size), ours...)...)
		if err != nil {
			return "", err
		}
		if j.BS == "4k" {
			fmt.Fprintf(&table, "%-18s %8.0f IOPS %8.0f IOPS %6.2fx\n", j.Name, b.IOPS, o.IOPS, o.IOPS/b.IOPS)
		} else {
			fmt.Fprintf(&table, "%-18s %8.0f MB/s %8.0f MB/s %6.2fx\n", j.Name, b.MBps, o.MBps, o.MBps/b.MBps)
		}
	}
	return table.String(), nil
}
