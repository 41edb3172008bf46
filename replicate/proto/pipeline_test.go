package proto

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"hast/internal/nv"
)

func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func sameArray(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && &a[0] == &b[0]
}

func TestCRC32Golden(t *testing.T) {
	var l nv.List
	payload, err := EncodeData(&l, []byte("hello"), CompressionNone, ChecksumCRC32, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(payload) != "hello" {
		t.Fatalf("payload %q", payload)
	}
	// crc32("hello") = 0x3610a686, stored little-endian.
	want := unhex(t, `
		11 09 06 00 00 00 63 68 65 63 6b 73 75 6d 00 00 00 00 00 00 00 00  # "checksum" string
		63 72 63 33 32 00 00 00                                            # "crc32\0"
		0a 05 04 00 00 00 68 61 73 68 00 00 00 00                          # "hash" uint8[4]
		86 a6 10 36 00 00 00 00
		06 05 04 00 00 00 73 69 7a 65 00 00 00 00                          # "size" uint32
		05 00 00 00 00 00 00 00`)
	if got := l.Encode(); !bytes.Equal(got, want) {
		t.Fatalf("nv\n got %x\nwant %x", got, want)
	}
	out, err := DecodeData(&l, payload, nil)
	if err != nil || string(out) != "hello" {
		t.Fatalf("DecodeData = %q, %v", out, err)
	}
}

func TestSHA256Golden(t *testing.T) {
	var l nv.List
	if _, err := EncodeData(&l, []byte("hello"), CompressionNone, ChecksumSHA256, nil); err != nil {
		t.Fatal(err)
	}
	h, ok := l.Uint8Array("hash")
	want := unhex(t, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
	if !ok || !bytes.Equal(h, want) {
		t.Fatalf("hash %x, want %x", h, want)
	}
	if s, _ := l.String("checksum"); s != "sha256" {
		t.Fatalf("checksum field %q", s)
	}
}

func TestHole(t *testing.T) {
	zero := make([]byte, 4096)
	for _, c := range []Compression{CompressionHole, CompressionLZF} {
		var l nv.List
		payload, err := EncodeData(&l, zero, c, ChecksumNone, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(payload, []byte{0x00, 0x10, 0x00, 0x00}) {
			t.Fatalf("%v: payload %x, want 4096 as LE uint32", c, payload)
		}
		if s, _ := l.String("compression"); s != "hole" {
			t.Fatalf("%v: compression field %q, want hole", c, s)
		}
		if n, _ := l.Uint32("size"); n != 4 {
			t.Fatalf("%v: size %d", c, n)
		}
		dirty := bytes.Repeat([]byte{0xff}, 8192)
		out, err := DecodeData(&l, payload, dirty)
		if err != nil || !bytes.Equal(out, zero) {
			t.Fatalf("%v: decode %d bytes, %v", c, len(out), err)
		}
		if !sameArray(out, dirty) {
			t.Errorf("%v: dst with room was not reused", c)
		}
	}
}

func TestHoleNotApplicable(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    []byte
	}{
		{"length not multiple of 8", make([]byte, 4100)},
		{"one non-zero byte", append(make([]byte, 4095), 1)},
		{"non-zero in the middle", func() []byte { b := make([]byte, 4096); b[1000] = 1; return b }()},
		{"small", []byte{0, 0, 0, 1}},
	} {
		var l nv.List
		payload, err := EncodeData(&l, tc.p, CompressionHole, ChecksumNone, nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.Has("compression") || !sameArray(payload, tc.p) {
			t.Errorf("%s: compressed (%s)", tc.name, l.Dump())
		}
		if n, _ := l.Uint32("size"); int(n) != len(tc.p) {
			t.Errorf("%s: size %d", tc.name, n)
		}
	}
}

func TestLZF(t *testing.T) {
	p := bytes.Repeat([]byte("hast replication "), 241)[:4096]
	scratch := make([]byte, 0, 8192)
	var l nv.List
	payload, err := EncodeData(&l, p, CompressionLZF, ChecksumCRC32, scratch)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := l.String("compression"); s != "lzf" {
		t.Fatalf("compression %q", s)
	}
	if len(payload) > 4+len(p)-1024 || !bytes.Equal(payload[:4], []byte{0x00, 0x10, 0, 0}) {
		t.Fatalf("payload %d bytes starting %x", len(payload), payload[:4])
	}
	if !sameArray(payload, scratch[:1]) {
		t.Error("scratch with room was not used")
	}
	out, err := DecodeData(&l, payload, nil)
	if err != nil || !bytes.Equal(out, p) {
		t.Fatalf("decode: %v", err)
	}
}

func TestLZFFallsBackToRaw(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    []byte
	}{
		{"incompressible", randomBytes(4096, 9)},
		// Compressible but not above HAST_LZF_COMPRESS_MIN.
		{"1024 bytes", bytes.Repeat([]byte("ab"), 512)},
		// Shrinks, but not by 1024 bytes.
		{"barely compressible", append(randomBytes(3000, 3), make([]byte, 1100)...)},
	} {
		var l nv.List
		payload, err := EncodeData(&l, tc.p, CompressionLZF, ChecksumNone, nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.Has("compression") || !sameArray(payload, tc.p) {
			t.Errorf("%s: not sent raw: %s", tc.name, l.Dump())
		}
		out, err := DecodeData(&l, payload, nil)
		if err != nil || !sameArray(out, tc.p) {
			t.Errorf("%s: decode %v", tc.name, err)
		}
	}
}

func TestEveryCombination(t *testing.T) {
	inputs := [][]byte{
		make([]byte, 128<<10),
		randomBytes(1<<20, 2),
		bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 3000),
		{42},
	}
	for _, p := range inputs {
		for c := CompressionNone; c <= CompressionLZF; c++ {
			for cs := ChecksumNone; cs <= ChecksumSHA256; cs++ {
				var l nv.List
				l.AddUint8("cmd", CmdWrite)
				payload, err := EncodeData(&l, p, c, cs, nil)
				if err != nil {
					t.Fatal(err)
				}
				if (cs != ChecksumNone) != l.Has("hash") {
					t.Errorf("%v/%v: hash present = %v", c, cs, l.Has("hash"))
				}
				// The receiver sees only the encoded list.
				d, err := nv.Decode(l.Encode())
				if err != nil {
					t.Fatal(err)
				}
				out, err := DecodeData(d, payload, nil)
				if err != nil || !bytes.Equal(out, p) {
					t.Fatalf("%v/%v on %d bytes: %v", c, cs, len(p), err)
				}
			}
		}
	}
}

func TestHashMismatch(t *testing.T) {
	for _, cs := range []Checksum{ChecksumCRC32, ChecksumSHA256} {
		for _, c := range []Compression{CompressionNone, CompressionLZF} {
			p := bytes.Repeat([]byte("data "), 1000)
			var l nv.List
			payload, err := EncodeData(&l, p, c, cs, nil)
			if err != nil {
				t.Fatal(err)
			}
			bad := bytes.Clone(payload)
			bad[len(bad)/2] ^= 0x01
			_, err = DecodeData(&l, bad, nil)
			if !errors.Is(err, ErrHashMismatch) || !strings.Contains(err.Error(), "hash mismatch") {
				t.Errorf("%v/%v: flipped bit gave %v", c, cs, err)
			}
		}
	}
}

func TestDecodeDataRejects(t *testing.T) {
	hole := func(n uint32) []byte { return []byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)} }
	for _, tc := range []struct {
		name    string
		build   func(l *nv.List)
		payload []byte
		target  error
		reason  string
	}{
		{"unknown checksum", func(l *nv.List) {
			l.AddString("checksum", "md5")
			l.AddUint8Array("hash", make([]byte, 16))
			l.AddUint32("size", 3)
		}, []byte("abc"), ErrUnknownAlgorithm, `checksum "md5"`},
		{"checksum none is not a wire name", func(l *nv.List) {
			l.AddString("checksum", "none")
			l.AddUint8Array("hash", make([]byte, 4))
			l.AddUint32("size", 3)
		}, []byte("abc"), ErrUnknownAlgorithm, `checksum "none"`},
		{"hash missing", func(l *nv.List) {
			l.AddString("checksum", "crc32")
			l.AddUint32("size", 3)
		}, []byte("abc"), ErrMalformed, "without a uint8 array hash"},
		{"hash wrong size", func(l *nv.List) {
			l.AddString("checksum", "crc32")
			l.AddUint8Array("hash", make([]byte, 32))
			l.AddUint32("size", 3)
		}, []byte("abc"), ErrMalformed, "crc32 hash of 32 bytes, want 4"},
		{"checksum not a string", func(l *nv.List) {
			l.AddUint8("checksum", 1)
			l.AddUint32("size", 3)
		}, []byte("abc"), ErrMalformed, "checksum field is not a string"},
		{"unknown compression", func(l *nv.List) {
			l.AddString("compression", "gzip")
			l.AddUint32("size", 3)
		}, []byte("abc"), ErrUnknownAlgorithm, `compression "gzip"`},
		{"compression not a string", func(l *nv.List) {
			l.AddUint8("compression", 2)
			l.AddUint32("size", 3)
		}, []byte("abc"), ErrMalformed, "compression field is not a string"},
		{"hole payload too long", func(l *nv.List) {
			l.AddString("compression", "hole")
			l.AddUint32("size", 5)
		}, []byte{0, 16, 0, 0, 0}, ErrCorruptData, "hole payload is 5 bytes"},
		{"hole too big", func(l *nv.List) {
			l.AddString("compression", "hole")
			l.AddUint32("size", 4)
		}, hole(1 << 30), ErrFrameTooLarge, "decompresses to 1073741824 bytes, limit 4194304"},
		{"lzf too big", func(l *nv.List) {
			l.AddString("compression", "lzf")
			l.AddUint32("size", 6)
		}, append(hole(MaxDataSize+1), 0, 'a'), ErrFrameTooLarge, "limit 4194304"},
		{"lzf without stream", func(l *nv.List) {
			l.AddString("compression", "lzf")
			l.AddUint32("size", 4)
		}, hole(2000), ErrCorruptData, "has no stream"},
		{"lzf corrupt stream", func(l *nv.List) {
			l.AddString("compression", "lzf")
			l.AddUint32("size", 6)
		}, append(hole(2000), 0x20, 0x00), ErrCorruptData, "back-reference"},
		{"lzf short output", func(l *nv.List) {
			l.AddString("compression", "lzf")
			l.AddUint32("size", 7)
		}, append(hole(2000), 0x01, 'a', 'b'), ErrCorruptData, "gave 2 bytes, header says 2000"},
		{"lzf long output", func(l *nv.List) {
			l.AddString("compression", "lzf")
			l.AddUint32("size", 7)
		}, append(hole(1), 0x01, 'a', 'b'), ErrCorruptData, "output buffer too small"},
		{"size mismatch", func(l *nv.List) {
			l.AddUint32("size", 4)
		}, []byte("abc"), ErrSizeMismatch, "size field says 4, data has 3 bytes"},
		{"size missing", func(l *nv.List) {}, []byte("abc"), ErrSizeMismatch, "size field says 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l nv.List
			tc.build(&l)
			_, err := DecodeData(&l, tc.payload, nil)
			if !errors.Is(err, tc.target) {
				t.Fatalf("err = %v, want %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err %q does not mention %q", err, tc.reason)
			}
		})
	}
}

func TestDecodeDataLimit(t *testing.T) {
	// A handshake bitmap bigger than MaxDataSize, for a caller that allows it.
	big := make([]byte, 8<<20)
	var l nv.List
	payload, err := EncodeData(&l, big, CompressionHole, ChecksumCRC32, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeData(&l, payload, nil); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("default limit: %v", err)
	}
	out, err := DecodeDataLimit(&l, payload, nil, 16<<20)
	if err != nil || len(out) != len(big) {
		t.Fatalf("raised limit: %d bytes, %v", len(out), err)
	}
}

func TestDecodeDataPlain(t *testing.T) {
	p := []byte("as is")
	var l nv.List
	l.AddUint32("size", uint32(len(p)))
	out, err := DecodeData(&l, p, make([]byte, 100))
	if err != nil || !sameArray(out, p) {
		t.Fatalf("plain payload not returned unchanged: %q, %v", out, err)
	}
	var empty nv.List
	if out, err := DecodeData(&empty, nil, nil); err != nil || len(out) != 0 {
		t.Fatalf("no data: %q, %v", out, err)
	}
}

func TestEncodeDataBadArguments(t *testing.T) {
	var l nv.List
	if _, err := EncodeData(&l, []byte("x"), Compression(3), ChecksumNone, nil); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("compression 3: %v", err)
	}
	if _, err := EncodeData(&l, []byte("x"), CompressionNone, Checksum(7), nil); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("checksum 7: %v", err)
	}
	if l.Len() != 0 {
		t.Errorf("failed EncodeData modified the list: %s", l.Dump())
	}
}

func TestNamesAndParse(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{ChecksumNone.String(), "none"}, {ChecksumCRC32.String(), "crc32"}, {ChecksumSHA256.String(), "sha256"},
		{Checksum(9).String(), "checksum(9)"},
		{CompressionNone.String(), "none"}, {CompressionHole.String(), "hole"}, {CompressionLZF.String(), "lzf"},
		{Compression(9).String(), "compression(9)"},
	} {
		if tc.got != tc.want {
			t.Errorf("String() = %q, want %q", tc.got, tc.want)
		}
	}
	for _, s := range []string{"none", "crc32", "sha256"} {
		c, err := ParseChecksum(s)
		if err != nil || c.String() != s {
			t.Errorf("ParseChecksum(%q) = %v, %v", s, c, err)
		}
	}
	for _, s := range []string{"none", "hole", "lzf"} {
		c, err := ParseCompression(s)
		if err != nil || c.String() != s {
			t.Errorf("ParseCompression(%q) = %v, %v", s, c, err)
		}
	}
	if _, err := ParseChecksum("md5"); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("ParseChecksum(md5): %v", err)
	}
	if _, err := ParseCompression("LZF"); !errors.Is(err, ErrUnknownAlgorithm) {
		t.Errorf("ParseCompression(LZF): %v", err)
	}
}

func TestEncodeHotPathAllocations(t *testing.T) {
	data := randomBytes(4096, 4)
	var l nv.List
	hdr := make([]byte, 0, 512)
	scratch := make([]byte, 8192)
	for _, c := range []Compression{CompressionNone, CompressionHole, CompressionLZF} {
		for _, cs := range []Checksum{ChecksumNone, ChecksumCRC32, ChecksumSHA256} {
			if n := testing.AllocsPerRun(50, func() {
				l.Reset()
				l.AddUint8("cmd", CmdWrite)
				l.AddUint64("seq", 1)
				l.AddUint64("offset", 0)
				l.AddUint64("length", 4096)
				if _, err := EncodeData(&l, data, c, cs, scratch); err != nil {
					panic(err)
				}
				hdr = EncodeFrame(hdr[:0], Version, &l)
			}); n != 0 {
				t.Errorf("%v/%v: %v allocations per WRITE frame", c, cs, n)
			}
		}
	}
}

func BenchmarkEncodeWriteFrame4K(b *testing.B) {
	data := randomBytes(4096, 1)
	var l nv.List
	hdr := make([]byte, 0, 512)
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l.Reset()
		l.AddUint8("cmd", CmdWrite)
		l.AddUint64("seq", uint64(i))
		l.AddUint64("offset", uint64(i)*4096)
		l.AddUint64("length", 4096)
		l.AddUint8("memsync", 1)
		if _, err := EncodeData(&l, data, CompressionNone, ChecksumNone, nil); err != nil {
			b.Fatal(err)
		}
		hdr = EncodeFrame(hdr[:0], Version, &l)
	}
}

func BenchmarkEncodeDataCRC32(b *testing.B) {
	data := randomBytes(4096, 1)
	var l nv.List
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		l.Reset()
		if _, err := EncodeData(&l, data, CompressionNone, ChecksumCRC32, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeDataLZF(b *testing.B) {
	data := bytes.Repeat([]byte("hast replication block "), 200)[:4096]
	scratch := make([]byte, 4096)
	var l nv.List
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		l.Reset()
		if _, err := EncodeData(&l, data, CompressionLZF, ChecksumNone, scratch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReaderNext(b *testing.B) {
	data := randomBytes(4096, 1)
	var stream bytes.Buffer
	const frames = 256
	for i := range frames {
		if err := WriteFrame(&stream, Version, writeReq(uint64(i+1), data), data); err != nil {
			b.Fatal(err)
		}
	}
	src := bytes.NewReader(stream.Bytes())
	r := NewReader(src, 0)
	b.SetBytes(int64(stream.Len() / frames))
	b.ReportAllocs()
	for b.Loop() {
		_, _, d, err := r.Next()
		if err != nil {
			if err == io.EOF {
				src.Reset(stream.Bytes())
				continue
			}
			b.Fatal(err)
		}
		if len(d) != 4096 {
			b.Fatal("short data")
		}
	}
}

func TestDecodeDataOverlappingDst(t *testing.T) {
	p := bytes.Repeat([]byte("overlap me "), 500)
	for _, c := range []Compression{CompressionHole, CompressionLZF} {
		in := p
		if c == CompressionHole {
			in = make([]byte, 4096)
		}
		var l nv.List
		payload, err := EncodeData(&l, in, c, ChecksumNone, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The payload sits inside a buffer that is also offered as dst, as when a
		// caller reuses the result of an earlier uncompressed reply (an alias of the
		// Reader's data buffer) for the next, compressed one.
		shared := make([]byte, 8192)
		n := copy(shared, payload)
		for _, dst := range [][]byte{shared[:0], shared[2:2], shared[n-1 : n-1]} {
			out, err := DecodeData(&l, shared[:n], dst)
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("%v: overlapping dst corrupted the result (%v)", c, err)
			}
		}
		if !overlaps(shared[:0], shared[5:6]) || overlaps(shared[:0:4], shared[4:8]) || overlaps(shared[8:8], shared[:8]) {
			t.Fatal("overlaps is wrong")
		}
	}
}
