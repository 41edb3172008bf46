package replicate

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/internal/nv"
	"hast/replicate/proto"
)

// stallListener hands out connections whose first Write goes through and then stalls until
// release is closed: the peer already has the reply while the acceptor has not yet returned
// from sending it.
type stallListener struct {
	net.Listener
	release chan struct{}
	once    sync.Once
}

func (l *stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	stall := false
	l.once.Do(func() { stall = true })
	if !stall {
		return c, nil
	}
	return &stallConn{Conn: c, release: l.release}, nil
}

type stallConn struct {
	net.Conn
	release chan struct{}
	wrote   bool
}

func (c *stallConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if !c.wrote {
		c.wrote = true
		<-c.release
	}
	return n, err
}

type recordTarget struct{ served chan struct{} }

func (r *recordTarget) Admit(net.IP, Link) (string, bool) { return "", false }

func (r *recordTarget) Serve(c1, c2 net.Conn, _ uint8, _ *nv.List) {
	c1.Close()
	c2.Close()
	close(r.served)
}

// The primary dials its second connection the moment it reads the token. If the acceptor
// registered the half-open first connection only after sending the token, a fast second
// connection was refused ("Token doesn't match.") and the primary sat out its whole timeout
// waiting on the first. Here the acceptor is held right after sending the token.
func TestFaultAcceptorSecondConnectionBeforeRegistration(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &stallListener{Listener: inner, release: make(chan struct{})}
	defer ln.Close()
	tg := &recordTarget{served: make(chan struct{})}
	acc := &Acceptor{Lookup: func(string) (Target, bool) { return tg, true }, Known: func(net.IP) bool { return true }, Log: zerolog.Nop()}
	go acc.Serve(ln)
	defer close(ln.release)

	c1, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c1.SetDeadline(time.Now().Add(10 * time.Second))
	var out nv.List
	out.AddString("resource", "r0")
	out.AddUint8("version", proto.Version)
	if err := proto.WriteFrame(c1, 1, &out, nil); err != nil {
		t.Fatal(err)
	}
	_, in, _, err := proto.NewReader(c1, 0).Next()
	if err != nil {
		t.Fatal(err)
	}
	token, ok := in.Uint8Array("token")
	if !ok {
		t.Fatalf("no token in %v", in)
	}
	version, _ := in.Uint8("version")

	c2, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	out.Reset()
	out.AddString("resource", "r0")
	out.AddUint8Array("token", token)
	out.AddUint64("resuid", 1)
	out.AddUint64("localcnt", 0)
	out.AddUint64("remotecnt", 0)
	if err := proto.WriteFrame(c2, version, &out, nil); err != nil {
		t.Fatal(err)
	}
	// Either the acceptor pairs the connections (Serve closes them: EOF here) or it refuses
	// the second one with an errmsg.
	_, reply, _, err := proto.NewReader(c2, 0).Next()
	if err == nil {
		if msg, ok := reply.String("errmsg"); ok {
			t.Fatalf("second connection refused while the first was being answered: %q", msg)
		}
	}
	select {
	case <-tg.served:
	case <-time.After(10 * time.Second):
		t.Fatal("the acceptor never paired the two connections")
	}
}
