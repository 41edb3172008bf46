package appliance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestVerifyCLIRepairsSilentCorruption(t *testing.T) {
	c, out := newTestCluster(t, ClusterOptions{Replication: "memsync"})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	model := readVolume(t, c, h1, "disk1")
	writeRandom(t, c, h1, "disk1", model, 40, 21)
	must(t, c.WaitComplete(h1, time.Minute))
	// Flip bytes in hast2's copy behind the daemons' backs (bit rot).
	path := filepath.Join(h2.Dir, "disk1.img")
	md, err := readMetadataRO(path, "disk1")
	must(t, err)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("bit rot bit rot!"), int64(md.LocalOff)+5<<20+100)
	must(t, err)
	must(t, f.Close())
	if code := c.CLI(h1, "verify", "--rate", "64m", "disk1"); code != 0 {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
	if !strings.Contains(out.String(), "1 extents differed (extents [2]") {
		t.Fatalf("verify did not report extent 2:\n%s", out)
	}
	must(t, c.WaitComplete(h1, time.Minute))
	compareNodes(t, c, "disk1", model)
	if code := c.CLI(h2, "verify", "disk1"); code == 0 {
		t.Fatal("verify on the secondary should be refused")
	}
}
