package appliance

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// resolveTimeout bounds one lookup of a remote's name for an incoming connection.
const resolveTimeout = 3 * time.Second

// remoteName is a resource's `remote` as written: an address literal, or a host name that is
// looked up whenever a connection needs it (HAST resolves when it connects), so a name that
// does not resolve at start-up only delays the peer instead of stopping the daemon. Lookup
// failures and recoveries are logged once per change.
type remoteName struct {
	network, host string // host "" for `remote none`
	ip            net.IP // host as a literal, nil for a name

	mu     sync.Mutex
	failed string // the last lookup error, "" while the name resolves
}

func newRemoteName(network, host string) *remoteName {
	return &remoteName{network: network, host: host, ip: net.ParseIP(host)}
}

// is reports whether the remote is ip, looking the name up if it is one.
func (r *remoteName) is(ip net.IP, log zerolog.Logger) bool {
	if r == nil || r.host == "" || ip == nil {
		return false
	}
	if r.ip != nil {
		return r.ip.Equal(ip)
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	family := "ip"
	switch r.network {
	case "tcp4":
		family = "ip4"
	case "tcp6":
		family = "ip6"
	}
	ips, err := net.DefaultResolver.LookupIP(ctx, family, r.host)
	r.mu.Lock()
	switch {
	case err != nil && err.Error() != r.failed:
		r.failed = err.Error()
		log.Warn().Err(err).Str("remote", r.host).Msg("cannot resolve the remote; connections from it are refused until it resolves")
	case err == nil && r.failed != "":
		r.failed = ""
		log.Info().Str("remote", r.host).Msg("the remote resolves again")
	}
	r.mu.Unlock()
	for _, a := range ips {
		if a.Equal(ip) {
			return true
		}
	}
	return false
}
