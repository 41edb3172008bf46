package appliance

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"hast/internal/faultnet"
	"hast/perf"
)

// TestPerfProbesMatchTheEngine drives a known number of writes through a two-node pair whose
// primary runs with --probes on and its local component on a loop device of its own, and checks
// the probes against what was issued and against the engine's own stage histograms.
func TestPerfProbesMatchTheEngine(t *testing.T) {
	metricsPort, err := freePort("127.0.0.1")
	must(t, err)
	args := []string{"--probes", "on", "--local-io", "uring", "--metrics", fmt.Sprintf("127.0.0.1:%d", metricsPort)}
	c, _ := newTestCluster(t, ClusterOptions{DiskSize: 64 << 20}, args, []string{"--probes", "off"})
	p := c.Nodes[0]
	// The primary's component goes on a loop device over its own file, so its block requests
	// are the daemon's and nobody else's.
	c.Kill(p, syscall.SIGTERM)
	img := filepath.Join(p.Dir, "disk1.img")
	lo, err := exec.Command("losetup", "-f", "--show", "--direct-io=on", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup (util-linux): %v: %s", err, lo)
	}
	loop := strings.TrimSpace(string(lo))
	t.Cleanup(func() {
		c.Stop()
		if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", loop, err, out)
		}
	})
	conf, err := os.ReadFile(c.Conf)
	must(t, err)
	must(t, os.WriteFile(c.Conf, []byte(strings.Replace(string(conf), "local "+img, "local "+loop, 1)), 0o644))
	must(t, c.Start(p, args...))
	pair(t, c)

	cl, err := c.Client(p)
	must(t, err)
	st0, err := cl.Status("disk1")
	must(t, err)
	s0, err := cl.Perf("disk1")
	must(t, err)
	if s0.Probes != "on" || s0.Kernel == nil || len(s0.Kernel.Failed) > 0 {
		t.Fatalf("probes %q, failed groups %v", s0.Probes, s0.Kernel)
	}
	v, err := c.Volume(p, "disk1")
	must(t, err)
	const writes = 400
	buf := make([]byte, 4096)
	for i := range writes {
		buf[0] = byte(i)
		// Within one extent: the activemap is written once, then the extent stays hot.
		if _, err := v.WriteAt(buf, int64(i%256)*4096); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()
	s1, err := cl.Perf("disk1")
	must(t, err)
	st1, err := cl.Status("disk1")
	must(t, err)
	amWrites := st1[0].Stats.ActivemapUpdates - st0[0].Stats.ActivemapUpdates

	eng := func(stage string) (uint64, time.Duration) {
		a, b := s0.Engine[stage], s1.Engine[stage]
		return b.Count() - a.Count(), b.Sum - a.Sum
	}
	kern := func(probe string) perf.Hist { return s1.Kernel.Probes[probe].Sub(s0.Kernel.Probes[probe]) }
	nWrite, write := eng("write")
	nLocal, local := eng("local")
	_, am := eng("activemap")
	_, peer := eng("peer")
	bw, pw, ur, send := kern("block_write"), kern("sys_pwrite"), kern("sys_io_uring_enter"), kern("sys_send")
	rq, rtt := kern("runqueue"), kern("tcp_srtt")
	t.Logf("engine: %d writes in %v (activemap %v, local %v, peer %v); activemap updates %d", nWrite, write, am, local, peer, amWrites)
	t.Logf("kernel: block writes %d in %v (p50 %v); pwrite64 %d, io_uring_enter %d; sends %d (%d bytes); run-queue waits %d (p99 %v); srtt samples %d (p50 %v)",
		bw.Count(), bw.Sum(), bw.Quantile(.5), pw.Count(), ur.Count(), send.Count(), send.Bytes, rq.Count(), rq.Quantile(.99), rtt.Count(), rtt.Quantile(.5))

	if nWrite != writes || nLocal != writes {
		t.Errorf("engine counted %d writes, %d local legs; issued %d", nWrite, nLocal, writes)
	}
	// Every write is one block request on the loop device; the activemap updates add theirs.
	if bw.Count() < writes || bw.Count() > writes+amWrites || bw.Errors != 0 {
		t.Errorf("block writes: %d (%d errors); issued %d data writes and %d activemap updates", bw.Count(), bw.Errors, writes, amWrites)
	}
	if bw.Sum() > local+am {
		t.Errorf("the disk held the writes %v in all, longer than the engine's local legs and activemap updates took (%v + %v)", bw.Sum(), local, am)
	}
	if am+local+peer > write {
		t.Errorf("stages add up to %v (activemap %v + local %v + peer %v), more than the writes took end to end (%v)", am+local+peer, am, local, peer, write)
	}
	// The ring makes an operation at depth 1 as a plain pwrite (its direct path), else it
	// submits through io_uring_enter: each local leg is one or the other.
	if pw.Count()+ur.Count() < writes {
		t.Errorf("%d pwrite64 and %d io_uring_enter calls for %d local writes", pw.Count(), ur.Count(), writes)
	}
	if send.Count() < writes || send.Bytes < writes*4096 {
		t.Errorf("%d sends of %d bytes for %d replicated 4 KiB writes", send.Count(), send.Bytes, writes)
	}
	if rq.Count() == 0 || rtt.Count() == 0 {
		t.Errorf("run-queue waits %d, RTT samples %d", rq.Count(), rtt.Count())
	}

	// The same through the CLI and the metrics endpoint.
	var js strings.Builder
	cli := &CLI{Stdout: &js, Stderr: &js}
	if code := cli.Main([]string{"perf", "-c", c.Conf, "--node", p.Name, "-o", "json", "--count", "2", "--interval", "100ms", "disk1"}); code != 0 {
		t.Fatalf("hast perf -o json: status %d: %s", code, js.String())
	}
	sc := bufio.NewScanner(strings.NewReader(js.String()))
	frames := 0
	for sc.Scan() {
		var f perf.Frame
		must(t, json.Unmarshal(sc.Bytes(), &f))
		if f.Resource != "disk1" || f.Probes != "on" || len(f.Engine) != len(perf.EngineStages) || len(f.Kernel) != len(perf.Probes()) {
			t.Errorf("frame %s", sc.Bytes())
		}
		frames++
	}
	if frames != 2 {
		t.Errorf("%d JSON frames for --count 2:\n%s", frames, js.String())
	}
	// The terminal view while a writer keeps writing: both sides show the writes.
	stop := keepWriting(t, c, p)
	var text strings.Builder
	cli = &CLI{Stdout: &text, Stderr: &text}
	code := cli.Main([]string{"perf", "-c", c.Conf, "--node", p.Name, "--count", "1", "--interval", "500ms"})
	stop()
	if code != 0 {
		t.Fatalf("hast perf: status %d: %s", code, text.String())
	}
	for _, want := range []string{"ENGINE", "KERNEL", "probes on", "tcp_retransmits"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("hast perf shows no %q:\n%s", want, text.String())
		}
	}
	// A row with no requests in the interval shows "-" as its rate.
	for _, row := range []string{"write", "local", "block_write", "pwrite", "send"} {
		rate := ""
		for _, l := range strings.Split(text.String(), "\n") {
			f := strings.Fields(l)
			for i := range len(f) - 1 {
				if f[i] == row {
					rate = f[i+1]
				}
			}
		}
		if rate == "" || rate == "-" {
			t.Errorf("hast perf shows no %s requests under load (rate %q):\n%s", row, rate, text.String())
		}
	}
	t.Logf("hast perf under load:\n%s", text.String())
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	must(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, err)
	checkDashboard(t, string(body))
	var count uint64
	sc = bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), `hast_kernel_latency_seconds_count{probe="block_write"} `); ok {
			count, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	if count < writes {
		t.Errorf("metrics: %d block writes", count)
	}
	// The secondary runs with --probes off and says so.
	cl2, err := c.Client(c.Nodes[1])
	must(t, err)
	s2, err := cl2.Perf("")
	must(t, err)
	if s2.Probes != "off" || s2.Kernel != nil {
		t.Errorf("secondary with --probes off: %q, kernel %v", s2.Probes, s2.Kernel != nil)
	}
}

// TestPerfProbesRefused runs the primary in a process that may not use BPF (setpriv drops
// CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN from its bounding set): with --probes auto it says so
// once and serves writes, and hast perf shows the engine alone; with --probes on it refuses to
// start.
func TestPerfProbesRefused(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv (util-linux): %v", err)
	}
	noBPF := func(node string, argv []string) []string {
		if node != "hast1" {
			return argv
		}
		return append([]string{"setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--"}, argv...)
	}
	c, _ := newTestCluster(t, ClusterOptions{Wrap: noBPF})
	p := c.Nodes[0]
	pair(t, c)
	v, err := c.Volume(p, "disk1")
	must(t, err)
	for i := range 10 {
		if _, err := v.WriteAt(make([]byte, 4096), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()
	cl, err := c.Client(p)
	must(t, err)
	s, err := cl.Perf("")
	must(t, err)
	if !strings.HasPrefix(s.Probes, "unavailable: ") || s.Kernel != nil {
		t.Errorf("probes %q, kernel histograms %v", s.Probes, s.Kernel != nil)
	}
	if w := s.Engine["write"]; w.Count() != 10 {
		t.Errorf("engine counted %d writes, issued 10", w.Count())
	}
	if n := strings.Count(c.LogTail(p), "eBPF probes unavailable"); n != 1 {
		t.Errorf("the log says %d times that the probes are unavailable:\n%s", n, c.LogTail(p))
	}
	var text strings.Builder
	cli := &CLI{Stdout: &text, Stderr: &text}
	if code := cli.Main([]string{"perf", "-c", c.Conf, "--node", p.Name, "--count", "1", "--interval", "100ms"}); code != 0 {
		t.Fatalf("hast perf: status %d: %s", code, text.String())
	}
	if !strings.Contains(text.String(), "probes unavailable: ") || strings.Contains(text.String(), "block_write") {
		t.Errorf("hast perf without probes:\n%s", text.String())
	}
	c.Kill(p, syscall.SIGTERM)
	err = c.Start(p, "--probes", "on")
	if err == nil || !strings.Contains(err.Error(), "exited during start-up") || !strings.Contains(err.Error(), "perf: ") {
		t.Errorf("--probes on without BPF: %v", err)
	}
}

// TestPerfShowsALossyLink is the worked example of docs/perf.md: the two nodes in network
// namespaces, 10 % of the packets on their link dropped, one writer at depth 1. hast perf shows
// where the time goes: the peer stage, with TCP retransmitting on the replication connection.
func TestPerfShowsALossyLink(t *testing.T) {
	fn, err := faultnet.New()
	must(t, err)
	t.Cleanup(func() {
		if err := fn.Close(); err != nil {
			t.Errorf("remove network: %v", err)
		}
	})
	c, _ := newTestCluster(t, ClusterOptions{IPs: [2]string{fn.IP[0], fn.IP[1]}, Wrap: fn.WrapNodes([2]string{"hast1", "hast2"})},
		[]string{"--probes", "on"})
	p := c.Nodes[0]
	pair(t, c)
	must(t, fn.Loss(10))
	stop := keepWriting(t, c, p)
	var js, text strings.Builder
	cli := &CLI{Stdout: &js, Stderr: &js}
	code := cli.Main([]string{"perf", "-c", c.Conf, "--node", p.Name, "-o", "json", "--count", "1", "--interval", "2s", "disk1"})
	cli = &CLI{Stdout: &text, Stderr: &text}
	code2 := cli.Main([]string{"perf", "-c", c.Conf, "--node", p.Name, "--count", "1", "--interval", "2s", "disk1"})
	stop()
	if code != 0 || code2 != 0 {
		t.Fatalf("hast perf: status %d, %d: %s\n%s", code, code2, js.String(), text.String())
	}
	var f perf.Frame
	must(t, json.Unmarshal([]byte(js.String()), &f))
	var peer perf.Row
	for _, r := range f.Engine {
		if r.Name == "peer" {
			peer = r
		}
	}
	t.Logf("frame: %d writes waited for the peer (p99 %.0f µs); %d retransmits", peer.Count, peer.P99Us, f.Counters["tcp_retransmits"])
	if peer.Count == 0 || f.Counters["tcp_retransmits"] == 0 {
		t.Errorf("over a link losing 10 %% of its packets: %d peer waits, %d retransmits:\n%s", peer.Count, f.Counters["tcp_retransmits"], js.String())
	}
	t.Logf("hast perf over a lossy link:\n%s", text.String())
}

// keepWriting writes 4 KiB blocks at depth 1 to node n's disk1 until the returned function is
// called (which fails the test if a write failed).
func keepWriting(t *testing.T, c *Cluster, n *Node) (stop func()) {
	t.Helper()
	v, err := c.Volume(n, "disk1")
	must(t, err)
	done, wrote := make(chan struct{}), make(chan error, 1)
	go func() {
		defer v.Close()
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			select {
			case <-done:
				wrote <- nil
				return
			default:
			}
			if _, err := v.WriteAt(buf, int64(i%4096)*4096); err != nil {
				wrote <- err
				return
			}
		}
	}()
	return func() {
		close(done)
		must(t, <-wrote)
	}
}

// checkDashboard fails for every metric the Grafana dashboard (docs/grafana/hast.json) queries
// that the endpoint does not serve, so the dashboard cannot drift from the daemon.
func checkDashboard(t *testing.T, metrics string) {
	t.Helper()
	b, err := os.ReadFile("../docs/grafana/hast.json")
	must(t, err)
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	must(t, json.Unmarshal(b, &dash))
	name := regexp.MustCompile(`hast_[a-z_]+`)
	seen := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				seen++
				m = strings.TrimSuffix(m, "_bucket")
				if !strings.Contains(metrics, "\n"+m+"{") && !strings.Contains(metrics, "\n"+m+"_count{") && !strings.Contains(metrics, "\n"+m+" ") {
					t.Errorf("dashboard panel %q queries %s, which the endpoint does not serve", p.Title, m)
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("the dashboard queries no hast metric")
	}
}
