package replicate

import (
	"bytes"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"testing"

	"hast/blockdev"
	"hast/internal/nv"
	"hast/replicate/proto"
)

// Micro-benchmarks of the per-request work on the wire path and of activemap churn, to put
// numbers next to `hast bench`'s end-to-end ratios.

// BenchmarkFrameEncodeWrite is what the sender does per WRITE request: build the nv header,
// run the data pipeline (compression, checksum) and encode the frame.
func BenchmarkFrameEncodeWrite(b *testing.B) {
	for _, size := range []int{4 << 10, 128 << 10} {
		for _, c := range []proto.Compression{proto.CompressionNone, proto.CompressionHole, proto.CompressionLZF} {
			for _, cs := range []proto.Checksum{proto.ChecksumNone, proto.ChecksumCRC32} {
				b.Run(fmt.Sprintf("%dk/%v/%v", size>>10, c, cs), func(b *testing.B) {
					data := make([]byte, size)
					rand.Read(data)
					var (
						l       nv.List
						hdr     []byte
						scratch []byte
					)
					b.SetBytes(int64(size))
					b.ReportAllocs()
					for i := 0; i < b.N; i++ {
						l.Reset()
						l.AddUint8("cmd", proto.CmdWrite)
						l.AddUint64("seq", uint64(i))
						l.AddUint64("offset", uint64(i)*uint64(size))
						l.AddUint64("length", uint64(size))
						payload, err := proto.EncodeData(&l, data, c, cs, scratch)
						if err != nil {
							b.Fatal(err)
						}
						if len(payload) > 0 && &payload[0] != &data[0] {
							scratch = payload[:0]
						}
						hdr = proto.EncodeFrame(hdr[:0], proto.Version, &l)
					}
				})
			}
		}
	}
}

// BenchmarkFrameDecodeWrite is what the secondary does per WRITE request: read the frame and
// reverse the data pipeline.
func BenchmarkFrameDecodeWrite(b *testing.B) {
	for _, size := range []int{4 << 10, 128 << 10} {
		for _, cs := range []proto.Checksum{proto.ChecksumNone, proto.ChecksumCRC32} {
			b.Run(fmt.Sprintf("%dk/%v", size>>10, cs), func(b *testing.B) {
				const frames = 64
				data := make([]byte, size)
				rand.Read(data)
				var stream bytes.Buffer
				var l nv.List
				for i := 0; i < frames; i++ {
					l.Reset()
					l.AddUint8("cmd", proto.CmdWrite)
					l.AddUint64("seq", uint64(i+1))
					l.AddUint64("offset", uint64(i)*uint64(size))
					l.AddUint64("length", uint64(size))
					payload, err := proto.EncodeData(&l, data, proto.CompressionNone, cs, nil)
					if err != nil {
						b.Fatal(err)
					}
					if err := proto.WriteFrame(&stream, proto.Version, &l, payload); err != nil {
						b.Fatal(err)
					}
				}
				src := stream.Bytes()
				dst := make([]byte, size)
				rd := bytes.NewReader(src)
				r := proto.NewReader(rd, MaxRecvIO+4096)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if i%frames == 0 {
						rd.Reset(src)
					}
					_, msg, payload, err := r.Next()
					if err != nil {
						b.Fatal(err)
					}
					out, err := proto.DecodeData(msg, payload, dst[:0])
					if err != nil || len(out) != size {
						b.Fatalf("decode: %d bytes, %v", len(out), err)
					}
				}
			})
		}
	}
}

// BenchmarkActiveMapRandomWrites runs HAST's activemap bookkeeping for 4 KiB writes at random
// offsets of a 1 GiB volume with 2 MiB extents (512 extents), for a few keepdirty sizes. The
// "persists/op" metric is the share of writes that must wait for an activemap write (and, with
// metaflush, a flush) before their data may go anywhere: with a working set larger than
// keepdirty it approaches one per write, which is what random-write workloads pay on a volume.
func BenchmarkActiveMapRandomWrites(b *testing.B) {
	const (
		dataSize = 1 << 30
		extent   = 2 << 20
		block    = 4 << 10
	)
	for _, keep := range []int{64, 256, 1024} {
		b.Run(fmt.Sprintf("keepdirty=%d", keep), func(b *testing.B) {
			am, err := blockdev.NewActiveMap(dataSize, extent, keep, 512)
			if err != nil {
				b.Fatal(err)
			}
			rng := mrand.New(mrand.NewPCG(1, 2))
			var img []byte
			persists := 0
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				off := rng.Int64N(dataSize/block) * block
				if am.WriteStart(off, block) {
					persists++
					img = am.Image(img)
					am.MarkDurable(img)
				}
				am.WriteDone(off, block)
			}
			b.ReportMetric(float64(persists)/float64(b.N), "persists/op")
		})
	}
}
