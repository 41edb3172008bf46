package appliance

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestRunRSS runs the daemon memory benchmark briefly against the test binary (built with
// the race detector, so its sizes say nothing about the target): every phase must move
// data without errors, and every figure must come from the daemons' /proc status.
func TestRunRSS(t *testing.T) {
	rep, err := RunRSS(RSSOptions{Dir: t.TempDir(), Exe: hastBin, Resources: 3, DiskSize: 8 << 20, Depth: 16, Runtime: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Phases) != len(rssPhases) {
		t.Fatalf("%d phases, want %d", len(rep.Phases), len(rssPhases))
	}
	for _, p := range rep.Phases {
		if p.Ops == 0 || p.Failures != 0 || p.Bytes == 0 {
			t.Errorf("%s: %d ops, %d bytes, %d failures", p.Name, p.Ops, p.Bytes, p.Failures)
		}
		for i, rss := range p.PeakRSS {
			if rss <= 0 {
				t.Errorf("%s: hast%d peak RSS %d", p.Name, i+1, rss)
			}
		}
	}
	peak, node := rep.Peak()
	for _, p := range rep.Phases {
		for i, rss := range p.PeakRSS {
			if rss > peak || rep.HWM[i] > peak {
				t.Errorf("Peak() = %d below %s's hast%d sample %d or VmHWM %d", peak, p.Name, i+1, rss, rep.HWM[i])
			}
		}
	}
	if node != "hast1" && node != "hast2" {
		t.Errorf("Peak() names node %q", node)
	}
	for i := range rep.Idle {
		if rep.Idle[i] <= 0 {
			t.Errorf("hast%d idle RSS %d", i+1, rep.Idle[i])
		}
	}
	var out strings.Builder
	rep.Write(&out)
	for _, want := range []string{"randwrite-4k", "seqwrite-1m", "randread-4k", "VmHWM", "daemon RSS with 3 resources at depth 16"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestProcStatusBytes(t *testing.T) {
	rss, err := procStatusBytes(os.Getpid(), "VmRSS")
	if err != nil || rss <= 0 || rss%1024 != 0 {
		t.Fatalf("VmRSS of the test = %d, %v", rss, err)
	}
	if _, err := procStatusBytes(os.Getpid(), "NoSuchField"); err == nil || !strings.Contains(err.Error(), "no NoSuchField line") {
		t.Fatalf("missing field: err = %v", err)
	}
	if _, err := procStatusBytes(1<<30, "VmRSS"); err == nil {
		t.Fatal("a pid that does not exist gave no error")
	}
}
