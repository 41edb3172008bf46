package scenario

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hast/appliance"
	"hast/blockdev"
	"hast/internal/ackcheck"
	"hast/internal/faultnet"
	"hast/internal/testsupport"
	"hast/nbd"
)

const (
	res      = "disk1"
	diskSize = 16 << 20
	writers  = 8
)

// syncBuf collects CLI output from concurrent callers.
type syncBuf = testsupport.SyncBuffer

// env is one scenario's world: a faultnet network and a two-daemon cluster in it, hast1 in
// namespace 0 at IP[0], hast2 in namespace 1 at IP[1].
type env struct {
	t      *testing.T
	mode   string
	net    *faultnet.Net
	c      *appliance.Cluster
	out    *syncBuf
	h1, h2 *appliance.Node
	proxy  *faultnet.Proxy
	// extra daemon flags per node, used on every Start.
	extra map[*appliance.Node][]string
}

type envOptions struct {
	mode string
	// proxyDelay, if set, points hast1's remote at a delaying proxy in hast1's namespace.
	proxyDelay time.Duration
	// create, if set, re-creates the resource on both nodes with these `hast create` flags.
	create []string
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	fn, err := faultnet.New()
	if err != nil {
		t.Fatalf("network: %v", err)
	}
	t.Cleanup(func() {
		if err := fn.Close(); err != nil {
			t.Errorf("remove network: %v", err)
		}
	})
	dir := t.TempDir()
	out := &syncBuf{}
	c, err := appliance.NewCluster(appliance.ClusterOptions{
		Dir: dir, Exe: hastBin, Resources: 1, DiskSize: diskSize, Replication: o.mode,
		IPs:  [2]string{fn.IP[0], fn.IP[1]},
		Wrap: fn.WrapNodes([2]string{"hast1", "hast2"}),
	}, out, out)
	if err != nil {
		t.Fatalf("cluster: %v\n%s", err, out)
	}
	e := &env{t: t, mode: o.mode, net: fn, c: c, out: out, h1: c.Nodes[0], h2: c.Nodes[1], extra: map[*appliance.Node][]string{}}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("%s log:\n%s", n.Name, c.LogTail(n))
			}
			t.Logf("CLI output:\n%s", out)
		}
	})
	if len(o.create) > 0 {
		for _, n := range c.Nodes {
			args := append(append([]string{}, o.create...), res)
			if code := c.CLI(n, "create", args...); code != 0 {
				t.Fatalf("hast create %v on %s: exit %d\n%s", args, n.Name, code, out)
			}
		}
	}
	if o.proxyDelay > 0 {
		p, err := fn.Proxy(0, fn.IP[0]+":0", e.h2.Addr, o.proxyDelay)
		if err != nil {
			t.Fatal(err)
		}
		e.proxy = p
		// hast.conf's remote may differ per node: hast1 goes through the proxy, hast2 still
		// knows hast1 by its own address (the proxy dials from it).
		conf, err := os.ReadFile(c.Conf)
		if err != nil {
			t.Fatal(err)
		}
		from, to := "remote tcp://"+e.h2.Addr, "remote tcp://"+p.Addr()
		if strings.Count(string(conf), from) != 1 {
			t.Fatalf("hast.conf has %d lines %q, want 1:\n%s", strings.Count(string(conf), from), from, conf)
		}
		if err := os.WriteFile(c.Conf, []byte(strings.Replace(string(conf), from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func (e *env) start(n *appliance.Node) {
	e.t.Helper()
	if err := e.c.Start(n, e.extra[n]...); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) role(n *appliance.Node, role string) {
	e.t.Helper()
	if err := e.c.Role(n, role, res); err != nil {
		e.t.Fatalf("%v\n%s", err, e.out)
	}
}

// pair starts both daemons, makes hast1 primary and hast2 secondary and waits for the initial
// synchronisation.
func (e *env) pair() {
	e.t.Helper()
	e.start(e.h1)
	e.start(e.h2)
	e.role(e.h2, "secondary")
	e.role(e.h1, "primary")
	e.waitComplete(e.h1)
}

func (e *env) waitComplete(n *appliance.Node) {
	e.t.Helper()
	if err := e.c.WaitComplete(n, 2*time.Minute); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) status(n *appliance.Node) appliance.ResourceStatus {
	e.t.Helper()
	cl, err := e.c.Client(n)
	if err != nil {
		e.t.Fatal(err)
	}
	st, err := cl.Status(res)
	if err != nil {
		e.t.Fatalf("status of %s: %v", n.Name, err)
	}
	if len(st) != 1 || st[0].Error != "" {
		e.t.Fatalf("status of %s: %+v", n.Name, st)
	}
	return st[0].ResourceStatus
}

// waitStatus polls n's status until cond holds.
func (e *env) waitStatus(n *appliance.Node, what string, timeout time.Duration, cond func(appliance.ResourceStatus) bool) appliance.ResourceStatus {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := e.status(n)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: %s not reached after %v; status %+v\nlog:\n%s", n.Name, what, timeout, st, e.c.LogTail(n))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) volume(n *appliance.Node) *nbd.Client {
	e.t.Helper()
	v, err := e.c.Volume(n, res)
	if err != nil {
		e.t.Fatalf("open %s's volume: %v", n.Name, err)
	}
	return v
}

// checker covers the whole volume with writers writers.
func (e *env) checker(size int64) *ackcheck.Checker {
	e.t.Helper()
	h := fnv.New64a()
	io.WriteString(h, e.t.Name())
	chk, err := ackcheck.New(ackcheck.Config{Blocks: int(size / ackcheck.BlockSize), Writers: writers, MaxRun: 8, FlushEvery: 32, Seed: h.Sum64()})
	if err != nil {
		e.t.Fatal(err)
	}
	return chk
}

// load is a checker run in the background.
type load struct {
	chk    *ackcheck.Checker
	cancel context.CancelFunc
	done   chan struct{}
	stats  ackcheck.Stats
	start  time.Time
	took   time.Duration
}

func startLoad(chk *ackcheck.Checker, tg ackcheck.Target) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{chk: chk, cancel: cancel, done: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(l.done)
		l.stats, _ = chk.Run(ctx, tg)
		l.took = time.Since(l.start)
	}()
	return l
}

func (l *load) stop() ackcheck.Stats {
	l.cancel()
	<-l.done
	return l.stats
}

// waitAcked waits until the checker's acknowledged writes grow by n (progress, not time, decides
// when a fault is injected).
func (e *env) waitAcked(chk *ackcheck.Checker, n uint64, timeout time.Duration) {
	e.t.Helper()
	target := chk.Stats().Acked + n
	deadline := time.Now().Add(timeout)
	for chk.Stats().Acked < target {
		if time.Now().After(deadline) {
			e.t.Fatalf("load made no progress: %+v, want %d acknowledged\nhast1:\n%s", chk.Stats(), target, e.c.LogTail(e.h1))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// localData opens the data area of node n's local component straight from its file.
func (e *env) localData(n *appliance.Node) (io.ReaderAt, func()) {
	e.t.Helper()
	dev, err := blockdev.OpenReadOnly(filepath.Join(n.Dir, res+".img"))
	if err != nil {
		e.t.Fatal(err)
	}
	md, err := blockdev.ReadMetadata(dev, res)
	if err != nil {
		dev.Close()
		e.t.Fatal(err)
	}
	return io.NewSectionReader(dev, int64(md.LocalOff), int64(md.DataSize)), func() { dev.Close() }
}

func (e *env) verify(chk *ackcheck.Checker, what string, r io.ReaderAt) *ackcheck.Report {
	e.t.Helper()
	rep, err := chk.Verify(r)
	if err != nil {
		e.t.Fatalf("verify %s: %v", what, err)
	}
	e.t.Logf("%s: %v", what, rep)
	return rep
}

// verifyLocal checks node n's local component against the checker's history.
func (e *env) verifyLocal(chk *ackcheck.Checker, n *appliance.Node) *ackcheck.Report {
	e.t.Helper()
	r, done := e.localData(n)
	defer done()
	return e.verify(chk, n.Name+"'s local component", r)
}

// compareLocal asserts both local components hold the same data, byte for byte.
func (e *env) compareLocal() {
	e.t.Helper()
	var data [2][]byte
	for i, n := range e.c.Nodes {
		r, done := e.localData(n)
		sr := r.(*io.SectionReader)
		b := make([]byte, sr.Size())
		_, err := sr.ReadAt(b, 0)
		done()
		if err != nil {
			e.t.Fatalf("read %s's data: %v", n.Name, err)
		}
		data[i] = b
	}
	if !bytes.Equal(data[0], data[1]) {
		i := 0
		for data[0][i] == data[1][i] {
			i++
		}
		e.t.Fatalf("local components differ at byte %d (block %d)", i, i/ackcheck.BlockSize)
	}
}

// requireNoLoss fails unless the report is clean.
func (e *env) requireNoLoss(rep *ackcheck.Report, what string) {
	e.t.Helper()
	if err := rep.Err(); err != nil {
		e.t.Fatalf("%s (%s): %v", what, e.mode, err)
	}
}

// synced is the primary's resync byte counter (it counts from the daemon process's start).
func synced(st appliance.ResourceStatus) uint64 { return st.Stats.SyncedBytes }

func lostCell(rep *ackcheck.Report) string {
	if len(rep.Lost) == 0 {
		return "0"
	}
	return fmt.Sprintf("%d writes (%s), window %v", len(rep.Lost), bytesStr(rep.LostBytes), rep.LossWindow().Round(time.Microsecond))
}

func bytesStr(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
