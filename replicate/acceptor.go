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
	// Admit decides whether peer may connect now over a connection protected as link says
	// (link security is checked before anything else, so a peer refused for its link learns
	// nothing about the resource's role). A refusal returns HAST's errmsg, and wait=true when
	// this node is primary for the resource (the primary then retries).
	Admit(peer net.IP, link Link) (errmsg string, wait bool)
	// Serve takes a paired connection and runs a secondary session on it, replacing any session
	// that is running. It owns c1 and c2 from then on.
	Serve(c1, c2 net.Conn, version uint8, hello *nv.List)
}

// Acceptor is the listening side of the handshake (what HAST's parent process does on the
// secondary): it checks the peer address, pairs the two connections by token, and hands them to
// the resource. Connections from addresses that are no resource's remote are refused, logged,
// and told why (MsgUnknownAddress) if they open with a plain handshake message.
type Acceptor struct {
	Lookup  func(resource string) (Target, bool)
	Known   func(ip net.IP) bool
	Timeout time.Duration
	Log     zerolog.Logger
	// Upgrade, if set, runs on every accepted connection before the handshake (link security:
	// it may wrap the connection in TLS, or refuse it). It returns the connection to use and
	// how it is protected. It runs under the handshake deadline and must not close c.
	Upgrade func(c net.Conn) (net.Conn, Link, error)

	mu      sync.Mutex
	pending map[string]*halfOpen
}

// Link says how an accepted connection is protected, as Acceptor.Upgrade established it. The
// zero value is a plain HAST connection.
type Link struct {
	// Secure is true when link security authenticated the peer and protects the connection.
	Secure bool
	// Resource is the resource the peer authenticated for. A secure connection whose
	// handshake names another resource is refused.
	Resource string
	// Peer names the authenticated peer, for logs.
	Peer string
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

// MsgUnknownAddress is the errmsg a connection from an address that is no resource's remote
// gets: the node connecting learns why (two nodes on one machine without `source` lines connect
// from the wrong address), instead of a bare reset.
const MsgUnknownAddress = "Address not a configured remote."

// unknownGrace is how long a connection from an unknown address has to send its first frame: a
// HAST primary sends it at once.
const unknownGrace = 2 * time.Second

// refuseUnknown answers the first frame of a connection from an unknown address with
// MsgUnknownAddress, without looking at it further, and closes the connection. A peer that
// opens with anything else (a TLS handshake), or not within unknownGrace, is just closed.
func (a *Acceptor) refuseUnknown(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(min(a.timeout(), unknownGrace)))
	if _, _, _, err := proto.NewReader(c, 4096).Next(); err != nil {
		return
	}
	var out nv.List
	out.AddString("errmsg", MsgUnknownAddress)
	proto.WriteFrame(c, 1, &out, nil)
}

func (a *Acceptor) handle(c net.Conn) {
	ip := peerIP(c)
	log := a.Log.With().Str("peer", c.RemoteAddr().String()).Logger()
	if ip != nil && !a.Known(ip) {
		log.Warn().Msg("connection from an address that is no resource's remote refused")
		a.refuseUnknown(c)
		return
	}
	c.SetDeadline(time.Now().Add(a.timeout()))
	var link Link
	if a.Upgrade != nil {
		uc, l, err := a.Upgrade(c)
		if err != nil {
			log.Warn().Err(err).Msg("connection refused by link security")
			c.Close()
			return
		}
		c, link = uc, l
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
	if link.Secure && link.Resource != name {
		// The peer proved itself with another resource's credentials.
		refuse(fmt.Sprintf("Link security was established for resource %s, not %s.", link.Resource, name), false)
		return
	}
	t, ok := a.Lookup(name)
	if !ok {
		refuse("Resource not configured.", false)
		return
	}
	if text, wait := t.Admit(ip, link); text != "" {
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
		// Register before answering: the primary dials its second connection as soon as it
		// has the token, and one that arrived first would be refused as unknown.
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
		if err := proto.WriteFrame(c, version, &out, nil); err != nil {
			log.Warn().Err(err).Msg("unable to answer the handshake")
			a.mu.Lock()
			if a.pending[key] == h {
				delete(a.pending, key)
				h.timer.Stop()
			}
			a.mu.Unlock()
			c.Close()
			return
		}
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
	if link.Secure {
		log = log.With().Str("link", "secure").Str("peer_identity", link.Peer).Logger()
	} else {
		log = log.With().Str("link", "plain").Logger()
	}
	log.Info().Msg("primary connected")
	t.Serve(h.conn, c, h.version, hello)
}
