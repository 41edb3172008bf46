package blockdev

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// benchFileSize is the preallocated backing file each engine writes to.
const benchFileSize = 1 << 30

// benchEngine is one way of writing the local component.
type benchEngine struct {
	name string
	open func(path string) (benchWriter, error)
}

type benchWriter interface {
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
	Close() error
}

// directPwrite is the baseline of host facts §7: blocking pwrite on an O_DIRECT
// descriptor from as many goroutines as the queue depth.
type directPwrite struct{ fd int }

func (d directPwrite) WriteAt(p []byte, off int64) (int, error) { return unix.Pwrite(d.fd, p, off) }
func (d directPwrite) Flush() error                             { return unix.Fdatasync(d.fd) }
func (d directPwrite) Close() error                             { return unix.Close(d.fd) }

var benchEngines = []benchEngine{
	{"pwrite-direct", func(p string) (benchWriter, error) {
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		return directPwrite{fd}, err
	}},
	{"pwrite-cached", func(p string) (benchWriter, error) { return Open(p) }},
	{"uring", func(p string) (benchWriter, error) { return OpenURing(p) }},
	{"uring-cached", func(p string) (benchWriter, error) { return openURing(p, false, ringOptions) }},
}

// BenchmarkLocalIO compares the engines on the same workloads, interleaving them in
// rounds so that load from other processes on a shared machine spreads over all of
// them. Every round ends with Flush, so page-cache engines pay for making their writes
// durable. b.N operations are done per engine; the metrics are each engine's IOPS and
// process CPU time per operation, and the io_uring device's IOPS ratio to the others.
func BenchmarkLocalIO(b *testing.B) {
	for _, w := range []struct {
		name       string
		depth, bs  int
		seq        bool
		flushEvery int // each goroutine flushes after this many writes; 0: once per round
	}{
		{"4k-rand-qd1", 1, 4 << 10, false, 0},
		{"4k-rand-qd32", 32, 4 << 10, false, 0},
		{"4k-rand-qd32-flush16", 32, 4 << 10, false, 16},
		{"1m-seq-qd4", 4, 1 << 20, true, 0},
	} {
		b.Run(w.name, func(b *testing.B) {
			writers := make([]benchWriter, len(benchEngines))
			for i, e := range benchEngines {
				p := filepath.Join(b.TempDir(), e.name)
				if err := CreateFile(p, benchFileSize); err != nil {
					b.Fatal(err)
				}
				wr, err := e.open(p)
				if err != nil {
					b.Fatalf("%s: %v", e.name, err)
				}
				writers[i] = wr
				defer wr.Close()
			}
			if k := kindOf(writers[2].(Device)); k != KindURing {
				b.Fatalf("OpenURing gave a %s device", k)
			}
			b.SetBytes(int64(w.bs))
			elapsed := make([]time.Duration, len(benchEngines))
			cpu := make([]time.Duration, len(benchEngines))
			const rounds = 4
			b.ResetTimer()
			for r := range rounds {
				ops := b.N / rounds
				if r == rounds-1 {
					ops = b.N - ops*(rounds-1)
				}
				for i, wr := range writers {
					cpu0 := processCPU()
					start := time.Now()
					if err := runWrites(wr, ops, w.depth, w.bs, w.seq, w.flushEvery, uint64(r)); err != nil {
						b.Fatalf("%s: %v", benchEngines[i].name, err)
					}
					if err := wr.Flush(); err != nil {
						b.Fatalf("%s: flush: %v", benchEngines[i].name, err)
					}
					elapsed[i] += time.Since(start)
					cpu[i] += processCPU() - cpu0
				}
			}
			b.StopTimer()
			iops := make([]float64, len(elapsed))
			for i, el := range elapsed {
				iops[i] = float64(b.N) / el.Seconds()
				b.ReportMetric(iops[i], benchEngines[i].name+"-IOPS")
				b.ReportMetric(float64(cpu[i].Nanoseconds())/1e3/float64(b.N), benchEngines[i].name+"-cpu-µs/op")
			}
			b.ReportMetric(iops[2]/iops[0], "uring/pwrite-direct")
			b.ReportMetric(iops[2]/iops[1], "uring/pwrite-cached")
			b.ReportMetric(iops[2]/iops[3], "uring/uring-cached")
		})
	}
}

// processCPU is the user and system time this process has used. Writeback done by
// kernel threads on behalf of the page-cache engines is not included.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runWrites does ops writes of bs bytes from depth goroutines, random or sequential,
// each goroutine flushing after every flushEvery of its writes if flushEvery > 0.
func runWrites(wr benchWriter, ops, depth, bs int, seq bool, flushEvery int, seed uint64) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, depth)
	blocks := int64(benchFileSize / bs)
	for g := range depth {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw := make([]byte, bs+4096)
			skip := (4096 - int(uintptr(unsafe.Pointer(&raw[0]))&4095)) & 4095
			buf := raw[skip : skip+bs]
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			n := 0
			for {
				i := next.Add(1) - 1
				if i >= int64(ops) {
					return
				}
				blk := rng.Int64N(blocks)
				if seq {
					blk = i % blocks
				}
				if _, err := wr.WriteAt(buf, blk*int64(bs)); err != nil {
					errs <- fmt.Errorf("write: %w", err)
					return
				}
				if n++; flushEvery > 0 && n%flushEvery == 0 {
					if err := wr.Flush(); err != nil {
						errs <- fmt.Errorf("flush: %w", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
