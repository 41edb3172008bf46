package appliance

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestAttachPrintsWorkingQemuDrive checks that what `hast attach` prints opens the volume with a
// real client (qemu-img), not just that it looks right.
func TestAttachPrintsWorkingQemuDrive(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is not installed; scripts/test.sh installs qemu-utils")
	}
	c, out := newTestCluster(t, ClusterOptions{})
	pair(t, c)
	if code := c.CLI(c.Nodes[0], "attach", "disk1"); code != 0 {
		t.Fatalf("attach: exit %d\n%s", code, out)
	}
	m := regexp.MustCompile(`-drive file=(nbd\+unix:///disk1\?socket=[^,]+),format=raw`).FindStringSubmatch(out.String())
	if m == nil || !strings.Contains(out.String(), "<source protocol='nbd' name='disk1'>") {
		t.Fatalf("attach output lacks the qemu drive or libvirt disk:\n%s", out)
	}
	info, err := exec.Command("qemu-img", "info", "--output=human", m[1]).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v\n%s", m[1], err, info)
	}
	st, err := mustClient(t, c, c.Nodes[0]).Status("disk1")
	must(t, err)
	if want := fmt.Sprintf("(%d bytes)", st[0].DataSize); !strings.Contains(string(info), want) {
		t.Fatalf("qemu-img info does not report the volume size %s:\n%s", want, info)
	}
	// On the secondary the volume is not exported: attach must say so and fail.
	if code := c.CLI(c.Nodes[1], "attach", "disk1"); code == 0 {
		t.Fatal("attach on the secondary succeeded")
	}
}
