package config

import (
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestHostIDFromIPv4(t *testing.T) {
	// glibc: the in_addr_t (network byte order in memory) with its 16-bit halves swapped, as
	// printed by hostid(1) on a machine whose hostname resolves to that address.
	for _, tc := range []struct {
		ip   string
		want uint32
	}{
		{"127.0.0.1", 0x007f0100},
		{"127.0.1.1", 0x007f0101},
		{"10.1.2.3", 0x010a0302},
		{"192.168.0.1", 0xa8c00100},
	} {
		if got := hostIDFromIPv4(net.ParseIP(tc.ip).To4()); got != tc.want {
			t.Errorf("hostIDFromIPv4(%s) = %08x, want %08x", tc.ip, got, tc.want)
		}
	}
	if got := hostIDFromIPv4(net.ParseIP("::1")); got != 0 {
		t.Errorf("hostIDFromIPv4(::1) = %08x, want 0", got)
	}
}

// TestGethostidMatchesHostidTool compares our host id with coreutils' hostid(1), which calls
// glibc's gethostid().
func TestGethostidMatchesHostidTool(t *testing.T) {
	path, err := exec.LookPath("hostid")
	if err != nil {
		t.Fatalf("hostid(1) from coreutils is needed for this test: %v", err)
	}
	out, err := exec.Command(path).Output()
	if err != nil {
		t.Fatalf("run hostid: %v", err)
	}
	want, err := strconv.ParseUint(strings.TrimSpace(string(out)), 16, 32)
	if err != nil {
		t.Fatalf("parse hostid output %q: %v", out, err)
	}
	got, err := gethostid()
	if err != nil {
		t.Fatal(err)
	}
	if uint64(got) != want {
		t.Errorf("gethostid() = %08x, hostid(1) says %08x", got, want)
	}
}

func TestNodeNamesOfThisHost(t *testing.T) {
	hn, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	names := NodeNames()
	if !slices.Contains(names, hn) {
		t.Errorf("NodeNames() = %q, want it to contain the hostname %q", names, hn)
	}
	hid, err := gethostid()
	if err != nil {
		t.Fatal(err)
	}
	if last := names[len(names)-1]; last != "hostid"+strconv.FormatUint(uint64(hid), 10) {
		t.Errorf("NodeNames() ends with %q, want the host id %d", last, hid)
	}
	if id, err := readMachineID(); err != nil {
		t.Fatal(err)
	} else if id != "" && !slices.Contains(names, id) {
		t.Errorf("NodeNames() = %q, want it to contain the machine id %q", names, id)
	}
	// Every listed name must select this host when the file is parsed for real.
	for _, n := range names {
		src := "resource r { on " + n + " { local /l remote none } }"
		if _, err := Parse("hast.conf", []byte(src), Options{}); err != nil {
			t.Errorf("name %q from NodeNames does not match this host: %v", n, err)
		}
	}
}
