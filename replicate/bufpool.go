package replicate

import (
	"math/bits"
	"sync"
)

// Buffers for request payloads come from power-of-two size classes (4 KiB … 1 MiB) so a 4 KiB
// write does not pin a 1 MiB buffer and nothing is allocated per request in steady state.
const (
	minBufShift = 12
	maxBufShift = 20
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a buffer of length n. Sizes above 1 MiB are allocated and not pooled.
func getBuf(n int) []byte {
	c := bufClass(n)
	if c >= len(bufPools) {
		return make([]byte, n)
	}
	if v := bufPools[c].Get(); v != nil {
		return (*v.(*[]byte))[:n]
	}
	return make([]byte, n, 1<<(c+minBufShift))
}

func putBuf(b []byte) {
	c := bufClass(cap(b))
	if c >= len(bufPools) || cap(b) != 1<<(c+minBufShift) {
		return
	}
	b = b[:0]
	bufPools[c].Put(&b)
}
