package uring

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runDepth runs b.N calls of op from depth goroutines and reports IOPS and the process
// CPU time per operation (which load from other processes disturbs less than IOPS).
func runDepth(b *testing.B, depth int, op func(g int, rng *rand.Rand) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var ru0, ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	for g := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for next.Add(1) <= int64(b.N) {
				if err := op(g, rng); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(b.N)/el.Seconds(), "IOPS")
	b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
}

// BenchmarkRingNop is the ring's own cost: at depth 1 the lane, at depth 32 mostly the
// loop.
func BenchmarkRingNop(b *testing.B) {
	for _, depth := range []int{1, 32} {
		b.Run(fmt.Sprintf("qd%d", depth), func(b *testing.B) {
			r := newRing(b, 64)
			runDepth(b, depth, func(int, *rand.Rand) error { return r.Nop() })
		})
	}
}

// BenchmarkRingWrite4K compares 4 KiB O_DIRECT random writes to a 1 GiB file through
// the ring with blocking pwrite from as many goroutines. The file is written once
// first: overwrites are the steady state, while a write into a fallocated (unwritten)
// extent costs async direct I/O an extra kernel worker hop for the extent conversion
// (blockdev's BenchmarkLocalIO measures that case).
func BenchmarkRingWrite4K(b *testing.B) {
	const size, bs = 1 << 30, 4096
	for _, depth := range []int{1, 32} {
		for _, engine := range []string{"pwrite", "ring"} {
			b.Run(fmt.Sprintf("qd%d/%s", depth, engine), func(b *testing.B) {
				fd := tempFD(b, size, unix.O_DIRECT)
				fill := aligned(1 << 20)
				for off := int64(0); off < size; off += 1 << 20 {
					if _, err := unix.Pwrite(fd, fill, off); err != nil {
						b.Fatal(err)
					}
				}
				if err := unix.Fdatasync(fd); err != nil {
					b.Fatal(err)
				}
				bufs := make([][]byte, depth)
				for i := range bufs {
					bufs[i] = aligned(bs)
				}
				write := func(fd int, p []byte, off int64) (int, error) { return unix.Pwrite(fd, p, off) }
				if engine == "ring" {
					r := newRing(b, 64)
					write = r.Write
				}
				runDepth(b, depth, func(g int, rng *rand.Rand) error {
					_, err := write(fd, bufs[g], rng.Int64N(size/bs)*bs)
					return err
				})
			})
		}
	}
}
