package fuse

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExt4OnLoop runs the kernel's loop driver, mkfs.ext4, ext4 itself and fsck against a
// volume file, with the loop device doing buffered and direct I/O.
func TestExt4OnLoop(t *testing.T) {
	requireTool(t, "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount")
	for _, directIO := range []bool{false, true} {
		t.Run(fmt.Sprintf("directio=%v", directIO), func(t *testing.T) {
			f, dir := mountT(t)
			addT(t, f, "disk1", newMemVolume(128<<20, 512))
			dev := attachLoop(t, filepath.Join(dir, "disk1"), directIO)

			run(t, "mkfs.ext4", "-q", "-F", dev)
			fsDir := filepath.Join(t.TempDir(), "ext4")
			if err := os.Mkdir(fsDir, 0o755); err != nil {
				t.Fatal(err)
			}
			mountExt4(t, dev, fsDir)

			rng := rand.New(rand.NewPCG(7, 8))
			want := map[string][]byte{}
			for i := range 12 {
				data := make([]byte, 64<<10+rng.IntN(2<<20))
				for j := range data {
					data[j] = byte(rng.Uint32())
				}
				name := filepath.Join(fmt.Sprintf("dir%d", i%3), fmt.Sprintf("file%d", i))
				if err := os.MkdirAll(filepath.Join(fsDir, filepath.Dir(name)), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(fsDir, name), data, 0o644); err != nil {
					t.Fatalf("write %s on ext4: %v", name, err)
				}
				want[name] = data
			}
			run(t, "sync", "-f", fsDir)
			run(t, "umount", fsDir)

			// -n: read-only check; exit status 0 means the file system is clean.
			run(t, "fsck.ext4", "-f", "-n", dev)

			mountExt4(t, dev, fsDir)
			for name, data := range want {
				got, err := os.ReadFile(filepath.Join(fsDir, name))
				if err != nil {
					t.Fatalf("read back %s: %v", name, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("%s differs after remount", name)
				}
			}
			run(t, "umount", fsDir)
		})
	}
}

// attachLoop sets up a loop device on path and detaches it when the test ends.
func attachLoop(t *testing.T, path string, directIO bool) string {
	t.Helper()
	args := []string{"-f", "--show"}
	if directIO {
		args = append(args, "--direct-io=on")
	}
	dev := strings.TrimSpace(run(t, "losetup", append(args, path)...))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}

// mountExt4 mounts dev on dir; a cleanup unmounts it if the test did not.
func mountExt4(t *testing.T, dev, dir string) {
	t.Helper()
	run(t, "mount", "-t", "ext4", dev, dir)
	t.Cleanup(func() {
		if mounted, _ := isMounted(dir); mounted {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v\n%s", dir, err, out)
			}
		}
	})
}

// TestFioVerify has fio write random 4 KiB blocks with O_DIRECT and libaio at queue depth 16
// and verify every block's crc32c afterwards.
func TestFioVerify(t *testing.T) {
	requireTool(t, "fio")
	f, dir := mountT(t)
	const size = 32 << 20
	v := newMemVolume(size, 512)
	addT(t, f, "disk1", v)

	cmd := exec.Command("fio",
		"--name=verify", "--filename="+filepath.Join(dir, "disk1"),
		"--size=32M", "--direct=1", "--rw=randwrite", "--bs=4k",
		"--iodepth=16", "--ioengine=libaio",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
		"--verify_state_save=0", "--output-format=json",
	)
	cmd.Dir = t.TempDir() // fio may leave files in its working directory
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fio: %v\n%s", err, out)
	}
	var report struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	// fio may print notes before the JSON document.
	start := bytes.IndexByte(out, '{')
	if start < 0 {
		t.Fatalf("no JSON in fio output:\n%s", out)
	}
	if err := json.Unmarshal(out[start:], &report); err != nil {
		t.Fatalf("parse fio output: %v\n%s", err, out)
	}
	if len(report.Jobs) != 1 {
		t.Fatalf("fio reported %d jobs, want 1", len(report.Jobs))
	}
	job := report.Jobs[0]
	if job.Error != 0 {
		t.Fatalf("fio job error %d\n%s", job.Error, out)
	}
	if job.Write.IOBytes != size || job.Read.IOBytes != size {
		t.Fatalf("fio wrote %d and verified %d bytes, want %d each", job.Write.IOBytes, job.Read.IOBytes, size)
	}
	if n := v.misaligned.Load(); n != 0 {
		t.Fatalf("volume saw %d misaligned requests", n)
	}
}
