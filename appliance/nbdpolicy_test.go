package appliance

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"hast/internal/testsupport"
	"hast/nbd"
)

// TestNBDPolicy: the TCP NBD listeners get TLS and the allow-list from the flags, and a TCP
// address other machines can reach is refused when it would have neither, unless
// --nbd-insecure; loopback addresses and unix sockets stay as they are.
func TestNBDPolicy(t *testing.T) {
	pki := testsupport.NewPKI(t)
	cert, key, ca := pki.Path("server-cert.pem"), pki.Path("server-key.pem"), pki.Path("ca-cert.pem")
	everywhere := []string{"tcp://0.0.0.0:10809"}
	tests := []struct {
		name    string
		sec     NBDSecurity
		addrs   []string
		wantErr string // in the error; "" = none
		tls     bool
		mutual  bool
		allow   []string
	}{
		{name: "loopback and unix sockets", addrs: []string{"tcp://127.0.0.1:10809", "tcp://[::1]:10809",
			"tcp://localhost:10809", "unix:///run/hast/nbd.sock", "/run/hast/nbd.sock"}},
		{name: "every IPv4 address", addrs: everywhere, wantErr: "--nbd-insecure"},
		{name: "every IPv6 address", addrs: []string{"tcp6://[::]:10809"}, wantErr: "--nbd-insecure"},
		{name: "a routable address after a loopback one", addrs: []string{"tcp://127.0.0.1:1", "tcp://192.0.2.1:10809"},
			wantErr: "--nbd tcp://192.0.2.1:10809 can be reached from other machines"},
		{name: "a host name", addrs: []string{"tcp://storage.example:10809"}, wantErr: "--nbd-insecure"},
		{name: "insecure", sec: NBDSecurity{Insecure: true}, addrs: everywhere},
		{name: "allow-list", sec: NBDSecurity{Allow: []string{"10.1.2.3/8, 192.0.2.7", "fd00::/8"}}, addrs: everywhere,
			allow: []string{"10.0.0.0/8", "192.0.2.7/32", "fd00::/8"}},
		{name: "a bad network", sec: NBDSecurity{Allow: []string{"10.0.0.0/33"}}, addrs: everywhere, wantErr: "--nbd-allow"},
		{name: "TLS", sec: NBDSecurity{TLSCert: cert, TLSKey: key}, addrs: everywhere, tls: true},
		{name: "TLS with client certificates", sec: NBDSecurity{TLSCert: cert, TLSKey: key, TLSCA: ca}, addrs: everywhere,
			tls: true, mutual: true},
		{name: "a certificate without its key", sec: NBDSecurity{TLSCert: cert}, wantErr: "go together"},
		{name: "a CA without a certificate", sec: NBDSecurity{TLSCA: ca}, wantErr: "needs --nbd-tls-cert"},
		{name: "a key that is not the certificate's", sec: NBDSecurity{TLSCert: cert, TLSKey: pki.Path("client-key.pem")},
			wantErr: "--nbd-tls-cert"},
		{name: "a missing file", sec: NBDSecurity{TLSCert: cert, TLSKey: key, TLSCA: filepath.Join(pki.Dir, "none.pem")},
			wantErr: "--nbd-tls-ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := nbdPolicy(tt.sec, tt.addrs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("nbdPolicy = %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("nbdPolicy: %v", err)
			}
			if (p.TLS != nil) != tt.tls || p.TLS != nil && (p.TLS.ClientAuth == tls.RequireAndVerifyClientCert) != tt.mutual {
				t.Errorf("TLS %+v, want TLS %v, client certificates required %v", p.TLS, tt.tls, tt.mutual)
			}
			var allow []string
			for _, n := range p.Allow {
				allow = append(allow, n.String())
			}
			if !slices.Equal(allow, tt.allow) {
				t.Errorf("allow-list %v, want %v", allow, tt.allow)
			}
		})
	}
}

// TestNBDInsecureListenerRefused: the daemon refuses to start with an NBD listener on every
// address and neither TLS nor an allow-list, before it opens anything.
func TestNBDInsecureListenerRefused(t *testing.T) {
	_, err := NewDaemon(Options{ConfigPath: filepath.Join(t.TempDir(), "hast.conf"), NBD: []string{"tcp://0.0.0.0:10809"}},
		zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "--nbd-insecure") || ExitCode(err) != exUsage {
		t.Fatalf("NewDaemon = %v (exit %d), want a usage error naming --nbd-insecure", err, ExitCode(err))
	}
}

// TestNBDExportOverTLS: a daemon given certificates serves its TCP export only after
// NBD_OPT_STARTTLS and to a client with a certificate from the CA, while its unix socket stays
// as it is.
func TestNBDExportOverTLS(t *testing.T) {
	pki := testsupport.NewPKI(t)
	port, err := freePort("127.0.0.1")
	must(t, err)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c, _ := newTestCluster(t, ClusterOptions{}, []string{"--nbd", "tcp://" + addr,
		"--nbd-tls-cert", pki.Path("server-cert.pem"), "--nbd-tls-key", pki.Path("server-key.pem"),
		"--nbd-tls-ca", pki.Path("ca-cert.pem")})
	h1 := c.Nodes[0]
	pair(t, c)
	// A safety net against a hung handshake, not a performance assertion.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if v, err := nbd.Dial(ctx, "tcp", addr, "disk1"); err == nil || !strings.Contains(err.Error(), "NBD_REP_ERR_TLS_REQD") {
		if err == nil {
			v.Close()
		}
		t.Fatalf("plain NBD over TCP: %v, want NBD_REP_ERR_TLS_REQD", err)
	}
	v, err := nbd.DialTLS(ctx, "tcp", addr, "disk1", &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{pki.Client}})
	must(t, err)
	want := []byte(strings.Repeat("over TLS", 512))
	_, err = v.WriteAt(want, 1<<20)
	must(t, err)
	must(t, v.Close())

	u, err := nbd.Dial(ctx, "unix", h1.NBD, "disk1")
	must(t, err)
	defer u.Close()
	got := make([]byte, len(want))
	_, err = u.ReadAt(got, 1<<20)
	must(t, err)
	if string(got) != string(want) {
		t.Fatal("the unix socket does not read what was written over TLS")
	}
}
