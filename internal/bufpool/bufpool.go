// Package bufpool recycles payload buffers in power-of-two size classes, so that a small
// request does not pin a large buffer and the data path allocates nothing per request in
// steady state. The replication link and the NBD server each keep their own Pools.
package bufpool

import (
	"math/bits"
	"sync"
	"unsafe"
)

// Pools holds one sync.Pool per size class, from 1<<minShift to 1<<maxShift bytes.
type Pools struct {
	minShift int
	pools    []sync.Pool
}

// New returns pools for buffers of 1<<minShift … 1<<maxShift bytes.
func New(minShift, maxShift int) *Pools {
	return &Pools{minShift: minShift, pools: make([]sync.Pool, maxShift-minShift+1)}
}

func (p *Pools) class(n int) int {
	if n <= 1<<p.minShift {
		return 0
	}
	return bits.Len(uint(n-1)) - p.minShift
}

// Get returns a buffer of length n. Its capacity is Cap(n); sizes above the largest class
// are allocated exactly and are not pooled.
func (p *Pools) Get(n int) []byte {
	c := p.class(n)
	if c >= len(p.pools) {
		return make([]byte, n)
	}
	size := 1 << (c + p.minShift)
	// The pool holds a pointer to each buffer's first byte, not a slice: a pointer fits
	// in an interface without an allocation, and the class gives the length back.
	if first, ok := p.pools[c].Get().(*byte); ok {
		return unsafe.Slice(first, size)[:n]
	}
	return make([]byte, n, size)
}

// Cap is the capacity of the buffer Get(n) returns.
func (p *Pools) Cap(n int) int {
	c := p.class(n)
	if c >= len(p.pools) {
		return n
	}
	return 1 << (c + p.minShift)
}

// Put recycles a buffer obtained from Get; buffers of any other capacity are dropped. The
// caller must not use b afterwards.
func (p *Pools) Put(b []byte) {
	c := p.class(cap(b))
	if c >= len(p.pools) || cap(b) != 1<<(c+p.minShift) {
		return
	}
	p.pools[c].Put(unsafe.SliceData(b[:cap(b)]))
}
