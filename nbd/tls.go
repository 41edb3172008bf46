package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Policy is how a listener admits clients.
type Policy struct {
	// TLS, when set, is required (the spec's "forced TLS"): until the client has upgraded the
	// connection with NBD_OPT_STARTTLS, every option but NBD_OPT_ABORT is answered with
	// NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME closes the connection, so nothing is
	// listed or served in the clear. Set ClientCAs and ClientAuth in it for mutual
	// authentication.
	TLS *tls.Config
	// Allow, when not empty, lists the networks TCP clients may connect from; a connection from
	// anywhere else is closed before the greeting. It does not apply to unix sockets.
	Allow []netip.Prefix
}

// allows reports whether p admits a client at addr.
func (p *Policy) allows(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	if len(p.Allow) == 0 || !ok {
		return true
	}
	ip := ta.AddrPort().Addr().Unmap()
	for _, n := range p.Allow {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// tlsHandshakeTimeout bounds the TLS handshake after NBD_OPT_STARTTLS.
const tlsHandshakeTimeout = 30 * time.Second

// startTLS answers NBD_OPT_STARTTLS. On success the connection speaks TLS from then on: c.nc
// and c.br are replaced, and so must be the caller's writer.
func (c *conn) startTLS(w *bufio.Writer, data []byte) (upgraded bool, err error) {
	switch {
	case c.policy.TLS == nil:
		return false, writeOptError(w, optStartTLS, repErrUnsup, "TLS is not configured on this listener")
	case c.secured:
		return false, writeOptError(w, optStartTLS, repErrInvalid, "the connection already uses TLS")
	case len(data) != 0:
		return false, writeOptError(w, optStartTLS, repErrInvalid, "starttls takes no data")
	case c.br.Buffered() > 0:
		// Bytes sent before our reply would otherwise be taken as the TLS handshake's.
		return false, fmt.Errorf("%w: data after NBD_OPT_STARTTLS before its reply", errHandshake)
	}
	if err := writeOptReply(w, optStartTLS, repAck, nil); err != nil {
		return false, err
	}
	if err := w.Flush(); err != nil {
		return false, err
	}
	// Under TLS a write that times out breaks the connection for good, so the deadline windows
	// of transfer are run below it, on the socket.
	tc := tls.Server(stallWriter{Conn: c.nc, c: c}, c.policy.TLS)
	ctx, cancel := context.WithTimeout(context.Background(), tlsHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return false, fmt.Errorf("%w: TLS handshake: %v", errHandshake, err)
	}
	c.mu.Lock()
	c.nc = tc
	c.mu.Unlock()
	c.br = bufio.NewReaderSize(tc, 64<<10)
	c.tlsw = bufio.NewWriterSize(tc, 64<<10)
	c.secured = true
	st := tc.ConnectionState()
	ev := c.log.Debug().Uint16("tls_version", st.Version)
	if len(st.PeerCertificates) > 0 {
		ev = ev.Str("client_cert", st.PeerCertificates[0].Subject.String())
	}
	ev.Msg("nbd: TLS established")
	return true, nil
}

// stallWriter is the socket under a TLS connection: its writes are bounded like replies on a
// plain one (see transfer).
type stallWriter struct {
	net.Conn
	c *conn
}

func (w stallWriter) Write(p []byte) (int, error) {
	done := 0
	err := w.c.transfer("TLS records", w.Conn.SetWriteDeadline, func() (int64, error) {
		n, err := w.Conn.Write(p[done:])
		done += n
		return int64(n), err
	})
	return done, err
}
