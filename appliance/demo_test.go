package appliance

import (
	"bufio"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemoInterruptedCleansUp: `hast demo` stopped by Ctrl-C, by SIGTERM, or by its reader going
// away (SIGPIPE) stops its daemons, detaches its FUSE mounts and removes its directory.
func TestDemoInterruptedCleansUp(t *testing.T) {
	needTools(t)
	for _, tc := range []struct {
		name string
		stop func(t *testing.T, cmd *exec.Cmd, out *os.File)
	}{
		{"SIGINT", func(t *testing.T, cmd *exec.Cmd, _ *os.File) { must(t, cmd.Process.Signal(syscall.SIGINT)) }},
		{"SIGTERM", func(t *testing.T, cmd *exec.Cmd, _ *os.File) { must(t, cmd.Process.Signal(syscall.SIGTERM)) }},
		{"closed pipe", func(t *testing.T, _ *exec.Cmd, out *os.File) { must(t, out.Close()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			r, w, err := os.Pipe()
			must(t, err)
			var stderr strings.Builder
			cmd := exec.Command(hastBin, "demo")
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			cmd.Stdout, cmd.Stderr = w, &stderr
			must(t, cmd.Start())
			w.Close()
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() { cmd.Process.Kill(); <-exited; r.Close() })
			// Interrupted once both daemons serve and the FUSE view is mounted.
			dir := ""
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				if m := regexp.MustCompile(`hast\.conf \((.*)/hast\.conf\)`).FindStringSubmatch(sc.Text()); m != nil {
					dir = m[1]
				}
				if strings.Contains(sc.Text(), "hast role init all") {
					break
				}
			}
			if dir == "" {
				t.Fatalf("the demo did not get going:\n%s", stderr.String())
			}
			tc.stop(t, cmd, r)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				t.Fatalf("the demo still runs 30 s after being stopped\n%s", stderr.String())
			}
			exited <- nil
			mounts, err := os.ReadFile("/proc/self/mountinfo")
			must(t, err)
			if strings.Contains(string(mounts), dir) {
				t.Errorf("mounts under %s left behind:\n%s", dir, mounts)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("the demo's directory %s is left behind\nstderr:\n%s", dir, stderr.String())
			}
		})
	}
}
