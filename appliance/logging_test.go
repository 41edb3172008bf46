package appliance

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDaemonLogPlainWithMilliseconds: a daemon logging to a file writes no terminal colours,
// and its timestamps carry the real milliseconds (they all read .000 when the time was
// rounded to the second before formatting).
func TestDaemonLogPlainWithMilliseconds(t *testing.T) {
	c, _ := newTestCluster(t, ClusterOptions{}, nil, []string{"--log-format", "json"})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	c.Kill(h1, unix.SIGTERM)
	c.Kill(h2, unix.SIGTERM)

	b, err := os.ReadFile(h1.Dir + "/daemon.log")
	must(t, err)
	log := string(b)
	if strings.Contains(log, "\x1b[") {
		t.Errorf("hast1's log, a file, has terminal colour codes:\n%q", log)
	}
	stamps := regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.(\d\d\d) `).FindAllStringSubmatch(log, -1)
	if len(stamps) < 5 {
		t.Fatalf("hast1 logged %d lines with a console timestamp:\n%s", len(stamps), log)
	}
	whole := 0
	for _, s := range stamps {
		if s[1] == "000" {
			whole++
		}
	}
	if whole == len(stamps) {
		t.Errorf("every one of hast1's %d timestamps ends in .000:\n%s", len(stamps), log)
	}

	// hast2 ran with --log-format json: zerolog's own lines, a millisecond timestamp each.
	b, err = os.ReadFile(h2.Dir + "/daemon.log")
	must(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	ms := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}`)
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("hast2's log line is not JSON: %v\n%s", err, l)
		}
		if ts, _ := m["time"].(string); !ms.MatchString(ts) || m["level"] == nil || m["message"] == nil {
			t.Fatalf("hast2's log line lacks a millisecond time, level or message: %s", l)
		}
	}
}

// openPTY returns the terminal side of a new pseudo-terminal.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	must(t, err)
	t.Cleanup(func() { m.Close() })
	must(t, unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	must(t, err)
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	must(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// TestLogColourOnlyOnTerminal: colour on a terminal, not with NO_COLOR set, not on a file.
func TestLogColourOnlyOnTerminal(t *testing.T) {
	tty := openPTY(t)
	f, err := os.CreateTemp(t.TempDir(), "log")
	must(t, err)
	defer f.Close()
	t.Setenv("NO_COLOR", "")
	if !colourTerminal(tty) || colourTerminal(f) {
		t.Fatalf("colour on a terminal %v (want true), on a file %v (want false)", colourTerminal(tty), colourTerminal(f))
	}
	t.Setenv("NO_COLOR", "1")
	if colourTerminal(tty) {
		t.Fatal("colour on a terminal with NO_COLOR=1")
	}
}
