package faultnet

import (
	"encoding/json"
	"fmt"
)

// nftTable is the table this package owns in each namespace. The namespaces are ours alone, so
// the name only has to be unique within them.
const nftTable = Prefix

// ensureTables creates, once, the table with two input chains: "loss" for Loss and "cut" for a
// silent Cut, each holding at most one rule so they can be flushed independently. Packets are
// dropped as they arrive, not as they leave: netfilter reports a drop on output to the sending
// socket (EPERM), which a real lossy wire never does.
func (n *Net) ensureTables() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("faultnet: network %d is closed", n.N)
	}
	if n.tables {
		return nil
	}
	script := fmt.Sprintf(`add table inet %[1]s
add chain inet %[1]s loss { type filter hook input priority 0; policy accept; }
add chain inet %[1]s cut { type filter hook input priority 1; policy accept; }
`, nftTable)
	for i := range 2 {
		if _, err := n.nft(i, script, "-f", "-"); err != nil {
			return err
		}
	}
	n.tables = true
	return nil
}

// Drops are the packets and bytes dropped by this package's rules, summed over both namespaces.
type Drops struct {
	LossPackets, LossBytes uint64 // by Loss
	CutPackets, CutBytes   uint64 // by a silent Cut
}

// Dropped reads the nftables counters. Counters restart when Loss or Cut replaces a rule.
func (n *Net) Dropped() (Drops, error) {
	var d Drops
	n.mu.Lock()
	tables := n.tables
	n.mu.Unlock()
	if !tables {
		return d, nil
	}
	for i := range 2 {
		out, err := n.nft(i, "", "-j", "list", "table", "inet", nftTable)
		if err != nil {
			return d, err
		}
		counts, err := parseCounters(out)
		if err != nil {
			return d, fmt.Errorf("nft counters in %s: %w", n.NS[i], err)
		}
		d.LossPackets += counts["loss"][0]
		d.LossBytes += counts["loss"][1]
		d.CutPackets += counts["cut"][0]
		d.CutBytes += counts["cut"][1]
	}
	return d, nil
}

// parseCounters sums the counter statements of `nft -j list table` output per chain:
// chain → {packets, bytes}.
func parseCounters(js []byte) (map[string][2]uint64, error) {
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Chain string `json:"chain"`
				Expr  []struct {
					Counter *struct {
						Packets uint64 `json:"packets"`
						Bytes   uint64 `json:"bytes"`
					} `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil, fmt.Errorf("parse nft JSON: %w", err)
	}
	res := map[string][2]uint64{}
	for _, o := range doc.Nftables {
		if o.Rule == nil {
			continue
		}
		for _, e := range o.Rule.Expr {
			if e.Counter != nil {
				c := res[o.Rule.Chain]
				c[0] += e.Counter.Packets
				c[1] += e.Counter.Bytes
				res[o.Rule.Chain] = c
			}
		}
	}
	return res, nil
}
