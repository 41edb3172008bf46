package appliance

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"hast/appliance/config"
	"hast/internal/linksec"
	"hast/nbd"
)

// NBDSecurity is how the daemon's NBD listeners on TCP admit clients (--nbd-tls-*,
// --nbd-allow, --nbd-insecure). Unix sockets are left to their file permissions.
type NBDSecurity struct {
	TLSCert, TLSKey string // server certificate and key (PEM): TLS is then required
	TLSCA           string // CA (PEM) that must have issued the client's certificate; "" = none asked
	Allow           []string
	Insecure        bool // serve a TCP address other machines can reach with neither TLS nor Allow
}

// nbdPolicy builds the policy of the TCP NBD listeners, and refuses a TCP address reachable
// from other machines (anything but a loopback address) that would be served with neither TLS
// nor an allow-list, unless Insecure says so: anyone who can reach it could list the exports
// and read and write the volumes.
func nbdPolicy(sec NBDSecurity, addrs []string) (nbd.Policy, error) {
	var p nbd.Policy
	switch {
	case sec.TLSCert != "" && sec.TLSKey != "":
		cfg, err := nbdTLS(sec)
		if err != nil {
			return p, err
		}
		p.TLS = cfg
	case sec.TLSCert != "" || sec.TLSKey != "":
		return p, errors.New("--nbd-tls-cert and --nbd-tls-key go together")
	case sec.TLSCA != "":
		return p, errors.New("--nbd-tls-ca needs --nbd-tls-cert and --nbd-tls-key")
	}
	for _, list := range sec.Allow {
		for _, s := range strings.Split(list, ",") {
			n, err := parseNetwork(strings.TrimSpace(s))
			if err != nil {
				return p, fmt.Errorf("--nbd-allow %q: %w", s, err)
			}
			p.Allow = append(p.Allow, n)
		}
	}
	if p.TLS != nil || len(p.Allow) > 0 || sec.Insecure {
		return p, nil
	}
	for _, s := range addrs {
		a, err := config.ParseAddr(s, defaultPort)
		if err != nil || a.Network == "unix" || isLoopback(a.Address) {
			continue // listenAddr reports bad addresses
		}
		return p, fmt.Errorf("--nbd %s can be reached from other machines, and anyone who reaches it can read and write the volumes: "+
			"give it --nbd-tls-cert/--nbd-tls-key or --nbd-allow, listen on a loopback address or a unix socket, "+
			"or accept the risk with --nbd-insecure", s)
	}
	return p, nil
}

// nbdTLS loads the server's credentials.
func nbdTLS(sec NBDSecurity) (*tls.Config, error) {
	certPEM, err := linksec.ReadFile(sec.TLSCert)
	if err != nil {
		return nil, fmt.Errorf("--nbd-tls-cert: %w", err)
	}
	keyPEM, err := linksec.ReadFile(sec.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("--nbd-tls-key: %w", err)
	}
	cert, err := linksec.ParseKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--nbd-tls-cert %s, --nbd-tls-key %s: %w", sec.TLSCert, sec.TLSKey, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if sec.TLSCA != "" {
		caPEM, err := linksec.ReadFile(sec.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("--nbd-tls-ca: %w", err)
		}
		if cfg.ClientCAs, err = linksec.ParseCA(caPEM); err != nil {
			return nil, fmt.Errorf("--nbd-tls-ca %s: %w", sec.TLSCA, err)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// parseNetwork parses a CIDR network or a single address.
func parseNetwork(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		n, err := netip.ParsePrefix(s)
		return n.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// isLoopback reports whether a TCP listen address (host:port) is on a loopback address.
// Host names other than localhost may resolve to anything, and the unspecified address
// listens everywhere.
func isLoopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
