package bufpool

import (
	"testing"
)

func TestSizeClasses(t *testing.T) {
	p := New(12, 20)
	for _, tc := range []struct{ n, cap int }{
		{0, 4096}, {1, 4096}, {4096, 4096}, {4097, 8192}, {65536, 65536},
		{1 << 20, 1 << 20}, {1<<20 + 1, 1<<20 + 1},
	} {
		b := p.Get(tc.n)
		if len(b) != tc.n || cap(b) != tc.cap || p.Cap(tc.n) != tc.cap {
			t.Errorf("Get(%d): len %d cap %d, Cap %d; want len %d cap %d", tc.n, len(b), cap(b), p.Cap(tc.n), tc.n, tc.cap)
		}
		p.Put(b)
	}
}

// TestReuse: a buffer put back is handed out again, whole, for any length of its class.
func TestReuse(t *testing.T) {
	p := New(12, 20)
	reused := false
	// sync.Pool may drop an item (the GC, another P); a few rounds make reuse certain.
	for range 100 {
		b := p.Get(8000)
		b[0], b[len(b)-1] = 1, 2
		p.Put(b)
		c := p.Get(5000)
		if len(c) != 5000 || cap(c) != 8192 {
			t.Fatalf("Get(5000) after Put: len %d cap %d", len(c), cap(c))
		}
		if &c[0] == &b[0] {
			reused = true
			if c[0] != 1 || c[:8000][7999] != 2 {
				t.Fatal("the reused buffer lost its contents: it is not the same memory")
			}
		}
		p.Put(c)
	}
	if !reused {
		t.Fatal("no buffer was reused in 100 rounds")
	}
}

func TestForeignBuffersDropped(t *testing.T) {
	p := New(12, 20)
	odd := make([]byte, 5000) // capacity of no class
	for range 100 {
		p.Put(odd)
		if b := p.Get(5000); &b[0] == &odd[0] {
			t.Fatal("a buffer whose capacity is not its class's was pooled")
		}
	}
}

// TestNoAllocations: a Get/Put cycle allocates nothing once the pool holds a buffer.
func TestNoAllocations(t *testing.T) {
	p := New(12, 20)
	p.Put(p.Get(4096))
	if n := testing.AllocsPerRun(1000, func() { p.Put(p.Get(4096)) }); n != 0 {
		t.Fatalf("Get/Put allocates %.1f times per cycle", n)
	}
}
