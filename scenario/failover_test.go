package scenario

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hast/appliance"
	"hast/internal/ackcheck"
	"hast/internal/faultnet"
	"hast/nbd"
)

// The failover scenarios: the tutorial's CARP section on Linux. Each node runs the daemon and
// Debian's keepalived (VRRPv3, advert_int 0.3, nopreempt, `hast failover check` as track_script,
// `hast failover notify` as notify script); a client namespace on the same bridge writes through
// the NBD export at the service address with the acknowledged-write checker, and follows the
// address to whichever node holds it. docs/failover.md reports the times measured here.

const (
	nbdPort = 10809
	// clientTimeout is how long the client waits for one request before it gives up on the
	// connection and dials the service address again (qemu's and the kernel's NBD clients have
	// such a timeout too).
	clientTimeout = time.Second
)

// failoverFault is what happens to hast1, the primary, in a case.
type failoverFault int

const (
	// killNode: SIGKILL of hast1's daemon and keepalived. keepalived leaves its address on the
	// interface; the test removes it, as the node's power loss would.
	killNode failoverFault = iota
	// isolateNode: both of hast1's links silently cut (replication and the segment); both
	// processes keep running. The test then powers the isolated node off (SIGKILL, address
	// removed) and heals the links before it rejoins.
	isolateNode
	// killDaemon: SIGKILL of hast1's daemon only; keepalived's track_script notices.
	killDaemon
)

func (f failoverFault) String() string {
	return [...]string{"kill-node", "isolate-node", "kill-daemon"}[f]
}

func (f failoverFault) what() string {
	return [...]string{
		"keepalived failover: SIGKILL of primary's daemon and keepalived",
		"keepalived failover: primary's links silently cut",
		"keepalived failover: SIGKILL of primary's daemon only (track_script)",
	}[f]
}

func requireKeepalived(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("keepalived")
	if err != nil {
		t.Fatalf("keepalived is not on PATH: the failover scenarios need Debian's keepalived; install it with `apt-get install -y keepalived` (scripts/test.sh does)")
	}
	return p
}

// vrrpNode is one node's keepalived.
type vrrpNode struct {
	i      int
	ns     string
	dir    string
	conf   string
	cmd    *exec.Cmd
	exited chan struct{}
}

type failoverEnv struct {
	*env
	seg   *faultnet.Segment
	vip   string
	kbin  string
	vrrp  [2]*vrrpNode
	nodes [2]*appliance.Node
}

func newFailoverEnv(t *testing.T, mode string) *failoverEnv {
	t.Helper()
	kbin := requireKeepalived(t)
	becomeSubreaper(t)
	e := newEnv(t, envOptions{mode: mode})
	seg, err := e.net.Segment()
	if err != nil {
		t.Fatal(err)
	}
	f := &failoverEnv{env: e, seg: seg, vip: seg.Addr(10), kbin: kbin, nodes: [2]*appliance.Node{e.h1, e.h2}}
	for i, n := range f.nodes {
		e.extra[n] = []string{"--nbd", fmt.Sprintf("tcp://0.0.0.0:%d", nbdPort), "--nbd-allow", seg.Subnet}
		v := &vrrpNode{i: i, ns: e.net.NS[i], dir: n.Dir}
		v.conf = filepath.Join(n.Dir, "keepalived.conf")
		hast := fmt.Sprintf("%s failover %%s -c %s --node %s --log %s", hastBin, e.c.Conf, n.Name, filepath.Join(n.Dir, "failover.log"))
		// The pool hooks stand for mdadm --assemble + mount and umount + mdadm --stop: a file
		// that exists while the node's "pool" is up.
		up, down := filepath.Join(n.Dir, "pool-up.sh"), filepath.Join(n.Dir, "pool-down.sh")
		for p, body := range map[string]string{up: "touch " + f.poolFile(i), down: "rm -f " + f.poolFile(i)} {
			if err := os.WriteFile(p, []byte("#!/bin/sh\nset -e\n"+body+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		notify := fmt.Sprintf(hast, "notify") + " --up " + up + " --down " + down
		conf := fmt.Sprintf(`global_defs {
	router_id %[1]s
	script_user root
	vrrp_version 3
}
vrrp_script hast_check {
	script "%[2]s"
	interval 1
	timeout 3
	fall 1
	rise 2
}
vrrp_instance hast {
	state BACKUP
	interface %[3]s
	virtual_router_id 51
	priority 100
	advert_int 0.3
	nopreempt
	garp_master_refresh 1
	virtual_ipaddress {
		%[4]s/24 dev %[3]s
	}
	track_script {
		hast_check
	}
	notify "%[5]s"
}
`, n.Name, fmt.Sprintf(hast, "check"), seg.Link[i], f.vip, notify)
		if err := os.WriteFile(v.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		f.vrrp[i] = v
	}
	t.Cleanup(func() {
		for _, v := range f.vrrp {
			f.killVRRP(v)
		}
		if t.Failed() {
			for _, v := range f.vrrp {
				b, _ := os.ReadFile(filepath.Join(v.dir, "keepalived.log"))
				fl, _ := os.ReadFile(filepath.Join(v.dir, "failover.log"))
				t.Logf("hast%d keepalived log:\n%s\nhast%d failover log:\n%s", v.i+1, tail(b), v.i+1, tail(fl))
			}
		}
	})
	return f
}

// poolFile exists while node i's notify hooks say its pool is up.
func (f *failoverEnv) poolFile(i int) string { return filepath.Join(f.nodes[i].Dir, "pool-is-up") }

func (f *failoverEnv) poolUp(i int) bool {
	_, err := os.Stat(f.poolFile(i))
	return err == nil
}

func tail(b []byte) string {
	if len(b) > 5000 {
		b = b[len(b)-5000:]
	}
	return string(b)
}

// startVRRP runs keepalived (VRRP only, in the foreground) in node i's namespace.
func (f *failoverEnv) startVRRP(i int) {
	f.t.Helper()
	v := f.vrrp[i]
	lf, err := os.OpenFile(filepath.Join(v.dir, "keepalived.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", v.ns, f.kbin, "--dont-fork", "--log-console", "--log-detail", "--vrrp",
		"-f", v.conf, "-p", filepath.Join(v.dir, "keepalived.pid"), "-r", filepath.Join(v.dir, "vrrp.pid"), "-c", filepath.Join(v.dir, "checkers.pid"))
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		f.t.Fatalf("start keepalived: %v", err)
	}
	v.cmd, v.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); lf.Close(); close(v.exited) }()
}

// killVRRP SIGKILLs node v's keepalived: the VRRP child first (it would otherwise be told to
// stop by its parent's death, and resign cleanly), then the parent.
func (f *failoverEnv) killVRRP(v *vrrpNode) {
	if v.cmd == nil {
		return
	}
	child := 0
	if b, err := os.ReadFile(filepath.Join(v.dir, "vrrp.pid")); err == nil {
		var pid int
		if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 1 && isChildOf(pid, v.cmd.Process.Pid) {
			syscall.Kill(pid, syscall.SIGKILL)
			child = pid
		}
	}
	v.cmd.Process.Kill()
	<-v.exited
	v.cmd = nil
	if child != 0 {
		// The child, orphaned, is ours now (subreaper): reap it, or its zombie would make the
		// next keepalived on this node think one is still running.
		var ws unix.WaitStatus
		unix.Wait4(child, &ws, 0, nil)
	}
}

var subreaper sync.Once

// becomeSubreaper makes this process the parent of orphans of its descendants, so the VRRP
// child of a SIGKILLed keepalived can be reaped here (PID 1 of a container may never reap it).
func becomeSubreaper(t *testing.T) {
	subreaper.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
		}
	})
}

// isChildOf reports whether process pid's parent is ppid (a pid file may be stale).
func isChildOf(pid, ppid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if j := strings.LastIndexByte(s, ')'); j >= 0 {
		var state string
		var pp int
		if _, err := fmt.Sscan(s[j+1:], &state, &pp); err == nil {
			return pp == ppid
		}
	}
	return false
}

// hasVIP reports whether node i has the service address configured.
func (f *failoverEnv) hasVIP(i int) bool {
	out, err := exec.Command("ip", "-n", f.net.NS[i], "-o", "addr", "show", "dev", f.seg.Link[i]).CombinedOutput()
	if err != nil {
		f.t.Fatalf("ip addr in %s: %v: %s", f.net.NS[i], err, out)
	}
	return strings.Contains(string(out), " "+f.vip+"/")
}

var vrrpStateRE = regexp.MustCompile(`Entering (MASTER|BACKUP|FAULT) STATE`)

// vrrpState is the last state node i's keepalived logged entering.
func (f *failoverEnv) vrrpState(i int) string {
	b, _ := os.ReadFile(filepath.Join(f.vrrp[i].dir, "keepalived.log"))
	m := vrrpStateRE.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return ""
	}
	return string(m[len(m)-1][1])
}

func (f *failoverEnv) waitFor(what string, timeout time.Duration, cond func() bool) time.Time {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: not reached after %v\nhast1: %s\nhast2: %s", what, timeout, f.c.LogTail(f.h1), f.c.LogTail(f.h2))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Now()
}

// follower is the client: an ackcheck.Target that writes through the NBD export at the service
// address and, when a request fails or hangs for clientTimeout, dials the address again and
// repeats the request (as qemu's NBD client does with reconnect-delay). It records when each
// write was acknowledged and on which connection.
type follower struct {
	ns, addr string

	mu   sync.Mutex
	cur  *nbd.Client
	gen  int               // connections made so far
	born map[int]time.Time // when each connection was made
	acks []ack
	ctx  context.Context
}

type ack struct {
	at  time.Time
	gen int
}

func (fl *follower) client() (*nbd.Client, int, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	for fl.cur == nil {
		if fl.ctx.Err() != nil {
			return nil, 0, fl.ctx.Err()
		}
		var c *nbd.Client
		err := faultnet.InNetns(fl.ns, func() error {
			ctx, cancel := context.WithTimeout(fl.ctx, 500*time.Millisecond)
			defer cancel()
			var err error
			c, err = nbd.Dial(ctx, "tcp", fl.addr, res)
			return err
		})
		if err != nil {
			// Nobody has the address yet, or its holder is not primary yet.
			fl.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			fl.mu.Lock()
			continue
		}
		fl.cur = c
		fl.gen++
		fl.born[fl.gen] = time.Now()
	}
	return fl.cur, fl.gen, nil
}

// broken drops connection gen (if it is still the current one) without waiting for it.
func (fl *follower) broken(gen int) {
	fl.mu.Lock()
	c := fl.cur
	if fl.gen != gen || c == nil {
		fl.mu.Unlock()
		return
	}
	fl.cur = nil
	fl.mu.Unlock()
	c.Abort()
	c.Close()
}

func (fl *follower) do(op func(c *nbd.Client) error) error {
	for {
		c, gen, err := fl.client()
		if err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() { done <- op(c) }()
		select {
		case err = <-done:
		case <-time.After(clientTimeout):
			fl.broken(gen)
			err = <-done
			if err == nil {
				err = errors.New("timed out")
			}
		}
		if err == nil {
			fl.mu.Lock()
			fl.acks = append(fl.acks, ack{time.Now(), gen})
			fl.mu.Unlock()
			return nil
		}
		fl.broken(gen)
	}
}

func (fl *follower) WriteAt(p []byte, off int64) (int, error) {
	err := fl.do(func(c *nbd.Client) error { _, err := c.WriteAt(p, off); return err })
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (fl *follower) Flush() error { return fl.do(func(c *nbd.Client) error { return c.Flush() }) }

func (fl *follower) close() {
	fl.mu.Lock()
	c := fl.cur
	fl.cur = nil
	fl.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// afterFault returns the first acknowledgement on a connection made after t0, and the write
// stall the client saw: the longest gap between acknowledgements from its last one before t0 to
// that first one on a new connection (requests in flight may still complete on the old one).
func (fl *follower) afterFault(t0 time.Time) (first time.Time, stall time.Duration) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	var last time.Time
	for _, a := range fl.acks {
		if !a.at.Before(t0) && !last.IsZero() && a.at.Sub(last) > stall {
			stall = a.at.Sub(last)
		}
		last = a.at
		if !a.at.Before(t0) && fl.born[a.gen].After(t0) {
			return a.at, stall
		}
	}
	return time.Time{}, stall
}

// TestKeepalivedFailover: under the checker's writes through the service address, hast1 (the
// primary, holding the address) fails in one of three ways; keepalived moves the address to
// hast2, whose notify script promotes it; the client follows; nothing acknowledged is lost;
// hast1 comes back, keepalived makes it secondary and it is resynchronised.
func TestKeepalivedFailover(t *testing.T) {
	var rows []failoverRow // the subtests run one after the other
	cases := []struct {
		fault failoverFault
		mode  string
	}{
		{killNode, "fullsync"}, {killNode, "memsync"},
		{isolateNode, "fullsync"}, {isolateNode, "memsync"},
		// async loses what had not reached hast2 when hast1's node was lost: its window.
		{isolateNode, async},
		{killDaemon, "fullsync"}, {killDaemon, "memsync"},
	}
	for _, c := range cases {
		t.Run(c.fault.String()+"/"+c.mode, func(t *testing.T) { rows = append(rows, keepalivedFailover(t, c.fault, c.mode)) })
	}
	var b strings.Builder
	b.WriteString("| failure of the primary | mode | address on hast2 | first write on hast2 | longest client write stall | acknowledged writes lost |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %v | %v | %v | %s |\n", r.fault, r.mode, r.vip.Round(time.Millisecond), r.first.Round(time.Millisecond), r.stall.Round(time.Millisecond), r.lost)
	}
	t.Logf("failover times (from the failure):\n%s", b.String())
}

func keepalivedFailover(t *testing.T, fault failoverFault, mode string) failoverRow {
	f := newFailoverEnv(t, mode)
	e := f.env
	f.pairByVRRP()
	fl, chk, ld := f.startClient()
	e.waitAcked(chk, 1000, loadTimeout)
	if st := e.status(e.h1); !st.Connected || st.Syncing {
		t.Fatalf("hast1 before the fault: connected %v, syncing %v", st.Connected, st.Syncing)
	}

	if fault == isolateNode {
		// The replication link first: the failure that moves the address (and that t0 marks)
		// is the cut of the client segment, one nft command. With both links cut a few
		// milliseconds apart, hast1 cannot acknowledge anything alone in fullsync or memsync
		// (its peer timeout is seconds).
		if err := e.net.Cut(faultnet.Silent); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	switch fault {
	case killNode:
		f.killVRRP(f.vrrp[0])
		e.c.Kill(e.h1, syscall.SIGKILL)
		if !f.hasVIP(0) {
			t.Fatal("SIGKILLed keepalived removed its address: the duplicate-address hazard the docs describe is gone?")
		}
		f.delVIP(0)
	case isolateNode:
		if err := f.seg.Isolate(0); err != nil {
			t.Fatal(err)
		}
	case killDaemon:
		e.c.Kill(e.h1, syscall.SIGKILL)
	}
	tVIP := f.waitFor("hast2 holds the address", 30*time.Second, func() bool { return f.hasVIP(1) })
	e.waitStatus(e.h2, "hast2 primary", 30*time.Second, func(s appliance.ResourceStatus) bool { return s.Role == "primary" })
	lostAt := map[uint64]bool{} // async: what hast2 lacks right after the failover
	var failRep *ackcheck.Report
	if mode == async {
		// The client pauses (its writes in flight complete on hast2) so the loss is seen
		// before later writes overwrite it.
		ld.stop()
		v2 := e.volume(e.h2)
		failRep = e.verify(chk, "hast2 right after the failover", v2)
		v2.Close()
		if len(failRep.Corrupt) > 0 {
			t.Fatal(failRep.Err())
		}
		for _, l := range failRep.Lost {
			lostAt[l.Seq] = true
		}
		ld = startLoad(chk, fl)
	}
	e.waitAcked(chk, 300, loadTimeout)
	f.waitFor("hast2's pool up (--up ran)", 10*time.Second, func() bool { return f.poolUp(1) })
	first, stall := fl.afterFault(t0)
	if first.IsZero() {
		t.Fatal("no write acknowledged on a connection made after the fault")
	}
	if fault == killDaemon {
		// keepalived on hast1 is alive: its check failed and it gave the address up.
		f.waitFor("hast1's keepalived in FAULT", 10*time.Second, func() bool { return f.vrrpState(0) == "FAULT" })
		if f.hasVIP(0) {
			t.Fatal("hast1 in FAULT still holds the address")
		}
		f.waitFor("hast1's pool down (--down ran with the daemon dead)", 10*time.Second, func() bool { return !f.poolUp(0) })
	}
	t.Logf("%s/%s: address on hast2 after %v, first write acknowledged by hast2 after %v, longest write stall %v",
		fault, mode, tVIP.Sub(t0).Round(time.Millisecond), first.Sub(t0).Round(time.Millisecond), stall.Round(time.Millisecond))

	// hast1 comes back. The isolated node is powered off first (its keepalived, still MASTER
	// behind the cut, would otherwise contend for the address when the links return).
	if fault == isolateNode {
		f.killVRRP(f.vrrp[0])
		e.c.Kill(e.h1, syscall.SIGKILL)
		f.delVIP(0)
		if err := f.seg.Rejoin(); err != nil {
			t.Fatal(err)
		}
		if err := e.net.Heal(); err != nil {
			t.Fatal(err)
		}
	}
	t1 := time.Now()
	e.start(e.h1)
	if fault != killDaemon {
		f.startVRRP(0)
	}
	// keepalived (restarted, or recovering from FAULT) makes hast1 secondary; hast2 resyncs it.
	e.waitStatus(e.h1, "hast1 secondary", 30*time.Second, func(s appliance.ResourceStatus) bool { return s.Role == "secondary" })
	e.waitStatus(e.h2, "hast2 connected to hast1", 30*time.Second, func(s appliance.ResourceStatus) bool { return s.Connected })
	st := ld.stop()
	fl.close()
	t.Logf("load: %+v", st)
	e.waitComplete(e.h2)
	took := time.Since(t1)
	if f.hasVIP(0) || !f.hasVIP(1) {
		t.Fatalf("after the rejoin: address on hast1 %v, on hast2 %v; want hast2 only", f.hasVIP(0), f.hasVIP(1))
	}
	f.waitFor("hast1's keepalived in BACKUP", 20*time.Second, func() bool { return f.vrrpState(0) == "BACKUP" })
	if f.poolUp(0) || !f.poolUp(1) {
		t.Fatalf("after the rejoin: pool up on hast1 %v, on hast2 %v; want hast2 only", f.poolUp(0), f.poolUp(1))
	}

	vol := e.volume(e.h2)
	defer vol.Close()
	final := e.verify(chk, "hast2 after the rejoin", vol)
	if len(final.Corrupt) > 0 || mode != async {
		e.requireNoLoss(final, "after the failover and rejoin")
	}
	for _, l := range final.Lost {
		if !lostAt[l.Seq] {
			t.Fatalf("write %d at %d was there after the failover and is lost after the rejoin", l.Seq, l.Offset)
		}
	}
	if failRep == nil {
		failRep = final
	}
	e.compareLocal()
	// Identical copies: hast1's file tells the same story as hast2's volume.
	if r1 := e.verifyLocal(chk, e.h1); len(r1.Lost) != len(final.Lost) || len(r1.Corrupt) != 0 {
		t.Fatalf("hast1's component after the resync: %v; hast2's volume: %v", r1, final)
	}
	pst := e.status(e.h2)
	record(row{order: 2, scenario: fault.what(), mode: mode, acked: chk.Stats().Acked, lost: lostCell(failRep),
		resynced: bytesStr(int64(synced(pst))), took: took.Round(time.Millisecond).String()})
	return failoverRow{fault: fault, mode: mode, vip: tVIP.Sub(t0), first: first.Sub(t0), stall: stall, lost: lostCell(failRep)}
}

// pairByVRRP starts both daemons and keepalived the way an operator would: hast1's keepalived
// alone first, which takes the address, and its notify script promotes hast1. Then hast2's,
// which stays BACKUP (nopreempt, equal priority) and is made secondary; its check fails (FAULT)
// until the initial synchronisation is done.
func (f *failoverEnv) pairByVRRP() {
	f.t.Helper()
	e := f.env
	e.start(e.h1)
	e.start(e.h2)
	f.startVRRP(0)
	f.waitFor("hast1 holds the address", 20*time.Second, func() bool { return f.hasVIP(0) })
	e.waitStatus(e.h1, "hast1 primary", 20*time.Second, func(s appliance.ResourceStatus) bool { return s.Role == "primary" })
	f.startVRRP(1)
	e.waitComplete(e.h1)
	f.waitFor("hast2's keepalived in BACKUP after the sync", 20*time.Second, func() bool { return f.vrrpState(1) == "BACKUP" })
	if st := e.status(e.h2); st.Role != "secondary" {
		f.t.Fatalf("hast2 is %s, want secondary", st.Role)
	}
}

// startClient starts the checker's writes from the client namespace through the service
// address.
func (f *failoverEnv) startClient() (*follower, *ackcheck.Checker, *load) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fl := &follower{ns: f.seg.NS, addr: fmt.Sprintf("%s:%d", f.vip, nbdPort), born: map[int]time.Time{}, ctx: ctx}
	f.t.Cleanup(fl.close)
	f.t.Cleanup(cancel)
	v0 := f.volume(f.h1)
	size := v0.Size()
	v0.Close()
	chk := f.checker(size)
	ld := startLoad(chk, fl)
	f.t.Cleanup(func() { ld.stop() }) // first of these (cleanups run last-in first-out)
	return fl, chk, ld
}

// delVIP removes the service address from node i, as the node's power loss would.
func (f *failoverEnv) delVIP(i int) {
	f.t.Helper()
	if out, err := exec.Command("ip", "-n", f.net.NS[i], "addr", "del", f.vip+"/24", "dev", f.seg.Link[i]).CombinedOutput(); err != nil {
		f.t.Fatalf("remove the service address from hast%d: %v: %s", i+1, err, out)
	}
}

type failoverRow struct {
	fault             failoverFault
	mode              string
	vip, first, stall time.Duration
	lost              string
}

// newLoadedPair is a fullsync pair made by keepalived with the client writing through the
// service address (500 writes acknowledged).
func newLoadedPair(t *testing.T) (*failoverEnv, *follower, *ackcheck.Checker, *load) {
	f := newFailoverEnv(t, "fullsync")
	f.pairByVRRP()
	fl, chk, ld := f.startClient()
	f.waitAcked(chk, 500, loadTimeout)
	return f, fl, chk, ld
}

// failoverLog counts the lines of node i's `hast failover` log that contain s.
func (f *failoverEnv) failoverLog(i int, s string) int {
	b, _ := os.ReadFile(filepath.Join(f.vrrp[i].dir, "failover.log"))
	return strings.Count(string(b), s)
}

// TestKeepalivedFencing: the two partial failures that would make two primaries, or a primary
// with stale data, if VRRP alone decided (docs/failover.md, "Never two primaries").
//
// replication-cut: the replication link breaks while VRRP still sees both nodes. hast1 stays
// MASTER and primary and acknowledges writes alone; hast2's check marks its copy outdated and
// keepalived puts it in FAULT. When hast1 then dies, hast2 does not take over with its stale
// copy; hast1 comes back, takes the address again and resynchronises hast2; nothing
// acknowledged is lost.
//
// vrrp-split: hast1 is cut off the client segment (VRRP split) while replication works. hast2
// becomes VRRP MASTER, but its notify script finds hast1 alive as primary on the replication
// link and refuses; its check then fails and keepalived gives the address up. When the segment
// heals, hast1 still holds the address and serves; nothing acknowledged is lost.
//
// isolated-primary-returns: hast1 loses both links but stays up; hast2 takes over. When the
// links return, both are VRRP masters; the tie goes to the higher address (hast2), hast1's notify
// demotes it, and HAST's counters resync it from hast2. No split-brain: clients could not reach
// hast1 while it was cut off, so it acknowledged nothing alone.
func TestKeepalivedFencing(t *testing.T) {
	t.Run("replication-cut", func(t *testing.T) {
		f, fl, chk, ld := newLoadedPair(t)
		e := f.env
		if err := e.net.Cut(faultnet.LinkDown); err != nil {
			t.Fatal(err)
		}
		e.waitStatus(e.h1, "hast1 disconnected", 30*time.Second, func(s appliance.ResourceStatus) bool { return !s.Connected })
		before := chk.Stats().Acked
		e.waitAcked(chk, 500, loadTimeout) // acknowledged by hast1 alone
		f.waitFor("hast2's keepalived in FAULT (outdated)", 30*time.Second, func() bool { return f.vrrpState(1) == "FAULT" })
		if n := f.failoverLog(1, "secondary disconnected from its primary"); n == 0 {
			t.Fatal("hast2's FAULT is not the outdated rule")
		}
		t.Logf("writes acknowledged by hast1 alone before it dies: at least %d", chk.Stats().Acked-before)

		f.killVRRP(f.vrrp[0])
		e.c.Kill(e.h1, syscall.SIGKILL)
		f.delVIP(0)
		// Progress, not time: hast2's check fails three more times with hast1 gone.
		checks := f.failoverLog(1, "check failed")
		f.waitFor("three more failed checks on hast2", 30*time.Second, func() bool { return f.failoverLog(1, "check failed") >= checks+3 })
		if st := e.status(e.h2); st.Role != "secondary" || f.hasVIP(1) || f.vrrpState(1) != "FAULT" {
			t.Fatalf("hast2 with an outdated copy: role %s, address %v, VRRP %s; want secondary, none, FAULT", st.Role, f.hasVIP(1), f.vrrpState(1))
		}

		// hast1 returns: it is the only node that may take the address.
		if err := e.net.Heal(); err != nil {
			t.Fatal(err)
		}
		e.start(e.h1)
		f.startVRRP(0)
		f.waitFor("hast1 holds the address again", 30*time.Second, func() bool { return f.hasVIP(0) })
		e.waitStatus(e.h1, "hast1 primary and connected", 30*time.Second, func(s appliance.ResourceStatus) bool { return s.Role == "primary" && s.Connected })
		e.waitAcked(chk, 300, loadTimeout)
		ld.stop()
		fl.close()
		e.waitComplete(e.h1)
		f.waitFor("hast2's keepalived back in BACKUP", 30*time.Second, func() bool { return f.vrrpState(1) == "BACKUP" })
		vol := e.volume(e.h1)
		defer vol.Close()
		e.requireNoLoss(e.verify(chk, "hast1 after it came back", vol), "replication cut, then the primary died")
		e.compareLocal()
	})

	t.Run("vrrp-split", func(t *testing.T) {
		f, fl, chk, ld := newLoadedPair(t)
		e := f.env
		if err := f.seg.Isolate(0); err != nil {
			t.Fatal(err)
		}
		f.waitFor("hast2 refuses to promote", 30*time.Second, func() bool { return f.failoverLog(1, "VRRP is split") > 0 })
		f.waitFor("hast2's keepalived in FAULT", 30*time.Second, func() bool { return f.vrrpState(1) == "FAULT" })
		if f.hasVIP(1) {
			t.Fatal("hast2 in FAULT holds the address")
		}
		s1, s2 := e.status(e.h1), e.status(e.h2)
		if s1.Role != "primary" || s2.Role != "secondary" || !s1.Connected {
			t.Fatalf("during the VRRP split: hast1 %s (connected %v), hast2 %s; want one primary, connected", s1.Role, s1.Connected, s2.Role)
		}
		if err := f.seg.Rejoin(); err != nil {
			t.Fatal(err)
		}
		healed := time.Now()
		before := chk.Stats().Acked
		e.waitAcked(chk, 300, loadTimeout)
		t.Logf("client writing again through hast1 %v after the segment healed", time.Since(healed).Round(time.Millisecond))
		f.waitFor("hast2's keepalived back in BACKUP", 30*time.Second, func() bool { return f.vrrpState(1) == "BACKUP" })
		ld.stop()
		fl.close()
		if !f.hasVIP(0) || f.hasVIP(1) || e.status(e.h1).Role != "primary" || e.status(e.h2).Role != "secondary" {
			t.Fatal("after the split: hast1 should hold the address and be primary, hast2 secondary")
		}
		t.Logf("writes after the segment healed: %d", chk.Stats().Acked-before)
		e.waitComplete(e.h1)
		vol := e.volume(e.h1)
		defer vol.Close()
		e.requireNoLoss(e.verify(chk, "hast1 after the split", vol), "VRRP split")
		e.compareLocal()
	})

	t.Run("isolated-primary-returns", func(t *testing.T) {
		f, fl, chk, ld := newLoadedPair(t)
		e := f.env
		if err := f.seg.Isolate(0); err != nil {
			t.Fatal(err)
		}
		if err := e.net.Cut(faultnet.Silent); err != nil {
			t.Fatal(err)
		}
		e.waitStatus(e.h2, "hast2 primary", 30*time.Second, func(s appliance.ResourceStatus) bool { return s.Role == "primary" })
		e.waitAcked(chk, 300, loadTimeout)
		// hast1, isolated but alive, is still MASTER and primary behind the cut.
		if s1 := e.status(e.h1); s1.Role != "primary" || !f.hasVIP(0) {
			t.Fatalf("isolated hast1: role %s, address %v; want primary, holding it", s1.Role, f.hasVIP(0))
		}
		if err := f.seg.Rejoin(); err != nil {
			t.Fatal(err)
		}
		if err := e.net.Heal(); err != nil {
			t.Fatal(err)
		}
		// Two masters with equal priorities: the higher address (hast2's) keeps the address,
		// hast1 is demoted by its notify and resynchronised from hast2.
		e.waitStatus(e.h1, "hast1 secondary", 30*time.Second, func(s appliance.ResourceStatus) bool { return s.Role == "secondary" })
		e.waitStatus(e.h2, "hast2 connected", 30*time.Second, func(s appliance.ResourceStatus) bool { return s.Connected })
		e.waitAcked(chk, 300, loadTimeout)
		ld.stop()
		fl.close()
		e.waitComplete(e.h2)
		// hast1's check fails while it is being resynchronised (and a little after a refusal):
		// FAULT until the track script next succeeds.
		f.waitFor("hast1's keepalived back in BACKUP", 30*time.Second, func() bool { return f.vrrpState(0) == "BACKUP" })
		if f.hasVIP(0) || !f.hasVIP(1) || f.vrrpState(0) != "BACKUP" {
			t.Fatalf("after the return: address on hast1 %v, on hast2 %v, hast1 VRRP %s", f.hasVIP(0), f.hasVIP(1), f.vrrpState(0))
		}
		if s1, s2 := e.status(e.h1), e.status(e.h2); s1.SplitBrain || s2.SplitBrain {
			t.Fatal("split-brain reported although hast1 acknowledged nothing alone")
		}
		vol := e.volume(e.h2)
		defer vol.Close()
		e.requireNoLoss(e.verify(chk, "hast2 after hast1 returned", vol), "isolated primary returned alive")
		e.compareLocal()
	})
}
