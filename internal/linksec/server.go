package linksec

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// recordHandshake is the first byte of every TLS connection (a handshake record). A HAST
// frame starts with its protocol version, 1 or 2, so the two cannot be confused.
const recordHandshake = 0x16

// Info says what Server.Upgrade established on a connection.
type Info struct {
	// Secure is true when TLS authenticated the peer and protects the connection.
	Secure bool
	// Resource is the resource whose credentials the peer authenticated with ("" when not Secure).
	Resource string
	// Peer names the authenticated peer for logs: "pre-shared key" or the certificate subject.
	Peer string
}

// Server is the listening side: it tells TLS from plain connections and runs the TLS server
// handshake with the credentials of the resource the client names.
type Server struct {
	// Lookup returns the link security of a resource, or an error saying why there is none
	// (no such resource, or the resource does not use link security). It runs during the
	// handshake, on the accepting goroutine.
	Lookup func(resource string) (*Config, error)
}

// Upgrade looks at the first byte of c. A TLS handshake record starts a TLS server handshake
// (bounded by c's deadline); the secured connection is returned with what it authenticated.
// Anything else is returned as a plain connection, the first byte still unread. On error c is
// not closed; the caller closes it.
func (s *Server) Upgrade(c net.Conn) (net.Conn, Info, error) {
	b, c, err := peekByte(c)
	if err != nil {
		return nil, Info{}, fmt.Errorf("read the first byte: %w", err)
	}
	if b != recordHandshake {
		return c, Info{}, nil
	}
	var chosen *Config
	tc := tls.Server(c, &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			name, ok := ResourceFromServerName(hi.ServerName)
			if !ok {
				return nil, fmt.Errorf("the TLS client named no resource (server name %q)", hi.ServerName)
			}
			cfg, err := s.Lookup(name)
			if err != nil {
				return nil, err
			}
			chosen = cfg
			return cfg.ServerTLS(), nil
		},
	})
	if err := tc.Handshake(); err != nil {
		return nil, Info{}, explain(err, chosen)
	}
	if chosen == nil {
		// Unreachable with crypto/tls (a handshake without GetConfigForClient cannot succeed
		// here, there are no certificates); kept so a change there cannot admit anyone.
		return nil, Info{}, errors.New("link security (TLS) handshake completed without credentials")
	}
	info := Info{Secure: true, Resource: chosen.resource, Peer: "pre-shared key"}
	if chosen.mode == ModeCertificate {
		info.Peer = tc.ConnectionState().PeerCertificates[0].Subject.String()
	}
	return tc, info, nil
}

// explain adds to a failed server handshake what it most likely means for the operator. A
// failure found here (the client's credentials) explains itself; a remote error means the
// client, which verifies the server first, rejected this node's credentials.
func explain(err error, cfg *Config) error {
	if cfg == nil {
		return fmt.Errorf("link security (TLS) handshake: %w", err)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		hint := "certificates not issued by the other node's tls-ca?"
		if cfg.mode == ModePSK {
			hint = "the nodes have different tls-psk secrets?"
		}
		return fmt.Errorf("link security (TLS) handshake for resource %s: the peer does not accept this node's credentials (%s): %w", cfg.resource, hint, err)
	}
	return fmt.Errorf("link security (TLS) handshake for resource %s: %w", cfg.resource, err)
}

// peekByte returns the first byte c will deliver, and a connection that still delivers it.
// A socket is peeked with MSG_PEEK, so a plain connection is returned as it is (a
// *net.TCPConn keeps its writev path); anything else is wrapped.
func peekByte(c net.Conn) (byte, net.Conn, error) {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			var buf [1]byte
			var n int
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				for {
					n, _, rerr = unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK)
					if rerr != unix.EINTR {
						break
					}
				}
				// EAGAIN: wait until the socket is readable (or the deadline passes).
				return rerr != unix.EAGAIN
			})
			switch {
			case err != nil:
				return 0, nil, err
			case rerr != nil:
				return 0, nil, rerr
			case n == 0:
				return 0, nil, io.EOF
			}
			return buf[0], c, nil
		}
	}
	var buf [1]byte
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		return 0, nil, err
	}
	return buf[0], &prefixConn{Conn: c, first: buf[0], pending: true}, nil
}

// prefixConn returns a byte already read from Conn before the rest of it.
type prefixConn struct {
	net.Conn
	mu      sync.Mutex
	first   byte
	pending bool
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	p.mu.Lock()
	if p.pending {
		p.pending = false
		p.mu.Unlock()
		b[0] = p.first
		return 1, nil
	}
	p.mu.Unlock()
	return p.Conn.Read(b)
}
