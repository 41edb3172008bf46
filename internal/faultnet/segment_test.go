package faultnet

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSegmentIsolateAndRejoin: the client reaches both nodes across the bridge; isolating node
// 0 silences it (and only it) without an error, and Rejoin restores it. Close removes the
// client's namespace too.
func TestSegmentIsolateAndRejoin(t *testing.T) {
	n := newNet(t)
	s, err := n.Segment()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		if _, err := os.Stat(filepath.Join(netnsDir, s.NS)); err == nil {
			t.Errorf("namespace %s still exists after Close", s.NS)
		}
	})
	ctx := context.Background()
	var addrs [2]string
	for i := range 2 {
		l, err := ListenIn(n.NS[i], "tcp", s.IP[i]+":0")
		if err != nil {
			t.Fatal(err)
		}
		echoServer(t, l)
		addrs[i] = l.Addr().String()
	}
	dial := func(i int) error {
		c, err := DialIn(ctx, s.NS, "tcp", addrs[i])
		if err != nil {
			return err
		}
		defer c.Close()
		return pingPong(c, 5*time.Second)
	}
	for i := range 2 {
		if err := dial(i); err != nil {
			t.Fatalf("client to node %d: %v", i, err)
		}
	}
	c, err := DialIn(ctx, s.NS, "tcp", addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := s.Isolate(0); err != nil {
		t.Fatal(err)
	}
	if err := pingPong(c, 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("ping-pong to an isolated node: %v, want a timeout", err)
	}
	if err := dial(1); err != nil {
		t.Fatalf("node 1 while node 0 is isolated: %v", err)
	}
	if err := s.Rejoin(); err != nil {
		t.Fatal(err)
	}
	if err := dial(0); err != nil {
		t.Fatalf("node 0 after Rejoin: %v", err)
	}
}
