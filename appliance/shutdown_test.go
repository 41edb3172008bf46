package appliance

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMWithOpenFUSEFileAndNBDClient: a daemon whose FUSE file is held open (from another
// mount namespace) and whose NBD export has a client connected exits within 5 s of SIGTERM, and
// every write acknowledged through either frontend is in its local component afterwards.
func TestSIGTERMWithOpenFUSEFileAndNBDClient(t *testing.T) {
	needTools(t, "unshare")
	c, _ := newTestCluster(t, ClusterOptions{FUSE: true, Replication: "memsync"})
	pair(t, c)
	h1 := c.Nodes[0]
	model := readVolume(t, c, h1, "disk1")

	f, err := os.OpenFile(filepath.Join(h1.FUSE, "disk1"), os.O_RDWR, 0)
	must(t, err)
	rng := rand.New(rand.NewPCG(3, 4))
	block := func() []byte {
		b := make([]byte, 64<<10)
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
		return b
	}
	// The first half through FUSE: some fsynced, the last ones only written (acknowledged by
	// write(2); the file is direct I/O, so they reached the daemon).
	for i := range 16 {
		b, off := block(), int64(i)*(64<<10)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], b)
		if i == 7 {
			must(t, f.Sync())
		}
	}
	// The second half through NBD, flushed, with the client staying connected.
	v, err := c.Volume(h1, "disk1")
	must(t, err)
	defer v.Close()
	for i := range 16 {
		b, off := block(), int64(len(model)/2)+int64(i)*(64<<10)
		if _, err := v.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], b)
	}
	must(t, v.Flush())

	must(t, f.Close())
	// The file stays open in another mount namespace only (a systemd unit with PrivateTmp, a
	// container): the daemon's own unmount then succeeds while the FUSE connection lives on,
	// and whatever waits for the connection's readers waits for ever.
	holder := exec.Command("unshare", "-m", "--propagation", "private", "--", "sh", "-c",
		`exec 3<"$1"; echo open; exec sleep 60`, "sh", filepath.Join(h1.FUSE, "disk1"))
	out, err := holder.StdoutPipe()
	must(t, err)
	must(t, holder.Start())
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	line := make([]byte, 5)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "open\n" {
		t.Fatalf("the other namespace did not open the file: %q %v", line, err)
	}

	start := time.Now()
	must(t, h1.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-h1.exited:
		h1.exited <- nil
	case <-time.After(5 * time.Second):
		t.Fatalf("hast1 still running 5 s after SIGTERM; log:\n%s", c.LogTail(h1))
	}
	t.Logf("hast1 exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	got := dataArea(t, c, h1, "disk1")
	if !bytes.Equal(got, model) {
		t.Fatalf("hast1's local component differs from what was acknowledged at byte %d", firstDiff(got, model))
	}
	if _, err := os.Stat(h1.NBD); err == nil {
		t.Errorf("the NBD socket %s is left behind after exit", h1.NBD)
	}
}
