package appliance

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadKeepsOpenFUSEFile: a reload that changes what a primary can take in place (a new
// timeout, a source line added) must leave its volume alone: a FUSE file held open across the
// SIGHUP stays valid and writes through it keep working and replicating.
func TestReloadKeepsOpenFUSEFile(t *testing.T) {
	needTools(t)
	source := regexp.MustCompile(`(on hast1 \{\n\t\tlocal [^\n]*\n\t\tremote [^\n]*\n)\t\tsource [^\n]*\n`)
	var full string
	wrap := editConf(t, map[string]func(string) string{"hast1": func(conf string) string {
		full = conf
		return source.ReplaceAllString(conf, "$1")
	}})
	c, _ := newTestCluster(t, ClusterOptions{FUSE: true, Replication: "memsync", Wrap: wrap})
	pair(t, c)
	h1 := c.Nodes[0]
	st, err := mustClient(t, c, h1).Status("disk1")
	must(t, err)
	if st[0].SourceAddr != "" {
		t.Fatalf("hast1 starts with source %q; the test needs it without", st[0].SourceAddr)
	}
	model := readVolume(t, c, h1, "disk1")
	f, err := os.OpenFile(filepath.Join(h1.FUSE, "disk1"), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	write := func(off int64, b byte) {
		t.Helper()
		p := bytes.Repeat([]byte{b}, 64<<10)
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatalf("write through the open FUSE file: %v", err)
		}
		copy(model[off:], p)
		must(t, f.Sync())
	}
	write(0, 1)

	conf := strings.Replace(full, "timeout 5\n", "timeout 7\n", 1)
	if conf == full {
		t.Fatal("no timeout line to change in hast.conf")
	}
	must(t, os.WriteFile(filepath.Join(filepath.Dir(c.Conf), "hast1.conf"), []byte(conf), 0o644))
	must(t, h1.cmd.Process.Signal(syscall.SIGHUP))
	waitLog(t, h1, 1, "Configuration reloaded.")

	write(1<<20, 2)
	got := make([]byte, 64<<10)
	if _, err := f.ReadAt(got, 1<<20); err != nil || got[0] != 2 {
		t.Fatalf("read back through the FUSE file after the reload: %v", err)
	}
	st, err = mustClient(t, c, h1).Status("disk1")
	must(t, err)
	if st[0].Role != "primary" || st[0].SourceAddr == "" {
		t.Fatalf("after the reload hast1 is %s with source %q", st[0].Role, st[0].SourceAddr)
	}
	must(t, c.WaitComplete(h1, time.Minute))
	compareNodes(t, c, "disk1", model)

	// A new local component cannot be taken while the volume is open: the reload refuses it
	// for this resource, says so, and the volume goes on as before.
	local := filepath.Join(h1.Dir, "disk1.img")
	moved := strings.Replace(conf, "local "+local+"\n", "local "+local+".new\n", 1)
	if moved == conf {
		t.Fatal("no local line of hast1 to change")
	}
	must(t, os.WriteFile(filepath.Join(filepath.Dir(c.Conf), "hast1.conf"), []byte(moved), 0o644))
	must(t, h1.cmd.Process.Signal(syscall.SIGHUP))
	waitLog(t, h1, 2, "Configuration reloaded.")
	waitLog(t, h1, 1, "resource not reconfigured")
	write(2<<20, 3)
	st, err = mustClient(t, c, h1).Status("disk1")
	must(t, err)
	if st[0].Role != "primary" || st[0].LocalPath != local {
		t.Fatalf("after a refused reload hast1 is %s on %q, want primary on %s", st[0].Role, st[0].LocalPath, local)
	}
}
