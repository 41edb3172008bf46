package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"hast/blockdev"
)

func twoFiles(t *testing.T, size int64) (string, string) {
	t.Helper()
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, p := range []string{a, b} {
		if err := blockdev.CreateFile(p, size); err != nil {
			t.Fatal(err)
		}
		if err := prefill(p); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(da, db) {
		t.Fatalf("%s and %s differ: the two copies are not the same", a, b)
	}
	if bytes.Count(da, []byte{0}) == len(da) {
		t.Fatalf("%s holds only zeros: nothing was written", a)
	}
}

// The baselines must do the physical work they claim: every write lands in both files, and
// reads return what was written (checked by the generator's verify mode).
func TestBaselinesWriteBothCopies(t *testing.T) {
	workloads := []Workload{
		{Name: "rand-4k-qd8-mix", Pattern: Random, ReadPercent: 30, BlockSize: 4096, QueueDepth: 8, TotalBytes: 4 << 20},
		{Name: "lat-4k-qd1", Pattern: Random, BlockSize: 4096, QueueDepth: 1, TotalBytes: 1 << 20},
		{Name: "seq-1m-qd4", Pattern: Sequential, BlockSize: 1 << 20, QueueDepth: 4, TotalBytes: 16 << 20},
		// Not a multiple of 512: takes the buffered descriptor.
		{Name: "odd-2300", Pattern: Sequential, BlockSize: 2300, QueueDepth: 4, TotalBytes: 1 << 20},
	}
	for _, kind := range []string{KindRaw, KindIdeal} {
		for _, direct := range []bool{true, false} {
			name := kind + "-buffered"
			if direct {
				name = kind + "-direct"
			}
			t.Run(name, func(t *testing.T) {
				a, b := twoFiles(t, 8<<20)
				var tg interface {
					Target
					Close() error
				}
				var err error
				if kind == KindRaw {
					tg, err = OpenRaw(a, b, direct, 8)
				} else {
					tg, err = OpenIdeal(a, b, direct, 8, 1<<20)
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, w := range workloads {
					w.Verify = true
					w.Seed = 42
					res, err := Run(context.Background(), tg, w)
					if err != nil {
						t.Fatalf("%s: %v", w.Name, err)
					}
					if res.Verified == 0 {
						t.Fatalf("%s: nothing verified", w.Name)
					}
				}
				if err := tg.Close(); err != nil {
					t.Fatal(err)
				}
				sameFiles(t, a, b)
			})
		}
	}
}

func TestIdealCopyCopiesTheFirstFile(t *testing.T) {
	a, b := twoFiles(t, 8<<20)
	src := make([]byte, 8<<20)
	rand.Read(src)
	if err := os.WriteFile(a, src, 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := OpenIdeal(a, b, true, 8, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	w := Workload{Name: "copy", BlockSize: 1 << 20, QueueDepth: 4, TotalBytes: 8 << 20}
	if _, err := Run(context.Background(), id.CopyTarget(), w); err != nil {
		t.Fatal(err)
	}
	if err := id.Close(); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, a, b)
}
