package proto

import (
	"bytes"
	"testing"

	"hast/internal/nv"
)

// FuzzReadFrame feeds arbitrary bytes to Reader.Next and the data pipeline: neither may
// panic, and every frame accepted must re-encode to a frame that reads back the same.
func FuzzReadFrame(f *testing.F) {
	for _, fr := range testFrames() {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, fr.version, fr.list, fr.data); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	for _, c := range []Compression{CompressionHole, CompressionLZF} {
		var l nv.List
		l.AddUint8("cmd", CmdWrite)
		p, err := EncodeData(&l, bytes.Repeat([]byte{0, 0, 0, 0, 1, 2, 3, 4}, 300), c, ChecksumCRC32, nil)
		if err != nil {
			f.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteFrame(&buf, Version, &l, p); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b), 1<<16)
		dst := make([]byte, 1<<16)
		for {
			v, l, data, err := r.Next()
			if err != nil {
				return
			}
			if v > Version || len(data) > 1<<16 {
				t.Fatalf("accepted version %d, %d data bytes", v, len(data))
			}
			out, err := DecodeDataLimit(l, data, dst, 1<<16)
			if err == nil && len(out) > 1<<16 {
				t.Fatalf("decoded %d bytes past the limit", len(out))
			}
			if l.Len() == 0 {
				continue // WriteFrame refuses empty lists
			}
			var again bytes.Buffer
			if err := WriteFrame(&again, v, l, data); err != nil {
				t.Fatalf("re-encoding an accepted frame: %v", err)
			}
			v2, l2, data2, err := NewReader(&again, 1<<16).Next()
			if err != nil || v2 != v || !bytes.Equal(l2.Encode(), l.Encode()) || !bytes.Equal(data2, data) {
				t.Fatalf("re-encoded frame reads back differently: %v", err)
			}
		}
	})
}
