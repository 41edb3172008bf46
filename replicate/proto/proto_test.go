package proto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"hast/internal/nv"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var clean strings.Builder
	for line := range strings.SplitSeq(s, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		clean.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(clean.String())
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func TestAppendHeader(t *testing.T) {
	for _, tc := range []struct {
		version uint8
		n       int
		want    string
	}{
		{2, 22, "02 16 00 00 00"},
		{1, 0x0102_0304, "01 04 03 02 01"},
		{0, MaxNVSize, "00 00 00 01 00"},
	} {
		got := AppendHeader([]byte{0xee}, tc.version, tc.n)
		if want := append([]byte{0xee}, unhex(t, tc.want)...); !bytes.Equal(got, want) {
			t.Errorf("AppendHeader(%d, %d) = %x, want %x", tc.version, tc.n, got, want)
		}
	}
}

func TestEncodeFrameGolden(t *testing.T) {
	var l nv.List
	l.AddUint8("cmd", CmdKeepalive)
	want := unhex(t, `
		02 16 00 00 00                                   # version 2, nv length 22
		02 04 01 00 00 00 63 6d 64 00 00 00 00 00        # "cmd" uint8
		05 00 00 00 00 00 00 00                          # KEEPALIVE`)
	if got := EncodeFrame(nil, Version, &l); !bytes.Equal(got, want) {
		t.Fatalf("got %x\nwant %x", got, want)
	}
	var buf bytes.Buffer
	if err := WriteFrame(&buf, Version, &l, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteFrame wrote %x\nwant %x", buf.Bytes(), want)
	}
}

// frame is one message for round-trip tests.
type frame struct {
	version uint8
	list    *nv.List
	data    []byte
}

func writeReq(seq uint64, data []byte) *nv.List {
	var l nv.List
	l.AddUint8("cmd", CmdWrite)
	l.AddUint64("seq", seq)
	l.AddUint64("offset", seq*4096)
	l.AddUint64("length", uint64(len(data)))
	if len(data) > 0 {
		l.AddUint32("size", uint32(len(data)))
	}
	return &l
}

func testFrames() []frame {
	data := bytes.Repeat([]byte("0123456789abcdef"), 256)
	var ka nv.List
	ka.AddUint8("cmd", CmdKeepalive)
	var hs nv.List
	hs.AddString("resource", "disk1")
	hs.AddUint8("version", Version)
	return []frame{
		{1, &hs, nil},
		{Version, writeReq(1, data), data},
		{Version, &ka, nil},
		{Version, writeReq(2, data[:512]), data[:512]},
		{0, writeReq(3, nil), nil},
	}
}

func checkFrames(t *testing.T, r *Reader, want []frame) {
	t.Helper()
	for i, f := range want {
		v, l, data, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if v != f.version {
			t.Errorf("frame %d: version %d, want %d", i, v, f.version)
		}
		if !bytes.Equal(l.Encode(), f.list.Encode()) {
			t.Errorf("frame %d: list\n%s\nwant\n%s", i, l.Dump(), f.list.Dump())
		}
		if !bytes.Equal(data, f.data) || (data == nil) != (len(f.data) == 0) {
			t.Errorf("frame %d: %d data bytes, want %d", i, len(data), len(f.data))
		}
	}
	if _, _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("after last frame: %v, want io.EOF", err)
	}
}

func TestRoundTripBuffer(t *testing.T) {
	frames := testFrames()
	var buf bytes.Buffer
	for _, f := range frames {
		if err := WriteFrame(&buf, f.version, f.list, f.data); err != nil {
			t.Fatal(err)
		}
	}
	checkFrames(t, NewReader(&buf, 0), frames)
}

func TestRoundTripPipe(t *testing.T) {
	frames := testFrames()
	c1, c2 := net.Pipe()
	defer c2.Close()
	errc := make(chan error, 1)
	go func() {
		defer c1.Close()
		for _, f := range frames {
			if err := WriteFrame(c1, f.version, f.list, f.data); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	checkFrames(t, NewReader(c2, 1<<20), frames)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestPipelineOverPipe(t *testing.T) {
	// A primary sending WRITEs through every pipeline combination; the receiver only
	// reads the fields, as a secondary with a different configuration would.
	blocks := [][]byte{
		make([]byte, 4096),
		bytes.Repeat([]byte("hast "), 1000),
		randomBytes(8192, 5),
		[]byte("tiny"),
	}
	type sent struct {
		data []byte
		c    Compression
		cs   Checksum
	}
	var all []sent
	for _, b := range blocks {
		for c := CompressionNone; c <= CompressionLZF; c++ {
			for cs := ChecksumNone; cs <= ChecksumSHA256; cs++ {
				all = append(all, sent{b, c, cs})
			}
		}
	}
	c1, c2 := net.Pipe()
	defer c2.Close()
	errc := make(chan error, 1)
	go func() {
		defer c1.Close()
		var l nv.List
		var hdr, scratch []byte
		for i, s := range all {
			l.Reset()
			l.AddUint8("cmd", CmdWrite)
			l.AddUint64("seq", uint64(i+1))
			payload, err := EncodeData(&l, s.data, s.c, s.cs, scratch)
			if err != nil {
				errc <- err
				return
			}
			hdr = EncodeFrame(hdr[:0], Version, &l)
			bufs := net.Buffers{hdr, payload}
			if _, err := bufs.WriteTo(c1); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	r := NewReader(c2, 0)
	var dst []byte
	for i, s := range all {
		_, l, payload, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		got, err := DecodeData(l, payload, dst)
		if err != nil {
			t.Fatalf("frame %d (%v/%v): %v", i, s.c, s.cs, err)
		}
		if !bytes.Equal(got, s.data) {
			t.Fatalf("frame %d (%v/%v): data differs", i, s.c, s.cs)
		}
		if seq, _ := l.Uint64("seq"); seq != uint64(i+1) {
			t.Fatalf("frame %d: seq %d", i, seq)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestVersionsAccepted(t *testing.T) {
	for v := uint8(0); v <= Version; v++ {
		var l nv.List
		l.AddUint8("cmd", CmdFlush)
		r := NewReader(bytes.NewReader(EncodeFrame(nil, v, &l)), 0)
		got, _, _, err := r.Next()
		if err != nil || got != v {
			t.Errorf("version %d: got %d, %v", v, got, err)
		}
	}
}

func TestReaderRejects(t *testing.T) {
	cmd := "02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00"
	size := func(n string) string { // a "size" uint32 record
		return "06 05 04 00 00 00 73 69 7a 65 00 00 00 00 " + n + " 00 00 00 00"
	}
	for _, tc := range []struct {
		name    string
		in      string
		maxData int
		target  error
		reason  string
	}{
		{"version 3", "03 16 00 00 00 " + cmd, 0, ErrVersion, "peer sent version 3"},
		{"version 255", "ff 16 00 00 00 " + cmd, 0, ErrVersion, "version 255"},
		{"nv size 0", "02 00 00 00 00", 0, ErrEmptyHeader, "empty nv header"},
		{"nv too large", "02 01 00 01 00", 0, ErrFrameTooLarge, "nv list of 65537 bytes exceeds 65536"},
		{"nv size 4 GiB", "02 ff ff ff ff", 0, ErrFrameTooLarge, "4294967295"},
		{"garbage nv", "02 08 00 00 00 de ad be ef de ad be ef", 0, ErrMalformed, "record 0"},
		{"nv of zeros", "02 08 00 00 00 00 00 00 00 00 00 00 00", 0, nil, ""},
		{"size not uint32", "02 16 00 00 00 08 05 08 00 00 00 73 69 7a 65 00 00 00 00 05 00 00 00 00 00 00 00", 0, ErrMalformed, "size field is not a uint32"},
		{"data too large", "02 2c 00 00 00 " + cmd + size("01 01 00 00"), 256, ErrFrameTooLarge, "data of 257 bytes exceeds 256"},
		{"data over default", "02 2c 00 00 00 " + cmd + size("01 00 40 00"), 0, ErrFrameTooLarge, "exceeds 4194304"},
		{"truncated header", "02 16 00", 0, io.ErrUnexpectedEOF, "read frame header"},
		{"truncated nv", "02 16 00 00 00 02 04 01 00", 0, io.ErrUnexpectedEOF, "read nv list (22 bytes)"},
		{"truncated data", "02 2c 00 00 00 " + cmd + size("08 00 00 00") + " 61 62 63", 0, io.ErrUnexpectedEOF, "read data (8 bytes)"},
		{"no data at all", "02 2c 00 00 00 " + cmd + size("08 00 00 00"), 0, io.ErrUnexpectedEOF, "read data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(unhex(t, tc.in)), tc.maxData)
			_, l, data, err := r.Next()
			if tc.target == nil {
				// An nv of only zeros decodes as an empty list: it is for the
				// caller's field checks to refuse.
				if err != nil || l.Len() != 0 {
					t.Fatalf("got %v, %d records", err, l.Len())
				}
				return
			}
			if !errors.Is(err, tc.target) {
				t.Fatalf("err = %v, want %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("err %q does not mention %q", err, tc.reason)
			}
			if l != nil || data != nil {
				t.Error("list or data returned with an error")
			}
		})
	}
}

func TestReaderGarbageWrapsNVError(t *testing.T) {
	r := NewReader(bytes.NewReader(unhex(t, "02 06 00 00 00 12 04 01 00 00 00")), 0)
	_, _, _, err := r.Next()
	if !errors.Is(err, ErrMalformed) || !errors.Is(err, nv.ErrMalformed) {
		t.Fatalf("err = %v, want both proto and nv ErrMalformed", err)
	}
	var de *nv.DecodeError
	if !errors.As(err, &de) || de.Index != 0 {
		t.Fatalf("err %v does not carry the nv record index", err)
	}
}

func TestReaderReusesBuffers(t *testing.T) {
	var stream bytes.Buffer
	data := randomBytes(4096, 1)
	for i := range 50 {
		if err := WriteFrame(&stream, Version, writeReq(uint64(i+1), data), data); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(bytes.NewReader(stream.Bytes()), 0)
	if _, _, _, err := r.Next(); err != nil { // sizes the buffers
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(40, func() {
		_, l, d, err := r.Next()
		if err != nil || len(d) != 4096 || l.Len() != 5 {
			panic(err)
		}
	}); n != 0 {
		t.Errorf("Reader.Next allocates %v times per frame", n)
	}
}

func TestWriteFrameChecks(t *testing.T) {
	var empty nv.List
	if err := WriteFrame(io.Discard, Version, &empty, nil); !errors.Is(err, ErrEmptyHeader) {
		t.Errorf("empty list: %v", err)
	}
	if err := WriteFrame(io.Discard, Version, writeReq(1, make([]byte, 10)), make([]byte, 9)); !errors.Is(err, ErrSizeMismatch) {
		t.Errorf("size 10, 9 bytes of data: %v", err)
	}
	if err := WriteFrame(io.Discard, Version, writeReq(1, nil), []byte{1}); !errors.Is(err, ErrSizeMismatch) {
		t.Errorf("no size field, 1 byte of data: %v", err)
	}
	var big nv.List
	for range 300 {
		big.AddString("errmsg", strings.Repeat("x", 250))
	}
	if err := WriteFrame(io.Discard, Version, &big, nil); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized nv: %v", err)
	}
	c1, c2 := net.Pipe()
	c2.Close()
	if err := WriteFrame(c1, Version, writeReq(1, nil), nil); err == nil || !strings.Contains(err.Error(), "proto: write frame") {
		t.Errorf("write to closed pipe: %v", err)
	}
}
