package replicate

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"hast/internal/nv"
	"hast/replicate/proto"
)

// Target is a resource as the acceptor sees it: the daemon's per-resource worker.
type Target interface {
	// Admit decides whether peer may connect now. A refusal returns HAST's errmsg, and wait=true
	// when this node is primary for the resource (the primary then retries).
	Admit(peer net.IP) (errmsg string, wait bool)
	// Serve takes a paired connection and runs a secondary session on it, replacing any session
	// that is running. It owns c1 and c2 from then on.
	Serve(c1, c2 net.Conn, version uint8, hello *nv.List)
}

// Acceptor is the listening side of the handshake (what HAST's parent process does on the
// secondary): it checks the peer address, pairs the two connections by token, and hands them to
// the resource. Connections from addresses that are no resource's remote are dropped, logged.
type Acceptor struct {
	Lookup  func(resource string) (Target, bool)
	Known   func(ip net.IP) bool
	Timeout time.Duration
	Log     zerolog.Logger
	// Upgrade, if set, runs on every accepted connection before the handshake (link security:
	// it may wrap the connection in TLS, or refuse it). It returns the connection to use.
	Upgrade func(c net.Conn) (net.Conn, error)

	mu      sync.Mutex
	pending map[string]*halfOpen
}

type halfOpen struct {
	conn     net.Conn
	resource string
	version  uint8
	timer    *time.Timer
}

// Serve accepts connections until l is closed.
func (a *Acceptor) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		go a.handle(c)
	}
}

func peerIP(c net.Conn) net.IP {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.IP
	}
	return nil
}

func (a *Acceptor) timeout() time.Duration {
	if a.Timeout > 0 {
		return a.Timeout
	}
	return DefaultTimeout
}

func (a *Acceptor) handle(c net.Conn) {
	ip := peerIP(c)
	log := a.Log.With().Str("peer", c.RemoteAddr().String()).Logger()
	if ip != nil && !a.Known(ip) {
		log.Warn().Msg("connection from an address that is no resource's remote refused")
		c.Close()
		return
	}
	c.SetDeadline(time.Now().Add(a.timeout()))
	if a.Upgrade != nil {
		uc, err := a.Upgrade(c)
		if err != nil {
			log.Warn().Err(err).Msg("connection refused by link security")
			c.Close()
			return
		}
		c = uc
	}
	rd := proto.NewReader(c, 0)
	_, msg, _, err := rd.Next()
	if err != nil {
		log.Warn().Err(err).Msg("bad handshake message; connection closed")
		c.Close()
		return
	}
	name, ok := msg.String("resource")
	if !ok {
		log.Warn().Msg("handshake without resource name; connection closed")
		c.Close()
		return
	}
	token, hasToken := msg.Uint8Array("token")
	if hasToken && len(token) != 16 {
		log.Warn().Int("len", len(token)).Msg("handshake token has the wrong size; connection closed")
		c.Close()
		return
	}
	log = log.With().Str("resource", name).Logger()
	refuse := func(text string, wait bool) {
		log.Warn().Str("reason", text).Msg("handshake refused")
		var out nv.List
		out.AddString("errmsg", text)
		if wait {
			out.AddUint8("wait", 1)
		}
		proto.WriteFrame(c, 1, &out, nil)
		c.Close()
	}
	t, ok := a.Lookup(name)
	if !ok {
		refuse("Resource not configured.", false)
		return
	}
	if text, wait := t.Admit(ip); text != "" {
		refuse(text, wait)
		return
	}
	if !hasToken {
		version, ok := msg.Uint8("version")
		if !ok || version == 0 {
			version = 1
		}
		version = min(version, proto.Version)
		var tok [16]byte
		if _, err := rand.Read(tok[:]); err != nil {
			refuse("Unable to generate token.", false)
			return
		}
		var out nv.List
		out.AddUint8("version", version)
		out.AddUint8Array("token", tok[:])
		out.AddUint32("x_features", ourFeatures)
		if err := proto.WriteFrame(c, version, &out, nil); err != nil {
			log.Warn().Err(err).Msg("unable to answer the handshake")
			c.Close()
			return
		}
		h := &halfOpen{conn: c, resource: name, version: version}
		key := string(tok[:])
		h.timer = time.AfterFunc(a.timeout(), func() {
			a.mu.Lock()
			if a.pending[key] == h {
				delete(a.pending, key)
				c.Close()
			}
			a.mu.Unlock()
		})
		a.mu.Lock()
		if a.pending == nil {
			a.pending = map[string]*halfOpen{}
		}
		// A new first connection replaces a half-open one for the same resource.
		for k, o := range a.pending {
			if o.resource == name {
				o.timer.Stop()
				o.conn.Close()
				delete(a.pending, k)
			}
		}
		a.pending[key] = h
		a.mu.Unlock()
		return
	}
	a.mu.Lock()
	h := a.pending[string(token)]
	if h != nil && h.resource == name {
		delete(a.pending, string(token))
		h.timer.Stop()
	} else {
		h = nil
	}
	a.mu.Unlock()
	if h == nil {
		refuse("Token doesn't match.", false)
		return
	}
	c.SetDeadline(time.Time{})
	h.conn.SetDeadline(time.Time{})
	// The hello list is owned by rd and would be reused; decode a private copy.
	hello, err := nv.Decode(msg.Encode())
	if err != nil {
		refuse("Bad handshake.", false)
		h.conn.Close()
		return
	}
	log.Info().Msg("primary connected")
	t.Serve(h.conn, c, h.version, hello)
}
