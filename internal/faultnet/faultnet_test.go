package faultnet

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// newNet creates a Net for one test and removes it afterwards, failing loudly when the machine
// cannot build one (no root, no ip or nft).
func newNet(t *testing.T) *Net {
	t.Helper()
	n, err := New()
	if err != nil {
		t.Fatalf("faultnet.New: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		for _, ns := range n.NS {
			if _, err := os.Stat(filepath.Join(netnsDir, ns)); err == nil {
				t.Errorf("namespace %s still exists after Close", ns)
			}
		}
	})
	return n
}

// echoServer accepts on l and echoes every connection until l closes.
func echoServer(t *testing.T, l net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// pingPong sends 8 bytes and waits for them to come back within timeout.
func pingPong(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	msg := []byte("ping1234")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %q", got)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestNamesAndAddresses(t *testing.T) {
	n := newNet(t)
	if n.N < 1 || n.N > 254 {
		t.Fatalf("subnet %d out of range", n.N)
	}
	for i := range 2 {
		want := fmt.Sprintf("10.99.%d.%d", n.N, i+1)
		if n.IP[i] != want {
			t.Errorf("IP[%d] = %s, want %s", i, n.IP[i], want)
		}
		if !strings.HasPrefix(n.NS[i], Prefix) || len(n.Link[i]) > 15 {
			t.Errorf("names %q/%q: want prefix %s and an interface name of at most 15 bytes", n.NS[i], n.Link[i], Prefix)
		}
	}
	// Each wrapped command sees its own namespace: its veth and address, not the other's.
	wrap := n.WrapNodes([2]string{"hast1", "hast2"})
	for i, node := range []string{"hast1", "hast2"} {
		argv := wrap(node, []string{n.ipCmd, "-4", "-o", "addr", "show"})
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
		if !strings.Contains(string(out), n.IP[i]+"/24") || strings.Contains(string(out), n.IP[1-i]+"/") {
			t.Fatalf("%s runs in the wrong namespace; addresses:\n%s", node, out)
		}
	}
	if got := wrap("other", []string{"x"}); len(got) != 1 || got[0] != "x" {
		t.Fatalf("unknown node rewritten to %v", got)
	}
	if got := Wrap("nsX")("any", []string{"prog", "arg"}); strings.Join(got, " ") != "ip netns exec nsX prog arg" {
		t.Fatalf("Wrap: %v", got)
	}
}

func TestTwoNetsGetDistinctSubnets(t *testing.T) {
	a, b := newNet(t), newNet(t)
	if a.N == b.N || a.NS[0] == b.NS[0] {
		t.Fatalf("two live networks share subnet %d", a.N)
	}
}

func TestLeftoversOfDeadProcessesAreRemoved(t *testing.T) {
	_, _, err := Tools()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Fake a dead process's namespace on a subnet nobody holds (searching from the top, away
	// from the subnets New hands out first).
	var n int
	for n = 254; n > 0; n-- {
		lock, ok, err := tryLock(n)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			ns := name(n, 0)
			if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
				lock.Close()
				t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
			}
			lock.Close() // the "process" dies
			break
		}
	}
	leftover := filepath.Join(netnsDir, name(n, 0))
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name(n, 0)).Run() })
	newNet(t)
	if _, err := os.Stat(leftover); err == nil {
		t.Fatalf("leftover namespace %s was not removed", name(n, 0))
	}
}

func TestCutLinkDownAndHeal(t *testing.T) {
	n := newNet(t)
	l, err := ListenIn(n.NS[1], "tcp", n.IP[1]+":0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	ctx := context.Background()
	c, err := DialIn(ctx, n.NS[0], "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := pingPong(c, 5*time.Second); err != nil {
		t.Fatalf("ping-pong before the cut: %v", err)
	}
	if err := n.Cut(LinkDown); err != nil {
		t.Fatal(err)
	}
	// The link-down cut is loud: the route is gone, so a new connection fails at once.
	if c2, err := DialIn(ctx, n.NS[0], "tcp", l.Addr().String()); err == nil {
		c2.Close()
		t.Fatal("dial across a cut link succeeded")
	} else if !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("dial across a cut link: %v, want network unreachable", err)
	}
	if err := pingPong(c, 300*time.Millisecond); err == nil {
		t.Fatal("ping-pong across a cut link succeeded")
	}
	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
	c3, err := DialIn(ctx, n.NS[0], "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	defer c3.Close()
	if err := pingPong(c3, 5*time.Second); err != nil {
		t.Fatalf("ping-pong after heal: %v", err)
	}
}

func TestCutSilentAndHeal(t *testing.T) {
	n := newNet(t)
	l, err := ListenIn(n.NS[1], "tcp", n.IP[1]+":0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	ctx := context.Background()
	c, err := DialIn(ctx, n.NS[0], "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := pingPong(c, 5*time.Second); err != nil {
		t.Fatalf("ping-pong before the cut: %v", err)
	}
	if err := n.Cut(Silent); err != nil {
		t.Fatal(err)
	}
	// Silent: no error, the round trip simply never completes.
	if err := pingPong(c, 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("ping-pong across a silent cut: %v, want a timeout", err)
	}
	d, err := n.Dropped()
	if err != nil {
		t.Fatal(err)
	}
	if d.CutPackets == 0 || d.CutBytes == 0 {
		t.Fatalf("silent cut dropped nothing according to nft: %+v", d)
	}
	if err := n.Heal(); err != nil {
		t.Fatal(err)
	}
	c2, err := DialIn(ctx, n.NS[0], "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	defer c2.Close()
	if err := pingPong(c2, 5*time.Second); err != nil {
		t.Fatalf("ping-pong after heal: %v", err)
	}
	if d, err := n.Dropped(); err != nil || d.CutPackets != 0 {
		t.Fatalf("after heal the cut rule should be gone: %+v %v", d, err)
	}
}

// TestLossCountersMatchDeliveries sends UDP datagrams through a lossy link: every datagram is
// either received or counted by the nft rule, and at 30 % both happen.
func TestLossCountersMatchDeliveries(t *testing.T) {
	n := newNet(t)
	var rx net.PacketConn
	if err := InNetns(n.NS[1], func() (err error) {
		rx, err = net.ListenPacket("udp", n.IP[1]+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	var tx net.Conn
	if err := InNetns(n.NS[0], func() (err error) {
		tx, err = net.Dial("udp", rx.LocalAddr().String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	send := func(count int) int {
		t.Helper()
		for i := range count {
			if _, err := tx.Write([]byte{byte(i)}); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
		got := 0
		buf := make([]byte, 16)
		for {
			// Loopback-speed veth: datagrams that were not dropped are queued by now; the
			// deadline only ends the loop once the queue is empty.
			rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, _, err := rx.ReadFrom(buf); err != nil {
				if !isTimeout(err) {
					t.Fatalf("receive: %v", err)
				}
				return got
			}
			got++
		}
	}
	const sent = 200
	if err := n.Loss(30); err != nil {
		t.Fatal(err)
	}
	got := send(sent)
	d, err := n.Dropped()
	if err != nil {
		t.Fatal(err)
	}
	if got+int(d.LossPackets) != sent {
		t.Fatalf("received %d + dropped %d != sent %d", got, d.LossPackets, sent)
	}
	if got == 0 || d.LossPackets == 0 {
		t.Fatalf("30%% loss: received %d, dropped %d of %d", got, d.LossPackets, sent)
	}
	if err := n.Loss(0); err != nil {
		t.Fatal(err)
	}
	if got := send(sent); got != sent {
		t.Fatalf("after removing the loss %d of %d datagrams arrived", got, sent)
	}
	if err := n.Loss(101); err == nil {
		t.Fatal("loss of 101% accepted")
	}
}

// TestProxyDelaysEachDirection measures round trips through the proxy: each must take at least
// the two configured one-way delays (a chunk is never written before its due time), and the
// median must not be wildly above them — a functional check with a wide margin, not a benchmark.
func TestProxyDelaysEachDirection(t *testing.T) {
	n := newNet(t)
	l, err := ListenIn(n.NS[1], "tcp", n.IP[1]+":0")
	if err != nil {
		t.Fatal(err)
	}
	// The echo server reports where connections come from.
	from := make(chan string, 4)
	var wg sync.WaitGroup
	defer func() { l.Close(); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			from <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); io.Copy(c, c) }()
		}
	}()
	const d = 20 * time.Millisecond
	p, err := n.Proxy(0, n.IP[0]+":0", l.Addr().String(), d)
	if err != nil {
		t.Fatal(err)
	}
	c, err := DialIn(context.Background(), n.NS[0], "tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var rtts []time.Duration
	for range 10 {
		start := time.Now()
		if err := pingPong(c, 10*time.Second); err != nil {
			t.Fatalf("ping-pong through the proxy: %v", err)
		}
		rtts = append(rtts, time.Since(start))
	}
	if ip := <-from; ip != n.IP[0] {
		t.Fatalf("the far end saw the proxied connection come from %s, want %s", ip, n.IP[0])
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	if rtts[0] < 2*d {
		t.Fatalf("fastest round trip %v is shorter than the configured 2×%v", rtts[0], d)
	}
	if med := rtts[len(rtts)/2]; med > 2*d+time.Second {
		t.Fatalf("median round trip %v is far above the configured 2×%v", med, d)
	}
	// Asymmetric delays add up the same way; zero delay forwards at once.
	p.SetDelay(0, 3*d)
	start := time.Now()
	if err := pingPong(c, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 3*d {
		t.Fatalf("round trip %v with delays 0/%v", rtt, 3*d)
	}
	if p.Accepted() != 1 {
		t.Fatalf("proxy accepted %d connections, want 1", p.Accepted())
	}
}

// TestProxyBulkIntegrityAndHalfClose pushes more than the proxy's queue through it in both
// directions and checks every byte arrives in order and the client's half-close reaches the
// server after the data.
func TestProxyBulkIntegrityAndHalfClose(t *testing.T) {
	n := newNet(t)
	l, err := ListenIn(n.NS[1], "tcp", n.IP[1]+":0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	p, err := n.Proxy(0, "127.0.0.1:0", l.Addr().String(), 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c, err := DialIn(context.Background(), n.NS[0], "tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 3*queueChunks*chunkSize/2)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(c) // ends when the echo server, seeing EOF, closes
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo through the proxy: got %d bytes, want %d; equal prefix %d", len(got), len(data), commonPrefix(got, data))
	}
}

func commonPrefix(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestProxyCloseEndsConnections(t *testing.T) {
	n := newNet(t)
	l, err := ListenIn(n.NS[1], "tcp", n.IP[1]+":0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	p, err := n.Proxy(0, n.IP[0]+":0", l.Addr().String(), 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := DialIn(context.Background(), n.NS[0], "tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := pingPong(c, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read after the proxy closed: %v, want EOF or reset", err)
	}
	if _, err := DialIn(context.Background(), n.NS[0], "tcp", p.Addr()); err == nil {
		t.Fatal("a closed proxy still accepts")
	}
}

func TestParseCounters(t *testing.T) {
	js := `{"nftables": [{"metainfo": {"version": "1.0.6"}},
{"table": {"family": "inet", "name": "hastfn", "handle": 1}},
{"chain": {"family": "inet", "table": "hastfn", "name": "loss", "handle": 1}},
{"rule": {"family": "inet", "table": "hastfn", "chain": "loss", "handle": 3, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "x"}}, {"counter": {"packets": 7, "bytes": 700}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "hastfn", "chain": "cut", "handle": 4, "expr": [{"counter": {"packets": 2, "bytes": 20}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "hastfn", "chain": "cut", "handle": 5, "expr": [{"counter": {"packets": 1, "bytes": 5}}]}}]}`
	got, err := parseCounters([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	if got["loss"] != [2]uint64{7, 700} || got["cut"] != [2]uint64{3, 25} {
		t.Fatalf("counters %v", got)
	}
	if _, err := parseCounters([]byte("not json")); err == nil {
		t.Fatal("garbage parsed")
	}
}
