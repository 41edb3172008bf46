package appliance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"hast/blockdev"
	"hast/image/imagetest"
	"hast/internal/testsupport"
)

var hastBin string

func TestMain(m *testing.M) {
	if imagetest.InGuest() { // a guest has no Go toolchain; /init copied the hast binary in
		hastBin = "/usr/bin/hast"
		os.Exit(m.Run())
	}
	bin, cleanup, err := testsupport.BuildRaceBinary()
	if err != nil {
		fmt.Fprintf(os.Stderr, "end-to-end tests: %v\n", err)
		os.Exit(1)
	}
	hastBin = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// testOut collects CLI and daemon output from concurrent writers.
type testOut = testsupport.SyncBuffer

// newTestCluster creates and starts a two-node cluster; extra[i], if given, are more daemon
// flags for node i.
func newTestCluster(t testing.TB, opt ClusterOptions, extra ...[]string) (*Cluster, *testOut) {
	t.Helper()
	opt.Dir = t.TempDir()
	opt.Exe = hastBin
	if opt.Resources == 0 {
		opt.Resources = 1
	}
	if opt.DiskSize == 0 {
		opt.DiskSize = 16 << 20
	}
	out := &testOut{}
	c, err := NewCluster(opt, out, out)
	if err != nil {
		t.Fatalf("cluster: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("%s log:\n%s", n.Name, c.LogTail(n))
			}
			t.Logf("CLI output:\n%s", out)
		}
	})
	for i, n := range c.Nodes {
		var args []string
		if i < len(extra) {
			args = extra[i]
		}
		if err := c.Start(n, args...); err != nil {
			t.Fatal(err)
		}
	}
	return c, out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// pair brings the cluster to hast1 primary / hast2 secondary and waits for the initial sync.
func pair(t *testing.T, c *Cluster) {
	t.Helper()
	must(t, c.Role(c.Nodes[1], "secondary", "all"))
	must(t, c.Role(c.Nodes[0], "primary", "all"))
	must(t, c.WaitComplete(c.Nodes[0], time.Minute))
}

// writeRandom writes count random blocks through node n's volume and applies them to model.
func writeRandom(t *testing.T, c *Cluster, n *Node, res string, model []byte, count int, seed uint64) {
	t.Helper()
	v, err := c.Volume(n, res)
	must(t, err)
	defer v.Close()
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < count; i++ {
		sz := (1 + rng.IntN(48)) * 4096
		off := int64(rng.IntN(len(model)-sz)) &^ 4095
		buf := make([]byte, sz)
		for j := 0; j < sz; j += 8 {
			binary.LittleEndian.PutUint64(buf[j:], rng.Uint64())
		}
		if _, err := v.WriteAt(buf, off); err != nil {
			t.Fatalf("write %d at %d: %v", sz, off, err)
		}
		copy(model[off:], buf)
	}
	must(t, v.Flush())
}

func readVolume(t *testing.T, c *Cluster, n *Node, res string) []byte {
	t.Helper()
	v, err := c.Volume(n, res)
	must(t, err)
	defer v.Close()
	b := make([]byte, v.Size())
	if _, err := v.ReadAt(b, 0); err != nil {
		t.Fatalf("read %s on %s: %v", res, n.Name, err)
	}
	return b
}

// dataArea reads the user data of node n's local component of res, straight from the file.
func dataArea(t *testing.T, c *Cluster, n *Node, res string) []byte {
	t.Helper()
	path := filepath.Join(n.Dir, res+".img")
	md, err := readMetadataRO(path, res)
	must(t, err)
	f, err := os.ReadFile(path)
	must(t, err)
	return f[md.LocalOff : md.LocalOff+md.DataSize]
}

// compareNodes asserts both local components hold the same data and, if model is given, that
// it is the model.
func compareNodes(t *testing.T, c *Cluster, res string, model []byte) {
	t.Helper()
	a, b := dataArea(t, c, c.Nodes[0], res), dataArea(t, c, c.Nodes[1], res)
	if !bytes.Equal(a, b) {
		t.Fatalf("%s: local components differ at byte %d", res, firstDiff(a, b))
	}
	if model != nil && !bytes.Equal(a, model) {
		t.Fatalf("%s: data differs from what was written at byte %d", res, firstDiff(a, model))
	}
}

func TestModesReplicateAndCompare(t *testing.T) {
	for _, mode := range []string{"fullsync", "memsync", "async"} {
		t.Run(mode, func(t *testing.T) {
			c, out := newTestCluster(t, ClusterOptions{Replication: mode, ExtraGlobal: "checksum crc32"})
			pair(t, c)
			h1 := c.Nodes[0]
			model := readVolume(t, c, h1, "disk1")
			writeRandom(t, c, h1, "disk1", model, 200, 1)
			must(t, c.WaitComplete(h1, time.Minute))
			compareNodes(t, c, "disk1", model)
			if code := c.CLI(h1, "list", "disk1"); code != 0 {
				t.Fatalf("list: %d", code)
			}
			for _, want := range []string{"role: primary", "replication: " + mode, "status: complete", "dirty: 0 (0B)", "writes: 200"} {
				if !strings.Contains(out.String(), want) {
					t.Fatalf("hast list lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

func TestDisconnectWritesReconnectResync(t *testing.T) {
	c, out := newTestCluster(t, ClusterOptions{Replication: "memsync"})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	model := readVolume(t, c, h1, "disk1")
	writeRandom(t, c, h1, "disk1", model, 50, 2)
	c.Kill(h2, syscall.SIGTERM)
	writeRandom(t, c, h1, "disk1", model, 50, 3)
	st, err := mustClient(t, c, h1).Status("disk1")
	must(t, err)
	if st[0].Status != "degraded" || st[0].Dirty == 0 {
		t.Fatalf("after writes without the peer: status %q dirty %d, want degraded and dirty > 0", st[0].Status, st[0].Dirty)
	}
	must(t, c.Start(h2))
	must(t, c.Role(h2, "secondary", "all"))
	must(t, c.WaitComplete(h1, time.Minute))
	compareNodes(t, c, "disk1", model)
	c.CLI(h1, "status")
	if !strings.Contains(out.String(), "disk1\tcomplete primary") {
		t.Fatalf("status output:\n%s", out)
	}
}

func mustClient(t *testing.T, c *Cluster, n *Node) *Client {
	t.Helper()
	cl, err := c.Client(n)
	must(t, err)
	return cl
}

func TestSecondaryKilledMidWrite(t *testing.T) {
	c, _ := newTestCluster(t, ClusterOptions{Replication: "fullsync"})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	model := readVolume(t, c, h1, "disk1")
	done := make(chan struct{})
	go func() {
		defer close(done)
		writeRandom(t, c, h1, "disk1", model, 400, 4)
	}()
	time.Sleep(30 * time.Millisecond)
	c.Kill(h2, syscall.SIGKILL)
	<-done
	if t.Failed() {
		return
	}
	must(t, c.Start(h2))
	must(t, c.Role(h2, "secondary", "all"))
	must(t, c.WaitComplete(h1, time.Minute))
	compareNodes(t, c, "disk1", model)
}

func TestFailoverKeepsAcknowledgedWrites(t *testing.T) {
	c, _ := newTestCluster(t, ClusterOptions{Replication: "memsync"})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	model := readVolume(t, c, h1, "disk1")
	writeRandom(t, c, h1, "disk1", model, 100, 5)
	c.Kill(h1, syscall.SIGKILL)
	must(t, c.Role(h2, "primary", "all"))
	if got := readVolume(t, c, h2, "disk1"); !bytes.Equal(got, model) {
		t.Fatalf("after failover hast2 differs at byte %d", firstDiff(got, model))
	}
	// hast2 writes on alone, then hast1 returns as secondary and receives them (rule 3c).
	writeRandom(t, c, h2, "disk1", model, 50, 6)
	must(t, c.Start(h1))
	must(t, c.Role(h1, "secondary", "all"))
	must(t, c.WaitComplete(h2, time.Minute))
	compareNodes(t, c, "disk1", model)
}

func TestSplitBrainDetectedNothingOverwritten(t *testing.T) {
	c, out := newTestCluster(t, ClusterOptions{Replication: "fullsync", DiskSize: 32 << 20})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	base := readVolume(t, c, h1, "disk1")
	// Cut hast1 off (its daemon stops), promote hast2 and write there.
	c.Kill(h1, syscall.SIGKILL)
	must(t, c.Role(h2, "primary", "all"))
	m2 := append([]byte(nil), base...)
	writeRandom(t, c, h2, "disk1", m2, 4, 7)
	// hast1 comes back, is made primary by mistake and writes too.
	must(t, c.Start(h1))
	must(t, c.Role(h1, "primary", "all"))
	m1 := append([]byte(nil), base...)
	writeRandom(t, c, h1, "disk1", m1, 4, 8)
	// The operator demotes hast1 to rejoin: the secondary must detect split-brain.
	must(t, c.Role(h1, "secondary", "all"))
	deadline := time.Now().Add(30 * time.Second)
	for {
		s1, err1 := mustClient(t, c, h1).Status("disk1")
		s2, err2 := mustClient(t, c, h2).Status("disk1")
		if err1 == nil && err2 == nil && s1[0].SplitBrain && s2[0].SplitBrain {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("split-brain not reported on both nodes: hast1 %+v hast2 %+v", s1, s2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Nothing was overwritten on either side.
	if a := dataArea(t, c, h1, "disk1"); !bytes.Equal(a, m1) {
		t.Fatalf("hast1's data was changed at byte %d", firstDiff(a, m1))
	}
	if b := dataArea(t, c, h2, "disk1"); !bytes.Equal(b, m2) {
		t.Fatalf("hast2's data was changed at byte %d", firstDiff(b, m2))
	}

	// Beyond HAST: both sides say what diverged.
	rep1, err := mustClient(t, c, h1).SplitBrain("disk1")
	must(t, err)
	rep2, err := mustClient(t, c, h2).SplitBrain("disk1")
	must(t, err)
	if rep1 == nil || rep2 == nil || !rep1.RemoteKnown || !rep2.RemoteKnown {
		t.Fatalf("split-brain reports incomplete: hast1 %+v hast2 %+v", rep1, rep2)
	}
	ext := int64(rep1.ExtentSize)
	changed := func(model []byte) map[int]bool {
		m := map[int]bool{}
		for e := 0; int64(e)*ext < int64(len(model)); e++ {
			lo, hi := int64(e)*ext, min(int64(e+1)*ext, int64(len(model)))
			if !bytes.Equal(model[lo:hi], base[lo:hi]) {
				m[e] = true
			}
		}
		return m
	}
	covers := func(who string, got []int, want map[int]bool) {
		t.Helper()
		in := map[int]bool{}
		for _, e := range got {
			in[e] = true
		}
		for e := range want {
			if !in[e] {
				t.Fatalf("%s: extent %d changed but is not reported (reported %v)", who, e, got)
			}
		}
	}
	covers("hast1 local", rep1.Local, changed(m1))
	covers("hast1 remote", rep1.Remote, changed(m2))
	covers("hast2 local", rep2.Local, changed(m2))
	covers("hast2 remote", rep2.Remote, changed(m1))
	if code := c.CLI(h1, "split-brain", "disk1"); code != 0 || !strings.Contains(out.String(), "the peer changed:") {
		t.Fatalf("hast split-brain: exit %d\n%s", code, out)
	}
	// Promoting the split-brained node is refused without --force.
	if code := c.CLI(h1, "role", "primary", "disk1"); code == 0 {
		t.Fatal("promotion of a split-brained node was not refused")
	}
	if !strings.Contains(out.String(), "split-brain with the peer is unresolved") {
		t.Fatalf("refusal does not say why:\n%s", out)
	}

	// Resolve on hast1, keeping hast2's data: hast1's divergent extents are saved first, then
	// only what diverged is resynchronised.
	must(t, c.Role(h1, "secondary", "disk1"))
	if code := c.CLI(h1, "resolve", "disk1", "--keep", "remote"); code != 0 {
		t.Fatalf("resolve: exit %d\n%s", code, out)
	}
	must(t, c.WaitComplete(h2, 30*time.Second))
	compareNodes(t, c, "disk1", m2)
	st, err := mustClient(t, c, h1).Status("disk1")
	must(t, err)
	if st[0].SplitBrain || st[0].LastSaved == "" {
		t.Fatalf("after resolve: split-brain %v, saved to %q", st[0].SplitBrain, st[0].LastSaved)
	}
	saved, err := os.ReadFile(st[0].LastSaved)
	must(t, err)
	for e := range changed(m1) {
		lo, hi := int64(e)*ext, min(int64(e+1)*ext, int64(len(m1)))
		if !bytes.Equal(saved[lo:hi], m1[lo:hi]) {
			t.Fatalf("saved file lacks hast1's discarded extent %d", e)
		}
	}
	h2st, err := mustClient(t, c, h2).Status("disk1")
	must(t, err)
	if total := uint64(len(m2)); h2st[0].Stats.SyncedBytes >= total || h2st[0].Stats.SyncedBytes == 0 {
		t.Fatalf("resolution resynchronised %d bytes, the whole volume is %d: it should copy only what diverged", h2st[0].Stats.SyncedBytes, total)
	}
}

func TestUnknownResourceExitsNonZero(t *testing.T) {
	c, out := newTestCluster(t, ClusterOptions{})
	if code := c.CLI(c.Nodes[0], "status", "nosuch"); code != ehastNoEntry {
		t.Fatalf("status nosuch: exit %d, want %d\n%s", code, ehastNoEntry, out)
	}
	if code := c.CLI(c.Nodes[0], "role", "primary", "nosuch"); code != ehastNoEntry {
		t.Fatalf("role primary nosuch: exit %d, want %d", code, ehastNoEntry)
	}
	if code := c.CLI(c.Nodes[0], "create", "nosuch"); code != exDataErr {
		t.Fatalf("create nosuch: exit %d, want %d", code, exDataErr)
	}
	if code := c.CLI(c.Nodes[0], "frobnicate"); code != exUsage {
		t.Fatalf("unknown verb: exit %d, want %d", code, exUsage)
	}
	if !strings.Contains(out.String(), "Unknown resource nosuch.") {
		t.Fatalf("create did not name the resource:\n%s", out)
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	b, err := os.ReadFile(path)
	must(t, err)
	return sha256.Sum256(b)
}

func TestHostileConnectionsTouchNothing(t *testing.T) {
	c, _ := newTestCluster(t, ClusterOptions{})
	h2 := c.Nodes[1]
	must(t, c.Role(h2, "secondary", "all"))
	img := filepath.Join(h2.Dir, "disk1.img")
	before := fileSum(t, img)
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", h2.Addr)
		must(t, err)
		return conn
	}
	expectClosed := func(conn net.Conn, what string) {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		for {
			_, err := conn.Read(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("%s: connection not closed", what)
				}
				return
			}
		}
	}
	// 1. An address that is no resource's remote.
	conn := dial("127.0.0.3")
	conn.Write([]byte{1, 10, 0, 0, 0})
	expectClosed(conn, "unconfigured address")
	// 2. The right address, garbage.
	conn = dial("127.0.0.1")
	conn.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64))
	expectClosed(conn, "garbage")
	// 3. The right address, an oversized frame header.
	conn = dial("127.0.0.1")
	conn.Write([]byte{2, 0xff, 0xff, 0xff, 0x7f})
	expectClosed(conn, "oversized frame")
	time.Sleep(200 * time.Millisecond)
	log := c.LogTail(h2)
	for _, want := range []string{"no resource's remote", "bad handshake message"} {
		if !strings.Contains(log, want) {
			t.Fatalf("hast2's log does not say %q:\n%s", want, log)
		}
	}
	if fileSum(t, img) != before {
		t.Fatal("a hostile connection changed the secondary's disk")
	}
	_ = blockdev.MetadataSize
	_ = context.Background
}

func TestPromotingInconsistentCopyRefused(t *testing.T) {
	c, out := newTestCluster(t, ClusterOptions{DiskSize: 32 << 20, DaemonArgs: []string{"--sync-rate", "2097152"}})
	h1, h2 := c.Nodes[0], c.Nodes[1]
	must(t, c.Role(h2, "secondary", "all"))
	must(t, c.Role(h1, "primary", "all"))
	// The initial full sync runs at 2 MiB/s: kill the primary in the middle of it.
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := mustClient(t, c, h1).Status("disk1")
		if err == nil && st[0].SyncDone > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("initial sync did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Kill(h1, syscall.SIGKILL)
	if code := c.CLI(h2, "role", "primary", "disk1"); code == 0 {
		t.Fatal("a half-synchronised secondary was promoted without --force")
	}
	if !strings.Contains(out.String(), "copy is inconsistent") {
		t.Fatalf("refusal does not say why:\n%s", out)
	}
	if code := c.CLI(h2, "role", "--force", "primary", "disk1"); code != 0 {
		t.Fatalf("--force promotion: exit %d\n%s", code, out)
	}
}

// TestLocalIOURing runs the replication path with local components driven by io_uring.
func TestLocalIOURing(t *testing.T) {
	c, _ := newTestCluster(t, ClusterOptions{Replication: "fullsync", DaemonArgs: []string{"--local-io", "uring"}})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	model := readVolume(t, c, h1, "disk1")
	writeRandom(t, c, h1, "disk1", model, 100, 41)
	must(t, c.WaitComplete(h1, time.Minute))
	compareNodes(t, c, "disk1", model)
	c.Kill(h1, syscall.SIGKILL)
	must(t, c.Role(h2, "primary", "all"))
	if got := readVolume(t, c, h2, "disk1"); !bytes.Equal(got, model) {
		t.Fatalf("after failover hast2 differs at byte %d", firstDiff(got, model))
	}
}
