package blockdev

import (
	"bytes"
	"path/filepath"
	"testing"
)

func TestWriteAtSync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	if err := CreateFile(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sw, ok := d.(SyncWriter)
	if !ok {
		t.Fatal("file device does not implement SyncWriter")
	}
	want := bytes.Repeat([]byte{0xa5}, 8192)
	if n, err := sw.WriteAtSync(want, 4096); err != nil || n != len(want) {
		t.Fatalf("WriteAtSync: %d, %v", n, err)
	}
	got := make([]byte, len(want))
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, want))
	}
	if _, err := sw.WriteAtSync(want, 1<<20-4096); err == nil {
		t.Fatal("write past the end succeeded")
	}
}
