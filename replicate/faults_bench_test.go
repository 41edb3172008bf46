package replicate

import (
	"sync/atomic"
	"testing"
)

// BenchmarkFaultPairNewExtents measures 4 KiB writes from 4 writers that each land in another
// extent than the write before (64 extents, keepdirty 8, metaflush): every write waits for an
// activemap write, while the evictions keep lazy clean-up rounds going.
func BenchmarkFaultPairNewExtents(b *testing.B) {
	f := newFaultPair(b, ModeFullsync, nil)
	var next atomic.Int64
	stride := int64(faultExtent + ackBlock) // one extent and a block on: every write moves on
	b.SetBytes(ackBlock)
	b.SetParallelism(2) // 2 × GOMAXPROCS (2 here) writers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, ackBlock)
		for pb.Next() {
			off := next.Add(stride) % (f.p.Size() - ackBlock) &^ (ackBlock - 1)
			if _, err := f.p.WriteAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
