package appliance

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNBDExportWithQemuClients drives the daemon's NBD export with qemu's own tools, over a
// unix socket and over TCP, and checks a whole-volume copy against both local components.
func TestNBDExportWithQemuClients(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	port, err := freePort("127.0.0.1")
	must(t, err)
	c, _ := newTestCluster(t, ClusterOptions{}, []string{"--nbd", fmt.Sprintf("tcp://127.0.0.1:%d", port)})
	h1, h2 := c.Nodes[0], c.Nodes[1]
	pair(t, c)
	unixURI := fmt.Sprintf("nbd+unix:///disk1?socket=%s", h1.NBD)
	tcpURI := fmt.Sprintf("nbd://127.0.0.1:%d/disk1", port)
	for i, uri := range []string{unixURI, tcpURI} {
		pat := fmt.Sprintf("0x%02x", 0xa0+i)
		off := fmt.Sprintf("%d", (i+1)<<20)
		run(t, "qemu-io", "-f", "raw", "-c", "write -P "+pat+" "+off+" 1M", "-c", "aio_write -P "+pat+" 8M 64k",
			"-c", "aio_flush", "-c", "read -P "+pat+" "+off+" 1M", "-c", "read -P "+pat+" 8M 64k", "-c", "flush", uri)
	}
	must(t, c.WaitComplete(h1, time.Minute))
	img := filepath.Join(t.TempDir(), "copy.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", tcpURI, img)
	got, err := os.ReadFile(img)
	must(t, err)
	compareNodes(t, c, "disk1", got)
	if !bytes.Contains(got, bytes.Repeat([]byte{0xa1}, 1<<20)) {
		t.Fatal("the pattern written over TCP is not in the copy")
	}
	// The secondary exports nothing.
	if o, err := exec.Command("qemu-img", "info", fmt.Sprintf("nbd+unix:///disk1?socket=%s", h2.NBD)).CombinedOutput(); err == nil {
		t.Fatalf("the secondary exported disk1:\n%s", o)
	}
}

// TestDemoteRefusedWhileFUSEFileOpen: the FUSE file of a primary that someone has open keeps
// the resource primary unless forced.
func TestDemoteRefusedWhileFUSEFileOpen(t *testing.T) {
	needTools(t)
	c, out := newTestCluster(t, ClusterOptions{FUSE: true})
	pair(t, c)
	h1 := c.Nodes[0]
	f, err := os.OpenFile(filepath.Join(h1.FUSE, "disk1"), os.O_RDWR, 0)
	must(t, err)
	if code := c.CLI(h1, "role", "secondary", "disk1"); code == 0 {
		f.Close()
		t.Fatal("demotion with the FUSE file open was not refused")
	}
	if !strings.Contains(out.String(), "open") || !strings.Contains(out.String(), "--force") {
		f.Close()
		t.Fatalf("refusal does not explain:\n%s", out)
	}
	if code := c.CLI(h1, "role", "--force", "secondary", "disk1"); code != 0 {
		f.Close()
		t.Fatalf("forced demotion: exit %d\n%s", code, out)
	}
	if _, err := f.Write(make([]byte, 4096)); err == nil {
		t.Fatal("a write through a handle of a demoted volume succeeded")
	}
	f.Close()
	if _, err := os.Stat(filepath.Join(h1.FUSE, "disk1")); err == nil {
		t.Fatal("the FUSE file is still there after demotion")
	}
}
