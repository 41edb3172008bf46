package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/replicate"
)

// memVolume is an in-memory replicate.Volume that records what reaches it. Calls that a
// frontend should never make (misaligned, out of range) are recorded as violations.
type memVolume struct {
	mu     sync.RWMutex
	data   []byte
	sector int

	stats struct {
		sync.Mutex
		writes, reads, flushes int
		discards               [][2]int64
		violations             []string
	}

	// Optional faults, set before the server starts.
	readErr, writeErr, flushErr, discardErr error

	// onRead runs inside every ReadAt. Socket I/O gives the race detector no ordering between
	// a test and the server's workers, so the hook is guarded by a mutex.
	hookMu sync.Mutex
	onRead func(off int64, n int)
}

func (v *memVolume) setOnRead(f func(off int64, n int)) {
	v.hookMu.Lock()
	defer v.hookMu.Unlock()
	v.onRead = f
}

func newMemVolume(size, sector int) *memVolume {
	return &memVolume{data: make([]byte, size), sector: sector}
}

func (v *memVolume) check(op string, off, n int64) error {
	if off < 0 || n < 0 || off%int64(v.sector) != 0 || n%int64(v.sector) != 0 || off > int64(len(v.data)) ||
		n > int64(len(v.data))-off {
		v.stats.Lock()
		v.stats.violations = append(v.stats.violations, fmt.Sprintf("%s off=%d len=%d", op, off, n))
		v.stats.Unlock()
		return replicate.ErrRange
	}
	return nil
}

func (v *memVolume) ReadAt(p []byte, off int64) (int, error) {
	if err := v.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	v.hookMu.Lock()
	hook := v.onRead
	v.hookMu.Unlock()
	if hook != nil {
		hook(off, len(p))
	}
	v.stats.Lock()
	v.stats.reads++
	v.stats.Unlock()
	if v.readErr != nil {
		return 0, v.readErr
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	return copy(p, v.data[off:]), nil
}

func (v *memVolume) WriteAt(p []byte, off int64) (int, error) {
	if err := v.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	v.stats.Lock()
	v.stats.writes++
	v.stats.Unlock()
	if v.writeErr != nil {
		return 0, v.writeErr
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return copy(v.data[off:], p), nil
}

func (v *memVolume) Flush() error {
	v.stats.Lock()
	v.stats.flushes++
	v.stats.Unlock()
	return v.flushErr
}

func (v *memVolume) Discard(off, length int64) error {
	if err := v.check("discard", off, length); err != nil {
		return err
	}
	v.stats.Lock()
	v.stats.discards = append(v.stats.discards, [2]int64{off, length})
	v.stats.Unlock()
	return v.discardErr
}

func (v *memVolume) Size() int64     { return int64(len(v.data)) }
func (v *memVolume) SectorSize() int { return v.sector }

func (v *memVolume) snapshot() []byte {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return slices.Clone(v.data)
}

func (v *memVolume) fill(b byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i := range v.data {
		v.data[i] = b
	}
}

func (v *memVolume) counts() (writes, reads, flushes, discards int) {
	v.stats.Lock()
	defer v.stats.Unlock()
	return v.stats.writes, v.stats.reads, v.stats.flushes, len(v.stats.discards)
}

func (v *memVolume) discardList() [][2]int64 {
	v.stats.Lock()
	defer v.stats.Unlock()
	return slices.Clone(v.stats.discards)
}

// requireNoViolations fails the test if the server passed the volume an invalid request.
func (v *memVolume) requireNoViolations(t testing.TB) {
	t.Helper()
	v.stats.Lock()
	defer v.stats.Unlock()
	if len(v.stats.violations) > 0 {
		t.Fatalf("server passed invalid requests to the volume: %v", v.stats.violations)
	}
}

// exportMap is a mutable Exports.
type exportMap struct {
	mu sync.Mutex
	m  map[string]replicate.Volume
}

func newExports(kv ...any) *exportMap {
	e := &exportMap{m: make(map[string]replicate.Volume)}
	for i := 0; i < len(kv); i += 2 {
		e.m[kv[i].(string)] = kv[i+1].(replicate.Volume)
	}
	return e
}

func (e *exportMap) Lookup(name string) (replicate.Volume, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.m[name]
	return v, ok
}

func (e *exportMap) Names() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var names []string
	for n := range e.m {
		names = append(names, n)
	}
	return names
}

func (e *exportMap) remove(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.m, name)
}

// testServer is a Server listening on a unix socket and on TCP loopback.
type testServer struct {
	*Server
	sock    string
	tcpAddr string
}

func startServer(t testing.TB, exp Exports) *testServer {
	t.Helper()
	return startServerWith(t, exp, nil)
}

// startServerWith is startServer with setup (if not nil) applied to the Server before it
// serves.
func startServerWith(t testing.TB, exp Exports, setup func(*Server)) *testServer {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	if _, ok := t.(*testing.B); ok {
		log = zerolog.Nop()
	}
	s := NewServer(exp, log)
	if setup != nil {
		setup(s)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ul, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen unix: %v", err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen tcp: %v", err)
	}
	served := make(chan error, 2)
	go func() { served <- s.Serve(ul) }()
	go func() { served <- s.Serve(tl) }()
	// Wait until both Serve calls run, so that Close below must make them return nil (a Serve
	// that starts after Close returns ErrServerClosed instead).
	for s.listenerCount() < 2 {
		runtime.Gosched()
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for range 2 {
			if err := <-served; err != nil {
				t.Errorf("Serve returned %v after Close, want nil", err)
			}
		}
	})
	return &testServer{Server: s, sock: sock, tcpAddr: tl.Addr().String()}
}

func (s *Server) listenerCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.listeners)
}

// connCount is the number of connections the server holds.
func (s *Server) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// rawConn speaks the protocol byte by byte, for tests of exact wire behaviour.
type rawConn struct {
	t  testing.TB
	nc net.Conn
}

func dialRaw(t testing.TB, sock string) *rawConn {
	t.Helper()
	return dialRawNet(t, "unix", sock)
}

func dialRawNet(t testing.TB, network, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial(network, addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	// A safety net against a test hanging on a server bug, not a performance assertion.
	nc.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc}
}

func (r *rawConn) write(parts ...[]byte) {
	r.t.Helper()
	if _, err := r.nc.Write(bytes.Join(parts, nil)); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawConn) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.nc, b); err != nil {
		r.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// expect reads len(want) bytes and compares them with want.
func (r *rawConn) expect(what string, want []byte) {
	r.t.Helper()
	got := r.read(len(want))
	if !bytes.Equal(got, want) {
		r.t.Fatalf("%s:\n got % x\nwant % x", what, got, want)
	}
}

// expectClosed checks that the server closed the connection without sending anything more.
func (r *rawConn) expectClosed() {
	r.t.Helper()
	b := make([]byte, 1)
	n, err := r.nc.Read(b)
	// A close with request bytes still unread shows as a reset on unix sockets and TCP.
	if n != 0 || !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		r.t.Fatalf("expected the server to close the connection, got n=%d err=%v (byte % x)", n, err, b[:n])
	}
}

// greet reads the server greeting and sends client flags.
func (r *rawConn) greet(clientFlags uint32) {
	r.t.Helper()
	r.expect("greeting", []byte("NBDMAGICIHAVEOPT\x00\x03"))
	r.write(be32(clientFlags))
}

func (r *rawConn) option(opt uint32, data []byte) {
	r.t.Helper()
	r.write([]byte("IHAVEOPT"), be32(opt), be32(uint32(len(data))), data)
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (r *rawConn) optReply() optReply {
	r.t.Helper()
	h := r.read(20)
	if m := binary.BigEndian.Uint64(h); m != 0x3e889045565a9 {
		r.t.Fatalf("option reply magic %#x", m)
	}
	rep := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	rep.data = r.read(int(binary.BigEndian.Uint32(h[16:])))
	return rep
}

// expectOptReply reads one option reply and checks option and type.
func (r *rawConn) expectOptReply(opt, typ uint32) optReply {
	r.t.Helper()
	rep := r.optReply()
	if rep.opt != opt || rep.typ != typ {
		r.t.Fatalf("option reply: got opt %d type %#x (%q), want opt %d type %#x", rep.opt, rep.typ, rep.data, opt, typ)
	}
	return rep
}

// goData builds NBD_OPT_GO / NBD_OPT_INFO data.
func goData(name string, infos ...uint16) []byte {
	b := be32(uint32(len(name)))
	b = append(b, name...)
	b = append(b, be16(uint16(len(infos)))...)
	for _, i := range infos {
		b = append(b, be16(i)...)
	}
	return b
}

// enterGo does the handshake and NBD_OPT_GO for name on a fresh raw connection.
func (r *rawConn) enterGo(name string) {
	r.t.Helper()
	r.greet(3)
	r.optGo(name)
}

// optGo sends NBD_OPT_GO for name, asking for block sizes, and reads the replies.
func (r *rawConn) optGo(name string) {
	r.t.Helper()
	r.option(7, goData(name, 3))
	for {
		rep := r.optReply()
		if rep.typ == 1 {
			return
		}
		if rep.typ != 3 {
			r.t.Fatalf("NBD_OPT_GO %q: reply type %#x (%q)", name, rep.typ, rep.data)
		}
	}
}

func (r *rawConn) request(flags, typ uint16, cookie, off uint64, length uint32, payload []byte) {
	r.t.Helper()
	h := binary.BigEndian.AppendUint32(nil, 0x25609513)
	h = binary.BigEndian.AppendUint16(h, flags)
	h = binary.BigEndian.AppendUint16(h, typ)
	h = binary.BigEndian.AppendUint64(h, cookie)
	h = binary.BigEndian.AppendUint64(h, off)
	h = binary.BigEndian.AppendUint32(h, length)
	r.write(h, payload)
}

// reply reads a simple reply header.
func (r *rawConn) reply() (errno uint32, cookie uint64) {
	r.t.Helper()
	h := r.read(16)
	if m := binary.BigEndian.Uint32(h); m != 0x67446698 {
		r.t.Fatalf("reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

func (r *rawConn) expectReply(cookie uint64, errno uint32) {
	r.t.Helper()
	e, c := r.reply()
	if e != errno || c != cookie {
		r.t.Fatalf("reply: got errno %d cookie %d, want errno %d cookie %d", e, c, errno, cookie)
	}
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}
