package appliance

import (
	"testing"
	"time"

	"hast/image/imagetest"
)

// BenchmarkGuestUblkVsNBD compares, in one guest, the replicated volume as /dev/hast/disk1
// (ublk) with the same kind of volume through the daemon's NBD export (fio's libnbd engine),
// with the same fio jobs: two daemons on loopback, fullsync (`just vm-bench`). Measured, not
// judged; under TCG only the ratio means something (docs/BENCHMARKS.md).
func BenchmarkGuestUblkVsNBD(b *testing.B) {
	if imagetest.Boot(b, imagetest.Options{Modules: []string{imagetest.ModUblk}, Tools: []string{"fio"},
		MemoryMB: 1536, Timeout: 200 * time.Second}) {
		return
	}
	c, out := newTestCluster(b, ClusterOptions{Resources: 2, DiskSize: 160 << 20})
	if err := c.Pair(); err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	if err := c.WaitComplete(c.Nodes[0], 60*time.Second); err != nil {
		b.Fatal(err)
	}
	table, err := imagetest.Compare("nbd", []string{"--ioengine=nbd", "--uri=nbd+unix:///disk2?socket=" + c.Nodes[0].NBD},
		"ublk", []string{"--filename=/dev/hast/disk1", "--ioengine=io_uring", "--direct=1"}, "128M")
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("replicated (fullsync, loopback) through ublk vs the daemon's NBD export, fio, 3 s per job:\n%s", table)
}
