package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hast/appliance/config"
	"hast/replicate"
)

// `hast failover` is what keepalived runs: `notify` on every VRRP state change (the address
// follows the primary role) and `check` as a track_script (a node that cannot serve, or must not
// be promoted, drops out of the election). docs/failover.md walks through a setup.

const failoverUsage = `usage:
  hast failover notify [-c config] [--node NAME] [--up CMD] [--down CMD] [--log FILE]
                       [--outdate-after D] [--peer-wait D] MASTER|BACKUP|FAULT|STOP
  hast failover notify [options] GROUP|INSTANCE NAME STATE PRIORITY   (keepalived's notify arguments)
  hast failover check  [-c config] [--node NAME] [--log FILE] [--outdate-after D]
notify MASTER promotes every resource of hast.conf in order, or none when one copy must not be
promoted: split-brain, inconsistent (half synchronised), a secondary disconnected from its primary for
longer than --outdate-after (outdated), or a secondary whose primary still answers on the replication
link after --peer-wait (VRRP split, the peer alive). Then it runs --up (assemble the pool, mount).
BACKUP, FAULT and STOP run --down (unmount, stop the pool) and demote every resource to secondary.
check exits non-zero when the daemon does not answer, a resource here must not be promoted, or a
promotion was refused in the last 10 s (so keepalived releases the address).
`

// vrrpState is a keepalived state as a notify script receives it.
type vrrpState string

const (
	vrrpMaster vrrpState = "MASTER"
	vrrpBackup vrrpState = "BACKUP"
	vrrpFault  vrrpState = "FAULT"
	vrrpStop   vrrpState = "STOP"
)

// parseNotifyArgs accepts a bare state or keepalived's notify arguments ("INSTANCE VI_1 MASTER 100",
// "GROUP G1 BACKUP 0"; the priority is absent in older releases).
func parseNotifyArgs(args []string) (vrrpState, error) {
	var s string
	switch {
	case len(args) == 1:
		s = args[0]
	case (len(args) == 3 || len(args) == 4) && (args[0] == "INSTANCE" || args[0] == "GROUP"):
		s = args[2]
	default:
		return "", fmt.Errorf("want a state (MASTER, BACKUP, FAULT, STOP) or keepalived's \"INSTANCE|GROUP name state priority\", got %q", strings.Join(args, " "))
	}
	switch st := vrrpState(strings.ToUpper(s)); st {
	case vrrpMaster, vrrpBackup, vrrpFault, vrrpStop:
		return st, nil
	}
	return "", fmt.Errorf("unknown state %q (want MASTER, BACKUP, FAULT or STOP)", s)
}

// promotionBlocker says why a resource's copy on this node must not be promoted, or "" when it
// may be. It is the CLI's rule (setRole refuses the same copies without --force), applied before
// anything changes so a node is promoted whole or not at all. md is the metadata read from the
// local component, nil when the status already tells (a primary or a secondary reads its own).
func promotionBlocker(st statusEntry, mdInconsistent bool) string {
	switch {
	case st.Error != "":
		return st.Error
	case st.Role == RolePrimary.String():
		return ""
	case st.SplitBrain:
		return "a split-brain with the peer is unresolved (hast split-brain / hast resolve)"
	case st.Inconsistent || mdInconsistent:
		return "this copy is inconsistent: a synchronisation from the peer did not finish"
	}
	return ""
}

type failoverCmd struct {
	cli       *CLI
	cfg       *config.Config
	cl        *Client
	node      string
	up, down  string
	logFile   string
	sys       *syslog.Writer
	logCopy   *os.File
	logOutput io.Writer
	// outdateAfter: a secondary disconnected from its primary for longer is not promoted (the
	// primary may have acknowledged writes alone since).
	outdateAfter time.Duration
	// peerWait: how long MASTER waits for a primary still alive on the replication link to go
	// away (a planned switchover demoting it) before refusing.
	peerWait time.Duration
	state    string // prefix of the files that remember things between runs
}

// refusedHold is how long a refused promotion keeps `check` failing, so keepalived gives the
// address up (FAULT) instead of holding it on a node that serves nothing.
const refusedHold = 10 * time.Second

func (c *CLI) failover(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(c.Stderr, failoverUsage)
		if len(args) == 0 {
			return exitErr(exUsage, errQuiet)
		}
		return nil
	}
	sub := args[0]
	if sub != "notify" && sub != "check" {
		fmt.Fprintf(c.Stderr, "hast failover: unknown command %q\n%s", sub, failoverUsage)
		return exitErr(exUsage, errQuiet)
	}
	cm := c.flags("failover")
	cm.fs.Usage = func() { fmt.Fprint(c.Stderr, failoverUsage); cm.fs.PrintDefaults() }
	f := &failoverCmd{cli: c}
	cm.fs.StringVar(&f.logFile, "log", "", "append what is done to this file (syslog and stderr always)")
	cm.fs.DurationVar(&f.outdateAfter, "outdate-after", 3*time.Second, "a secondary disconnected from its primary for longer must not be promoted (it may miss writes the primary acknowledged alone)")
	if sub == "notify" {
		cm.fs.StringVar(&f.up, "up", "", "shell command run after every resource is primary (assemble the pool, mount); its failure demotes again")
		cm.fs.StringVar(&f.down, "down", "", "shell command run before every demotion, also with the daemon down (unmount, stop the pool; must be idempotent); demotion goes ahead if it fails")
		cm.fs.DurationVar(&f.peerWait, "peer-wait", 3*time.Second, "how long MASTER waits for a primary still reachable on the replication link to demote before refusing")
	}
	if err := cm.parse(args[1:]); err != nil {
		return err
	}
	cfg, err := cm.load()
	if err != nil {
		return err
	}
	f.cfg, f.node = cfg, cfg.Node
	ctl, err := config.ParseAddr(cfg.Control, 0)
	if err != nil {
		return exitErr(exConfig, err)
	}
	f.state = ctl.Address + ".failover"
	f.openLog()
	defer f.closeLog()
	cl, err := NewClient(cfg.Control)
	if err != nil {
		return exitErr(exOSErr, err)
	}
	cl.hc.Timeout = 10 * time.Second
	f.cl = cl
	if sub == "check" {
		if cm.fs.NArg() != 0 {
			fmt.Fprint(c.Stderr, failoverUsage)
			return exitErr(exUsage, errQuiet)
		}
		cl.hc.Timeout = 2 * time.Second
		return f.check()
	}
	state, err := parseNotifyArgs(cm.fs.Args())
	if err != nil {
		fmt.Fprint(c.Stderr, failoverUsage)
		return exitErr(exUsage, err)
	}
	// keepalived forks a notify script per transition without waiting for the previous one;
	// transitions of one node are applied one at a time, in the order they take the lock.
	unlock, err := lockFile(f.state + ".lock")
	if err != nil {
		return exitErr(exOSErr, err)
	}
	defer unlock()
	if state == vrrpMaster {
		return f.promote()
	}
	return f.demote(state)
}

func (f *failoverCmd) openLog() {
	var ws []io.Writer
	ws = append(ws, f.cli.Stderr)
	if s, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_INFO, "hast-failover"); err == nil {
		f.sys = s
		ws = append(ws, s)
	}
	if f.logFile != "" {
		if lf, err := os.OpenFile(f.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			f.logCopy = lf
			ws = append(ws, lf)
		} else {
			fmt.Fprintf(f.cli.Stderr, "hast failover: log file: %v\n", err)
		}
	}
	f.logOutput = io.MultiWriter(ws...)
}

func (f *failoverCmd) closeLog() {
	if f.sys != nil {
		f.sys.Close()
	}
	if f.logCopy != nil {
		f.logCopy.Close()
	}
}

func (f *failoverCmd) logf(format string, a ...any) {
	fmt.Fprintf(f.logOutput, "%s hast failover [%s]: %s\n", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), f.node, fmt.Sprintf(format, a...))
}

// lockFile takes an exclusive lock on p (next to the control socket: one per node, so two nodes
// on one machine do not wait for each other).
func lockFile(p string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("failover lock: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		lf.Close()
		return nil, fmt.Errorf("failover lock %s: %w", p, err)
	}
	return func() { lf.Close() }, nil
}

// blockers returns, per resource in hast.conf order, why it must not be promoted ("" when it
// may be), and whether any resource is primary here now.
func (f *failoverCmd) blockers() (map[string]string, bool, error) {
	st, err := f.cl.Status()
	if err != nil {
		return nil, false, err
	}
	out := map[string]string{}
	anyPrimary := false
	for _, s := range st {
		md := false
		if s.Error == "" && s.Role != RolePrimary.String() && s.Role != RoleSecondary.String() {
			// Without a worker the daemon does not read the metadata; the file tells.
			if r := f.resource(s.Name); r != nil {
				m, err := readMetadataRO(r.Local, r.Name)
				if err != nil {
					out[s.Name] = fmt.Sprintf("read metadata: %v", err)
					continue
				}
				md = m.Inconsistent
			}
		}
		if s.Role == RolePrimary.String() {
			anyPrimary = true
		}
		out[s.Name] = promotionBlocker(s, md)
	}
	for _, r := range f.cfg.Resources {
		if _, ok := out[r.Name]; !ok {
			out[r.Name] = "the daemon does not know this resource (reload it)"
		}
	}
	return out, anyPrimary, nil
}

// outdated keeps, in a file, since when each secondary here has been disconnected from its
// primary, and names those disconnected for longer than outdateAfter: while the replication link
// is down and VRRP still sees the primary, the primary goes on acknowledging writes alone, so
// this copy falls behind and must not take over if the primary dies later (DRBD calls such a
// copy outdated). It becomes promotable again when it has reconnected and resynchronised.
func (f *failoverCmd) outdated(now time.Time) []string {
	st, err := f.cl.Status()
	if err != nil {
		return nil // reported by the caller
	}
	prev := map[string]time.Time{}
	if b, err := os.ReadFile(f.state + ".disconnected"); err == nil {
		json.Unmarshal(b, &prev)
	}
	next := map[string]time.Time{}
	var bad []string
	for _, s := range st {
		if s.Error != "" || s.Role != RoleSecondary.String() || s.Connected {
			continue
		}
		since, ok := prev[s.Name]
		if !ok {
			since = now
		}
		next[s.Name] = since
		if d := now.Sub(since); d > f.outdateAfter {
			bad = append(bad, fmt.Sprintf("%s: secondary disconnected from its primary for %v (> %v): it may miss writes the primary acknowledged alone", s.Name, d.Round(time.Second), f.outdateAfter))
		}
	}
	if b, err := json.Marshal(next); err == nil {
		writeFileAtomic(f.state+".disconnected", b)
	}
	return bad
}

func writeFileAtomic(p string, b []byte) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

type refusal struct {
	At  time.Time `json:"at"`
	Why string    `json:"why"`
}

// refusedAt reads the last refused promotion (zero time when none).
func (f *failoverCmd) refusedAt() (time.Time, string) {
	var r refusal
	if b, err := os.ReadFile(f.state + ".refused"); err == nil {
		json.Unmarshal(b, &r)
	}
	return r.At, r.Why
}

// peerAlive reports whether a TCP connection to resource r's remote address opens from its
// source address within a short time: the peer's daemon runs and the replication link works.
// A refused connection (node up, daemon down), a timeout or an unreachable network mean no.
func peerAlive(r *config.Resource) bool {
	if r.Remote == "" || r.Remote == "none" {
		return false
	}
	a, err := config.ParseAddr(r.Remote, config.DefaultPort)
	if err != nil || a.Network == "unix" {
		return false
	}
	laddr := ""
	if r.Source != "" {
		if sa, err := config.ParseAddr(r.Source, 0); err == nil {
			laddr = sa.Address
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := replicate.TCPDialer(ctx, a.Network, laddr, a.Address)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// waitPeerGone is the rule against two primaries when VRRP splits but replication does not:
// a secondary still connected to a primary that answers on the replication link is not
// promoted, whatever VRRP says. A planned switchover (the peer demoting itself) ends the
// connection within peerWait; a VRRP split does not. It returns the resource and the reason
// when promotion must not go on.
func (f *failoverCmd) waitPeerGone() (string, string) {
	deadline := time.Now().Add(f.peerWait)
	for {
		st, err := f.cl.Status()
		if err != nil {
			return "", err.Error()
		}
		alive := ""
		for _, s := range st {
			if s.Role != RoleSecondary.String() || !s.Connected {
				continue
			}
			if r := f.resource(s.Name); r != nil && peerAlive(r) {
				alive = s.Name
				break
			}
		}
		if alive == "" {
			return "", ""
		}
		if time.Now().After(deadline) {
			return alive, fmt.Sprintf("connected to a primary that still answers on the replication link after %v: the peer is alive and VRRP is split; not becoming a second primary", f.peerWait)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *failoverCmd) resource(name string) *config.Resource {
	for _, r := range f.cfg.Resources {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// check is keepalived's track_script: success means this node may hold the service address.
func (f *failoverCmd) check() error {
	bl, _, err := f.blockers()
	if err != nil {
		f.logf("check failed: %v", err)
		return exitErr(exUnavailable, errQuiet)
	}
	var bad []string
	for _, r := range f.cfg.Resources {
		if why := bl[r.Name]; why != "" {
			bad = append(bad, r.Name+": "+why)
		}
	}
	bad = append(bad, f.outdated(time.Now())...)
	if at, why := f.refusedAt(); !at.IsZero() && time.Since(at) < refusedHold {
		bad = append(bad, fmt.Sprintf("promotion refused %v ago: %s", time.Since(at).Round(time.Second), why))
	}
	if len(bad) > 0 {
		f.logf("check failed: %s", strings.Join(bad, "; "))
		return exitErr(exUnavailable, errQuiet)
	}
	return nil
}

// promote makes every resource primary, or none: a copy that must not be promoted keeps the
// whole node from taking over (the pool on top needs all of them).
func (f *failoverCmd) promote() error {
	start := time.Now()
	bl, _, err := f.blockers()
	if err != nil {
		f.logf("MASTER: cannot promote: %v", err)
		return exitErr(exUnavailable, errQuiet)
	}
	for _, r := range f.cfg.Resources {
		if why := bl[r.Name]; why != "" {
			return f.refuse(r.Name, why, nil)
		}
	}
	if out := f.outdated(time.Now()); len(out) > 0 {
		name, why, _ := strings.Cut(out[0], ": ")
		return f.refuse(name, why, nil)
	}
	if name, why := f.waitPeerGone(); why != "" {
		return f.refuse(name, why, nil)
	}
	var done []string
	for _, r := range f.cfg.Resources {
		res, err := f.cl.SetRole("primary", false, r.Name)
		if err == nil && len(res) == 1 && res[0].Error != "" {
			err = errors.New(res[0].Error)
		}
		if err != nil {
			return f.refuse(r.Name, err.Error(), done)
		}
		done = append(done, r.Name)
		f.logf("MASTER: %s is primary", r.Name)
	}
	if f.up != "" {
		if err := f.shell("up", f.up); err != nil {
			f.logf("MASTER: --up failed (%v): demoting again", err)
			f.setSecondary(done)
			return exitErr(exSoftware, errQuiet)
		}
	}
	os.Remove(f.state + ".refused")
	f.logf("MASTER: %d resource(s) primary in %v", len(done), time.Since(start).Round(time.Millisecond))
	return nil
}

// refuse reports a promotion refused because of resource name, undoes the promotions already
// made and runs hast.conf's exec hook with the event failover-refused.
func (f *failoverCmd) refuse(name, why string, promoted []string) error {
	f.logf("MASTER: refusing to promote this node: %s: %s", name, why)
	if b, err := json.Marshal(refusal{At: time.Now(), Why: name + ": " + why}); err == nil {
		writeFileAtomic(f.state+".refused", b)
	}
	if len(promoted) > 0 {
		f.setSecondary(promoted)
	}
	if r := f.resource(name); r != nil && r.Exec != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, r.Exec, "failover-refused", name, why)
		cmd.Args[0] = filepath.Base(r.Exec)
		if out, err := cmd.CombinedOutput(); err != nil {
			f.logf("hook %s failed: %v: %s", r.Exec, err, strings.TrimSpace(string(out)))
		}
	}
	return exitErr(exSoftware, errQuiet)
}

// demote runs --down and makes every resource secondary. Forced: the address has left (or is
// leaving) this node, and a primary without the address is how two primaries happen. --down
// runs every time, also when the daemon does not answer (the pool on top of a dead daemon must
// be stopped too), so it must be idempotent.
func (f *failoverCmd) demote(state vrrpState) error {
	if f.down != "" {
		if err := f.shell("down", f.down); err != nil {
			f.logf("%s: --down failed (%v); demoting anyway", state, err)
		}
	}
	var names []string
	for _, r := range f.cfg.Resources {
		names = append(names, r.Name)
	}
	if !f.setSecondary(names) {
		return exitErr(exSoftware, errQuiet)
	}
	f.logf("%s: %d resource(s) secondary", state, len(names))
	return nil
}

func (f *failoverCmd) setSecondary(names []string) bool {
	ok := true
	for _, n := range names {
		res, err := f.cl.SetRole("secondary", true, n)
		if err == nil && len(res) == 1 && res[0].Error != "" {
			err = errors.New(res[0].Error)
		}
		if err != nil {
			f.logf("demote %s: %v", n, err)
			ok = false
		}
	}
	return ok
}

func (f *failoverCmd) shell(what, command string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	out, err := cmd.CombinedOutput()
	if len(out) > 0 {
		f.logf("%s: %s", what, strings.TrimSpace(string(out)))
	}
	return err
}
