package appliance

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("/dev/fuse: %v", err)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed; scripts/test.sh installs it", tool)
		}
	}
}

// loopAttach attaches file to a loop device. The returned detach is idempotent and also runs at
// cleanup, so a failed test does not leave the device behind — and a device detached once is
// never detached again (its number may belong to another test by then).
func loopAttach(t *testing.T, file string) (string, func()) {
	t.Helper()
	dev := run(t, "losetup", "-f", "--show", file)
	var once sync.Once
	detach := func() { once.Do(func() { exec.Command("losetup", "-d", dev).Run() }) }
	t.Cleanup(detach)
	return dev, detach
}

// TestFUSEFilesystemSurvivesFailover: real tools on the FUSE file view of a replicated volume —
// losetup, mkfs.ext4, mount, files, fsck — on the primary, then again on the other node after
// the primary is killed, and fio's own verification through the file.
func TestFUSEFilesystemSurvivesFailover(t *testing.T) {
	needTools(t, "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount", "fio")
	c, out := newTestCluster(t, ClusterOptions{FUSE: true, DiskSize: 64 << 20, Replication: "memsync"})
	pair(t, c)
	h1, h2 := c.Nodes[0], c.Nodes[1]
	vol1 := filepath.Join(h1.FUSE, "disk1")
	if _, err := os.Stat(vol1); err != nil {
		t.Fatalf("FUSE file on the primary: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h2.FUSE, "disk1")); err == nil {
		t.Fatal("the secondary shows a FUSE file")
	}
	dev, detach := loopAttach(t, vol1)
	run(t, "mkfs.ext4", "-q", "-F", dev)
	mnt := t.TempDir()
	run(t, "mount", dev, mnt)
	files := map[string][]byte{}
	for i := range 8 {
		b := make([]byte, (i+1)*300_000)
		rand.Read(b)
		name := filepath.Join(mnt, "f"+string(rune('a'+i)))
		must(t, os.WriteFile(name, b, 0o644))
		files[filepath.Base(name)] = b
	}
	run(t, "sync")
	run(t, "umount", mnt)
	run(t, "fsck.ext4", "-fn", dev)
	detach()
	must(t, c.WaitComplete(h1, time.Minute))

	c.Kill(h1, syscall.SIGKILL)
	must(t, c.Role(h2, "primary", "disk1"))
	vol2 := filepath.Join(h2.FUSE, "disk1")
	if _, err := os.Stat(vol2); err != nil {
		t.Fatalf("FUSE file on the promoted node: %v\n%s", err, out)
	}
	dev2, detach2 := loopAttach(t, vol2)
	run(t, "fsck.ext4", "-fn", dev2)
	mnt2 := t.TempDir()
	run(t, "mount", dev2, mnt2)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(mnt2, name))
		if err != nil || !bytes.Equal(got, want) {
			exec.Command("umount", mnt2).Run()
			t.Fatalf("%s after failover: err %v, equal %v", name, err, bytes.Equal(got, want))
		}
	}
	run(t, "umount", mnt2)
	detach2()

	// fio writes with checksums through the FUSE file and verifies them itself.
	run(t, "fio", "--name=verify", "--filename="+vol2, "--rw=randwrite", "--bs=4k", "--size=16M",
		"--ioengine=libaio", "--iodepth=8", "--direct=1", "--verify=crc32c", "--do_verify=1",
		"--verify_fatal=1", "--verify_state_save=0", "--offset=32M", "--output=/dev/null")
}
