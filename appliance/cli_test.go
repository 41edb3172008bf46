package appliance

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// cliRun runs `hast args...` in-process and returns its exit status and its output.
func cliRun(args ...string) (int, string) {
	var out bytes.Buffer
	cli := &CLI{Stdout: &out, Stderr: &out}
	code := cli.Main(args)
	return code, out.String()
}

// TestCLIAsOperatorsUseIt: FreeBSD's combined options, a -h per verb that lists its options,
// errors that name their subject once, and attach of a resource hast.conf does not have.
func TestCLIAsOperatorsUseIt(t *testing.T) {
	out := &testOut{}
	c, err := NewCluster(ClusterOptions{Dir: t.TempDir(), Exe: "/nonexistent", Resources: 1, DiskSize: 16 << 20}, out, out)
	if err != nil {
		t.Fatalf("cluster: %v\n%s", err, out)
	}
	// hastctl dump -dc FILE and hastd -dF: combined one-letter options, as getopt takes them.
	if code, o := cliRun("dump", "-dc", c.Conf, "--node", "hast1", "disk1"); code != 0 || !strings.Contains(o, "datasize") {
		t.Errorf("hast dump -dc %s: exit %d\n%s", c.Conf, code, o)
	}
	if code, o := cliRun("daemon", "-dF", "-c", filepath.Join(c.Dir, "missing.conf")); code != exOSFile {
		t.Errorf("hastd -dF with a missing configuration: exit %d, want %d (the file, not the options)\n%s", code, exOSFile, o)
	}
	// Each verb's -h lists its own options, all of them.
	for verb, flags := range map[string][]string{
		"daemon": {"-state-dir", "-sync-rate", "-metrics", "-local-io", "-log-format", "-nbd", "-fuse", "-reconnect-interval", "-keepalive-interval", "-P", "-F"},
		"create": {"-e", "-k", "-m", "-hast-layout"},
		"role":   {"-force"},
		"status": {"-o"},
		"verify": {"-rate"},
	} {
		code, o := cliRun(verb, "-h")
		if code != 0 || !strings.Contains(o, "hast "+verb) {
			t.Errorf("hast %s -h: exit %d\n%s", verb, code, o)
		}
		for _, f := range flags {
			if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(f) + `\b`).MatchString(o) {
				t.Errorf("hast %s -h does not list %s:\n%s", verb, f, o)
			}
		}
	}
	// An error names the resource once.
	must(t, os.Truncate(filepath.Join(c.Nodes[0].Dir, "disk1.img"), 4096))
	code, o := cliRun("create", "-c", c.Conf, "--node", "hast1", "disk1")
	if code == 0 || strings.Count(o, "disk1") != 1 {
		t.Errorf("hast create on a 4 KiB file: exit %d, want an error naming disk1 once:\n%s", code, o)
	}
	// A daemon that is not running: the socket is named once.
	if code, o := cliRun("status", "-c", c.Conf, "--node", "hast1"); code == 0 || strings.Count(o, filepath.Join(c.Nodes[0].Dir, "ctl.sock")) != 1 {
		t.Errorf("hast status without a daemon: exit %d, want an error naming the control socket once:\n%s", code, o)
	}
	// attach of a resource hast.conf lacks says so.
	if code, o := cliRun("attach", "-c", c.Conf, "--node", "hast1", "nosuch"); code == 0 || !strings.Contains(o, "unknown resource nosuch") {
		t.Errorf("hast attach nosuch: exit %d\n%s", code, o)
	}
}

// TestStatusJSONAndSecondaryDuringSync: `status -o json` names every statistic in snake_case,
// and a secondary that is still being synchronised does not call itself complete.
func TestStatusJSONAndSecondaryDuringSync(t *testing.T) {
	// 1 MB/s makes the initial synchronisation of 16 MiB last long enough to look at.
	c, _ := newTestCluster(t, ClusterOptions{DaemonArgs: []string{"--sync-rate", "1000000"}})
	h1, h2 := c.Nodes[0], c.Nodes[1]
	must(t, c.Role(h2, "secondary", "all"))
	must(t, c.Role(h1, "primary", "all"))
	cl1, cl2 := mustClient(t, c, h1), mustClient(t, c, h2)
	seen := false
	for deadline := time.Now().Add(time.Minute); !seen && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		s2, err := cl2.Status("disk1")
		must(t, err)
		s1, err := cl1.Status("disk1")
		must(t, err)
		// The primary was still copying after the secondary answered: the secondary answered
		// mid-synchronisation.
		if !s1[0].Syncing || s1[0].SyncDone >= s1[0].SyncTotal || !s2[0].Connected {
			continue
		}
		seen = true
		if s2[0].Status == "complete" || !s2[0].Syncing {
			t.Errorf("the secondary reports status %q syncing %v while the primary has synchronised %d of %d bytes",
				s2[0].Status, s2[0].Syncing, s1[0].SyncDone, s1[0].SyncTotal)
		}
	}
	if !seen {
		t.Fatal("never saw the initial synchronisation in progress")
	}

	code, o := cliRun("status", "-c", c.Conf, "--node", h1.Name, "-o", "json")
	if code != 0 {
		t.Fatalf("status -o json: exit %d\n%s", code, o)
	}
	var rep []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(o), &rep); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, o)
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	for _, part := range []string{"statistics", "queues"} {
		var m map[string]any
		must(t, json.Unmarshal(rep[0][part], &m))
		if len(m) == 0 {
			t.Errorf("status -o json has no %s", part)
		}
		for k := range m {
			if !snake.MatchString(k) {
				t.Errorf("status -o json: %s key %q is not snake_case", part, k)
			}
		}
	}
}
