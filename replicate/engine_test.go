package replicate

import (
	"bytes"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/blockdev"
	"hast/internal/nv"
)

// testTarget is a secondary node as the acceptor sees it, for in-process tests.
type testTarget struct {
	cfg     Config
	dev     blockdev.Device
	mu      sync.Mutex
	session SecondarySlot
	events  chan Event
}

func (t *testTarget) Admit(net.IP, Link) (string, bool) { return "", false }

func (t *testTarget) Serve(c1, c2 net.Conn, version uint8, hello *nv.List) {
	t.mu.Lock()
	cfg, dev := t.cfg, t.dev
	t.mu.Unlock()
	t.session.Start(cfg, dev, c1, c2, version, hello, zerolog.Nop(), nil)
}

// setDev changes the device the next session uses.
func (t *testTarget) setDev(d blockdev.Device) {
	t.mu.Lock()
	t.dev = d
	t.mu.Unlock()
}

func (t *testTarget) stop() { t.session.Stop() }

type pairT struct {
	p       *Primary
	pdev    *blockdev.FaultDevice
	pmem    *blockdev.MemDevice
	smem    *blockdev.MemDevice
	sec     *testTarget
	ln      net.Listener
	pevents chan Event
}

const testDisk = 8 << 20

func newMem(t *testing.T) *blockdev.MemDevice {
	t.Helper()
	m := blockdev.NewMemDevice(testDisk, 512)
	if _, err := blockdev.Create(m, "r0", blockdev.CreateOptions{ExtentSize: 1 << 20, KeepDirty: 4}); err != nil {
		t.Fatal(err)
	}
	return m
}

// newPair starts a secondary behind an Acceptor and a primary connected to it. wrap may wrap
// the primary's device (to observe its I/O).
func newPair(t *testing.T, mode Mode, wrap func(blockdev.Device) blockdev.Device) *pairT {
	t.Helper()
	pt := &pairT{pmem: newMem(t), smem: newMem(t), pevents: make(chan Event, 64)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pt.ln = ln
	base := Config{Name: "r0", Mode: mode, Timeout: 3 * time.Second, Keepalive: time.Second, Reconnect: 100 * time.Millisecond, MetaFlush: true}
	pt.sec = &testTarget{cfg: base, dev: pt.smem, events: make(chan Event, 64)}
	acc := &Acceptor{Lookup: func(string) (Target, bool) { return pt.sec, true }, Known: func(net.IP) bool { return true }, Log: zerolog.Nop()}
	go acc.Serve(ln)
	pt.pdev = blockdev.NewFaultDevice(pt.pmem, 1)
	var dev blockdev.Device = pt.pdev
	if wrap != nil {
		dev = wrap(dev)
	}
	pc := base
	pc.Remote = ln.Addr().String()
	pc.OnEvent = func(e Event) {
		select {
		case pt.pevents <- e:
		default:
		}
	}
	p, err := OpenPrimary(pc, dev, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	pt.p = p
	t.Cleanup(func() {
		p.Close()
		pt.sec.stop()
		ln.Close()
	})
	pt.waitSynced(t)
	return pt
}

func (pt *pairT) waitSynced(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := pt.p.Status()
		if s.Connected && !s.Syncing && s.DirtyBytes == 0 && !s.Degraded {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not in sync: %+v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dataOf(t *testing.T, m *blockdev.MemDevice) []byte {
	t.Helper()
	md, err := blockdev.ReadMetadata(m, "r0")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, md.DataSize)
	if _, err := m.ReadAt(b, int64(md.LocalOff)); err != nil {
		t.Fatal(err)
	}
	return b
}

func localOff(t *testing.T, m *blockdev.MemDevice) int64 {
	t.Helper()
	md, err := blockdev.ReadMetadata(m, "r0")
	if err != nil {
		t.Fatal(err)
	}
	return int64(md.LocalOff)
}

func randBlock(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestReadFallsBackToPeerOnLocalError(t *testing.T) {
	pt := newPair(t, ModeFullsync, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	want := randBlock(rng, 64<<10)
	if _, err := pt.p.WriteAt(want, 1<<20); err != nil {
		t.Fatal(err)
	}
	id := pt.pdev.Inject(blockdev.Fault{Op: blockdev.OpRead})
	got := make([]byte, len(want))
	if _, err := pt.p.ReadAt(got, 1<<20); err != nil {
		t.Fatalf("read with a failing local disk: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read from the peer returned other data")
	}
	if pt.pdev.Fired(id) == 0 {
		t.Fatal("the local read was not attempted")
	}
	if s := pt.p.Status(); s.Stats.ReadErrors == 0 || s.Stats.RemoteReads == 0 {
		t.Fatalf("stats do not show the fallback: %+v", s.Stats)
	}
}

func TestLocalWriteErrorMaskedAndServedFromPeer(t *testing.T) {
	pt := newPair(t, ModeFullsync, nil)
	rng := rand.New(rand.NewPCG(3, 4))
	want := randBlock(rng, 32<<10)
	id := pt.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: localOff(t, pt.pmem) + 2<<20, Len: 1 << 20, Times: 1})
	if _, err := pt.p.WriteAt(want, 2<<20); err != nil {
		t.Fatalf("write should succeed on the peer: %v", err)
	}
	if pt.pdev.Fired(id) == 0 {
		t.Fatal("fault did not fire")
	}
	got := make([]byte, len(want))
	if _, err := pt.p.ReadAt(got, 2<<20); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after a failed local write: err %v, equal %v", err, bytes.Equal(got, want))
	}
	if !pt.p.Status().Degraded {
		t.Fatal("a resource whose local copy is stale must report degraded")
	}
}

func TestRemoteFailureLeavesExtentDirtyAndResyncs(t *testing.T) {
	pt := newPair(t, ModeFullsync, nil)
	// The secondary's disk refuses writes for a while: the write is acknowledged (local ok)
	// but its extent must stay dirty.
	sfault := blockdev.NewFaultDevice(pt.smem, 2)
	pt.sec.setDev(sfault)
	pt.sec.stop()
	id := sfault.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: localOff(t, pt.smem), Len: testDisk})
	pt.waitConnected(t)
	rng := rand.New(rand.NewPCG(5, 6))
	want := randBlock(rng, 16<<10)
	if _, err := pt.p.WriteAt(want, 5<<20); err != nil {
		t.Fatal(err)
	}
	if pt.p.Status().DirtyBytes == 0 {
		t.Fatal("extent of a write whose remote leg failed is clean")
	}
	sfault.Clear(id)
	// Reconnect so the dirty extent is synchronised.
	pt.sec.stop()
	pt.waitSynced(t)
	if !bytes.Equal(dataOf(t, pt.pmem), dataOf(t, pt.smem)) {
		t.Fatal("copies differ after resync")
	}
}

// reconnect ends the secondary's session and waits for the primary's next connection.
func (pt *pairT) reconnect(t *testing.T) {
	t.Helper()
	for len(pt.pevents) > 0 {
		<-pt.pevents
	}
	pt.sec.stop()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-pt.pevents:
			if e == EventConnect {
				pt.waitSynced(t)
				return
			}
		case <-deadline:
			t.Fatal("primary did not reconnect")
		}
	}
}

func (pt *pairT) waitConnected(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !pt.p.Status().Connected {
		if time.Now().After(deadline) {
			t.Fatal("primary did not reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// orderDevice checks, for every data write, that the extent's bit is set in the bitmap last
// written to the device and flushed: the ordering rule of hast-reference §8.2.
type orderDevice struct {
	blockdev.Device
	t        *testing.T
	mu       sync.Mutex
	written  []byte // last bitmap written
	flushed  []byte // last bitmap covered by a flush
	localOff int64
	extent   int64
	checked  int
	bad      int
}

func (o *orderDevice) WriteAt(p []byte, off int64) (int, error) {
	o.mu.Lock()
	switch {
	case off == blockdev.MetadataSize:
		o.written = append(o.written[:0], p...)
	case off >= o.localOff:
		for e := (off - o.localOff) / o.extent; e <= (off-o.localOff+int64(len(p))-1)/o.extent; e++ {
			o.checked++
			if o.flushed == nil || o.flushed[e>>3]&(1<<(e&7)) == 0 {
				o.bad++
			}
		}
	}
	o.mu.Unlock()
	return o.Device.WriteAt(p, off)
}

func (o *orderDevice) Flush() error {
	o.mu.Lock()
	w := append([]byte(nil), o.written...)
	o.mu.Unlock()
	err := o.Device.Flush()
	if err == nil && w != nil {
		o.mu.Lock()
		o.flushed = w
		o.mu.Unlock()
	}
	return err
}

func TestActivemapDurableBeforeData(t *testing.T) {
	var od *orderDevice
	pt := newPair(t, ModeMemsync, func(d blockdev.Device) blockdev.Device {
		md, err := blockdev.ReadMetadata(d, "r0")
		if err != nil {
			t.Fatal(err)
		}
		od = &orderDevice{Device: d, t: t, localOff: int64(md.LocalOff), extent: int64(md.ExtentSize)}
		return od
	})
	rng := rand.New(rand.NewPCG(7, 8))
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 9))
			for i := 0; i < 50; i++ {
				off := int64(r.IntN(testDisk/2)) &^ 4095
				if _, err := pt.p.WriteAt(randBlock(r, 8192), off); err != nil {
					t.Error(err)
					return
				}
			}
		}(rng.Uint64())
	}
	wg.Wait()
	od.mu.Lock()
	defer od.mu.Unlock()
	// The initial full sync writes to the secondary, not here, so only frontend writes count.
	if od.checked < 400 {
		t.Fatalf("only %d data writes observed", od.checked)
	}
	if od.bad != 0 {
		t.Fatalf("%d of %d data writes reached the disk before their extent was durably marked", od.bad, od.checked)
	}
}

func TestOnlineVerifyFindsAndRepairsDivergence(t *testing.T) {
	pt := newPair(t, ModeFullsync, nil)
	rng := rand.New(rand.NewPCG(11, 12))
	if _, err := pt.p.WriteAt(randBlock(rng, 256<<10), 3<<20); err != nil {
		t.Fatal(err)
	}
	// Silent corruption on the secondary, behind the engine's back.
	soff := localOff(t, pt.smem) + 3<<20 + 8192
	if _, err := pt.smem.WriteAt(bytes.Repeat([]byte{0x5a}, 512), soff); err != nil {
		t.Fatal(err)
	}
	if err := pt.p.Verify(0); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for pt.p.VerifyProgress().Running {
		if time.Now().After(deadline) {
			t.Fatal("verify did not finish")
		}
		time.Sleep(10 * time.Millisecond)
	}
	v := pt.p.VerifyProgress()
	if v.Error != "" || len(v.Mismatched) != 1 || v.Mismatched[0] != 3 || v.Done != v.Total {
		t.Fatalf("verify result %+v, want extent 3 mismatched and everything checked", v)
	}
	pt.waitSynced(t)
	if !bytes.Equal(dataOf(t, pt.pmem), dataOf(t, pt.smem)) {
		t.Fatal("verify did not repair the secondary")
	}
	// A second pass finds nothing.
	if err := pt.p.Verify(0); err != nil {
		t.Fatal(err)
	}
	for pt.p.VerifyProgress().Running {
		time.Sleep(10 * time.Millisecond)
	}
	if v := pt.p.VerifyProgress(); len(v.Mismatched) != 0 || v.Error != "" {
		t.Fatalf("second verify: %+v", v)
	}
}

// slowFlush delays Flush so a request can queue behind it on the secondary.
type slowFlush struct {
	blockdev.Device
	delay time.Duration
}

func (s *slowFlush) Flush() error {
	time.Sleep(s.delay)
	return s.Device.Flush()
}

// TestMemsyncReceivedWriteAppliedWhenSessionEnds: a memsync write acknowledged as "received"
// while it waited behind a FLUSH on the secondary must still reach the secondary's disk when the
// session ends before it was applied (the primary may already have completed it).
func TestMemsyncReceivedWriteAppliedWhenSessionEnds(t *testing.T) {
	pt := newPair(t, ModeMemsync, nil)
	pt.sec.setDev(&slowFlush{Device: pt.smem, delay: 500 * time.Millisecond})
	pt.reconnect(t)
	go pt.p.Flush()
	time.Sleep(50 * time.Millisecond) // the FLUSH is being applied on the secondary
	want := bytes.Repeat([]byte{0xc3}, 4096)
	if _, err := pt.p.WriteAt(want, 6<<20); err != nil {
		t.Fatal(err)
	}
	pt.sec.stop() // the session ends while the write waits behind the flush
	got := make([]byte, len(want))
	if _, err := pt.smem.ReadAt(got, localOff(t, pt.smem)+6<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("a write acknowledged as received was dropped when the session ended")
	}
}

// gatedWrites holds every WriteAt of the data area until release is closed.
type gatedWrites struct {
	blockdev.Device
	from    int64
	release chan struct{}
}

func (g *gatedWrites) WriteAt(p []byte, off int64) (int, error) {
	if off >= g.from {
		<-g.release
	}
	return g.Device.WriteAt(p, off)
}

// TestMemsyncAcksFramesThatArriveTogether: the secondary sends the early acks of requests that
// reached it in one read together, after the last of them; none may wait for its write. With
// every write held on the secondary's disk, 32 concurrent memsync writes must all complete.
func TestMemsyncAcksFramesThatArriveTogether(t *testing.T) {
	pt := newPair(t, ModeMemsync, nil)
	g := &gatedWrites{Device: pt.smem, from: localOff(t, pt.smem), release: make(chan struct{})}
	released := false
	defer func() {
		if !released {
			close(g.release)
		}
	}()
	pt.sec.setDev(g)
	pt.reconnect(t)
	const n = 32
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := pt.p.WriteAt(bytes.Repeat([]byte{byte(i)}, 4096), int64(i)*64<<10)
			errs <- err
		}()
	}
	timeout := time.After(20 * time.Second)
	for range n {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-timeout:
			t.Fatal("memsync writes waited for the secondary's disk: an early ack was held back")
		}
	}
	close(g.release)
	released = true
	pt.waitSynced(t)
	// Writes also complete when the link times out (the primary goes on alone), so they must
	// have completed with the link up all along. A timeout would have left a disconnect event
	// by now: the primary reports it before it reconnects and resynchronises.
	for len(pt.pevents) > 0 {
		if e := <-pt.pevents; e == EventDisconnect {
			t.Fatal("the writes completed only because the link to the secondary timed out: an early ack was held back")
		}
	}
	if !bytes.Equal(dataOf(t, pt.pmem), dataOf(t, pt.smem)) {
		t.Fatal("copies differ once the secondary's writes were released")
	}
}

// TestStaleLocalExtentIsPulledNeverPushed: after a local write fails while the peer's copy
// succeeds, the extent is repaired from the peer, and while the peer is unreachable the range is
// neither written nor read locally — a resync must never push the stale copy over the good one.
func TestStaleLocalExtentIsPulledNeverPushed(t *testing.T) {
	pt := newPair(t, ModeFullsync, nil)
	want := bytes.Repeat([]byte{0x77}, 64<<10)
	id := pt.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: localOff(t, pt.pmem) + 4<<20, Len: 1 << 20, Times: 1})
	if _, err := pt.p.WriteAt(want, 4<<20); err != nil {
		t.Fatalf("write masked by the peer: %v", err)
	}
	if pt.pdev.Fired(id) != 1 {
		t.Fatal("fault did not fire")
	}
	// The sync pass started by the failure pulls the extent back from the peer.
	pt.waitSynced(t)
	if !bytes.Equal(dataOf(t, pt.pmem), dataOf(t, pt.smem)) {
		t.Fatal("copies differ after the stale extent was repaired")
	}
	got := make([]byte, len(want))
	if _, err := pt.pmem.ReadAt(got, localOff(t, pt.pmem)+4<<20); err != nil || !bytes.Equal(got, want) {
		t.Fatal("the primary's own disk was not repaired from the peer")
	}
	if md, err := blockdev.ReadMetadata(pt.pmem, "r0"); err != nil || md.Inconsistent {
		t.Fatalf("metadata after repair: %+v, %v", md, err)
	}

	// Again, but the peer goes away before the repair: the range is refused, not served stale.
	pt.sec.setDev(blockdev.NewFaultDevice(pt.smem, 3))
	pt.reconnect(t)
	pt.pdev.Inject(blockdev.Fault{Op: blockdev.OpWrite, Off: localOff(t, pt.pmem) + 6<<20, Len: 1 << 20, Times: 1})
	pt.ln.Close() // no new connections
	if _, err := pt.p.WriteAt(want, 6<<20); err != nil {
		t.Fatalf("write masked by the peer: %v", err)
	}
	pt.sec.stop()
	deadline := time.Now().Add(10 * time.Second)
	for pt.p.Status().Connected {
		if time.Now().After(deadline) {
			t.Fatal("link did not go down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := pt.p.ReadAt(got, 6<<20); err == nil {
		t.Fatal("read of a stale range without the peer succeeded")
	}
	if _, err := pt.p.WriteAt(want[:4096], 6<<20); err == nil {
		t.Fatal("write to a stale range without the peer was acknowledged")
	}
	if _, err := pt.p.WriteAt(want[:4096], 1<<20); err != nil {
		t.Fatalf("write to a healthy range without the peer: %v", err)
	}
	// The mark is written in the background; give it a moment.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		md, err := blockdev.ReadMetadata(pt.pmem, "r0")
		if err == nil && md.Inconsistent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a primary with a stale extent must be marked inconsistent on disk: %+v, %v", md, err)
		}
	}
}
