package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Addr is an address from hast.conf in the form net.Dial and net.Listen take.
type Addr struct {
	Network string // "tcp", "tcp4", "tcp6" or "unix"
	Address string // host:port for TCP, a path for unix
}

// maxUnixPath is the longest path that fits sockaddr_un.sun_path on Linux with its NUL.
const maxUnixPath = 107

// maxHostLen mirrors hastd's MAXHOSTNAMELEN buffer for the host part of a TCP address.
const maxHostLen = 255

// ParseAddr parses an address written as in hast.conf (hast-reference §2.5):
//
//   - TCP: an optional prefix tcp://, tcp4:// or tcp6:// (any case), then a host name, an IPv4
//     address or a bracketed IPv6 address, then an optional :port (1-65535, defaultPort when
//     absent). An IPv6 address without brackets is taken whole, so it cannot carry a port.
//   - UNIX socket: uds://PATH, unix://PATH or an absolute PATH.
//
// Host names are checked for their form but not resolved. A defaultPort of 0 suits a source
// address, where the system picks the port.
func ParseAddr(s string, defaultPort int) (Addr, error) {
	a, err := parseAddr(s, defaultPort)
	if err != nil {
		return Addr{}, fmt.Errorf("address %q: %w", s, err)
	}
	return a, nil
}

func parseAddr(s string, defaultPort int) (Addr, error) {
	if defaultPort < 0 || defaultPort > 65535 {
		return Addr{}, fmt.Errorf("default port %d out of range 0-65535", defaultPort)
	}
	if s == "" {
		return Addr{}, errors.New("empty address")
	}
	lower := strings.ToLower(s)
	for _, p := range []string{"uds://", "unix://"} {
		if strings.HasPrefix(lower, p) {
			return unixAddr(s[len(p):])
		}
	}
	if s[0] == '/' {
		return unixAddr(s)
	}
	network, rest := "tcp", s
	for _, n := range []string{"tcp4", "tcp6", "tcp"} {
		if strings.HasPrefix(lower, n+"://") {
			network, rest = n, s[len(n)+3:]
			break
		}
	}
	if i := strings.Index(rest, "://"); i >= 0 {
		return Addr{}, fmt.Errorf("unknown scheme %q (expected tcp://, tcp4://, tcp6://, uds:// or unix://)", rest[:i+3])
	}
	host, port, err := splitHostPort(rest)
	if err != nil {
		return Addr{}, err
	}
	portNum := defaultPort
	if port != "" {
		if portNum, err = parsePort(port); err != nil {
			return Addr{}, err
		}
	}
	if err := checkHost(host, network); err != nil {
		return Addr{}, err
	}
	return Addr{Network: network, Address: net.JoinHostPort(host, strconv.Itoa(portNum))}, nil
}

func unixAddr(path string) (Addr, error) {
	if path == "" {
		return Addr{}, errors.New("empty socket path")
	}
	if len(path) > maxUnixPath {
		return Addr{}, fmt.Errorf("socket path is %d bytes long, the limit is %d", len(path), maxUnixPath)
	}
	return Addr{Network: "unix", Address: path}, nil
}

// splitHostPort follows hastd's tcp_addr: two or more colons mean IPv6, which takes a port
// only in brackets; otherwise a single colon separates the port.
func splitHostPort(s string) (host, port string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New(`missing "]" after IPv6 address`)
		}
		host, after := s[1:end], s[end+1:]
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return "", "", fmt.Errorf("%q in brackets is not an IPv6 address", host)
		}
		switch {
		case after == "":
			return host, "", nil
		case after[0] == ':':
			if after[1:] == "" {
				return "", "", errors.New(`empty port after ":"`)
			}
			return host, after[1:], nil
		}
		return "", "", fmt.Errorf("unexpected %q after IPv6 address (expected :port)", after)
	}
	switch strings.Count(s, ":") {
	case 0:
		return s, "", nil
	case 1:
		i := strings.IndexByte(s, ':')
		if s[i+1:] == "" {
			return "", "", errors.New(`empty port after ":"`)
		}
		return s[:i], s[i+1:], nil
	}
	if ip, err := netip.ParseAddr(s); err != nil || !ip.Is6() {
		return "", "", fmt.Errorf("%q has several colons but is not an IPv6 address (write an IPv6 address with a port as [address]:port)", s)
	}
	return s, "", nil
}

// parsePort accepts what hastd's numfromstr(1, 65535) accepts: decimal digits only.
func parsePort(s string) (int, error) {
	if !allDigits(s) {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %s out of range 1-65535", s)
	}
	return n, nil
}

func checkHost(host, network string) error {
	if host == "" {
		return errors.New("missing host")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case network == "tcp4" && !ip.Is4():
			return fmt.Errorf("tcp4:// needs an IPv4 address, %s is not one", host)
		case network == "tcp6" && !ip.Is6():
			return fmt.Errorf("tcp6:// needs an IPv6 address, %s is not one", host)
		}
		return nil
	}
	if len(host) > maxHostLen {
		return fmt.Errorf("host name is %d bytes long, the limit is %d", len(host), maxHostLen)
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("host %q contains %q, which is not allowed in a host name", host, c)
		}
	}
	return nil
}
