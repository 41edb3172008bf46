package fuse

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hast/replicate"
)

// The benchmarks write through the FUSE file (O_DIRECT, as qemu cache=none or a loop device
// with direct I/O would) and then do the same number of writes on the same Volume directly. The
// Volume is a preallocated O_DIRECT file on the build disk. The "fuse/volume" metric is the
// time ratio, so 1.0 means FUSE costs nothing.

func BenchmarkSeqWrite1M(b *testing.B)      { benchWrite(b, 1<<20, false, 1) }
func BenchmarkRandWrite4K(b *testing.B)     { benchWrite(b, 4096, true, 1) }
func BenchmarkRandWrite4KQD16(b *testing.B) { benchWrite(b, 4096, true, 16) }

const benchVolumeSize = 256 << 20

func benchWrite(b *testing.B, bs int, random bool, depth int) {
	f, dir := mountT(b)
	v := newFileVolume(b, benchVolumeSize)
	addT(b, f, "disk", v)
	fh, err := os.OpenFile(filepath.Join(dir, "disk"), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		b.Fatalf("open: %v", err)
	}
	defer fh.Close()

	offsets := make([]int64, b.N)
	rng := rand.New(rand.NewPCG(1, 2))
	blocks := int64(benchVolumeSize / bs)
	for i := range offsets {
		if random {
			offsets[i] = rng.Int64N(blocks) * int64(bs)
		} else {
			offsets[i] = int64(i) % blocks * int64(bs)
		}
	}
	b.SetBytes(int64(bs))
	b.ResetTimer()
	fuseErr := writeAll(fh, offsets, bs, depth)
	b.StopTimer()
	fuseTime := b.Elapsed()
	if fuseErr != nil {
		b.Fatalf("write through FUSE: %v", fuseErr)
	}

	start := time.Now()
	if err := writeAll(v, offsets, bs, depth); err != nil {
		b.Fatalf("write to the volume: %v", err)
	}
	volumeTime := time.Since(start)
	b.ReportMetric(float64(fuseTime)/float64(volumeTime), "fuse/volume")
	b.ReportMetric(float64(len(offsets))*float64(bs)/volumeTime.Seconds()/1e6, "volume-MB/s")
}

// writeAll writes bs-sized blocks at offsets from depth goroutines.
func writeAll(w interface {
	WriteAt([]byte, int64) (int, error)
}, offsets []int64, bs, depth int) error {
	var wg sync.WaitGroup
	errs := make(chan error, depth)
	for g := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := alignedBuf(bs)
			for i := g; i < len(offsets); i += depth {
				buf[0] = byte(i)
				if _, err := w.WriteAt(buf, offsets[i]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

var _ replicate.Volume = (*fileVolume)(nil)
