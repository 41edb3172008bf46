package nbd

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkClient measures our client against our server over a unix socket with an in-memory
// volume, at queue depth 32.
func BenchmarkClient(b *testing.B) {
	const (
		size  = 256 << 20
		depth = 32
	)
	for _, bc := range []struct {
		name  string
		block int
		rand  bool
		read  bool
	}{
		{"randwrite-4k-qd32", 4 << 10, true, false},
		{"randread-4k-qd32", 4 << 10, true, true},
		{"seqwrite-1m-qd32", 1 << 20, false, false},
		{"seqread-1m-qd32", 1 << 20, false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			vol := newMemVolume(size, 512)
			ts := startServer(b, newExports("disk1", vol))
			c := dialTest(b, "unix", ts.sock, "disk1")
			blocks := int64(size / bc.block)
			var next atomic.Int64
			var failed atomic.Value
			b.SetBytes(int64(bc.block))
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range depth {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					buf := make([]byte, bc.block)
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						blk := i % blocks
						if bc.rand {
							blk = rng.Int64N(blocks)
						}
						var err error
						if bc.read {
							_, err = c.ReadAt(buf, blk*int64(bc.block))
						} else {
							_, err = c.WriteAt(buf, blk*int64(bc.block))
						}
						if err != nil {
							failed.Store(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
		})
	}
}
