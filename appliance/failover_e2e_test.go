package appliance

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// failoverCLI runs `hast failover <sub> -c conf --node n args...` in-process and returns the
// exit status.
func failoverCLI(c *Cluster, n *Node, sub string, args ...string) int {
	cli := &CLI{Stdout: c.Out, Stderr: c.Out}
	return cli.Main(append([]string{"failover", sub, "-c", c.Conf, "--node", n.Name}, args...))
}

// TestFailoverRefusesHalfSyncedNode: hast2 holds disk1 fully synchronised and disk2 half
// synchronised (hast1 killed during disk2's initial sync). keepalived's check fails there,
// and notify MASTER refuses the whole node — disk1 is not promoted either, the pool hook does
// not run — logs why, runs hast.conf's exec hook with failover-refused and exits non-zero.
// BACKUP leaves both secondary.
func TestFailoverRefusesHalfSyncedNode(t *testing.T) {
	dir := t.TempDir()
	hookOut := filepath.Join(dir, "hook.log")
	hook := filepath.Join(dir, "hook.sh")
	must(t, os.WriteFile(hook, []byte("#!/bin/sh\necho \"$@\" >> "+hookOut+"\n"), 0o755))
	c, out := newTestCluster(t, ClusterOptions{Resources: 2, DiskSize: 16 << 20, ExtraGlobal: "exec " + hook})
	h1, h2 := c.Nodes[0], c.Nodes[1]
	must(t, c.Role(h2, "secondary", "disk1"))
	must(t, c.Role(h1, "primary", "disk1"))
	waitRes(t, c, h1, "disk1 complete", func(s statusEntry) bool { return s.Name == "disk1" && s.Status == "complete" && s.Dirty == 0 })
	// disk2's initial sync at 1 MiB/s, cut short by SIGKILL of the primary.
	c.Kill(h1, syscall.SIGTERM)
	must(t, c.Start(h1, "--sync-rate", "1048576"))
	must(t, c.Role(h2, "secondary", "disk2"))
	must(t, c.Role(h1, "primary", "disk2"))
	waitRes(t, c, h1, "disk2 sync started", func(s statusEntry) bool { return s.Name == "disk2" && s.SyncDone > 0 })
	c.Kill(h1, syscall.SIGKILL)

	if code := failoverCLI(c, h2, "check"); code == 0 {
		t.Fatalf("check passed on a node with a half-synchronised copy\n%s", out)
	}
	upMark := filepath.Join(dir, "pool-up")
	code := failoverCLI(c, h2, "notify", "--up", "touch "+upMark, "--outdate-after", "1h", "INSTANCE", "hast", "MASTER", "100")
	if code == 0 {
		t.Fatalf("notify MASTER promoted a node with a half-synchronised copy\n%s", out)
	}
	st, err := mustClient(t, c, h2).Status()
	must(t, err)
	for _, s := range st {
		if s.Role != "secondary" {
			t.Errorf("%s on hast2 is %s after a refused MASTER, want secondary (all or nothing)", s.Name, s.Role)
		}
	}
	if _, err := os.Stat(upMark); err == nil {
		t.Error("--up ran although the promotion was refused")
	}
	if !strings.Contains(out.String(), "refusing to promote this node: disk2: this copy is inconsistent") {
		t.Errorf("the refusal does not say why:\n%s", out)
	}
	// The hook has run by the time notify returns.
	if b, _ := os.ReadFile(hookOut); !strings.Contains(string(b), "failover-refused disk2 ") {
		t.Errorf("hast.conf's exec hook was not run with failover-refused disk2:\n%s", b)
	}
	if code := failoverCLI(c, h2, "notify", "BACKUP"); code != 0 {
		t.Fatalf("notify BACKUP: exit %d\n%s", code, out)
	}
	// check still fails: the copy is still inconsistent, and a refusal holds for 10 s.
	if code := failoverCLI(c, h2, "check"); code == 0 {
		t.Fatal("check passed right after a refused promotion")
	}
}

func waitRes(t *testing.T, c *Cluster, n *Node, what string, cond func(statusEntry) bool) {
	t.Helper()
	cl := mustClient(t, c, n)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		st, err := cl.Status()
		if err == nil {
			for _, s := range st {
				if cond(s) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s not reached: %+v %v", n.Name, what, st, err)
		}
	}
}
