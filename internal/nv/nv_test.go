package nv

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

// unhex decodes a hex dump, ignoring whitespace and "#" comments to end of line, so
// golden vectors can be written field by field.
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

func TestSpecExample(t *testing.T) {
	// hast-reference.md §6: `cmd`=2 as uint8.
	want := unhex(t, "02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00")
	var l List
	l.AddUint8("cmd", 2)
	got := l.Encode()
	if !bytes.Equal(got, want) {
		t.Fatalf("encode cmd=2:\n got %x\nwant %x", got, want)
	}
	if len(got) != 22 {
		t.Fatalf("length %d, want 22", len(got))
	}
	d, err := Decode(want)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if v, ok := d.Uint8("cmd"); !ok || v != 2 {
		t.Fatalf("cmd = %d, %v; want 2, true", v, ok)
	}
}

// handshakeGolden is the secondary's handshake reply (§7.2 step 6) plus a C1 request,
// worked out by hand from the record layout in §6.
const handshakeGolden = `
# resource = "disk1" (string)
11 09 06 00 00 00                                # type 17, namesize 9, dsize 6
72 65 73 6f 75 72 63 65 00 00 00 00 00 00 00 00  # "resource\0" padded to 16
64 69 73 6b 31 00 00 00                          # "disk1\0" padded to 8
# version = 2 (uint8)
02 08 01 00 00 00
76 65 72 73 69 6f 6e 00                          # "version\0" is exactly 8
02 00 00 00 00 00 00 00
# token = 00 01 .. 0f (uint8[16])
0a 06 10 00 00 00
74 6f 6b 65 6e 00 00 00                          # "token\0" padded to 8
00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  # 16 bytes, no padding needed
# datasize = 10737413120 (int64) = 0x2_8000_0000 - 0x1400 = 0x2_7fff_ec00
07 09 08 00 00 00
64 61 74 61 73 69 7a 65 00 00 00 00 00 00 00 00  # "datasize\0" padded to 16
00 ec ff 7f 02 00 00 00
# extentsize = 2097152 (int32)
05 0b 04 00 00 00
65 78 74 65 6e 74 73 69 7a 65 00 00 00 00 00 00  # "extentsize\0" padded to 16
00 00 20 00 00 00 00 00                          # 4 bytes + 4 padding
# localcnt = 0x0102030405060708 (uint64)
08 09 08 00 00 00
6c 6f 63 61 6c 63 6e 74 00 00 00 00 00 00 00 00
08 07 06 05 04 03 02 01
# virgin = 1 (int8)
01 07 01 00 00 00
76 69 72 67 69 6e 00 00
01 00 00 00 00 00 00 00
# error = -22 (int16)
03 06 02 00 00 00
65 72 72 6f 72 00 00 00
ea ff 00 00 00 00 00 00
# mapsize = 1024 (uint32)
06 08 04 00 00 00
6d 61 70 73 69 7a 65 00
00 04 00 00 00 00 00 00
`

func buildHandshake() *List {
	var l List
	l.AddString("resource", "disk1")
	l.AddUint8("version", 2)
	token := make([]byte, 16)
	for i := range token {
		token[i] = byte(i)
	}
	l.AddUint8Array("token", token)
	l.AddInt64("datasize", 10737413120)
	l.AddInt32("extentsize", 2<<20)
	l.AddUint64("localcnt", 0x0102030405060708)
	l.AddInt8("virgin", 1)
	l.AddInt16("error", -22)
	l.AddUint32("mapsize", 1024)
	return &l
}

func TestHandshakeGolden(t *testing.T) {
	want := unhex(t, handshakeGolden)
	got := buildHandshake().Encode()
	if !bytes.Equal(got, want) {
		t.Fatalf("encode mismatch:\n got %x\nwant %x", got, want)
	}
	l, err := Decode(want)
	if err != nil {
		t.Fatalf("decode golden: %v", err)
	}
	if l.Len() != 9 {
		t.Fatalf("Len = %d, want 9", l.Len())
	}
	if s, ok := l.String("resource"); !ok || s != "disk1" {
		t.Errorf("resource = %q, %v", s, ok)
	}
	if v, ok := l.Uint8("version"); !ok || v != 2 {
		t.Errorf("version = %d, %v", v, ok)
	}
	if tok, ok := l.Uint8Array("token"); !ok || len(tok) != 16 || tok[15] != 15 {
		t.Errorf("token = %x, %v", tok, ok)
	}
	if v, ok := l.Int64("datasize"); !ok || v != 10737413120 {
		t.Errorf("datasize = %d, %v", v, ok)
	}
	if v, ok := l.Int32("extentsize"); !ok || v != 2<<20 {
		t.Errorf("extentsize = %d, %v", v, ok)
	}
	if v, ok := l.Uint64("localcnt"); !ok || v != 0x0102030405060708 {
		t.Errorf("localcnt = %#x, %v", v, ok)
	}
	if v, ok := l.Int8("virgin"); !ok || v != 1 {
		t.Errorf("virgin = %d, %v", v, ok)
	}
	if v, ok := l.Int16("error"); !ok || v != -22 {
		t.Errorf("error = %d, %v", v, ok)
	}
	if v, ok := l.Uint32("mapsize"); !ok || v != 1024 {
		t.Errorf("mapsize = %d, %v", v, ok)
	}
	// The handshake's datasize is int64; asking for the metadata block's uint64 must fail.
	if _, ok := l.Uint64("datasize"); ok {
		t.Error("Uint64(datasize) succeeded on an int64 record")
	}
}

func TestRoundTripEveryType(t *testing.T) {
	var l List
	l.AddInt8("i8", math.MinInt8)
	l.AddUint8("u8", math.MaxUint8)
	l.AddInt16("i16", math.MinInt16)
	l.AddUint16("u16", math.MaxUint16)
	l.AddInt32("i32", math.MinInt32)
	l.AddUint32("u32", math.MaxUint32)
	l.AddInt64("i64", math.MinInt64)
	l.AddUint64("u64", math.MaxUint64)
	l.AddInt8Array("ai8", []int8{-1, 0, 127, -128})
	l.AddUint8Array("au8", []byte{1, 2, 3, 4, 5, 6, 7, 8, 9})
	l.AddInt16Array("ai16", []int16{-2, 300})
	l.AddUint16Array("au16", []uint16{65535, 1, 2})
	l.AddInt32Array("ai32", []int32{-5, math.MaxInt32})
	l.AddUint32Array("au32", []uint32{7})
	l.AddInt64Array("ai64", []int64{math.MinInt64, 3})
	l.AddUint64Array("au64", []uint64{math.MaxUint64, 0, 42})
	l.AddString("s", "hello, world")
	l.AddString("empty", "")
	l.AddString(strings.Repeat("n", 254), "longest name")

	enc := l.Encode()
	if len(enc) != l.EncodedLen() {
		t.Fatalf("EncodedLen %d, Encode %d", l.EncodedLen(), len(enc))
	}
	d, err := Decode(enc)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if !bytes.Equal(d.Encode(), enc) {
		t.Fatal("re-encoding the decoded list changed it")
	}
	check := func(name string, ok bool, got, want any) {
		t.Helper()
		if !ok {
			t.Errorf("%s: not found", name)
			return
		}
		if !equalAny(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	v1, ok := d.Int8("i8")
	check("i8", ok, v1, int8(math.MinInt8))
	v2, ok := d.Uint8("u8")
	check("u8", ok, v2, uint8(math.MaxUint8))
	v3, ok := d.Int16("i16")
	check("i16", ok, v3, int16(math.MinInt16))
	v4, ok := d.Uint16("u16")
	check("u16", ok, v4, uint16(math.MaxUint16))
	v5, ok := d.Int32("i32")
	check("i32", ok, v5, int32(math.MinInt32))
	v6, ok := d.Uint32("u32")
	check("u32", ok, v6, uint32(math.MaxUint32))
	v7, ok := d.Int64("i64")
	check("i64", ok, v7, int64(math.MinInt64))
	v8, ok := d.Uint64("u64")
	check("u64", ok, v8, uint64(math.MaxUint64))
	a1, ok := d.Int8Array("ai8")
	check("ai8", ok, a1, []int8{-1, 0, 127, -128})
	a2, ok := d.Uint8Array("au8")
	check("au8", ok, a2, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9})
	a3, ok := d.Int16Array("ai16")
	check("ai16", ok, a3, []int16{-2, 300})
	a4, ok := d.Uint16Array("au16")
	check("au16", ok, a4, []uint16{65535, 1, 2})
	a5, ok := d.Int32Array("ai32")
	check("ai32", ok, a5, []int32{-5, math.MaxInt32})
	a6, ok := d.Uint32Array("au32")
	check("au32", ok, a6, []uint32{7})
	a7, ok := d.Int64Array("ai64")
	check("ai64", ok, a7, []int64{math.MinInt64, 3})
	a8, ok := d.Uint64Array("au64")
	check("au64", ok, a8, []uint64{math.MaxUint64, 0, 42})
	s1, ok := d.String("s")
	check("s", ok, s1, "hello, world")
	s2, ok := d.String("empty")
	check("empty", ok, s2, "")
	s3, ok := d.String(strings.Repeat("n", 254))
	check("longest", ok, s3, "longest name")
}

func equalAny(a, b any) bool {
	switch x := a.(type) {
	case []int8:
		return slices.Equal(x, b.([]int8))
	case []byte:
		return slices.Equal(x, b.([]byte))
	case []int16:
		return slices.Equal(x, b.([]int16))
	case []uint16:
		return slices.Equal(x, b.([]uint16))
	case []int32:
		return slices.Equal(x, b.([]int32))
	case []uint32:
		return slices.Equal(x, b.([]uint32))
	case []int64:
		return slices.Equal(x, b.([]int64))
	case []uint64:
		return slices.Equal(x, b.([]uint64))
	}
	return a == b
}

func TestArrayElementsLittleEndian(t *testing.T) {
	var l List
	l.AddUint16Array("a", []uint16{0x0102, 0x0304, 0x0506})
	want := unhex(t, `
		0c 02 06 00 00 00  61 00 00 00 00 00 00 00
		02 01 04 03 06 05 00 00`)
	if got := l.Encode(); !bytes.Equal(got, want) {
		t.Fatalf("got %x\nwant %x", got, want)
	}
}

func TestExactTypeLookup(t *testing.T) {
	var l List
	l.AddUint32("size", 4096)
	l.AddUint64("seq", 7)
	l.AddUint64("seq", 8)     // duplicate: first wins
	l.AddString("dup", "one") // first "dup" is a string...
	l.AddUint8("dup", 1)      // ...so Uint8("dup") fails although this record matches

	if v, ok := l.Uint32("size"); !ok || v != 4096 {
		t.Errorf("Uint32(size) = %d, %v", v, ok)
	}
	for name, got := range map[string]bool{
		"Uint64(size)": func() bool { _, ok := l.Uint64("size"); return ok }(),
		"Int32(size)":  func() bool { _, ok := l.Int32("size"); return ok }(),
		"Uint16(size)": func() bool { _, ok := l.Uint16("size"); return ok }(),
		"String(size)": func() bool { _, ok := l.String("size"); return ok }(),
		"Uint8(dup)":   func() bool { _, ok := l.Uint8("dup"); return ok }(),
		"Int64(seq)":   func() bool { _, ok := l.Int64("seq"); return ok }(),
		"Uint8(none)":  func() bool { _, ok := l.Uint8("none"); return ok }(),
		"Uint8Array(size)": func() bool {
			_, ok := l.Uint8Array("size")
			return ok
		}(),
	} {
		if got {
			t.Errorf("%s succeeded, want type/absence failure", name)
		}
	}
	if v, ok := l.Uint64("seq"); !ok || v != 7 {
		t.Errorf("Uint64(seq) = %d, %v; want first record 7", v, ok)
	}
	if s, ok := l.String("dup"); !ok || s != "one" {
		t.Errorf("String(dup) = %q, %v", s, ok)
	}
	if !l.Has("dup") || !l.Has("size") || l.Has("siz") || l.Has("sizes") || l.Has("") {
		t.Error("Has gives wrong answers")
	}
	if l.Len() != 5 {
		t.Errorf("Len = %d, want 5", l.Len())
	}
}

func TestResetReuse(t *testing.T) {
	var l List
	l.AddString("resource", "a-long-resource-name")
	l.AddUint64("seq", 1)
	l.Reset()
	if l.Len() != 0 || len(l.Encode()) != 0 || l.Has("seq") {
		t.Fatal("Reset left records behind")
	}
	l.AddUint8("cmd", 2)
	want := unhex(t, "02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00")
	if got := l.Encode(); !bytes.Equal(got, want) {
		t.Fatalf("after Reset: got %x want %x (stale bytes in padding?)", got, want)
	}
}

func TestUint8ArrayAliasIsCapped(t *testing.T) {
	var l List
	l.AddUint8Array("hash", []byte{1, 2, 3})
	l.AddUint8("cmd", 9)
	h, _ := l.Uint8Array("hash")
	_ = append(h, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	if v, ok := l.Uint8("cmd"); !ok || v != 9 {
		t.Fatalf("append to returned array clobbered the list: cmd=%d %v", v, ok)
	}
	if !bytes.Equal(l.Encode()[6+8:6+8+8], []byte{1, 2, 3, 0, 0, 0, 0, 0}) {
		t.Fatalf("append to returned array clobbered its padding: %x", l.Encode())
	}
}

func TestAddStringStopsAtNUL(t *testing.T) {
	var l List
	l.AddString("s", "abc\x00def")
	if s, _ := l.String("s"); s != "abc" {
		t.Fatalf("String = %q, want %q (C strlen semantics)", s, "abc")
	}
	if _, err := Decode(l.Encode()); err != nil {
		t.Fatalf("list with truncated string does not decode: %v", err)
	}
}

func TestAddMisusePanics(t *testing.T) {
	for name, f := range map[string]func(l *List){
		"empty name":     func(l *List) { l.AddUint8("", 1) },
		"name with NUL":  func(l *List) { l.AddUint8("a\x00b", 1) },
		"255-byte name":  func(l *List) { l.AddUint8(strings.Repeat("x", 255), 1) },
		"empty array":    func(l *List) { l.AddUint8Array("hash", nil) },
		"empty u64 arr":  func(l *List) { l.AddUint64Array("x", []uint64{}) },
		"empty i16 arr":  func(l *List) { l.AddInt16Array("x", nil) },
		"empty u32 arr":  func(l *List) { l.AddUint32Array("x", nil) },
		"empty i8 arr":   func(l *List) { l.AddInt8Array("x", nil) },
		"empty u16 arr":  func(l *List) { l.AddUint16Array("x", nil) },
		"empty i32 arr":  func(l *List) { l.AddInt32Array("x", nil) },
		"empty i64 arr":  func(l *List) { l.AddInt64Array("x", nil) },
		"bad name strng": func(l *List) { l.AddString("", "v") },
	} {
		t.Run(name, func(t *testing.T) {
			var l List
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			f(&l)
		})
	}
}

func TestTrailingZeros(t *testing.T) {
	l := buildHandshake()
	enc := l.Encode()
	// The metadata block: one list followed by zeros up to 4096 bytes.
	block := make([]byte, 4096)
	copy(block, enc)
	d, err := Decode(block)
	if err != nil {
		t.Fatalf("decode padded block: %v", err)
	}
	if !bytes.Equal(d.Encode(), enc) {
		t.Fatal("trailing zeros were not stripped")
	}
	// A list that is nothing but zeros (a never-written metadata block) is empty.
	d, err = Decode(make([]byte, 64))
	if err != nil || d.Len() != 0 {
		t.Fatalf("all-zero buffer: %v, len %d", err, d.Len())
	}
	d, err = Decode(nil)
	if err != nil || d.Len() != 0 {
		t.Fatalf("empty buffer: %v", err)
	}
}

func TestNameGarbagePaddingAccepted(t *testing.T) {
	// FreeBSD's nv_add mallocs the header without zeroing the name's padding, so
	// a real peer can send garbage there; it must be accepted and not echoed back.
	b := unhex(t, "02 04 01 00 00 00 63 6d 64 00 de ad be ef 02 00 00 00 00 00 00 00")
	l, err := Decode(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	want := unhex(t, "02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00")
	if got := l.Encode(); !bytes.Equal(got, want) {
		t.Fatalf("re-encoded %x, want zeroed padding %x", got, want)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := "02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00" // cmd=2, 22 bytes
	for _, tc := range []struct {
		name   string
		in     string
		index  int
		offset int
		reason string
	}{
		{"type 18", "12 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "type 18 outside 1..17"},
		{"type 127", "7f 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "type 127 outside"},
		{"order bit", "82 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "byte-order bit set"},
		{"order bit on type 0", "80 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "byte-order bit set"},
		{"namesize 0", "02 00 01 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "namesize is 0"},
		{"name not terminated", "02 04 01 00 00 00 63 6d 64 65 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "not NUL-terminated"},
		{"interior NUL in name", "02 04 01 00 00 00 63 00 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "name contains a NUL at position 1"},
		{"dsize 0", "02 04 00 00 00 00 63 6d 64 00 00 00 00 00", 0, 0, "dsize is 0"},
		{"truncated header", good + " 02 04 01", 1, 22, "truncated header: 3 of 6"},
		{"truncated name", good + " 02 04 01 00 00 00 63 6d", 1, 22, "truncated name"},
		{"truncated value", "02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02", 0, 0, "truncated value"},
		{"missing value padding", "02 04 01 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00", 0, 0, "truncated value: record needs 22 bytes, have 21"},
		{"huge dsize", "0a 04 ff ff ff ff 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "truncated value"},
		{"uint8 size 2", "02 04 02 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "uint8 value has size 2, want 1"},
		{"uint64 size 4", "08 04 04 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "uint64 value has size 4, want 8"},
		{"int16 size 8", "03 04 08 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "int16 value has size 8, want 2"},
		{"uint16 array odd", "0c 04 03 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "uint16 array size 3 is not a multiple of 2"},
		{"int32 array 6", "0d 04 06 00 00 00 63 6d 64 00 00 00 00 00 02 00 00 00 00 00 00 00", 0, 0, "int32 array size 6 is not a multiple of 4"},
		{"uint64 array 12", "10 04 0c 00 00 00 63 6d 64 00 00 00 00 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 00 00 00", 0, 0, "uint64 array size 12 is not a multiple of 8"},
		{"string unterminated", "11 04 03 00 00 00 63 6d 64 00 00 00 00 00 61 62 63 00 00 00 00 00", 0, 0, "string is not NUL-terminated"},
		{"string interior NUL", "11 04 04 00 00 00 63 6d 64 00 00 00 00 00 61 00 63 00 00 00 00 00", 0, 0, "string contains a NUL at position 1"},
		{"garbage after end", good + " 00 00 00 05", 1, 22, "non-zero byte at offset 25 after the zero byte"},
		{"second record bad", good + " " + strings.Replace(good, "02 04", "13 04", 1), 1, 22, "type 19 outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l List
			l.AddUint8("stale", 1)
			err := l.DecodeInto(unhex(t, tc.in))
			if err == nil {
				t.Fatal("decoded without error")
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a *DecodeError", err)
			}
			if de.Index != tc.index || de.Offset != tc.offset {
				t.Errorf("record %d at %d, want record %d at %d (%v)", de.Index, de.Offset, tc.index, tc.offset, err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not mention %q", err, tc.reason)
			}
			if l.Len() != 0 || l.EncodedLen() != 0 {
				t.Errorf("failed DecodeInto left %d records", l.Len())
			}
			if _, err := Decode(unhex(t, tc.in)); err == nil {
				t.Error("Decode accepted what DecodeInto rejected")
			}
		})
	}
}

func TestEmptyNameDecodes(t *testing.T) {
	// nv.c's validator accepts namesize 1 (an empty name); so do we.
	b := unhex(t, "02 01 01 00 00 00 00 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00")
	l, err := Decode(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if v, ok := l.Uint8(""); !ok || v != 7 {
		t.Fatalf("Uint8(\"\") = %d, %v", v, ok)
	}
	if !bytes.Equal(l.Encode(), b) {
		t.Fatalf("re-encode %x, want %x", l.Encode(), b)
	}
}

func TestDump(t *testing.T) {
	var l List
	l.AddUint8("cmd", 2)
	l.AddInt16("error", -5)
	l.AddString("resource", "disk1")
	l.AddUint8Array("hash", []byte{1, 255})
	l.AddInt32Array("v", []int32{-1, 2})
	want := "  cmd(uint8): 2\n  error(int16): -5\n  resource(string): disk1\n" +
		"  hash(uint8 array): 1 255\n  v(int32 array): -1 2\n"
	if got := l.Dump(); got != want {
		t.Fatalf("Dump:\n%s\nwant:\n%s", got, want)
	}
	if TypeUint64Array.String() != "uint64 array" || Type(0).String() != "type(0)" || Type(18).String() != "type(18)" {
		t.Error("Type.String wrong")
	}
}

// writeRequest fills l like the primary's WRITE request header (§7.3).
func writeRequest(l *List, seq uint64) {
	l.Reset()
	l.AddUint8("cmd", 2)
	l.AddUint64("seq", seq)
	l.AddUint64("offset", seq*4096)
	l.AddUint64("length", 4096)
	l.AddUint8("memsync", 1)
	l.AddString("checksum", "crc32")
	l.AddUint8Array("hash", []byte{1, 2, 3, 4})
	l.AddUint32("size", 4096)
}

func TestHotPathAllocations(t *testing.T) {
	var l List
	buf := make([]byte, 0, 512)
	writeRequest(&l, 1) // warm up storage
	if n := testing.AllocsPerRun(100, func() {
		writeRequest(&l, 2)
		buf = l.AppendEncode(buf[:0])
	}); n != 0 {
		t.Errorf("encoding a WRITE request into reused buffers allocates %v times", n)
	}
	var d List
	if err := d.DecodeInto(buf); err != nil {
		t.Fatal(err)
	}
	var sum uint64
	if n := testing.AllocsPerRun(100, func() {
		if err := d.DecodeInto(buf); err != nil {
			panic(err)
		}
		seq, _ := d.Uint64("seq")
		h, _ := d.Uint8Array("hash")
		sum += seq + uint64(len(h))
	}); n != 0 {
		t.Errorf("DecodeInto a reused list allocates %v times", n)
	}
	if sum == 0 {
		t.Fatal("decoded nothing")
	}
}

func BenchmarkEncodeWrite(b *testing.B) {
	var l List
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		writeRequest(&l, uint64(i))
		buf = l.AppendEncode(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDecodeWrite(b *testing.B) {
	var l List
	writeRequest(&l, 12345)
	enc := l.Encode()
	var d List
	b.ReportAllocs()
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if err := d.DecodeInto(enc); err != nil {
			b.Fatal(err)
		}
		if _, ok := d.Uint32("size"); !ok {
			b.Fatal("no size")
		}
	}
}
