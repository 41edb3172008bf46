package appliance

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"hast/ublk"
)

// TestUblkFlag: --ublk takes on, off or auto; "on" refuses to start where the kernel has no
// ublk (the build host), "auto" then starts without it, "off" never asks.
func TestUblkFlag(t *testing.T) {
	log := zerolog.Nop()
	if _, err := newUblkFrontend("sometimes", log); err == nil || ExitCode(err) != exUsage {
		t.Fatalf("--ublk sometimes: %v (exit %d), want a usage error", err, ExitCode(err))
	}
	if u, err := newUblkFrontend("off", log); u != nil || err != nil {
		t.Fatalf("--ublk off: %v, %v", u, err)
	}
	_, statErr := os.Stat(ublk.ControlPath)
	haveUblk := statErr == nil
	u, err := newUblkFrontend("on", log)
	switch {
	case haveUblk && (u == nil || err != nil):
		t.Fatalf("--ublk on with %s present: %v", ublk.ControlPath, err)
	case !haveUblk && (err == nil || !errors.Is(err, ublk.ErrNoDriver) || !strings.Contains(err.Error(), "--ublk on")):
		t.Fatalf("--ublk on without ublk: %v, want an error naming ublk-control", err)
	}
	u, err = newUblkFrontend("auto", log)
	if err != nil || (u != nil) != haveUblk {
		t.Fatalf("--ublk auto (ublk present: %v): %v, %v", haveUblk, u, err)
	}
}
