package testsupport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a throwaway CA with a server certificate for the loopback addresses (and localhost)
// and a client certificate. They are also written as PEM files in Dir, under the names qemu's
// tls-creds-x509 looks for: ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem and
// client-key.pem.
type PKI struct {
	Dir            string
	Pool           *x509.CertPool // holds the CA
	Server, Client tls.Certificate
}

// NewPKI makes a PKI in a temporary directory of t.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{Dir: t.TempDir(), Pool: x509.NewCertPool()}
	caKey, ca, caDER := issue(t, nil, nil, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "hast test CA"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	p.Pool.AddCert(ca)
	p.write(t, "ca-cert.pem", "CERTIFICATE", caDER)
	p.Server = p.leaf(t, "server", caKey, ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "hast test server"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.Client = p.leaf(t, "client", caKey, ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "hast test client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return p
}

// Path returns the path of one of the PKI's files, such as "server-cert.pem".
func (p *PKI) Path(name string) string { return filepath.Join(p.Dir, name) }

// issue makes a key and signs tmpl for it with parentKey (self-signed when parent is nil).
func issue(t testing.TB, parentKey *ecdsa.PrivateKey, parent, tmpl *x509.Certificate) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, der
}

// leaf issues a certificate signed by the CA and writes it and its key as NAME-cert.pem and
// NAME-key.pem.
func (p *PKI) leaf(t testing.TB, name string, caKey *ecdsa.PrivateKey, ca, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, _, der := issue(t, caKey, ca, tmpl)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p.write(t, name+"-cert.pem", "CERTIFICATE", der)
	p.write(t, name+"-key.pem", "PRIVATE KEY", keyDER)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (p *PKI) write(t testing.TB, name, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(p.Path(name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
