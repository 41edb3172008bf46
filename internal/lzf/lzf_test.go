package lzf

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func TestDecompressHandMade(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream string
		want   string
	}{
		{"one literal", "00 61", "a"},
		{"short reference", "02 61 62 63 20 02", "abcabc"},
		// 7-literal run, long reference (7+5)+2=14 bytes 6 back, 2-literal run:
		// what liblzf 3.6 itself writes for this input.
		{"liblzf hello", "06 68 65 6c 6c 6f 20 68 e0 05 05 01 6c 6f", "hello hello hello hello"},
		// Reference one byte back overlapping its own output: a run.
		{"overlapping run", "00 61 e0 01 00", strings.Repeat("a", 11)},
		{"max length reference", "00 78 e0 ff 00", strings.Repeat("x", 1+264)},
		{"max literal run", "1f" + strings.Repeat("41", 32), strings.Repeat("A", 32)},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, len(tc.want)+10)
			n, err := Decompress(dst, unhex(t, tc.stream))
			if err != nil {
				t.Fatalf("Decompress: %v", err)
			}
			if got := string(dst[:n]); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDecompressMaxDistance(t *testing.T) {
	// 8192 distinct-ish bytes, then a reference 8192 back (offset field 0x1fff).
	var stream, want []byte
	for i := 0; i < 8192; i += 32 {
		stream = append(stream, 31)
		for j := range 32 {
			b := byte((i + j) * 7 % 251)
			stream = append(stream, b)
			want = append(want, b)
		}
	}
	stream = append(stream, 0x3f, 0xff) // length 1+2, offset 0x1fff+1
	want = append(want, want[0], want[1], want[2])
	dst := make([]byte, len(want))
	n, err := Decompress(dst, stream)
	if err != nil || !bytes.Equal(dst[:n], want) {
		t.Fatalf("n=%d err=%v equal=%v", n, err, bytes.Equal(dst[:n], want))
	}
}

func TestDecompressErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream string
		dstLen int
		target error
		reason string
	}{
		{"truncated literal", "05 61 62", 100, ErrCorrupt, "literal run of 6 bytes at input offset 0 has only 2"},
		{"missing length byte", "00 61 e0", 100, ErrCorrupt, "lacks its length byte"},
		{"missing offset byte", "00 61 20", 100, ErrCorrupt, "lacks its offset byte"},
		{"reference at start", "20 00", 100, ErrCorrupt, "reaches 1 bytes back, only 0 produced"},
		{"reference too far", "01 61 62 20 05", 100, ErrCorrupt, "reaches 6 bytes back, only 2 produced"},
		{"literal overflows dst", "03 61 62 63 64", 3, ErrShortBuffer, "need 4 bytes, have 3"},
		{"reference overflows dst", "00 61 20 00", 3, ErrShortBuffer, "need 4 bytes, have 3"},
		{"zero dst", "00 61", 0, ErrShortBuffer, "need 1 bytes, have 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decompress(make([]byte, tc.dstLen), unhex(t, tc.stream))
			if !errors.Is(err, tc.target) {
				t.Fatalf("err = %v, want %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err %q does not mention %q", err, tc.reason)
			}
		})
	}
}

// TestLiblzfStreams decodes streams written by the reference implementation:
// testdata/liblzf/NAME.lzf is lzf_compress (liblzf 3.6, Debian liblzf1 3.6-3) of NAME.in.
func TestLiblzfStreams(t *testing.T) {
	ins, err := filepath.Glob("testdata/liblzf/*.in")
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in")
		t.Run(name, func(t *testing.T) {
			want, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			stream, err := os.ReadFile(strings.TrimSuffix(in, ".in") + ".lzf")
			if err != nil {
				t.Fatal(err)
			}
			dst := make([]byte, len(want))
			n, err := Decompress(dst, stream)
			if err != nil {
				t.Fatalf("Decompress: %v", err)
			}
			if n != len(want) || !bytes.Equal(dst, want) {
				t.Fatalf("decoded %d bytes, want %d; equal=%v", n, len(want), bytes.Equal(dst[:n], want))
			}
			// Our own compressor must round-trip the same data.
			roundTrip(t, want)
		})
	}
}

// roundTrip compresses p into a worst-case-sized buffer guarded by sentinel bytes,
// checks nothing was written past the end, and decompresses it again.
func roundTrip(t *testing.T, p []byte) []byte {
	t.Helper()
	bound := len(p) + len(p)/32 + 1
	backing := make([]byte, bound+64)
	for i := range backing {
		backing[i] = 0xa5
	}
	n := Compress(backing[:bound], p)
	if len(p) == 0 {
		if n != 0 {
			t.Fatalf("Compress(empty) = %d", n)
		}
		return nil
	}
	if n == 0 {
		t.Fatalf("Compress of %d bytes did not fit the worst-case bound %d", len(p), bound)
	}
	for i, b := range backing[bound:] {
		if b != 0xa5 {
			t.Fatalf("Compress wrote past len(dst) at +%d", i)
		}
	}
	out := make([]byte, len(p))
	m, err := Decompress(out, backing[:n])
	if err != nil {
		t.Fatalf("Decompress own output (%d bytes -> %d): %v", len(p), n, err)
	}
	if m != len(p) || !bytes.Equal(out, p) {
		t.Fatalf("round trip of %d bytes gave %d bytes, equal=%v", len(p), m, bytes.Equal(out[:m], p))
	}
	return backing[:n]
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	lowEntropy := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = "ab"[rng.IntN(2)]
		}
		return b
	}
	sizes := []int{1, 2, 3, 4, 5, 31, 32, 33, 63, 64, 65, 264, 265, 1000, 1025, 4096, 8191, 8192, 8193, 65536, 128 << 10, 1 << 20}
	for _, n := range sizes {
		roundTrip(t, random(n))
		roundTrip(t, make([]byte, n))
		roundTrip(t, lowEntropy(n))
		roundTrip(t, bytes.Repeat([]byte("0123456789"), n/10+1)[:n])
	}
	// Blocks that repeat at distances around the 8 KiB window.
	for _, d := range []int{8190, 8191, 8192, 8193, 9000} {
		blk := random(d)
		roundTrip(t, append(append([]byte{}, blk...), blk...))
	}
	roundTrip(t, nil)
}

func TestCompressActuallyCompresses(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		max  int
	}{
		// 4095 zeros after the first literal need ceil(4095/264)=16 references of 3 bytes.
		{"4 KiB zeros", make([]byte, 4096), 2 + 16*3},
		{"repeated text", bytes.Repeat([]byte("replication "), 1000), 12000 / 20},
	} {
		c := roundTrip(t, tc.in)
		if len(c) > tc.max {
			t.Errorf("%s: %d bytes compressed to %d, want <= %d", tc.name, len(tc.in), len(c), tc.max)
		}
	}
}

func TestCompressDstTooSmall(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	p := make([]byte, 4096)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	// HAST's rule: compress into len-1024 bytes, send raw if it does not fit.
	if n := Compress(make([]byte, len(p)-1024), p); n != 0 {
		t.Fatalf("random data compressed into %d bytes of %d", n, len(p)-1024)
	}
	for _, in := range [][]byte{p, bytes.Repeat([]byte("abcdefgh"), 512), make([]byte, 3000)} {
		full := make([]byte, 2*len(in))
		k := Compress(full, in)
		if k == 0 {
			t.Fatal("no fit in a generous buffer")
		}
		if got := Compress(make([]byte, k), in); got != k {
			t.Fatalf("exact-size buffer: got %d, want %d", got, k)
		}
		for _, short := range []int{k - 1, k / 2, 1, 0} {
			if got := Compress(make([]byte, short), in); got != 0 {
				t.Fatalf("buffer of %d for a %d-byte stream returned %d", short, k, got)
			}
		}
	}
}

func BenchmarkCompress4K(b *testing.B) {
	in, err := os.ReadFile("testdata/liblzf/sector.in")
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, len(in))
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if Compress(dst, in) == 0 {
			b.Fatal("did not compress")
		}
	}
}

func BenchmarkCompressText(b *testing.B) {
	in, err := os.ReadFile("testdata/liblzf/text.in")
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, len(in))
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if Compress(dst, in) == 0 {
			b.Fatal("did not compress")
		}
	}
}

func BenchmarkDecompressText(b *testing.B) {
	in, err := os.ReadFile("testdata/liblzf/text.lzf")
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 20000)
	b.SetBytes(int64(len(dst)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decompress(dst, in); err != nil {
			b.Fatal(err)
		}
	}
}
