package ublk

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hast/image/imagetest"
)

// fioJobs are the comparison: 4 KiB random read and write at depth 32, 1 MiB sequential.
var fioJobs = []struct{ name, rw, bs string }{
	{"randread-4k-qd32", "randread", "4k"},
	{"randwrite-4k-qd32", "randwrite", "4k"},
	{"read-1m-qd32", "read", "1m"},
	{"write-1m-qd32", "write", "1m"},
}

// runFio runs one fio job on target for a few seconds and returns its IOPS and MB/s.
func runFio(t testing.TB, target, rw, bs string, extra ...string) (iops, mbps float64) {
	t.Helper()
	args := append([]string{"--name=bench", "--filename=" + target, "--ioengine=io_uring", "--direct=1",
		"--rw=" + rw, "--bs=" + bs, "--iodepth=32", "--time_based", "--runtime=3", "--ramp_time=1",
		"--size=192M", "--output-format=json"}, extra...)
	cmd, err := imagetest.Tool("fio", args...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fio %s on %s: %v\n%s", rw, target, err, out)
	}
	var res struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			}
		} `json:"jobs"`
	}
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	j := res.Jobs[0]
	return j.Read.IOPS + j.Write.IOPS, (j.Read.BW + j.Write.BW) / 1e6
}

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
	var table strings.Builder
	fmt.Fprintf(&table, "%-18s %12s %12s %7s\n", "job", "loop", "ublk", "ratio")
	for _, j := range fioJobs {
		li, lb := runFio(t, loop, j.rw, j.bs)
		ui, ub := runFio(t, d.BlockPath(), j.rw, j.bs)
		if j.bs == "4k" {
			fmt.Fprintf(&table, "%-18s %8.0f IOPS %8.0f IOPS %6.2fx\n", j.name, li, ui, ui/li)
		} else {
			fmt.Fprintf(&table, "%-18s %7.0f MB/s %7.0f MB/s %6.2fx\n", j.name, lb, ub, ub/lb)
		}
	}
	t.Logf("ublk (file volume, user copy %v) vs loop on the same tmpfs file, fio io_uring direct=1, 3 s per job:\n%s", d.UserCopy(), table.String())
}
