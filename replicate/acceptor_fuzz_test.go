package replicate

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/internal/linksec"
	"hast/internal/nv"
	"hast/replicate/proto"
)

// scriptConn is a connection from a peer that sends a fixed script of bytes and then closes
// its side. What the acceptor writes is kept; writes never block, so one goroutine can run
// the acceptor to the end.
type scriptConn struct {
	mu     sync.Mutex
	in     *bytes.Reader
	out    bytes.Buffer
	closed bool
	remote net.Addr
}

func newScriptConn(script []byte) *scriptConn {
	return &scriptConn{in: bytes.NewReader(script), remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
}

func (c *scriptConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.in.Read(b)
}

func (c *scriptConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(b)
}

func (c *scriptConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *scriptConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *scriptConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.out.Bytes()...)
}

func (c *scriptConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 8457}
}
func (c *scriptConn) RemoteAddr() net.Addr             { return c.remote }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// recordingTarget admits everyone and records what the acceptor asks of it. Serve is the only
// way from the acceptor to a resource's device, so a run that never calls it touched none.
type recordingTarget struct {
	mu     sync.Mutex
	admits []Link
	served int
}

func (t *recordingTarget) Admit(_ net.IP, link Link) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.admits = append(t.admits, link)
	return "", false
}

func (t *recordingTarget) Serve(c1, c2 net.Conn, _ uint8, _ *nv.List) {
	t.mu.Lock()
	t.served++
	t.mu.Unlock()
	c1.Close()
	c2.Close()
}

// frame encodes one handshake message as a peer would send it.
func frame(t testing.TB, version uint8, build func(l *nv.List)) []byte {
	t.Helper()
	var l nv.List
	build(&l)
	var b bytes.Buffer
	if err := proto.WriteFrame(&b, version, &l, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func firstHello(t testing.TB, resource string) []byte {
	return frame(t, 1, func(l *nv.List) {
		l.AddString("resource", resource)
		l.AddUint8("version", proto.Version)
	})
}

// checkReplies asserts that what the acceptor wrote is a sequence of whole, well-formed frames
// that are each either a refusal or a token.
func checkReplies(t *testing.T, out []byte) {
	t.Helper()
	rd := proto.NewReader(bytes.NewReader(out), 0)
	for {
		_, l, _, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("the acceptor wrote a malformed reply %x: %v", out, err)
		}
		_, refusal := l.String("errmsg")
		tok, hasToken := l.Uint8Array("token")
		if refusal == (hasToken && len(tok) == 16) {
			t.Fatalf("reply is neither a refusal nor a token: %x", out)
		}
	}
}

// FuzzAcceptorHandshake sends arbitrary bytes as HAST's first and second connections to an
// acceptor (plain, or behind link security when secure is set). Whatever arrives, the acceptor
// must not panic, must never hand connections to the resource (a second connection cannot
// know the token the first was given), must answer only with well-formed frames, and must
// close every connection except a first one it keeps waiting for its pair.
func FuzzAcceptorHandshake(f *testing.F) {
	f.Add(firstHello(f, "r0"), []byte(nil), false)
	f.Add(firstHello(f, "r0"), frame(f, 2, func(l *nv.List) {
		l.AddString("resource", "r0")
		l.AddUint8Array("token", bytes.Repeat([]byte{7}, 16))
	}), false)
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0}, []byte(nil), true)
	psk, err := linksec.NewPSK([]byte("fuzzing pre-shared key"), "r0")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, first, second []byte, secure bool) {
		target := &recordingTarget{}
		a := &Acceptor{
			Lookup:  func(name string) (Target, bool) { return target, name != "" },
			Known:   func(net.IP) bool { return true },
			Timeout: time.Minute,
			Log:     zerolog.Nop(),
		}
		if secure {
			srv := &linksec.Server{Lookup: func(string) (*linksec.Config, error) { return psk, nil }}
			a.Upgrade = func(c net.Conn) (net.Conn, Link, error) {
				uc, info, err := srv.Upgrade(c)
				return uc, Link{Secure: info.Secure, Resource: info.Resource, Peer: info.Peer}, err
			}
		}
		c1, c2 := newScriptConn(first), newScriptConn(second)
		a.handle(c1)
		a.handle(c2)

		a.mu.Lock()
		kept := map[net.Conn]bool{}
		keptFor := map[string]bool{}
		for k, h := range a.pending {
			if keptFor[h.resource] {
				t.Errorf("two half-open connections kept for resource %q", h.resource)
			}
			kept[h.conn], keptFor[h.resource] = true, true
			h.timer.Stop()
			h.conn.Close()
			delete(a.pending, k)
		}
		a.mu.Unlock()

		target.mu.Lock()
		served, admits := target.served, append([]Link(nil), target.admits...)
		target.mu.Unlock()
		if served != 0 {
			t.Fatalf("Serve called %d times for connections that never had a valid token", served)
		}
		for _, c := range []*scriptConn{c1, c2} {
			if !kept[c] && !c.isClosed() {
				t.Fatal("the acceptor left a connection open that it does not keep")
			}
		}
		for _, l := range admits {
			// Arbitrary bytes cannot complete a TLS handshake with the key.
			if l.Secure {
				t.Fatalf("Admit saw a secured link %+v from fuzzed bytes", l)
			}
		}
		if !secure {
			checkReplies(t, c1.written())
			checkReplies(t, c2.written())
		}
	})
}

// TestAcceptorPassesLinkToAdmit checks that what Upgrade established reaches Admit.
func TestAcceptorPassesLinkToAdmit(t *testing.T) {
	target := &recordingTarget{}
	link := Link{Secure: true, Resource: "r0", Peer: "CN=hast1"}
	a := &Acceptor{
		Lookup:  func(string) (Target, bool) { return target, true },
		Known:   func(net.IP) bool { return true },
		Log:     zerolog.Nop(),
		Upgrade: func(c net.Conn) (net.Conn, Link, error) { return c, link, nil },
	}
	c := newScriptConn(firstHello(t, "r0"))
	a.handle(c)
	defer func() {
		a.mu.Lock()
		for _, h := range a.pending {
			h.timer.Stop()
			h.conn.Close()
		}
		a.mu.Unlock()
	}()
	if len(target.admits) != 1 || target.admits[0] != link {
		t.Fatalf("Admit saw %+v, want [%+v]", target.admits, link)
	}
	checkReplies(t, c.written())
	if c.isClosed() {
		t.Fatal("an admitted first connection was closed")
	}
}

// A connection secured with one resource's credentials cannot be used for another resource:
// that is refused before the resource is even looked up.
func TestAcceptorRefusesLinkForAnotherResource(t *testing.T) {
	target := &recordingTarget{}
	looked := false
	a := &Acceptor{
		Lookup: func(string) (Target, bool) { looked = true; return target, true },
		Known:  func(net.IP) bool { return true },
		Log:    zerolog.Nop(),
		Upgrade: func(c net.Conn) (net.Conn, Link, error) {
			return c, Link{Secure: true, Resource: "other", Peer: "pre-shared key"}, nil
		},
	}
	c := newScriptConn(firstHello(t, "r0"))
	a.handle(c)
	if looked || len(target.admits) != 0 {
		t.Fatalf("a mismatched link reached Lookup (%v) or Admit (%d)", looked, len(target.admits))
	}
	if !c.isClosed() {
		t.Fatal("connection left open")
	}
	_, l, _, err := proto.NewReader(bytes.NewReader(c.written()), 0).Next()
	if err != nil {
		t.Fatal(err)
	}
	if msg, _ := l.String("errmsg"); msg != "Link security was established for resource other, not r0." {
		t.Fatalf("refusal %q", msg)
	}
}

func TestAcceptorUpgradeFailureClosesQuietly(t *testing.T) {
	a := &Acceptor{
		Lookup: func(string) (Target, bool) { t.Error("Lookup after a failed upgrade"); return nil, false },
		Known:  func(net.IP) bool { return true },
		Log:    zerolog.Nop(),
		Upgrade: func(c net.Conn) (net.Conn, Link, error) {
			return nil, Link{}, errors.New("bad certificate")
		},
	}
	c := newScriptConn(firstHello(t, "r0"))
	a.handle(c)
	if !c.isClosed() || len(c.written()) != 0 {
		t.Fatalf("closed %v, wrote %q; want closed without a word", c.isClosed(), c.written())
	}
}

// TestAcceptorLinkSecurityOverTCP runs the real linksec server in the acceptor and a primary
// dialing through linksec: the resource's Admit sees a secure link for the right resource and
// the handshake answer arrives encrypted.
func TestAcceptorLinkSecurityOverTCP(t *testing.T) {
	psk, err := linksec.NewPSK([]byte("a pre-shared key for r0"), "r0")
	if err != nil {
		t.Fatal(err)
	}
	target := &recordingTarget{}
	srv := &linksec.Server{Lookup: func(name string) (*linksec.Config, error) {
		if name != "r0" {
			return nil, errors.New("no such resource")
		}
		return psk, nil
	}}
	a := &Acceptor{
		Lookup: func(string) (Target, bool) { return target, true },
		Known:  func(net.IP) bool { return true },
		Log:    zerolog.Nop(),
		Upgrade: func(c net.Conn) (net.Conn, Link, error) {
			uc, info, err := srv.Upgrade(c)
			return uc, Link{Secure: info.Secure, Resource: info.Resource, Peer: info.Peer}, err
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go a.Serve(ln)
	defer func() {
		a.mu.Lock()
		for _, h := range a.pending {
			h.timer.Stop()
			h.conn.Close()
		}
		a.mu.Unlock()
	}()
	ctx := t.Context()
	conn, err := psk.Dialer(TCPDialer)(ctx, "tcp", "", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(firstHello(t, "r0")); err != nil {
		t.Fatal(err)
	}
	_, l, _, err := proto.NewReader(conn, 0).Next()
	if err != nil {
		t.Fatal(err)
	}
	if tok, ok := l.Uint8Array("token"); !ok || len(tok) != 16 {
		t.Fatalf("reply %v, want a token", l)
	}
	target.mu.Lock()
	admits := append([]Link(nil), target.admits...)
	target.mu.Unlock()
	want := Link{Secure: true, Resource: "r0", Peer: "pre-shared key"}
	if len(admits) != 1 || admits[0] != want {
		t.Fatalf("Admit saw %+v, want [%+v]", admits, want)
	}
}
