package replicate

import (
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/blockdev"
)

// benchPair runs a primary and a secondary in this process on real preallocated files.
func benchPair(b *testing.B, mode Mode, size int64) *Primary {
	return benchPairOn(b, mode, size, blockdev.Open)
}

// benchPairOn is benchPair with both nodes' devices opened by open (page cache or io_uring).
func benchPairOn(b *testing.B, mode Mode, size int64, openDev func(string) (blockdev.Device, error)) *Primary {
	b.Helper()
	dir := b.TempDir()
	open := func(name string) blockdev.Device {
		path := filepath.Join(dir, name)
		if err := blockdev.CreateFile(path, size); err != nil {
			b.Fatal(err)
		}
		prefillBench(b, path, size)
		d, err := openDev(path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := blockdev.Create(d, "r0", blockdev.CreateOptions{KeepDirty: benchKeepDirty, Align: blockdev.PageAlign}); err != nil {
			b.Fatal(err)
		}
		return d
	}
	pdev, sdev := open("p.img"), open("s.img")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Name: "r0", Mode: mode, MetaFlush: true, Reconnect: 50 * time.Millisecond}
	sec := &testTarget{cfg: cfg, dev: sdev}
	acc := &Acceptor{Lookup: func(string) (Target, bool) { return sec, true }, Known: func(net.IP) bool { return true }, Log: zerolog.Nop()}
	go acc.Serve(ln)
	pc := cfg
	pc.Remote = ln.Addr().String()
	p, err := OpenPrimary(pc, pdev, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		p.Close()
		sec.stop()
		ln.Close()
		pdev.Close()
		sdev.Close()
	})
	for {
		s := p.Status()
		if s.Connected && !s.Syncing && s.DirtyBytes == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p
}

func benchWrites(b *testing.B, mode Mode, bs, depth int, random bool) {
	benchWritesOn(b, benchPair(b, mode, 256<<20), bs, depth, random)
}

func benchWritesOn(b *testing.B, p *Primary, bs, depth int, random bool) {
	span := p.Size() / int64(bs)
	var next atomic.Int64
	b.SetBytes(int64(bs))
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N / depth
	for w := 0; w < depth; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 1))
			buf := make([]byte, bs)
			for i := range buf {
				buf[i] = byte(i*7 + 1)
			}
			for i := 0; i < per; i++ {
				var blk int64
				if random {
					blk = rng.Int64N(span)
				} else {
					blk = next.Add(1) % span
				}
				if _, err := p.WriteAt(buf, blk*int64(bs)); err != nil {
					b.Error(err)
					return
				}
			}
		}(uint64(w))
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(per*depth)/b.Elapsed().Seconds(), "IOPS")
	// Where a write's time goes: the local leg, then the wait for the peer after it.
	lat := p.LatencySnapshot()
	for _, stage := range []string{"write", "local", "peer", "activemap"} {
		if s, ok := lat[stage]; ok && s.Count() > 0 {
			b.ReportMetric(float64(s.Quantile(0.5).Microseconds()), stage+"-p50-µs")
		}
	}
}

// prefillBench writes the whole file once, as hast bench does, so that no write pays for
// converting a preallocated (unwritten) extent.
func prefillBench(b *testing.B, path string, size int64) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	zero := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero[:min(int64(len(zero)), size-off)], off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkVolumeRandWrite4KQD32Fullsync(b *testing.B) {
	benchWrites(b, ModeFullsync, 4096, 32, true)
}
func BenchmarkVolumeRandWrite4KQD32Memsync(b *testing.B) { benchWrites(b, ModeMemsync, 4096, 32, true) }
func BenchmarkVolumeRandWrite4KQD32Async(b *testing.B)   { benchWrites(b, ModeAsync, 4096, 32, true) }
func BenchmarkVolumeSeqWrite1MQD8Fullsync(b *testing.B) {
	benchWrites(b, ModeFullsync, 1<<20, 8, false)
}
func BenchmarkVolumeWrite4KQD1Fullsync(b *testing.B) { benchWrites(b, ModeFullsync, 4096, 1, true) }

// benchKeepDirty is the activemap LRU size of the benchmark volume (HAST's default).
var benchKeepDirty uint32 = 64

// The same with both nodes' local components on io_uring and O_DIRECT (hast daemon
// --local-io uring), where the data writes cost what they cost the ideal pipeline.
func BenchmarkVolumeWrite4KQD1FullsyncURing(b *testing.B) {
	benchWritesOn(b, benchPairOn(b, ModeFullsync, 256<<20, blockdev.OpenURing), 4096, 1, true)
}
func BenchmarkVolumeRandWrite4KQD32FullsyncURing(b *testing.B) {
	benchWritesOn(b, benchPairOn(b, ModeFullsync, 256<<20, blockdev.OpenURing), 4096, 32, true)
}
