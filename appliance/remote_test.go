package appliance

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestUnresolvableRemoteKeepsDaemonUp: a `remote` name that does not resolve (a DNS hiccup at
// boot, a name missing on this host) must not stop the daemon. The primary serves without its
// peer, keeps trying, and logs the failure once, not once per attempt.
func TestUnresolvableRemoteKeepsDaemonUp(t *testing.T) {
	remote := regexp.MustCompile(`(?s)(on hast1 \{\n\t\tlocal [^\n]*\n\t\tremote tcp://)127\.0\.0\.2:`)
	wrap := editConf(t, map[string]func(string) string{"hast1": func(conf string) string {
		return remote.ReplaceAllString(conf, "${1}hast2.invalid:")
	}})
	c, _ := newTestCluster(t, ClusterOptions{Wrap: wrap})
	h1, h2 := c.Nodes[0], c.Nodes[1]
	must(t, c.Role(h2, "secondary", "all"))
	must(t, c.Role(h1, "primary", "all"))
	writeRandom(t, c, h1, "disk1", readVolume(t, c, h1, "disk1"), 5, 1)
	waitLog(t, h1, 1, "hast2.invalid")
	// Attempts every 500 ms: several have failed after 3 s.
	time.Sleep(3 * time.Second)
	st, err := mustClient(t, c, h1).Status("disk1")
	must(t, err)
	if st[0].Connected || st[0].Status != "degraded" {
		t.Fatalf("hast1 with an unresolvable remote: connected %v status %q", st[0].Connected, st[0].Status)
	}
	if n := strings.Count(daemonLog(t, h1), "no such host"); n != 1 {
		t.Errorf("the lookup failure was logged %d times, want once:\n%s", n, daemonLog(t, h1))
	}
}

// TestRefusedPeerReasonInStatus: two nodes on one machine without `source` lines pair the first
// time (hast1 happens to connect from its own address) but not after failover: hast2 connects
// from 127.0.0.1 too, which hast1 does not know. hast2's status must say why, in hast1's words.
func TestRefusedPeerReasonInStatus(t *testing.T) {
	noSource := regexp.MustCompile(`\t\tsource [^\n]*\n`)
	drop := func(conf string) string { return noSource.ReplaceAllString(conf, "") }
	c, _ := newTestCluster(t, ClusterOptions{Wrap: editConf(t, map[string]func(string) string{"hast1": drop, "hast2": drop})})
	h1, h2 := c.Nodes[0], c.Nodes[1]
	pair(t, c)
	must(t, c.Role(h1, "secondary", "all"))
	must(t, c.Role(h2, "primary", "all"))
	cl := mustClient(t, c, h2)
	const want = "refused by peer: address not a configured remote"
	last := ""
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		st, err := cl.Status("disk1")
		must(t, err)
		if last = st[0].LastError; last == want && !st[0].Connected {
			if code, o := cliRun("list", "-c", c.Conf, "--node", h2.Name, "disk1"); code != 0 || !strings.Contains(o, "last error: "+want) {
				t.Fatalf("hast list on hast2: exit %d, no last error line:\n%s", code, o)
			}
			return
		}
	}
	t.Fatalf("hast2's status says %q, want %q\nhast2 log:\n%s", last, want, daemonLog(t, h2))
}
