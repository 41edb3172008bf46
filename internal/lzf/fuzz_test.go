package lzf

import (
	"bytes"
	"testing"
)

// FuzzDecompress: arbitrary streams never panic and never report more output than dst holds.
func FuzzDecompress(f *testing.F) {
	f.Add([]byte{0x06, 'h', 'e', 'l', 'l', 'o', ' ', 'h', 0xe0, 0x05, 0x05, 0x01, 'l', 'o'}, uint16(64))
	f.Add([]byte{0x00, 'a', 0xe0, 0xff, 0x00}, uint16(300))
	f.Add([]byte{0x20, 0x00}, uint16(10))
	f.Fuzz(func(t *testing.T, stream []byte, dstLen uint16) {
		dst := make([]byte, dstLen)
		n, err := Decompress(dst, stream)
		if n < 0 || n > len(dst) {
			t.Fatalf("n = %d outside [0, %d] (err %v)", n, len(dst), err)
		}
		if err == nil {
			// A valid stream decompresses identically into a larger buffer.
			big := make([]byte, int(dstLen)+100)
			m, err2 := Decompress(big, stream)
			if err2 != nil || m != n || !bytes.Equal(big[:m], dst[:n]) {
				t.Fatalf("larger dst changed the result: %d/%v vs %d", m, err2, n)
			}
		}
	})
}

// FuzzRoundTrip: whatever is compressed decompresses to itself.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("hello hello hello hello"))
	f.Add(make([]byte, 600))
	f.Add([]byte{1, 2, 3, 1, 2, 3, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, p []byte) {
		dst := make([]byte, len(p)+len(p)/32+1)
		n := Compress(dst, p)
		if len(p) > 0 && n == 0 {
			t.Fatalf("%d bytes did not fit the worst-case bound", len(p))
		}
		out := make([]byte, len(p))
		m, err := Decompress(out, dst[:n])
		if err != nil || m != len(p) || !bytes.Equal(out, p) {
			t.Fatalf("round trip failed: m=%d err=%v", m, err)
		}
	})
}
