package replicate

import (
	"math/rand/v2"
	"net"
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
	b.Helper()
	dir := b.TempDir()
	open := func(name string) blockdev.Device {
		path := filepath.Join(dir, name)
		if err := blockdev.CreateFile(path, size); err != nil {
			b.Fatal(err)
		}
		d, err := blockdev.Open(path)
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
	p := benchPair(b, mode, 256<<20)
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
