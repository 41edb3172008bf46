package ublk

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hast/image/imagetest"
)

// BenchmarkGuestAgainstLoop measures ublk serving a file-backed volume against the kernel's
// loop device on the same file, with the same fio jobs, in one guest (`just vm-bench`). Both go
// through the page cache of a tmpfs file (tmpfs has no O_DIRECT, so loop runs buffered too).
// Under TCG the absolute figures mean little; the ratio is the result (docs/BENCHMARKS.md).
func BenchmarkGuestAgainstLoop(t *testing.B) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk, "drivers/block/loop"},
		Programs: []string{"losetup"}, Tools: []string{"fio"}, MemoryMB: 1024, Timeout: 150 * time.Second}) {
		return
	}
	file := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(file, make([]byte, 256<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--show", "-f", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", loop).Run()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := Create(fileVolume{f}, Options{Depth: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	table, err := imagetest.Compare("loop", []string{"--filename=" + loop, "--ioengine=io_uring", "--direct=1"},
		"ublk", []string{"--filename=" + d.BlockPath(), "--ioengine=io_uring", "--direct=1"}, "192M")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ublk (file volume, user copy %v) vs loop on the same tmpfs file, fio io_uring direct=1, 3 s per job:\n%s", d.UserCopy(), table)
}
