// Package nv implements HAST's "nv" name/value list, byte for byte as FreeBSD's
// sbin/hastd/nv.c writes it. The same encoding carries every message header on the
// replication wire and the metadata block at the start of each local component, so a
// list produced here is readable by a FreeBSD hastd and vice versa.
//
// A list is an ordered sequence of records; names need not be unique and lookups take
// the first record with the wanted name. Record layout (little-endian, packed):
//
//	+0  u8   type       1..17; bit 7 (host byte order) is never set on disk or wire
//	+1  u8   namesize   len(name)+1, the name's NUL included
//	+2  u32  dsize      value size in bytes, > 0
//	+6  name, NUL-terminated, zero-padded to a multiple of 8
//	    value, zero-padded to a multiple of 8
//
// The 6-byte header means records are not 8-byte aligned relative to the buffer start;
// that is the original format and must not be "fixed".
//
// A List keeps its records in that wire form, so encoding is a copy and lists can be
// reused (Reset, DecodeInto) without allocating on the request hot path.
package nv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
)

// Type is the type code of a record, as stored in the low 7 bits of its first byte.
type Type uint8

// Type codes, numbered exactly as in nv.c.
const (
	TypeInt8 Type = 1 + iota
	TypeUint8
	TypeInt16
	TypeUint16
	TypeInt32
	TypeUint32
	TypeInt64
	TypeUint64
	TypeInt8Array
	TypeUint8Array
	TypeInt16Array
	TypeUint16Array
	TypeInt32Array
	TypeUint32Array
	TypeInt64Array
	TypeUint64Array
	TypeString
)

const (
	headerSize = 6
	orderHost  = 0x80
	// maxNameLen is the longest name whose namesize (length + NUL) fits the u8 field.
	maxNameLen = math.MaxUint8 - 1
)

var typeNames = [...]string{
	TypeInt8:        "int8",
	TypeUint8:       "uint8",
	TypeInt16:       "int16",
	TypeUint16:      "uint16",
	TypeInt32:       "int32",
	TypeUint32:      "uint32",
	TypeInt64:       "int64",
	TypeUint64:      "uint64",
	TypeInt8Array:   "int8 array",
	TypeUint8Array:  "uint8 array",
	TypeInt16Array:  "int16 array",
	TypeUint16Array: "uint16 array",
	TypeInt32Array:  "int32 array",
	TypeUint32Array: "uint32 array",
	TypeInt64Array:  "int64 array",
	TypeUint64Array: "uint64 array",
	TypeString:      "string",
}

// String returns the name nv_dump uses for the type ("uint8", "int64 array", ...).
func (t Type) String() string {
	if t.valid() {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

func (t Type) valid() bool { return t >= TypeInt8 && t <= TypeString }

// width is the element size of the type: the exact value size for scalars, the
// granularity of the value size for arrays, and 1 for strings.
func (t Type) width() int {
	switch t {
	case TypeInt16, TypeUint16, TypeInt16Array, TypeUint16Array:
		return 2
	case TypeInt32, TypeUint32, TypeInt32Array, TypeUint32Array:
		return 4
	case TypeInt64, TypeUint64, TypeInt64Array, TypeUint64Array:
		return 8
	default:
		return 1
	}
}

func (t Type) scalar() bool { return t >= TypeInt8 && t <= TypeUint64 }

// record locates one record inside List.buf. Offsets rather than sub-slices keep the
// index valid when buf is reallocated by a later Add.
type record struct {
	typ     Type
	nameOff int
	nameLen int // without the NUL
	valOff  int
	valLen  int // dsize
}

// List is an nv list. The zero value is an empty list ready to use. A List is not safe
// for concurrent use while it is being modified.
type List struct {
	buf  []byte // records in wire form, padding zeroed
	recs []record
}

func pad8(n int) int { return (n + 7) &^ 7 }

// Reset empties the list, keeping its storage for reuse. Slices previously returned by
// Uint8Array become invalid.
func (l *List) Reset() {
	l.buf = l.buf[:0]
	l.recs = l.recs[:0]
}

// Len returns the number of records.
func (l *List) Len() int { return len(l.recs) }

// checkName enforces what nv.c asserts when adding: a non-empty name without NUL whose
// namesize fits in a byte. Names are constants of the program, so a bad one is a
// programming error, not bad input, and it panics like the C assertion aborts.
func checkName(name string) {
	if name == "" || len(name) > maxNameLen || strings.IndexByte(name, 0) >= 0 {
		panic(fmt.Sprintf("nv: invalid record name %q (must be 1..%d bytes without NUL)", name, maxNameLen))
	}
}

// appendRecord appends a record header and name to buf and returns the zeroed value
// area of size bytes for the caller to fill.
func appendRecord[S string | []byte](l *List, t Type, name S, size int) []byte {
	ns := len(name) + 1
	off := len(l.buf)
	n := headerSize + pad8(ns) + pad8(size)
	if cap(l.buf)-off < n {
		grown := make([]byte, off, 2*cap(l.buf)+n)
		copy(grown, l.buf)
		l.buf = grown
	}
	l.buf = l.buf[:off+n]
	rec := l.buf[off:]
	clear(rec)
	rec[0] = byte(t)
	rec[1] = byte(ns)
	binary.LittleEndian.PutUint32(rec[2:], uint32(size))
	copy(rec[headerSize:], name)
	valOff := off + headerSize + pad8(ns)
	l.recs = append(l.recs, record{
		typ:     t,
		nameOff: off + headerSize,
		nameLen: len(name),
		valOff:  valOff,
		valLen:  size,
	})
	return l.buf[valOff : valOff+size]
}

func (l *List) add(t Type, name string, size int) []byte {
	checkName(name)
	return appendRecord(l, t, name, size)
}

// AddInt8 appends an int8 record.
func (l *List) AddInt8(name string, v int8) { l.add(TypeInt8, name, 1)[0] = byte(v) }

// AddUint8 appends a uint8 record.
func (l *List) AddUint8(name string, v uint8) { l.add(TypeUint8, name, 1)[0] = v }

// AddInt16 appends an int16 record.
func (l *List) AddInt16(name string, v int16) {
	binary.LittleEndian.PutUint16(l.add(TypeInt16, name, 2), uint16(v))
}

// AddUint16 appends a uint16 record.
func (l *List) AddUint16(name string, v uint16) {
	binary.LittleEndian.PutUint16(l.add(TypeUint16, name, 2), v)
}

// AddInt32 appends an int32 record.
func (l *List) AddInt32(name string, v int32) {
	binary.LittleEndian.PutUint32(l.add(TypeInt32, name, 4), uint32(v))
}

// AddUint32 appends a uint32 record.
func (l *List) AddUint32(name string, v uint32) {
	binary.LittleEndian.PutUint32(l.add(TypeUint32, name, 4), v)
}

// AddInt64 appends an int64 record.
func (l *List) AddInt64(name string, v int64) {
	binary.LittleEndian.PutUint64(l.add(TypeInt64, name, 8), uint64(v))
}

// AddUint64 appends a uint64 record.
func (l *List) AddUint64(name string, v uint64) {
	binary.LittleEndian.PutUint64(l.add(TypeUint64, name, 8), v)
}

// AddString appends a string record. Like nv_add_string, which takes strlen of a C
// string, the value ends at its first NUL byte, if any.
func (l *List) AddString(name, v string) {
	if i := strings.IndexByte(v, 0); i >= 0 {
		v = v[:i]
	}
	copy(l.add(TypeString, name, len(v)+1), v)
}

// checkArray rejects empty arrays: their dsize would be 0, which every decoder
// (including FreeBSD's) refuses, so emitting one is a programming error.
func checkArray(name string, n int) {
	if n == 0 {
		panic(fmt.Sprintf("nv: empty array for record %q cannot be encoded (dsize must be > 0)", name))
	}
}

// AddUint8Array appends a uint8 array record (HAST's "hash" and "token"). v must not
// be empty.
func (l *List) AddUint8Array(name string, v []byte) {
	checkArray(name, len(v))
	copy(l.add(TypeUint8Array, name, len(v)), v)
}

// AddInt8Array appends an int8 array record. v must not be empty.
func (l *List) AddInt8Array(name string, v []int8) {
	checkArray(name, len(v))
	b := l.add(TypeInt8Array, name, len(v))
	for i, x := range v {
		b[i] = byte(x)
	}
}

// AddUint16Array appends a uint16 array record. v must not be empty.
func (l *List) AddUint16Array(name string, v []uint16) {
	checkArray(name, len(v))
	b := l.add(TypeUint16Array, name, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
}

// AddInt16Array appends an int16 array record. v must not be empty.
func (l *List) AddInt16Array(name string, v []int16) {
	checkArray(name, len(v))
	b := l.add(TypeInt16Array, name, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(x))
	}
}

// AddUint32Array appends a uint32 array record. v must not be empty.
func (l *List) AddUint32Array(name string, v []uint32) {
	checkArray(name, len(v))
	b := l.add(TypeUint32Array, name, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
}

// AddInt32Array appends an int32 array record. v must not be empty.
func (l *List) AddInt32Array(name string, v []int32) {
	checkArray(name, len(v))
	b := l.add(TypeInt32Array, name, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
}

// AddUint64Array appends a uint64 array record. v must not be empty.
func (l *List) AddUint64Array(name string, v []uint64) {
	checkArray(name, len(v))
	b := l.add(TypeUint64Array, name, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], x)
	}
}

// AddInt64Array appends an int64 array record. v must not be empty.
func (l *List) AddInt64Array(name string, v []int64) {
	checkArray(name, len(v))
	b := l.add(TypeInt64Array, name, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
}

// lookup finds the first record called name. As in nv.c's nv_find, only that first
// record counts: if its type is not t the lookup fails even when a later record of the
// same name has type t.
func (l *List) lookup(name string, t Type) ([]byte, bool) {
	for i := range l.recs {
		r := &l.recs[i]
		if string(l.buf[r.nameOff:r.nameOff+r.nameLen]) != name {
			continue
		}
		if r.typ != t {
			return nil, false
		}
		return l.buf[r.valOff : r.valOff+r.valLen : r.valOff+r.valLen], true
	}
	return nil, false
}

// Has reports whether a record called name exists, whatever its type.
func (l *List) Has(name string) bool {
	for i := range l.recs {
		r := &l.recs[i]
		if string(l.buf[r.nameOff:r.nameOff+r.nameLen]) == name {
			return true
		}
	}
	return false
}

// Int8 returns the value of the first record called name if it is an int8.
func (l *List) Int8(name string) (int8, bool) {
	b, ok := l.lookup(name, TypeInt8)
	if !ok {
		return 0, false
	}
	return int8(b[0]), true
}

// Uint8 returns the value of the first record called name if it is a uint8.
func (l *List) Uint8(name string) (uint8, bool) {
	b, ok := l.lookup(name, TypeUint8)
	if !ok {
		return 0, false
	}
	return b[0], true
}

// Int16 returns the value of the first record called name if it is an int16.
func (l *List) Int16(name string) (int16, bool) {
	b, ok := l.lookup(name, TypeInt16)
	if !ok {
		return 0, false
	}
	return int16(binary.LittleEndian.Uint16(b)), true
}

// Uint16 returns the value of the first record called name if it is a uint16.
func (l *List) Uint16(name string) (uint16, bool) {
	b, ok := l.lookup(name, TypeUint16)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint16(b), true
}

// Int32 returns the value of the first record called name if it is an int32.
func (l *List) Int32(name string) (int32, bool) {
	b, ok := l.lookup(name, TypeInt32)
	if !ok {
		return 0, false
	}
	return int32(binary.LittleEndian.Uint32(b)), true
}

// Uint32 returns the value of the first record called name if it is a uint32.
func (l *List) Uint32(name string) (uint32, bool) {
	b, ok := l.lookup(name, TypeUint32)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b), true
}

// Int64 returns the value of the first record called name if it is an int64.
func (l *List) Int64(name string) (int64, bool) {
	b, ok := l.lookup(name, TypeInt64)
	if !ok {
		return 0, false
	}
	return int64(binary.LittleEndian.Uint64(b)), true
}

// Uint64 returns the value of the first record called name if it is a uint64.
func (l *List) Uint64(name string) (uint64, bool) {
	b, ok := l.lookup(name, TypeUint64)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint64(b), true
}

// String returns the value of the first record called name if it is a string.
func (l *List) String(name string) (string, bool) {
	b, ok := l.lookup(name, TypeString)
	if !ok {
		return "", false
	}
	return string(b[:len(b)-1]), true
}

// Uint8Array returns the value of the first record called name if it is a uint8 array.
// The slice aliases the list's storage to keep the hot path (hash, token) free of
// copies: it must not be modified and is valid only until the next Reset or DecodeInto.
func (l *List) Uint8Array(name string) ([]byte, bool) {
	return l.lookup(name, TypeUint8Array)
}

// Int8Array returns a copy of the first record called name if it is an int8 array.
func (l *List) Int8Array(name string) ([]int8, bool) {
	b, ok := l.lookup(name, TypeInt8Array)
	if !ok {
		return nil, false
	}
	v := make([]int8, len(b))
	for i := range v {
		v[i] = int8(b[i])
	}
	return v, true
}

// Uint16Array returns a copy of the first record called name if it is a uint16 array.
func (l *List) Uint16Array(name string) ([]uint16, bool) {
	b, ok := l.lookup(name, TypeUint16Array)
	if !ok {
		return nil, false
	}
	v := make([]uint16, len(b)/2)
	for i := range v {
		v[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return v, true
}

// Int16Array returns a copy of the first record called name if it is an int16 array.
func (l *List) Int16Array(name string) ([]int16, bool) {
	b, ok := l.lookup(name, TypeInt16Array)
	if !ok {
		return nil, false
	}
	v := make([]int16, len(b)/2)
	for i := range v {
		v[i] = int16(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return v, true
}

// Uint32Array returns a copy of the first record called name if it is a uint32 array.
func (l *List) Uint32Array(name string) ([]uint32, bool) {
	b, ok := l.lookup(name, TypeUint32Array)
	if !ok {
		return nil, false
	}
	v := make([]uint32, len(b)/4)
	for i := range v {
		v[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return v, true
}

// Int32Array returns a copy of the first record called name if it is an int32 array.
func (l *List) Int32Array(name string) ([]int32, bool) {
	b, ok := l.lookup(name, TypeInt32Array)
	if !ok {
		return nil, false
	}
	v := make([]int32, len(b)/4)
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, true
}

// Uint64Array returns a copy of the first record called name if it is a uint64 array.
func (l *List) Uint64Array(name string) ([]uint64, bool) {
	b, ok := l.lookup(name, TypeUint64Array)
	if !ok {
		return nil, false
	}
	v := make([]uint64, len(b)/8)
	for i := range v {
		v[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return v, true
}

// Int64Array returns a copy of the first record called name if it is an int64 array.
func (l *List) Int64Array(name string) ([]int64, bool) {
	b, ok := l.lookup(name, TypeInt64Array)
	if !ok {
		return nil, false
	}
	v := make([]int64, len(b)/8)
	for i := range v {
		v[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return v, true
}

// AppendEncode appends the wire form of the list (little-endian, byte-order bit clear)
// to dst. It does not allocate when dst has room.
func (l *List) AppendEncode(dst []byte) []byte { return append(dst, l.buf...) }

// Encode returns the wire form of the list in a new slice.
func (l *List) Encode() []byte { return l.AppendEncode(make([]byte, 0, len(l.buf))) }

// EncodedLen is the number of bytes AppendEncode appends.
func (l *List) EncodedLen() int { return len(l.buf) }

// Dump renders the list one record per line in nv_dump's layout
// ("  name(type): value"), for logs and test failure messages.
func (l *List) Dump() string {
	var sb strings.Builder
	for i := range l.recs {
		r := &l.recs[i]
		v := l.buf[r.valOff : r.valOff+r.valLen]
		fmt.Fprintf(&sb, "  %s(%s):", l.buf[r.nameOff:r.nameOff+r.nameLen], r.typ)
		switch {
		case r.typ == TypeString:
			fmt.Fprintf(&sb, " %s", v[:len(v)-1])
		default:
			w := r.typ.width()
			for j := 0; j+w <= len(v); j += w {
				fmt.Fprintf(&sb, " %s", formatElem(r.typ, v[j:j+w]))
			}
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}

func formatElem(t Type, b []byte) string {
	var u uint64
	switch len(b) {
	case 1:
		u = uint64(b[0])
	case 2:
		u = uint64(binary.LittleEndian.Uint16(b))
	case 4:
		u = uint64(binary.LittleEndian.Uint32(b))
	default:
		u = binary.LittleEndian.Uint64(b)
	}
	switch t {
	case TypeInt8, TypeInt8Array:
		return fmt.Sprint(int8(u))
	case TypeInt16, TypeInt16Array:
		return fmt.Sprint(int16(u))
	case TypeInt32, TypeInt32Array:
		return fmt.Sprint(int32(u))
	case TypeInt64, TypeInt64Array:
		return fmt.Sprint(int64(u))
	}
	return fmt.Sprint(u)
}

// ErrMalformed is wrapped by every decoding error; test with errors.Is.
var ErrMalformed = errors.New("nv: malformed list")

// DecodeError describes why a list was rejected: which record (0-based), where it
// starts in the input, and what is wrong with it.
type DecodeError struct {
	Index  int
	Offset int
	Reason string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("nv: record %d at offset %d: %s", e.Index, e.Offset, e.Reason)
}

// Unwrap makes errors.Is(err, ErrMalformed) hold.
func (e *DecodeError) Unwrap() error { return ErrMalformed }

// Decode parses and fully validates the wire form of a list.
func Decode(b []byte) (*List, error) {
	l := new(List)
	if err := l.DecodeInto(b); err != nil {
		return nil, err
	}
	return l, nil
}

// DecodeInto replaces the contents of l with the list decoded from b, reusing l's
// storage; b is copied, not retained. A zero byte where a record would start ends the
// list (the metadata block pads its list with zeros); everything after it must be zero
// too. Name padding is not checked, because FreeBSD leaves it uninitialised; value
// padding is not checked either, as nv.c does not. On error l is left empty.
func (l *List) DecodeInto(b []byte) error {
	l.Reset()
	if cap(l.buf) < len(b) {
		// Normalised records are never longer than their input, so one allocation
		// covers the whole list.
		l.buf = make([]byte, 0, len(b))
	}
	if err := l.decode(b); err != nil {
		l.Reset()
		return err
	}
	return nil
}

func (l *List) decode(b []byte) error {
	off := 0
	for idx := 0; off < len(b); idx++ {
		fail := func(format string, args ...any) error {
			return &DecodeError{Index: idx, Offset: off, Reason: fmt.Sprintf(format, args...)}
		}
		rest := b[off:]
		if rest[0] == 0 {
			for i, c := range rest {
				if c != 0 {
					return fail("non-zero byte at offset %d after the zero byte that ends the list", off+i)
				}
			}
			return nil
		}
		if len(rest) < headerSize {
			return fail("truncated header: %d of %d bytes", len(rest), headerSize)
		}
		if rest[0]&orderHost != 0 {
			return fail("byte-order bit set in type byte %#02x (host order never appears on disk or wire)", rest[0])
		}
		t := Type(rest[0])
		if !t.valid() {
			return fail("type %d outside %d..%d", t, TypeInt8, TypeString)
		}
		ns := int(rest[1])
		if ns == 0 {
			return fail("namesize is 0")
		}
		valOff := headerSize + pad8(ns)
		if len(rest) < valOff {
			return fail("truncated name: need %d bytes, have %d", valOff, len(rest))
		}
		name := rest[headerSize : headerSize+ns]
		if name[ns-1] != 0 {
			return fail("name is not NUL-terminated")
		}
		if i := bytes.IndexByte(name, 0); i != ns-1 {
			return fail("name contains a NUL at position %d (namesize %d)", i, ns)
		}
		name = name[:ns-1]
		dsize := uint64(binary.LittleEndian.Uint32(rest[2:]))
		if dsize == 0 {
			return fail("%q: dsize is 0", name)
		}
		if need := uint64(valOff) + (dsize+7)&^7; uint64(len(rest)) < need {
			return fail("%q: truncated value: record needs %d bytes, have %d", name, need, len(rest))
		}
		val := rest[valOff : valOff+int(dsize)]
		w := t.width()
		switch {
		case t.scalar() && len(val) != w:
			return fail("%q: %s value has size %d, want %d", name, t, len(val), w)
		case len(val)%w != 0:
			return fail("%q: %s size %d is not a multiple of %d", name, t, len(val), w)
		case t == TypeString && val[len(val)-1] != 0:
			return fail("%q: string is not NUL-terminated", name)
		case t == TypeString && bytes.IndexByte(val, 0) != len(val)-1:
			return fail("%q: string contains a NUL at position %d", name, bytes.IndexByte(val, 0))
		}
		copy(appendRecord(l, t, name, len(val)), val)
		off += valOff + pad8(len(val))
	}
	return nil
}
