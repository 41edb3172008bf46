package nv

import (
	"bytes"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic, and anything it
// accepts must re-encode to a canonical form that decodes to the same list.
func FuzzDecode(f *testing.F) {
	f.Add(buildHandshake().Encode())
	var l List
	writeRequest(&l, 99)
	f.Add(l.Encode())
	f.Add([]byte{2, 4, 1, 0, 0, 0, 'c', 'm', 'd', 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Decode(b)
		if err != nil {
			if d != nil {
				t.Fatal("Decode returned a list with an error")
			}
			return
		}
		e1 := d.Encode()
		if len(e1) > len(b) {
			t.Fatalf("canonical form (%d bytes) longer than input (%d)", len(e1), len(b))
		}
		var d2 List
		if err := d2.DecodeInto(e1); err != nil {
			t.Fatalf("re-decoding canonical form: %v\n%x", err, e1)
		}
		if e2 := d2.Encode(); !bytes.Equal(e1, e2) {
			t.Fatalf("decode/encode not stable:\n%x\n%x", e1, e2)
		}
		if d2.Len() != d.Len() || d2.Dump() != d.Dump() {
			t.Fatalf("lists differ:\n%s\n%s", d.Dump(), d2.Dump())
		}
	})
}
