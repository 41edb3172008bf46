package appliance

import (
	"net"
	"strings"
	"testing"
)

// A cluster whose daemons are started through Wrap on this machine's loopback (the link-security
// tests rewrite hast.conf that way) must not depend on HAST's port being free: something else
// may hold 8457 while the suite runs.
func TestClusterOnLoopbackAvoidsHASTPort(t *testing.T) {
	for _, a := range []string{"127.0.0.1:8457", "127.0.0.2:8458"} {
		// Held by this test, or by someone else already: either way not free.
		if l, err := net.Listen("tcp", a); err == nil {
			t.Cleanup(func() { l.Close() })
		}
	}
	out := &testOut{}
	c, err := NewCluster(ClusterOptions{Dir: t.TempDir(), Exe: "/nonexistent", Resources: 1, DiskSize: 16 << 20,
		Wrap: func(node string, argv []string) []string { return argv }}, out, out)
	if err != nil {
		t.Fatalf("cluster: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		if strings.HasSuffix(n.Addr, ":8457") || strings.HasSuffix(n.Addr, ":8458") {
			t.Errorf("%s listens on %s, HAST's default port, which is taken", n.Name, n.Addr)
		}
	}
}
