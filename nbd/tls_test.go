package nbd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hast/internal/testsupport"
)

// tErrTLSReqd is NBD_REP_ERR_TLS_REQD.
const tErrTLSReqd = 0x80000005

// testPKI is testsupport's throwaway PKI, with the TLS configurations built from it.
type testPKI struct{ *testsupport.PKI }

func newTestPKI(t *testing.T) testPKI { return testPKI{testsupport.NewPKI(t)} }

// serverConfig is the server's TLS configuration; mutual requires a client certificate
// issued by the CA.
func (p testPKI) serverConfig(mutual bool) *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{p.Server}, MinVersion: tls.VersionTLS12}
	if mutual {
		cfg.ClientCAs = p.Pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg
}

// clientConfig trusts the CA and, with cert, presents the client certificate.
func (p testPKI) clientConfig(cert bool) *tls.Config {
	cfg := &tls.Config{RootCAs: p.Pool, ServerName: "127.0.0.1"}
	if cert {
		cfg.Certificates = []tls.Certificate{p.Client}
	}
	return cfg
}

// servePolicy serves s with policy p on a new listener, on loopback TCP or a unix socket,
// and returns its address.
func servePolicy(t *testing.T, s *Server, network string, p Policy) string {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "nbd.sock")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", network, err)
	}
	served := make(chan error, 1)
	go func() { served <- s.ServePolicy(l, p) }()
	t.Cleanup(func() {
		l.Close()
		if err := <-served; err != nil {
			t.Errorf("ServePolicy returned %v after its listener closed, want nil", err)
		}
	})
	return l.Addr().String()
}

func dialTLS(addr string, cfg *tls.Config) (*Client, error) {
	// A safety net against a hung handshake, not a performance assertion.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return DialTLS(ctx, "tcp", addr, "disk1", cfg)
}

// TestTLSRequired: on a listener with TLS, nothing is listed or served before
// NBD_OPT_STARTTLS; after it, the export is served over TLS, with or without a client
// certificate as the listener asks.
func TestTLSRequired(t *testing.T) {
	pki := newTestPKI(t)
	vol := newMemVolume(1<<20, 512)
	ts := startServer(t, newExports("disk1", vol))
	addr := servePolicy(t, ts.Server, "tcp", Policy{TLS: pki.serverConfig(false)})
	mutualAddr := servePolicy(t, ts.Server, "tcp", Policy{TLS: pki.serverConfig(true)})

	t.Run("options before STARTTLS are refused", func(t *testing.T) {
		r := dialRawNet(t, "tcp", addr)
		r.greet(3)
		r.option(tOptList, nil)
		r.expectOptReply(tOptList, tErrTLSReqd)
		r.option(tOptInfo, goData("disk1", 3))
		r.expectOptReply(tOptInfo, tErrTLSReqd)
		r.option(tOptGo, goData("disk1", 3))
		r.expectOptReply(tOptGo, tErrTLSReqd)
		r.option(tOptStructured, nil)
		r.expectOptReply(tOptStructured, tErrTLSReqd)
		r.option(tOptExportName, []byte("disk1"))
		r.expectClosed()
	})
	t.Run("a plain client is refused", func(t *testing.T) {
		c, err := dialTLS(addr, nil)
		if err == nil {
			c.Close()
			t.Fatal("a client without TLS entered transmission on a listener that requires TLS")
		}
		if !strings.Contains(err.Error(), "NBD_REP_ERR_TLS_REQD") {
			t.Errorf("Dial: %v, want NBD_REP_ERR_TLS_REQD", err)
		}
	})
	t.Run("STARTTLS", func(t *testing.T) { servedOverTLS(t, addr, pki.clientConfig(false)) })
	t.Run("a server certificate from another CA is refused by the client", func(t *testing.T) {
		cfg := pki.clientConfig(false)
		cfg.RootCAs = x509.NewCertPool()
		if c, err := dialTLS(addr, cfg); err == nil {
			c.Close()
			t.Fatal("the client accepted a server certificate it cannot verify")
		}
	})
	t.Run("mutual: no client certificate", func(t *testing.T) {
		c, err := dialTLS(mutualAddr, pki.clientConfig(false))
		if err == nil {
			// With TLS 1.3 the server's verdict on the client certificate may come only
			// with the first read.
			_, err = c.ReadAt(make([]byte, 512), 0)
			c.Close()
		}
		if err == nil {
			t.Fatal("a client without a certificate was served on a listener that requires one")
		}
	})
	t.Run("mutual: client certificate", func(t *testing.T) { servedOverTLS(t, mutualAddr, pki.clientConfig(true)) })
	t.Run("STARTTLS twice", func(t *testing.T) {
		r := dialRawNet(t, "tcp", addr)
		r.greet(3)
		r.startTLS(pki.clientConfig(false))
		r.option(tOptStartTLS, nil)
		r.expectOptReply(tOptStartTLS, tErrInvalid)
		r.option(tOptList, nil)
		r.expectOptReply(tOptList, 2)
		r.expectOptReply(tOptList, 1)
	})
	vol.requireNoViolations(t)
}

// startTLS upgrades the connection with NBD_OPT_STARTTLS.
func (r *rawConn) startTLS(cfg *tls.Config) {
	r.t.Helper()
	r.option(tOptStartTLS, nil)
	r.expectOptReply(tOptStartTLS, 1)
	r.nc = tls.Client(r.nc, cfg)
}

// servedOverTLS writes and reads back through a client that upgrades with cfg.
func servedOverTLS(t *testing.T, addr string, cfg *tls.Config) {
	t.Helper()
	c, err := dialTLS(addr, cfg)
	if err != nil {
		t.Fatalf("DialTLS: %v", err)
	}
	defer c.Close()
	testsupport.Receive(t, "the requests", writeReadBack(t, c, pattern(256<<10, 3)))
}

// TestStartTLSNotConfigured: on a listener without TLS, NBD_OPT_STARTTLS is unsupported and
// the connection goes on in the clear.
func TestStartTLSNotConfigured(t *testing.T) {
	pki := newTestPKI(t)
	ts := startServer(t, newExports("disk1", newMemVolume(1<<20, 512)))
	_, err := dialTLS(ts.tcpAddr, pki.clientConfig(false))
	if err == nil || !strings.Contains(err.Error(), "NBD_REP_ERR_UNSUP") {
		t.Fatalf("DialTLS to a listener without TLS: %v, want NBD_REP_ERR_UNSUP", err)
	}
	r := dialRaw(t, ts.sock)
	r.greet(3)
	r.option(tOptStartTLS, nil)
	r.expectOptReply(tOptStartTLS, tErrUnsup)
	r.option(tOptList, nil)
	r.expectOptReply(tOptList, 2)
}

// TestAllowList: a TCP client from outside the allowed networks is disconnected before the
// greeting; one inside is served.
func TestAllowList(t *testing.T) {
	ts := startServer(t, newExports("disk1", newMemVolume(1<<20, 512)))
	elsewhere := servePolicy(t, ts.Server, "tcp", Policy{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	here := servePolicy(t, ts.Server, "tcp", Policy{Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("127.0.0.0/8")}})

	r := dialRawNet(t, "tcp", elsewhere)
	r.expectClosed()
	c, err := dialTLS(here, nil)
	if err != nil {
		t.Fatalf("Dial from an allowed address: %v", err)
	}
	defer c.Close()
	testsupport.Receive(t, "the requests", writeReadBack(t, c, pattern(4096, 1)))
}
