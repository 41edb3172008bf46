package config

import (
	"strings"
	"testing"
)

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in      string
		port    int
		network string
		address string
		err     string // substring of the error when non-empty
	}{
		// TCP, with and without a prefix; the prefix is case-insensitive.
		{in: "10.0.0.1", port: 8457, network: "tcp", address: "10.0.0.1:8457"},
		{in: "10.0.0.1:9000", port: 8457, network: "tcp", address: "10.0.0.1:9000"},
		{in: "tcp://10.0.0.1", port: 8457, network: "tcp", address: "10.0.0.1:8457"},
		{in: "TCP://10.0.0.1:1", port: 8457, network: "tcp", address: "10.0.0.1:1"},
		{in: "tcp4://0.0.0.0:8457", port: 8457, network: "tcp4", address: "0.0.0.0:8457"},
		{in: "Tcp4://hast1", port: 8457, network: "tcp4", address: "hast1:8457"},
		{in: "tcp6://[::]:8457", port: 8457, network: "tcp6", address: "[::]:8457"},
		{in: "tcp6://hast1.example.org:65535", port: 8457, network: "tcp6", address: "hast1.example.org:65535"},
		{in: "hast2", port: 8457, network: "tcp", address: "hast2:8457"},
		{in: "hast2.example.org:7000", port: 8457, network: "tcp", address: "hast2.example.org:7000"},
		{in: "my_host-1", port: 8457, network: "tcp", address: "my_host-1:8457"},
		// IPv6: brackets allow a port; a bare address is taken whole.
		{in: "[fe80::1]:7000", port: 8457, network: "tcp", address: "[fe80::1]:7000"},
		{in: "[2001:db8::1]", port: 8457, network: "tcp", address: "[2001:db8::1]:8457"},
		{in: "2001:db8::1", port: 8457, network: "tcp", address: "[2001:db8::1]:8457"},
		{in: "tcp://2001:db8::1", port: 8457, network: "tcp", address: "[2001:db8::1]:8457"},
		{in: "tcp6://::1", port: 8457, network: "tcp6", address: "[::1]:8457"},
		{in: "::ffff:10.0.0.1", port: 8457, network: "tcp", address: "[::ffff:10.0.0.1]:8457"},
		// The default port is the caller's; 0 leaves it to the system (source addresses).
		{in: "10.0.0.1", port: 0, network: "tcp", address: "10.0.0.1:0"},
		{in: "10.0.0.1:12", port: 0, network: "tcp", address: "10.0.0.1:12"},
		// UNIX sockets.
		{in: "uds:///var/run/hastctl", port: 8457, network: "unix", address: "/var/run/hastctl"},
		{in: "UDS:///run/x", port: 8457, network: "unix", address: "/run/x"},
		{in: "unix:///run/hast/ctl.sock", port: 8457, network: "unix", address: "/run/hast/ctl.sock"},
		{in: "uds://relative.sock", port: 8457, network: "unix", address: "relative.sock"},
		{in: "/var/run/hastctl", port: 8457, network: "unix", address: "/var/run/hastctl"},
		{in: "/" + strings.Repeat("s", 106), port: 8457, network: "unix", address: "/" + strings.Repeat("s", 106)},

		// Errors.
		{in: "", port: 8457, err: "empty address"},
		{in: "tcp://", port: 8457, err: "missing host"},
		{in: ":8457", port: 8457, err: "missing host"},
		{in: "10.0.0.1:", port: 8457, err: `empty port after ":"`},
		{in: "10.0.0.1:0", port: 8457, err: "port 0 out of range 1-65535"},
		{in: "10.0.0.1:65536", port: 8457, err: "port 65536 out of range 1-65535"},
		{in: "10.0.0.1:99999999999999999999", port: 8457, err: "out of range 1-65535"},
		{in: "10.0.0.1:+80", port: 8457, err: `port "+80" is not a number`},
		{in: "10.0.0.1:http", port: 8457, err: `port "http" is not a number`},
		{in: "[fe80::1", port: 8457, err: `missing "]"`},
		{in: "[fe80::1]:", port: 8457, err: `empty port after ":"`},
		{in: "[fe80::1]x", port: 8457, err: `unexpected "x" after IPv6 address`},
		{in: "[10.0.0.1]:80", port: 8457, err: "is not an IPv6 address"},
		{in: "[host]", port: 8457, err: "is not an IPv6 address"},
		{in: "a:b:c", port: 8457, err: "several colons but is not an IPv6 address"},
		{in: "tcp4://[::1]", port: 8457, err: "tcp4:// needs an IPv4 address"},
		{in: "tcp4://::1", port: 8457, err: "tcp4:// needs an IPv4 address"},
		{in: "tcp6://10.0.0.1", port: 8457, err: "tcp6:// needs an IPv6 address"},
		{in: "http://10.0.0.1", port: 8457, err: `unknown scheme "http://"`},
		{in: "host/name", port: 8457, err: `contains '/'`},
		{in: strings.Repeat("h", 256), port: 8457, err: "host name is 256 bytes long, the limit is 255"},
		{in: "uds://", port: 8457, err: "empty socket path"},
		{in: "/" + strings.Repeat("s", 107), port: 8457, err: "socket path is 108 bytes long, the limit is 107"},
		{in: "10.0.0.1", port: 65536, err: "default port 65536 out of range"},
	} {
		a, err := ParseAddr(tc.in, tc.port)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "address ") {
				t.Errorf("ParseAddr(%q, %d) = %+v, %v; want error containing %q", tc.in, tc.port, a, err, tc.err)
			}
			continue
		}
		if err != nil || a.Network != tc.network || a.Address != tc.address {
			t.Errorf("ParseAddr(%q, %d) = %+v, %v; want {%s %s}", tc.in, tc.port, a, err, tc.network, tc.address)
		}
	}
}

// TestDefaultAddrs checks that hastd's default addresses are valid in our syntax.
func TestDefaultAddrs(t *testing.T) {
	for _, s := range append([]string{DefaultControl}, DefaultListen...) {
		if _, err := ParseAddr(s, DefaultPort); err != nil {
			t.Errorf("default %v", err)
		}
	}
}
