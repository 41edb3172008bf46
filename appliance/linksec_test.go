package appliance

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// End-to-end tests of link security (tls-psk in hast.conf) with two real daemons.

// writeKey writes a pre-shared key file readable by its owner only.
func writeKey(t *testing.T, dir, name, secret string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	must(t, os.WriteFile(p, []byte(secret+"\n"), 0o600))
	return p
}

// editConf returns a ClusterOptions.Wrap that starts the named nodes with their own copy of
// hast.conf, rewritten by edit: the way to give one node a different key than the other,
// since the cluster writes one file for both.
func editConf(t *testing.T, edits map[string]func(conf string) string) func(node string, argv []string) []string {
	return func(node string, argv []string) []string {
		edit, ok := edits[node]
		if !ok {
			return argv
		}
		out := append([]string(nil), argv...)
		for i := 0; i+1 < len(out); i++ {
			if out[i] != "-c" {
				continue
			}
			src, err := os.ReadFile(out[i+1])
			if err != nil {
				t.Errorf("read hast.conf for %s: %v", node, err)
				return argv
			}
			edited := edit(string(src))
			if edited == string(src) {
				t.Errorf("the edit for %s changed nothing in hast.conf:\n%s", node, src)
			}
			p := filepath.Join(filepath.Dir(out[i+1]), node+".conf")
			if err := os.WriteFile(p, []byte(edited), 0o644); err != nil {
				t.Errorf("write %s: %v", p, err)
				return argv
			}
			out[i+1] = p
		}
		return out
	}
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// daemonLog is node n's whole log without terminal colours.
func daemonLog(t *testing.T, n *Node) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.Dir, "daemon.log"))
	must(t, err)
	return ansi.ReplaceAllString(string(b), "")
}

// waitLog waits until node n has logged every one of want at least times times.
func waitLog(t *testing.T, n *Node, times int, want ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		log := daemonLog(t, n)
		missing := ""
		for _, w := range want {
			if strings.Count(log, w) < times {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has not logged %q %d times; log:\n%s", n.Name, missing, times, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recordingProxy forwards TCP connections to a target set later and keeps every byte sent
// towards it, to look at what travels on the replication link.
type recordingProxy struct {
	ln     net.Listener
	mu     sync.Mutex
	target string
	conns  [][]byte // per connection, the bytes from the client
	wg     sync.WaitGroup
}

func newRecordingProxy(t *testing.T) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	p := &recordingProxy{ln: ln}
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *recordingProxy) setTarget(addr string) {
	p.mu.Lock()
	p.target = addr
	p.mu.Unlock()
}

func (p *recordingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		idx := len(p.conns)
		p.conns = append(p.conns, nil)
		p.mu.Unlock()
		// Dial from hast1's address: hast2 only accepts its peer's.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, Timeout: 5 * time.Second}
		up, err := d.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					p.mu.Lock()
					p.conns[idx] = append(p.conns[idx], buf[:n]...)
					p.mu.Unlock()
					if _, werr := up.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			up.Close()
			c.Close()
		}()
		go func() {
			defer p.wg.Done()
			io.Copy(c, up)
			c.Close()
			up.Close()
		}()
	}
}

func (p *recordingProxy) recorded() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([][]byte, len(p.conns))
	for i, b := range p.conns {
		out[i] = append([]byte(nil), b...)
	}
	return out
}

var hast2Listen = regexp.MustCompile(`on hast2 \{\n\tlisten tcp://(\S+)\n`)

func TestLinkSecurityPSKReplicates(t *testing.T) {
	keys := t.TempDir()
	psk := writeKey(t, keys, "psk", "both nodes share this secret, 40 bytes")
	proxy := newRecordingProxy(t)
	// hast1 reaches hast2 through the proxy, which sees the replication link's bytes.
	wrap := editConf(t, map[string]func(string) string{"hast1": func(conf string) string {
		m := hast2Listen.FindStringSubmatch(conf)
		if m == nil {
			t.Errorf("no listen address of hast2 in:\n%s", conf)
			return conf
		}
		proxy.setTarget(m[1])
		return strings.ReplaceAll(conf, "remote tcp://"+m[1], "remote tcp://"+proxy.ln.Addr().String())
	}})
	c, _ := newTestCluster(t, ClusterOptions{Replication: "fullsync", ExtraGlobal: "tls-psk " + psk, Wrap: wrap})
	h1, h2 := c.Nodes[0], c.Nodes[1]
	pair(t, c)

	// A block whose plaintext would stand out on the wire (compression "hole" leaves it as is).
	marker := bytes.Repeat([]byte("LINK-SECURITY-PLAINTEXT-MARKER;"), 4096/31+1)[:4096]
	model := readVolume(t, c, h1, "disk1")
	v, err := c.Volume(h1, "disk1")
	must(t, err)
	for off := int64(1 << 20); off < 1<<20+64*4096; off += 4096 {
		if _, err := v.WriteAt(marker, off); err != nil {
			v.Close()
			t.Fatal(err)
		}
		copy(model[off:], marker)
	}
	must(t, v.Flush())
	v.Close()
	writeRandom(t, c, h1, "disk1", model, 50, 11)
	must(t, c.WaitComplete(h1, time.Minute))
	compareNodes(t, c, "disk1", model)

	waitLog(t, h2, 1, "primary connected")
	log := daemonLog(t, h2)
	if !regexp.MustCompile(`primary connected.*link=secure`).MatchString(log) {
		t.Fatalf("hast2 does not log a secured link:\n%s", log)
	}
	rec := proxy.recorded()
	if len(rec) < 2 {
		t.Fatalf("the proxy saw %d connections, want HAST's two", len(rec))
	}
	total := 0
	for i, b := range rec {
		if len(b) > 0 && b[0] != 0x16 {
			t.Fatalf("connection %d starts with %#x, not a TLS handshake record", i, b[0])
		}
		if bytes.Contains(b, []byte("LINK-SECURITY-PLAINTEXT-MARKER")) {
			t.Fatalf("connection %d carried written data in plaintext", i)
		}
		total += len(b)
	}
	if total < 64*4096 {
		t.Fatalf("the proxy saw %d bytes, less than the %d written: the data did not go through it", total, 64*4096)
	}

	// The control socket, which can change roles, stays root's alone.
	for _, n := range c.Nodes {
		fi, err := os.Stat(filepath.Join(n.Dir, "ctl.sock"))
		must(t, err)
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s control socket mode %v, want a socket with 0600", n.Name, fi.Mode())
		}
	}
}

// refusedTouchesNothing pairs the cluster so that hast2's link is refused, writes on hast1,
// and checks that both logged why and that hast2's disk did not change. It returns what
// hast1's volume holds.
func refusedTouchesNothing(t *testing.T, c *Cluster, h1Logs, h2Logs []string) []byte {
	t.Helper()
	h1, h2 := c.Nodes[0], c.Nodes[1]
	must(t, c.Role(h2, "secondary", "all"))
	img := filepath.Join(h2.Dir, "disk1.img")
	before := fileSum(t, img)
	must(t, c.Role(h1, "primary", "all"))
	// Several attempts (one every 500 ms), so a refusal is not a one-off.
	waitLog(t, h2, 3, h2Logs...)
	waitLog(t, h1, 1, h1Logs...)
	model := readVolume(t, c, h1, "disk1")
	writeRandom(t, c, h1, "disk1", model, 30, 12)
	st, err := mustClient(t, c, h1).Status("disk1")
	must(t, err)
	if st[0].Connected || st[0].Status != "degraded" || st[0].Dirty == 0 {
		t.Fatalf("hast1 after a refused link: connected %v status %q dirty %d; want degraded, dirty, not connected",
			st[0].Connected, st[0].Status, st[0].Dirty)
	}
	n := strings.Count(daemonLog(t, h2), h2Logs[0])
	waitLog(t, h2, n+2, h2Logs[0])
	if fileSum(t, img) != before {
		t.Fatal("a refused peer changed the secondary's disk")
	}
	if strings.Contains(daemonLog(t, h2), "primary connected") {
		t.Fatalf("hast2 let the primary connect:\n%s", daemonLog(t, h2))
	}
	return model
}

func TestLinkSecurityWrongPSKRefused(t *testing.T) {
	keys := t.TempDir()
	psk1 := writeKey(t, keys, "psk1", "the secret hast1 has, 32 bytes..")
	psk2 := writeKey(t, keys, "psk2", "a different secret on hast2 ....")
	wrap := editConf(t, map[string]func(string) string{"hast2": func(conf string) string {
		return strings.ReplaceAll(conf, "tls-psk "+psk1, "tls-psk "+psk2)
	}})
	c, _ := newTestCluster(t, ClusterOptions{ExtraGlobal: "tls-psk " + psk1, Wrap: wrap})
	model := refusedTouchesNothing(t, c,
		[]string{"the peer does not hold the pre-shared key of resource disk1"},
		[]string{"connection refused by link security", "different tls-psk secrets"})

	// The operator puts the right key on hast2 and reloads: the path is the same, the key is
	// not, and the resource picks it up; the primary connects and resynchronises.
	h1, h2 := c.Nodes[0], c.Nodes[1]
	secret, err := os.ReadFile(psk1)
	must(t, err)
	must(t, os.WriteFile(psk2, secret, 0o600))
	must(t, h2.cmd.Process.Signal(syscall.SIGHUP))
	waitLog(t, h2, 1, "resource reconfigured", "primary connected")
	must(t, c.WaitComplete(h1, time.Minute))
	compareNodes(t, c, "disk1", model)
}

func TestLinkSecurityNoDowngrade(t *testing.T) {
	keys := t.TempDir()
	psk := writeKey(t, keys, "psk", "the secret of this cluster, 32 b")
	dropTLS := func(conf string) string { return strings.ReplaceAll(conf, "tls-psk "+psk+"\n", "") }
	t.Run("plain primary to secured secondary", func(t *testing.T) {
		c, _ := newTestCluster(t, ClusterOptions{ExtraGlobal: "tls-psk " + psk,
			Wrap: editConf(t, map[string]func(string) string{"hast1": dropTLS})})
		refusedTouchesNothing(t, c,
			[]string{"peer refused the connection: Link security required."},
			[]string{"reason=\"Link security required.\""})
	})
	t.Run("secured primary to plain secondary", func(t *testing.T) {
		c, _ := newTestCluster(t, ClusterOptions{ExtraGlobal: "tls-psk " + psk,
			Wrap: editConf(t, map[string]func(string) string{"hast2": dropTLS})})
		refusedTouchesNothing(t, c,
			[]string{"link security (TLS) handshake for resource disk1"},
			[]string{"connection refused by link security", "which has no link security configured"})
	})
}
