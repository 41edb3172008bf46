package faultnet

import (
	"fmt"
	"os"
	"path/filepath"
)

// Segment is a shared Ethernet segment next to the replication link — the network clients and
// a failover's service address live on: a bridge in a third namespace (the client's, which is
// also a host on the segment) with one port to each node's namespace. Created by
// [Net.Segment]; it goes away with the Net.
type Segment struct {
	NS       string    // the client's namespace, which holds the bridge
	Bridge   string    // the bridge (in NS); the client's address is on it
	Link     [2]string // each node's interface on the segment, in Net.NS[i]
	Port     [2]string // the bridge's port to node i, in NS
	IP       [2]string // the nodes' addresses on the segment
	ClientIP string    // the client's address
	Subnet   string    // 10.98.N.0/24
	net      *Net
}

// Addr returns host h (1..254) of the segment's subnet, e.g. for a service address.
func (s *Segment) Addr(h int) string { return fmt.Sprintf("10.98.%d.%d", s.net.N, h) }

// Segment adds the shared segment 10.98.N.0/24 to the network: node i at 10.98.N.(i+1) on
// interface "pub" in its namespace, the client at 10.98.N.100 on bridge "br0" in namespace
// hastfn<N>c. It may be called once per Net.
func (n *Net) Segment() (*Segment, error) {
	n.mu.Lock()
	if n.closed || n.segment != nil {
		n.mu.Unlock()
		return nil, fmt.Errorf("faultnet: network %d is closed or has its segment", n.N)
	}
	s := &Segment{
		NS: name(n.N, 2), Bridge: "br0",
		Link:     [2]string{"pub", "pub"},
		Port:     [2]string{"port0", "port1"},
		IP:       [2]string{fmt.Sprintf("10.98.%d.1", n.N), fmt.Sprintf("10.98.%d.2", n.N)},
		ClientIP: fmt.Sprintf("10.98.%d.100", n.N),
		Subnet:   fmt.Sprintf("10.98.%d.0/24", n.N),
		net:      n,
	}
	n.segment = s
	n.mu.Unlock()
	steps := [][]string{
		{"netns", "add", s.NS},
		{"-n", s.NS, "link", "set", "lo", "up"},
		{"-n", s.NS, "link", "add", s.Bridge, "type", "bridge"},
		{"-n", s.NS, "addr", "add", s.ClientIP + "/24", "dev", s.Bridge},
		{"-n", s.NS, "link", "set", s.Bridge, "up"},
	}
	for i := range 2 {
		steps = append(steps,
			[]string{"link", "add", s.Link[i], "netns", n.NS[i], "type", "veth", "peer", "name", s.Port[i], "netns", s.NS},
			[]string{"-n", s.NS, "link", "set", s.Port[i], "master", s.Bridge},
			[]string{"-n", s.NS, "link", "set", s.Port[i], "up"},
			[]string{"-n", n.NS[i], "addr", "add", s.IP[i] + "/24", "dev", s.Link[i]},
			[]string{"-n", n.NS[i], "link", "set", s.Link[i], "up"},
		)
	}
	for _, st := range steps {
		if err := n.ip(st...); err != nil {
			return nil, err
		}
	}
	// The bridge filters nothing until Isolate: a table with a chain at each hook a frame from
	// or to a port passes (into the bridge, through it, and out of the client's own stack).
	script := fmt.Sprintf(`add table bridge %[1]s
add chain bridge %[1]s isolate_in { type filter hook prerouting priority 0; policy accept; }
add chain bridge %[1]s isolate_fwd { type filter hook forward priority 0; policy accept; }
add chain bridge %[1]s isolate_out { type filter hook output priority 0; policy accept; }
`, nftTable)
	if err := s.nft(script); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Segment) nft(script string) error {
	return run(s.net.ipCmd, []string{"netns", "exec", s.NS, s.net.nftCmd, "-f", "-"}, script)
}

// Isolate silently drops every frame from and to node i on the segment (its interface stays up,
// as when the cable behind a switch is pulled), until Rejoin.
func (s *Segment) Isolate(i int) error {
	p := s.Port[i]
	return s.nft(fmt.Sprintf(`add rule bridge %[1]s isolate_in iifname %[2]q counter drop
add rule bridge %[1]s isolate_fwd oifname %[2]q counter drop
add rule bridge %[1]s isolate_out oifname %[2]q counter drop
`, nftTable, p))
}

// Rejoin removes every Isolate.
func (s *Segment) Rejoin() error {
	return s.nft(fmt.Sprintf("flush chain bridge %[1]s isolate_in\nflush chain bridge %[1]s isolate_fwd\nflush chain bridge %[1]s isolate_out\n", nftTable))
}

// removeSegment deletes the client's namespace (and with it the bridge and the node ports).
func (n *Net) removeSegment() error {
	ns := name(n.N, 2)
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); err != nil {
		return nil
	}
	return n.ip("netns", "del", ns)
}
