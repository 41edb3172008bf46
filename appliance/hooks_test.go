package appliance

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestExecHooksAndReload(t *testing.T) {
	hdir := t.TempDir()
	hlog := filepath.Join(hdir, "events")
	hook := filepath.Join(hdir, "hook.sh")
	must(t, os.WriteFile(hook, []byte("#!/bin/sh\necho \"$0 $*\" >> "+hlog+"\n"), 0o755))
	c, out := newTestCluster(t, ClusterOptions{ExtraGlobal: "exec " + hook})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	model := readVolume(t, c, h1, "disk1")
	writeRandom(t, c, h1, "disk1", model, 10, 11)
	c.Kill(h2, syscall.SIGTERM)
	want := []string{
		"hook.sh role disk1 init secondary",
		"hook.sh role disk1 init primary",
		"hook.sh connect disk1",
		"hook.sh syncstart disk1",
		"hook.sh syncdone disk1",
		"hook.sh disconnect disk1",
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(hlog)
		missing := ""
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				missing = w
				break
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hook log lacks %q:\n%s", missing, b)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// SIGHUP: a broken file changes nothing; a valid change is applied and the role restored.
	conf, err := os.ReadFile(c.Conf)
	must(t, err)
	must(t, os.WriteFile(c.Conf, append(append([]byte(nil), conf...), []byte("\nbogus keyword\n")...), 0o644))
	h1.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(300 * time.Millisecond)
	if !strings.Contains(c.LogTail(h1), "Configuration not reloaded.") {
		t.Fatalf("broken config was not reported:\n%s", c.LogTail(h1))
	}
	must(t, os.WriteFile(c.Conf, []byte(strings.Replace(string(conf), "replication fullsync", "replication async", 1)), 0o644))
	h1.cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(10 * time.Second)
	for {
		st, err := mustClient(t, c, h1).Status("disk1")
		if err == nil && st[0].Replication == "async" && st[0].Role == "primary" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reload not applied: %+v %v\n%s", st, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := readVolume(t, c, h1, "disk1"); string(got) != string(model) {
		t.Fatal("data changed across reload")
	}
}
