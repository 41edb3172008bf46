// Package perf observes the daemon from the kernel's side with eBPF probes: block request
// latency on the devices under the local components, the daemon's own I/O and network system
// calls, the run-queue delay of its threads and TCP retransmissions and round-trip times of its
// replication connections. The probes only read; nothing on the data path depends on them.
//
// Every probe counts into a log-linear histogram held in one memory-mapped BPF array: user space
// reads it with plain loads, so reading never pauses the kernel side.
package perf

import (
	"math/bits"
	"time"

	"hast/internal/hist"
)

// SubBits is the number of sub-buckets per power of two, as a power of two: each octave
// [2^k, 2^(k+1)) ns is cut into 8 equal buckets, so a bucket's bounds differ by at most 12.5 %.
const SubBits = 3

// Buckets is the number of buckets of a histogram: values below 16 ns have one bucket each,
// then 8 per octave up to 2^40 ns (18 minutes); longer values land in the last bucket.
const Buckets = 304

// Bucket returns the bucket of v nanoseconds; it is what the BPF programs compute.
func Bucket(v uint64) int {
	if v < 1<<(SubBits+1) {
		return int(v)
	}
	shift := bits.Len64(v) - 1 - SubBits
	i := shift<<SubBits + int(v>>uint(shift))
	if i >= Buckets {
		i = Buckets - 1
	}
	return i
}

// Lower is the inclusive lower bound of bucket i in nanoseconds.
func Lower(i int) uint64 {
	if i < 1<<(SubBits+1) {
		return uint64(i)
	}
	shift := i>>SubBits - 1
	top := uint64(i&(1<<SubBits-1) | 1<<SubBits)
	return top << uint(shift)
}

// Upper is the exclusive upper bound of bucket i in nanoseconds.
func Upper(i int) uint64 { return Lower(i + 1) }

// Hist is a snapshot of one probe's histogram.
type Hist struct {
	Counts [Buckets]uint64 `json:"counts"`
	SumNs  uint64          `json:"sum_ns"`
	Bytes  uint64          `json:"bytes,omitempty"`  // bytes moved, for probes that move data
	Errors uint64          `json:"errors,omitempty"` // events that failed and are not in Counts
}

// Count is the number of observations.
func (h *Hist) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Sum is the total of the observations.
func (h *Hist) Sum() time.Duration { return time.Duration(h.SumNs) }

// Quantile estimates the q-quantile (0..1) as the upper bound of the bucket that holds it: never
// below the true value, at most 12.5 % above it (exact below 16 ns).
func (h *Hist) Quantile(q float64) time.Duration {
	i := hist.QuantileBucket(h.Counts[:], q)
	if i < 0 {
		return 0
	}
	return time.Duration(Upper(i))
}

// Sub returns h minus an earlier snapshot of the same histogram: what happened in between.
func (h *Hist) Sub(old *Hist) Hist {
	d := Hist{SumNs: h.SumNs - old.SumNs, Bytes: h.Bytes - old.Bytes, Errors: h.Errors - old.Errors}
	for i := range d.Counts {
		d.Counts[i] = h.Counts[i] - old.Counts[i]
	}
	return d
}

// Octaves folds the histogram into counts per power of two of nanoseconds: element k counts
// values in [2^k, 2^(k+1)) ns (element 0 also counts 0).
func (h *Hist) Octaves() []uint64 {
	out := make([]uint64, 41)
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		k := bits.Len64(Lower(i)) - 1
		if k < 0 {
			k = 0
		}
		out[k] += c
	}
	return out
}
