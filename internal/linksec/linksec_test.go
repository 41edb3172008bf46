package linksec

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testPSK is a secret of the minimum length.
var testPSK = []byte("0123456789abcdef")

func mustPSK(t *testing.T, secret []byte, resource string) *Config {
	t.Helper()
	c, err := NewPSK(secret, resource)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// result is what one side of a handshake ended with.
type result struct {
	conn net.Conn
	info Info
	err  error
}

// lookupOne serves cfg for every resource name, so tests can pair mismatched configurations.
func lookupOne(cfg *Config) func(string) (*Config, error) {
	return func(string) (*Config, error) { return cfg, nil }
}

// handshakeTCP runs server.Upgrade on an accepted loopback connection while client dials it
// through dial. Both results are returned; connections of the successful sides are closed at
// the end of the test.
func handshakeTCP(t *testing.T, srv *Server, dial DialFunc) (client, server result) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		uc, info, err := srv.Upgrade(c)
		if err != nil {
			c.Close()
		}
		done <- result{conn: uc, info: info, err: err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, cerr := dial(ctx, "tcp", "", ln.Addr().String())
	client = result{conn: cc, err: cerr}
	server = <-done
	if client.err == nil && server.err != nil {
		// In TLS 1.3 the client's handshake is done before the server has checked the
		// client's certificate; the client learns of a refusal when it next reads.
		client.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := client.conn.Read(make([]byte, 1)); err != nil {
			client.err = fmt.Errorf("first read after the handshake: %w", err)
		}
	}
	t.Cleanup(func() {
		for _, c := range []net.Conn{client.conn, server.conn} {
			if c != nil {
				c.Close()
			}
		}
	})
	return client, server
}

func tcpDial(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, raddr)
}

// exchange proves a connection pair carries data both ways.
func exchange(t *testing.T, a, b net.Conn) {
	t.Helper()
	a.SetDeadline(time.Now().Add(10 * time.Second))
	b.SetDeadline(time.Now().Add(10 * time.Second))
	for _, dir := range []struct {
		from, to net.Conn
		msg      string
	}{{a, b, "ping from the client"}, {b, a, "pong from the server"}} {
		errc := make(chan error, 1)
		go func() {
			_, err := dir.from.Write([]byte(dir.msg))
			errc <- err
		}()
		got := make([]byte, len(dir.msg))
		if _, err := io.ReadFull(dir.to, got); err != nil {
			t.Fatalf("read %q: %v", dir.msg, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("write %q: %v", dir.msg, err)
		}
		if string(got) != dir.msg {
			t.Fatalf("got %q, want %q", got, dir.msg)
		}
	}
}

func TestPSKPair(t *testing.T) {
	srv := &Server{Lookup: func(name string) (*Config, error) {
		if name != "disk1" {
			return nil, fmt.Errorf("no resource %s", name)
		}
		return mustPSK(t, testPSK, "disk1"), nil
	}}
	client := mustPSK(t, testPSK, "disk1")
	c, s := handshakeTCP(t, srv, client.Dialer(tcpDial))
	if c.err != nil || s.err != nil {
		t.Fatalf("client: %v; server: %v", c.err, s.err)
	}
	want := Info{Secure: true, Resource: "disk1", Peer: "pre-shared key"}
	if s.info != want {
		t.Fatalf("server info %+v, want %+v", s.info, want)
	}
	cs := c.conn.(*tls.Conn).ConnectionState()
	if cs.Version != tls.VersionTLS13 || !cs.HandshakeComplete {
		t.Fatalf("client state: version %x complete %v, want TLS 1.3 complete", cs.Version, cs.HandshakeComplete)
	}
	if got := s.conn.(*tls.Conn).ConnectionState().ServerName; got != ServerName("disk1") {
		t.Fatalf("server saw server name %q, want %q", got, ServerName("disk1"))
	}
	exchange(t, c.conn, s.conn)
}

func TestPSKTrailingNewlineIsSameKey(t *testing.T) {
	a, err := ParsePSK(append(append([]byte(nil), testPSK...), "\r\n"...))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParsePSK(append(append([]byte(nil), testPSK...), '\n'))
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Lookup: lookupOne(mustPSK(t, a, "r"))}
	c, s := handshakeTCP(t, srv, mustPSK(t, b, "r").Dialer(tcpDial))
	if c.err != nil || s.err != nil {
		t.Fatalf("client: %v; server: %v", c.err, s.err)
	}
	// Leading and inner white space is part of the secret.
	d, err := ParsePSK(append([]byte(" "), testPSK...))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(d, testPSK) {
		t.Fatal("leading space was dropped from the secret")
	}
}

func TestWrongPSKFailsBothSides(t *testing.T) {
	for _, tc := range []struct {
		name           string
		client, server *Config
	}{
		{"different secret", mustPSK(t, testPSK, "r"), mustPSK(t, []byte("0123456789abcdeF"), "r")},
		// The resource name is part of the derivation: one secret shared by two resources
		// does not let a peer of one into the other.
		{"different resource", mustPSK(t, testPSK, "r"), mustPSK(t, testPSK, "s")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := handshakeTCP(t, &Server{Lookup: lookupOne(tc.server)}, tc.client.Dialer(tcpDial))
			if c.err == nil || s.err == nil {
				t.Fatalf("handshake with a wrong key: client error %v, server error %v; want both to fail", c.err, s.err)
			}
			t.Logf("client: %v\nserver: %v", c.err, s.err)
			if !strings.Contains(c.err.Error(), "does not hold the pre-shared key") {
				t.Errorf("client error %q does not say the peer lacks the key", c.err)
			}
			if !strings.Contains(s.err.Error(), "different tls-psk secrets") {
				t.Errorf("server error %q does not point at the secrets", s.err)
			}
		})
	}
}

// An attacker who sees a handshake has the public certificate; presenting it without the key
// must fail.
func TestPSKCertificateWithoutKeyFails(t *testing.T) {
	real := mustPSK(t, testPSK, "r")
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := *real
	forged.cert = tls.Certificate{Certificate: real.cert.Certificate, PrivateKey: other}
	c, s := handshakeTCP(t, &Server{Lookup: lookupOne(real)}, forged.Dialer(tcpDial))
	if c.err == nil || s.err == nil {
		t.Fatalf("a client with the certificate but not the key: client %v, server %v; want both to fail", c.err, s.err)
	}
}

// pki is a CA and certificates it issued, written to files.
type pki struct {
	dir      string
	caCert   *x509.Certificate
	caKey    *ecdsa.PrivateKey
	caPEM    []byte
	serial   int64
	notAfter time.Time
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: t.TempDir(), caKey: key, serial: 1, notAfter: time.Now().Add(24 * time.Hour)}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: p.notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.caCert, _ = x509.ParseCertificate(der)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return p
}

// issue makes a node certificate and returns the paths of its certificate and key files.
func (p *pki) issue(t *testing.T, cn string, usages ...x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: p.notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.dir, cn+".crt"), filepath.Join(p.dir, cn+".key")
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	return certFile, keyFile
}

func (p *pki) caFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(p.dir, "ca.crt")
	writeFile(t, f, p.caPEM)
	return f
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

var bothUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}

func loadCerts(t *testing.T, certFile, keyFile, caFile, resource string) *Config {
	t.Helper()
	c, err := LoadCertificates(certFile, keyFile, caFile, resource)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertificatePair(t *testing.T) {
	p := newPKI(t, "cluster CA")
	ca := p.caFile(t)
	c1, k1 := p.issue(t, "hast1", bothUsages...)
	c2, k2 := p.issue(t, "hast2", bothUsages...)
	srv := &Server{Lookup: lookupOne(loadCerts(t, c2, k2, ca, "disk1"))}
	c, s := handshakeTCP(t, srv, loadCerts(t, c1, k1, ca, "disk1").Dialer(tcpDial))
	if c.err != nil || s.err != nil {
		t.Fatalf("client: %v; server: %v", c.err, s.err)
	}
	if !s.info.Secure || s.info.Resource != "disk1" || s.info.Peer != "CN=hast1" {
		t.Fatalf("server info %+v, want secure for disk1 from CN=hast1", s.info)
	}
	if got := c.conn.(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName; got != "hast2" {
		t.Fatalf("client sees server %q, want hast2", got)
	}
	exchange(t, c.conn, s.conn)
}

func TestCertificateRejections(t *testing.T) {
	p := newPKI(t, "cluster CA")
	ca := p.caFile(t)
	c1, k1 := p.issue(t, "hast1", bothUsages...)
	c2, k2 := p.issue(t, "hast2", bothUsages...)
	serverOnly, serverOnlyKey := p.issue(t, "serveronly", x509.ExtKeyUsageServerAuth)
	other := newPKI(t, "another CA")
	otherCA := other.caFile(t)
	oc, ok := other.issue(t, "intruder", bothUsages...)

	good := loadCerts(t, c2, k2, ca, "r")
	for _, tc := range []struct {
		name           string
		client, server *Config
		clientErr      string // what the failing side says
		serverErr      string
	}{
		{"client from another CA", loadCerts(t, oc, ok, ca, "r"), good,
			"", "not trusted for resource r"},
		{"server from another CA", loadCerts(t, c1, k1, ca, "r"), loadCerts(t, oc, ok, otherCA, "r"),
			"not trusted for resource r", "certificates not issued"},
		{"client certificate not for client use", loadCerts(t, serverOnly, serverOnlyKey, ca, "r"), good,
			"", "not trusted for resource r"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := handshakeTCP(t, &Server{Lookup: lookupOne(tc.server)}, tc.client.Dialer(tcpDial))
			if c.err == nil || s.err == nil {
				t.Fatalf("client error %v, server error %v; want both to fail", c.err, s.err)
			}
			t.Logf("client: %v\nserver: %v", c.err, s.err)
			if tc.clientErr != "" && !strings.Contains(c.err.Error(), tc.clientErr) {
				t.Errorf("client error %q lacks %q", c.err, tc.clientErr)
			}
			if !strings.Contains(s.err.Error(), tc.serverErr) {
				t.Errorf("server error %q lacks %q", s.err, tc.serverErr)
			}
		})
	}
}

func TestPSKAndCertificateDoNotMix(t *testing.T) {
	p := newPKI(t, "CA")
	c1, k1 := p.issue(t, "hast1", bothUsages...)
	certs := loadCerts(t, c1, k1, p.caFile(t), "r")
	c, s := handshakeTCP(t, &Server{Lookup: lookupOne(certs)}, mustPSK(t, testPSK, "r").Dialer(tcpDial))
	if c.err == nil || s.err == nil {
		t.Fatalf("PSK client against certificate server: client %v, server %v; want both to fail", c.err, s.err)
	}
}

func TestUnknownResourceRefused(t *testing.T) {
	srv := &Server{Lookup: func(name string) (*Config, error) {
		return nil, fmt.Errorf("resource %s has no link security configured", name)
	}}
	c, s := handshakeTCP(t, srv, mustPSK(t, testPSK, "plain").Dialer(tcpDial))
	if c.err == nil || s.err == nil {
		t.Fatalf("client %v, server %v; want both to fail", c.err, s.err)
	}
	if !strings.Contains(s.err.Error(), "resource plain has no link security configured") {
		t.Fatalf("server error %q does not give the lookup's reason", s.err)
	}
}

func TestTLS12Refused(t *testing.T) {
	srv := &Server{Lookup: lookupOne(mustPSK(t, testPSK, "r"))}
	cfg := mustPSK(t, testPSK, "r")
	dial := func(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
		conn, err := tcpDial(ctx, network, laddr, raddr)
		if err != nil {
			return nil, err
		}
		tc := cfg.ClientTLS()
		tc.MinVersion, tc.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		c := tls.Client(conn, tc)
		if err := c.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		return c, nil
	}
	c, s := handshakeTCP(t, srv, dial)
	if c.err == nil || s.err == nil {
		t.Fatalf("TLS 1.2 client: client %v, server %v; want both to fail", c.err, s.err)
	}
}

// hastFrame is the start of a plain HAST handshake: version 1 and an nv length.
var hastFrame = []byte{1, 40, 0, 0, 0, 'r', 'e', 's', 't'}

func TestPlainClientPassesThroughUnread(t *testing.T) {
	srv := &Server{Lookup: func(string) (*Config, error) {
		t.Error("Lookup called for a plain connection")
		return nil, errors.New("unexpected")
	}}
	check := func(t *testing.T, server net.Conn, client net.Conn) (net.Conn, Info) {
		t.Helper()
		go client.Write(hastFrame)
		server.SetDeadline(time.Now().Add(10 * time.Second))
		uc, info, err := srv.Upgrade(server)
		if err != nil {
			t.Fatal(err)
		}
		if info.Secure || info.Resource != "" {
			t.Fatalf("plain connection reported as %+v", info)
		}
		got := make([]byte, len(hastFrame))
		if _, err := io.ReadFull(uc, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, hastFrame) {
			t.Fatalf("read %x after the upgrade, want the whole frame %x", got, hastFrame)
		}
		return uc, info
	}
	t.Run("tcp", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		uc, _ := check(t, server, client)
		// Peeking leaves a socket as it is, so the data path keeps its writev.
		if uc != server {
			t.Fatalf("a plain TCP connection came back as %T, want the accepted *net.TCPConn", uc)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		server, client := net.Pipe()
		defer server.Close()
		defer client.Close()
		uc, _ := check(t, server, client)
		// The replayed byte is gone after the first read; what follows comes from the pipe.
		go client.Write([]byte("more"))
		got := make([]byte, 4)
		if _, err := io.ReadFull(uc, got); err != nil || string(got) != "more" {
			t.Fatalf("second read: %q, %v", got, err)
		}
	})
}

// A TLS client meeting a plain HAST node (one without link security, or FreeBSD's hastd)
// fails with an error rather than talking plain HAST.
func TestTLSClientAgainstPlainServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// What hastd does: read a 5-byte header, find nonsense, answer with an error frame.
		hdr := make([]byte, 5)
		io.ReadFull(c, hdr)
		c.Write([]byte{1, 4, 0, 0, 0, 0, 0, 0, 0})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := mustPSK(t, testPSK, "r").Dialer(tcpDial)(ctx, "tcp", "", ln.Addr().String())
	if err == nil {
		conn.Close()
		t.Fatal("TLS client connected to a plain server")
	}
	if ctx.Err() != nil {
		t.Fatalf("the handshake ran into the context deadline instead of failing: %v", err)
	}
}

func TestUpgradeRespectsDeadline(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	server.SetDeadline(time.Now().Add(50 * time.Millisecond))
	srv := &Server{Lookup: lookupOne(mustPSK(t, testPSK, "r"))}
	if _, _, err := srv.Upgrade(server); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent client: %v, want a deadline error", err)
	}
	// And in the middle of a TLS handshake: the client sends its first byte and stops.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cl, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cl.Write([]byte{recordHandshake})
	sc.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := srv.Upgrade(sc); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled TLS client: %v, want a deadline error", err)
	}
}

// recordingConn keeps every byte read through it.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recordingConn) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.buf.Write(b[:n])
	r.mu.Unlock()
	return n, err
}

func TestTrafficIsEncrypted(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	rec := &recordingConn{Conn: server}
	srv := &Server{Lookup: lookupOne(mustPSK(t, testPSK, "r"))}
	done := make(chan result, 1)
	go func() {
		uc, info, err := srv.Upgrade(rec)
		done <- result{conn: uc, info: info, err: err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, err := mustPSK(t, testPSK, "r").Client(ctx, client)
	if err != nil {
		t.Fatal(err)
	}
	s := <-done
	if s.err != nil {
		t.Fatal(s.err)
	}
	secret := bytes.Repeat([]byte("replicated block contents "), 100)
	go cc.Write(secret)
	got := make([]byte, len(secret))
	if _, err := io.ReadFull(s.conn, got); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("read %d bytes, err %v", len(got), err)
	}
	rec.mu.Lock()
	wire := rec.buf.Bytes()
	rec.mu.Unlock()
	if len(wire) < len(secret) || wire[0] != recordHandshake {
		t.Fatalf("recorded %d bytes starting %x; want more than the %d sent, starting with a TLS record", len(wire), wire[:1], len(secret))
	}
	if bytes.Contains(wire, []byte("replicated block")) {
		t.Fatal("plaintext seen on the wire")
	}
}

func TestServerNameRoundTrip(t *testing.T) {
	for _, name := range []string{"disk1", "10.0.0.1", "r.", "a/b:c[d]", "-_.", strings.Repeat("x", 254)} {
		sni := ServerName(name)
		got, ok := ResourceFromServerName(sni)
		if !ok || got != name {
			t.Errorf("ResourceFromServerName(ServerName(%q)) = %q, %v", name, got, ok)
		}
		if net.ParseIP(sni) != nil || strings.HasSuffix(sni, ".") {
			t.Errorf("server name %q of %q would not be sent", sni, name)
		}
	}
	for _, sni := range []string{"", "disk1", ".hast", "zz.hast", "6469736b31.example"} {
		if got, ok := ResourceFromServerName(sni); ok {
			t.Errorf("ResourceFromServerName(%q) = %q, want no resource", sni, got)
		}
	}
	// A resource named like an IP address still reaches the server (Go drops IP server
	// names), and so does the longest name hast.conf allows.
	for _, res := range []string{"10.0.0.1", strings.Repeat("x", 254)} {
		c, s := handshakeTCP(t, &Server{Lookup: func(name string) (*Config, error) {
			if name != res {
				return nil, fmt.Errorf("unexpected resource %q", name)
			}
			return mustPSK(t, testPSK, name), nil
		}}, mustPSK(t, testPSK, res).Dialer(tcpDial))
		if c.err != nil || s.err != nil || s.info.Resource != res {
			t.Fatalf("resource %q: client %v, server %v, info %+v", res, c.err, s.err, s.info)
		}
	}
}

func TestParsePSK(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" for an error
	}{
		{"0123456789abcdef", "0123456789abcdef"},
		{"0123456789abcdef\n", "0123456789abcdef"},
		{"0123456789abcdef \t\r\n\n", "0123456789abcdef"},
		{"0123456789abcde\n", ""},
		{"short", ""},
		{"", ""},
		{"                    \n", ""},
	} {
		got, err := ParsePSK([]byte(tc.in))
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), "too short") {
				t.Errorf("ParsePSK(%q) = %q, %v; want a too-short error", tc.in, got, err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("ParsePSK(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := NewPSK([]byte("short"), "r"); err == nil {
		t.Error("NewPSK accepted a 5-byte key")
	}
}

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "psk")
	writeFile(t, ok, testPSK)
	if b, err := ReadFile(ok); err != nil || !bytes.Equal(b, testPSK) {
		t.Fatalf("ReadFile(%s) = %q, %v", ok, b, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, maxFileSize+1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, want string
	}{
		{filepath.Join(dir, "missing"), "no such file"},
		{dir, "not a regular file"},
		{fifo, "not a regular file"},
		{"/dev/zero", "not a regular file"},
		{big, "too large"},
	} {
		if _, err := ReadFile(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ReadFile(%s) = %v, want an error saying %q", tc.path, err, tc.want)
		}
	}
	if _, err := LoadPSK(filepath.Join(dir, "missing"), "r"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadPSK of a missing file: %v, want ErrNotExist", err)
	}
}

func TestParseCertificateFiles(t *testing.T) {
	p := newPKI(t, "CA")
	c1, k1 := p.issue(t, "hast1", bothUsages...)
	_, k2 := p.issue(t, "hast2", bothUsages...)
	certPEM, _ := os.ReadFile(c1)
	keyPEM, _ := os.ReadFile(k1)
	otherKey, _ := os.ReadFile(k2)
	if _, err := ParseKeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("matching pair: %v", err)
	}
	if _, err := ParseKeyPair(certPEM, otherKey); err == nil {
		t.Error("a certificate with another certificate's key was accepted")
	}
	if _, err := ParseKeyPair(keyPEM, certPEM); err == nil {
		t.Error("swapped certificate and key were accepted")
	}
	if _, err := ParseCA(p.caPEM); err != nil {
		t.Errorf("CA: %v", err)
	}
	two := append(append([]byte(nil), p.caPEM...), newPKI(t, "CA2").caPEM...)
	if _, err := ParseCA(two); err != nil {
		t.Errorf("two CAs: %v", err)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "no PEM certificate"},
		{"not PEM", []byte("hello"), "no PEM certificate"},
		{"a key", keyPEM, `"PRIVATE KEY" block`},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), "CA certificate 1"},
	} {
		if _, err := ParseCA(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ParseCA = %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := NewCertificates(tls.Certificate{}, x509.NewCertPool(), "r"); err == nil {
		t.Error("NewCertificates accepted an empty certificate")
	}
}

func TestModeString(t *testing.T) {
	if ModePSK.String() != "psk" || ModeCertificate.String() != "certificate" || Mode(9).String() != "Mode(9)" {
		t.Errorf("mode names: %s %s %s", ModePSK, ModeCertificate, Mode(9))
	}
	if mustPSK(t, testPSK, "r").Mode() != ModePSK || mustPSK(t, testPSK, "r").Resource() != "r" {
		t.Error("NewPSK does not record its mode and resource")
	}
}

// BenchmarkHandshakePSK measures a full PSK handshake over loopback (a reconnect costs two).
func BenchmarkHandshakePSK(b *testing.B) {
	cfg, err := NewPSK(testPSK, "r")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	srv := &Server{Lookup: lookupOne(cfg)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				uc, _, err := srv.Upgrade(c)
				if err == nil {
					io.Copy(io.Discard, uc)
				}
			}()
		}
	}()
	dial := cfg.Dialer(tcpDial)
	for b.Loop() {
		c, err := dial(context.Background(), "tcp", "", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkStream sends HAST-shaped writes (a small header and a 128 KiB payload, as one
// net.Buffers) over loopback, plain and through a PSK link, to show what encryption costs.
func BenchmarkStream(b *testing.B) {
	cfg, err := NewPSK(testPSK, "r")
	if err != nil {
		b.Fatal(err)
	}
	for _, secure := range []bool{false, true} {
		name := "plain"
		if secure {
			name = "psk"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			srv := &Server{Lookup: lookupOne(cfg)}
			done := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					done <- err
					return
				}
				defer c.Close()
				uc, _, err := srv.Upgrade(c)
				if err != nil {
					done <- err
					return
				}
				_, err = io.Copy(io.Discard, uc)
				done <- err
			}()
			dial := tcpDial
			if secure {
				dial = cfg.Dialer(tcpDial)
			}
			c, err := dial(context.Background(), "tcp", "", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			hdr := make([]byte, 96)
			data := make([]byte, 128<<10)
			b.SetBytes(int64(len(hdr) + len(data)))
			for b.Loop() {
				bufs := net.Buffers{hdr, data}
				if _, err := bufs.WriteTo(c); err != nil {
					b.Fatal(err)
				}
			}
			c.Close()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
