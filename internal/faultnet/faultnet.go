package faultnet

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace and interface this package creates.
const Prefix = "hastfn"

// lockDir holds one lock file per subnet in use. /run is a tmpfs, so stale files vanish at boot.
const lockDir = "/run/hast-faultnet"

// Net is two network namespaces joined by a veth pair: node 0 at 10.99.N.1 in NS[0] and node 1
// at 10.99.N.2 in NS[1], with loopback up in both. Its methods are safe for concurrent use.
type Net struct {
	N    int       // the subnet: 10.99.N.0/24
	NS   [2]string // namespace names
	Link [2]string // the veth end inside each namespace
	IP   [2]string // the addresses, without prefix length

	ipCmd, nftCmd string
	lock          *os.File

	mu      sync.Mutex
	closed  bool
	tables  bool // the nftables table exists in both namespaces
	proxies []*Proxy
	segment *Segment
}

// CutMode says how Cut breaks the link.
type CutMode int

const (
	// LinkDown sets both veth ends down: the routes go away, so new connections fail at once
	// and sends on existing ones are dropped locally.
	LinkDown CutMode = iota
	// Silent drops every packet on both veth ends with nftables, like a pulled cable between
	// two switches: the links stay up and nothing reports an error until a timeout fires.
	Silent
)

func (m CutMode) String() string {
	switch m {
	case LinkDown:
		return "link-down"
	case Silent:
		return "silent"
	}
	return fmt.Sprintf("CutMode(%d)", int(m))
}

// Tools returns the paths of `ip` and `nft`, or an error naming the packages to install.
func Tools() (ip, nft string, err error) {
	ip, err1 := exec.LookPath("ip")
	nft, err2 := exec.LookPath("nft")
	var missing []string
	if err1 != nil {
		missing = append(missing, "ip (apt-get install iproute2)")
	}
	if err2 != nil {
		missing = append(missing, "nft (apt-get install nftables)")
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("faultnet needs %s", strings.Join(missing, " and "))
	}
	return ip, nft, nil
}

// New creates the two namespaces and the veth pair on a free subnet. Leftovers of processes
// that died without calling Close are removed first. The caller must call Close.
func New() (*Net, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("faultnet: network namespaces need root")
	}
	ipCmd, nftCmd, err := Tools()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("faultnet: %w", err)
	}
	sweepLeftovers(ipCmd)
	for n := 1; n <= 254; n++ {
		lock, ok, err := tryLock(n)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		nt := &Net{
			N:     n,
			NS:    [2]string{name(n, 0), name(n, 1)},
			Link:  [2]string{name(n, 0), name(n, 1)},
			IP:    [2]string{fmt.Sprintf("10.99.%d.1", n), fmt.Sprintf("10.99.%d.2", n)},
			ipCmd: ipCmd, nftCmd: nftCmd, lock: lock,
		}
		// The lock is ours, so anything under these names is a dead process's leftover.
		nt.removeNamespaces()
		if err := nt.setup(); err != nil {
			nt.Close()
			return nil, err
		}
		return nt, nil
	}
	return nil, errors.New("faultnet: all 254 subnets 10.99.N.0/24 are in use")
}

func name(n, i int) string { return fmt.Sprintf("%s%d%c", Prefix, n, 'a'+i) }

// tryLock takes the lock of subnet n without waiting.
func tryLock(n int) (*os.File, bool, error) {
	p := filepath.Join(lockDir, strconv.Itoa(n)+".lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("faultnet: lock %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("faultnet: lock %s: %w", p, err)
	}
	return f, true, nil
}

// sweepLeftovers deletes namespaces with our prefix whose subnet lock nobody holds.
func sweepLeftovers(ipCmd string) {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), Prefix)
		if !ok || len(rest) < 2 {
			continue
		}
		n, err := strconv.Atoi(rest[:len(rest)-1])
		if err != nil || n < 1 || n > 254 {
			continue
		}
		lock, ok, err := tryLock(n)
		if err != nil || !ok {
			continue
		}
		exec.Command(ipCmd, "netns", "del", e.Name()).Run()
		lock.Close()
	}
}

func (n *Net) setup() error {
	steps := [][]string{
		{"netns", "add", n.NS[0]},
		{"netns", "add", n.NS[1]},
		{"link", "add", n.Link[0], "netns", n.NS[0], "type", "veth", "peer", "name", n.Link[1], "netns", n.NS[1]},
	}
	for i := range 2 {
		steps = append(steps,
			[]string{"-n", n.NS[i], "addr", "add", n.IP[i] + "/24", "dev", n.Link[i]},
			[]string{"-n", n.NS[i], "link", "set", "lo", "up"},
			[]string{"-n", n.NS[i], "link", "set", n.Link[i], "up"},
		)
	}
	for _, s := range steps {
		if err := n.ip(s...); err != nil {
			return err
		}
	}
	return nil
}

func run(name string, args []string, stdin string) error {
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (n *Net) ip(args ...string) error { return run(n.ipCmd, args, "") }

// nft runs nft in namespace i, with script on stdin when args is just "-f", "-".
func (n *Net) nft(i int, script string, args ...string) ([]byte, error) {
	full := append([]string{"netns", "exec", n.NS[i], n.nftCmd}, args...)
	cmd := exec.Command(n.ipCmd, full...)
	if script != "" {
		cmd.Stdin = strings.NewReader(script)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nft %s in %s: %w: %s", strings.Join(args, " "), n.NS[i], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func (n *Net) removeNamespaces() {
	for _, ns := range append(n.NS[:], name(n.N, 2)) {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err == nil {
			exec.Command(n.ipCmd, "netns", "del", ns).Run()
		}
	}
}

// Close stops the proxies, deletes both namespaces (and the segment's, if any) (the veth pair and the nftables tables go
// with them) and releases the subnet. It is safe to call more than once.
func (n *Net) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	proxies := n.proxies
	n.proxies = nil
	n.mu.Unlock()
	for _, p := range proxies {
		p.Close()
	}
	first := n.removeSegment()
	for _, ns := range n.NS {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err != nil {
			continue
		}
		if err := n.ip("netns", "del", ns); err != nil && first == nil {
			first = err
		}
	}
	if n.lock != nil {
		n.lock.Close()
	}
	return first
}

// Cut breaks the link between the two namespaces in the given way until Heal.
func (n *Net) Cut(mode CutMode) error {
	switch mode {
	case LinkDown:
		for i := range 2 {
			if err := n.ip("-n", n.NS[i], "link", "set", n.Link[i], "down"); err != nil {
				return err
			}
		}
		return nil
	case Silent:
		if err := n.ensureTables(); err != nil {
			return err
		}
		for i := range 2 {
			script := fmt.Sprintf("flush chain inet %[1]s cut\nadd rule inet %[1]s cut iifname %[2]q counter drop\n", nftTable, n.Link[i])
			if _, err := n.nft(i, script, "-f", "-"); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("faultnet: unknown cut mode %d", int(mode))
}

// Heal undoes every Cut: both veth ends up, the silent-drop rules removed. Loss set with Loss
// stays.
func (n *Net) Heal() error {
	n.mu.Lock()
	tables := n.tables
	n.mu.Unlock()
	for i := range 2 {
		if tables {
			if _, err := n.nft(i, "", "flush", "chain", "inet", nftTable, "cut"); err != nil {
				return err
			}
		}
		if err := n.ip("-n", n.NS[i], "link", "set", n.Link[i], "up"); err != nil {
			return err
		}
	}
	return nil
}

// Loss drops the given percentage (0 to 100, in steps of 0.01) of the packets each side receives
// on the veth, chosen at random by the kernel. 0 removes the loss. With GSO on a veth a
// "packet" is a segmentation super-packet of up to 64 KiB, so the wire-level loss rate of a bulk
// transfer is lower than the figure (docs/host-facts.md §5); TCP still has to recover from
// every drop.
func (n *Net) Loss(percent float64) error {
	if percent < 0 || percent > 100 {
		return fmt.Errorf("faultnet: loss %v%% out of range", percent)
	}
	if err := n.ensureTables(); err != nil {
		return err
	}
	bp := int(percent*100 + 0.5) // basis points of 10000
	for i := range 2 {
		script := fmt.Sprintf("flush chain inet %s loss\n", nftTable)
		if bp > 0 {
			script += fmt.Sprintf("add rule inet %s loss iifname %q numgen random mod 10000 < %d counter drop\n", nftTable, n.Link[i], bp)
		}
		if _, err := n.nft(i, script, "-f", "-"); err != nil {
			return err
		}
	}
	return nil
}

// Wrap returns a command-line rewriter (the shape appliance.ClusterOptions.Wrap takes) that runs
// every command in namespace ns with `ip netns exec`.
func Wrap(ns string) func(node string, argv []string) []string {
	return func(_ string, argv []string) []string {
		return append([]string{"ip", "netns", "exec", ns}, argv...)
	}
}

// WrapNodes returns a command-line rewriter that runs node names[i] in namespace NS[i]. A
// command for any other node is returned unchanged, so it runs outside both namespaces (and a
// daemon there fails to bind its 10.99.N address, which names the mistake).
func (n *Net) WrapNodes(names [2]string) func(node string, argv []string) []string {
	return func(node string, argv []string) []string {
		for i, nm := range names {
			if nm == node {
				return append([]string{n.ipCmd, "netns", "exec", n.NS[i]}, argv...)
			}
		}
		return argv
	}
}
