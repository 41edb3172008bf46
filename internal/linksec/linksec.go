package linksec

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

// MinPSKLen is the shortest pre-shared key accepted, in bytes.
const MinPSKLen = 16

// maxFileSize bounds a credential file; real ones are a few kilobytes, and the bound keeps a
// path to something huge (or endless) from exhausting memory.
const maxFileSize = 1 << 20

// pskSalt fixes the key derivation to this use, so the same secret used elsewhere yields
// unrelated keys.
const pskSalt = "hast linksec v1 pre-shared key"

// Mode is the way a Config authenticates the peer.
type Mode int

const (
	// ModePSK authenticates with a pre-shared key (tls-psk).
	ModePSK Mode = iota + 1
	// ModeCertificate authenticates with certificates issued by a CA (tls-cert, tls-key, tls-ca).
	ModeCertificate
)

func (m Mode) String() string {
	switch m {
	case ModePSK:
		return "psk"
	case ModeCertificate:
		return "certificate"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config is one resource's link security: the credential this node presents and the rule for
// accepting the peer. It is immutable and safe for concurrent use.
type Config struct {
	resource string
	mode     Mode
	cert     tls.Certificate
	pskPub   ed25519.PublicKey // ModePSK: the only public key a peer may present
	roots    *x509.CertPool    // ModeCertificate: the CA both sides verify against
}

// Resource is the resource the Config was made for.
func (c *Config) Resource() string { return c.resource }

// Mode says how the Config authenticates.
func (c *Config) Mode() Mode { return c.mode }

// NewPSK makes the Config of resource from a pre-shared secret of at least MinPSKLen bytes.
// Both nodes must use the same secret and resource name.
func NewPSK(secret []byte, resource string) (*Config, error) {
	if len(secret) < MinPSKLen {
		return nil, fmt.Errorf("pre-shared key of %d bytes is too short; it needs at least %d", len(secret), MinPSKLen)
	}
	seed, err := hkdf.Key(sha256.New, secret, []byte(pskSalt), "ed25519 identity for resource "+resource, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("derive key from the pre-shared key: %w", err)
	}
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	// The certificate only carries the public key: validity and names are never checked,
	// the key is. Fixed dates keep it independent of the clock.
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hast pre-shared key"},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("make pre-shared key certificate: %w", err)
	}
	return &Config{
		resource: resource,
		mode:     ModePSK,
		cert:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pskPub:   pub,
	}, nil
}

// NewCertificates makes the Config of resource from this node's certificate (with its
// private key) and the CA that must have issued the peer's.
func NewCertificates(cert tls.Certificate, roots *x509.CertPool, resource string) (*Config, error) {
	if len(cert.Certificate) == 0 || cert.PrivateKey == nil {
		return nil, errors.New("certificate without a private key")
	}
	if roots == nil {
		return nil, errors.New("no CA to verify the peer against")
	}
	return &Config{resource: resource, mode: ModeCertificate, cert: cert, roots: roots}, nil
}

// LoadPSK reads a tls-psk file (see ParsePSK) and makes the Config of resource.
func LoadPSK(path, resource string) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	secret, err := ParsePSK(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return NewPSK(secret, resource)
}

// LoadCertificates reads PEM files: this node's certificate chain, its private key and the
// CA certificates, and makes the Config of resource.
func LoadCertificates(certFile, keyFile, caFile, resource string) (*Config, error) {
	certPEM, err := ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	caPEM, err := ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", certFile, keyFile, err)
	}
	roots, err := ParseCA(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", caFile, err)
	}
	return NewCertificates(cert, roots, resource)
}

// ReadFile reads a credential file. It must be a regular file (so a path to a device or a
// FIFO cannot hang or flood the reader) of at most 1 MiB.
func ReadFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: %d bytes is too large for a key file (the limit is %d)", path, fi.Size(), maxFileSize)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The size is checked again while reading: the file may have grown since Stat.
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: too large for a key file (the limit is %d bytes)", path, maxFileSize)
	}
	return data, nil
}

// ParsePSK returns the secret held in the contents of a tls-psk file: the bytes as they are,
// except trailing white space (the newline an editor or echo adds), which would otherwise
// make two copies of the same key differ. It must be at least MinPSKLen bytes.
func ParsePSK(data []byte) ([]byte, error) {
	secret := bytes.TrimRight(data, " \t\r\n")
	if len(secret) < MinPSKLen {
		return nil, fmt.Errorf("pre-shared key of %d bytes is too short; it needs at least %d (e.g. head -c 32 /dev/urandom | base64)", len(secret), MinPSKLen)
	}
	return secret, nil
}

// ParseKeyPair parses a PEM certificate chain and the PEM private key that belongs to it.
func ParseKeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate and key: %w", err)
	}
	return cert, nil
}

// ParseCA parses PEM CA certificates; there must be at least one and nothing else.
func ParseCA(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	var n int
	for rest := caPEM; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("CA file holds a %q block; only certificates belong there", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate in the CA file")
	}
	return pool, nil
}

// ServerName is the TLS server name that names resource. Resource names may be anything
// hast.conf allows (an IP address, a trailing dot, a slash), none of which survive as a
// server name, so the name is hex-encoded under a suffix of ours.
func ServerName(resource string) string {
	return hex.EncodeToString([]byte(resource)) + serverNameSuffix
}

const serverNameSuffix = ".hast"

// ResourceFromServerName reverses ServerName.
func ResourceFromServerName(sni string) (string, bool) {
	h, ok := strings.CutSuffix(sni, serverNameSuffix)
	if !ok || h == "" {
		return "", false
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// base is what every configuration shares: TLS 1.3 only, no session resumption (a resumed
// session would skip the peer authentication this package is for).
func (c *Config) base() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		MaxVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{c.cert},
		SessionTicketsDisabled: true,
	}
}

// ClientTLS is the configuration of the connecting (primary) side.
func (c *Config) ClientTLS() *tls.Config {
	tc := c.base()
	tc.ServerName = ServerName(c.resource)
	// The peer is checked by VerifyConnection below, not by host name: the server name only
	// carries the resource.
	tc.InsecureSkipVerify = true
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		return c.verifyPeer(cs, x509.ExtKeyUsageServerAuth)
	}
	return tc
}

// ServerTLS is the configuration of the listening (secondary) side.
func (c *Config) ServerTLS() *tls.Config {
	tc := c.base()
	tc.ClientAuth = tls.RequireAnyClientCert
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		return c.verifyPeer(cs, x509.ExtKeyUsageClientAuth)
	}
	return tc
}

// verifyPeer accepts the peer's certificate under c's rule.
func (c *Config) verifyPeer(cs tls.ConnectionState, usage x509.ExtKeyUsage) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the peer sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	switch c.mode {
	case ModePSK:
		pub, ok := leaf.PublicKey.(ed25519.PublicKey)
		if !ok || !pub.Equal(c.pskPub) || len(cs.PeerCertificates) != 1 {
			return fmt.Errorf("the peer does not hold the pre-shared key of resource %s", c.resource)
		}
		return nil
	case ModeCertificate:
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: c.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
		if err != nil {
			return fmt.Errorf("peer certificate %q is not trusted for resource %s: %w", leaf.Subject, c.resource, err)
		}
		return nil
	}
	return fmt.Errorf("unknown link security mode %v", c.mode)
}

// Client runs the client handshake on conn (which it owns from then on: it is closed on
// failure) and returns the secured connection.
func (c *Config) Client(ctx context.Context, conn net.Conn) (*tls.Conn, error) {
	tc := tls.Client(conn, c.ClientTLS())
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("link security (TLS) handshake for resource %s: %w", c.resource, err)
	}
	return tc, nil
}

// DialFunc opens an outgoing connection; it has the shape of replicate.Dialer.
type DialFunc = func(ctx context.Context, network, laddr, raddr string) (net.Conn, error)

// Dialer wraps dial so that every connection it makes is secured by c before it is returned.
func (c *Config) Dialer(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
		conn, err := dial(ctx, network, laddr, raddr)
		if err != nil {
			return nil, err
		}
		tc, err := c.Client(ctx, conn)
		if err != nil {
			// Not tc: a nil *tls.Conn in a net.Conn is not a nil net.Conn.
			return nil, err
		}
		return tc, nil
	}
}
