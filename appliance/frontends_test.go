package appliance

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/nbd"
)

// readmeDaemonArgs returns the flags of the README's `hast daemon` line with every absolute
// path moved under root, so that the line runs as written but inside the test's directory.
func readmeDaemonArgs(t *testing.T, root string) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	must(t, err)
	m := regexp.MustCompile(`(?m)^hast daemon (.*?)\s*&`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no `hast daemon ... &` line in README.md")
	}
	var args []string
	for _, a := range strings.Fields(string(m[1])) {
		a = strings.Replace(a, "unix:///", "unix://"+root+"/", 1)
		if strings.HasPrefix(a, "/") {
			a = filepath.Join(root, a)
		}
		args = append(args, a)
	}
	return args
}

// TestREADMEDaemonLineServesNBDAndFUSE runs the README's daemon line (its paths under the test's
// directory): the primary's volume must be reachable through the NBD socket and the FUSE file
// it names.
func TestREADMEDaemonLineServesNBDAndFUSE(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	args := readmeDaemonArgs(t, root)
	var fuseDir, sock string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--fuse":
			fuseDir = args[i+1]
		case "--nbd":
			sock = strings.TrimPrefix(args[i+1], "unix://")
		}
	}
	if fuseDir == "" || sock == "" {
		t.Fatalf("the README's daemon line lacks --fuse or a unix --nbd: %q", args)
	}
	c, out := newTestCluster(t, ClusterOptions{}, args)
	pair(t, c)
	if _, err := os.Stat(filepath.Join(fuseDir, "disk1")); err != nil {
		t.Fatalf("FUSE file of the README's line: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := nbd.Dial(ctx, "unix", sock, "disk1")
	if err != nil {
		t.Fatalf("NBD export at the README's socket %s: %v", sock, err)
	}
	v.Close()
	c.Kill(c.Nodes[0], syscall.SIGTERM)
	if err := checkFrontendPaths(fuseDir, []string{"unix://" + sock}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("the NBD socket %s is left behind after exit\n%s", sock, out)
	}
}

// TestNBDSocketInsideFUSEDirRefused: the daemon refuses, with the reason, an NBD socket that its
// own FUSE mount would hide.
func TestNBDSocketInsideFUSEDirRefused(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "run", "hast")
	_, err := NewDaemon(Options{ConfigPath: filepath.Join(root, "hast.conf"), FUSE: dir,
		NBD: []string{"unix://" + filepath.Join(dir, "nbd.sock")}}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "inside the FUSE directory") || ExitCode(err) != exUsage {
		t.Fatalf("NewDaemon = %v (exit %d), want a usage error naming the FUSE directory", err, ExitCode(err))
	}
}
