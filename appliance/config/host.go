package config

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"hast/internal/linksec"
)

// host tells who this machine is, for matching "on" sections, and reads the key files that
// link security statements name. Each part is looked up only when a section needs it; tests
// supply fixed answers.
type host struct {
	hostname  func() (string, error)
	machineID func() (string, error) // "" when the machine has none
	hostID    func() (uint32, error)
	readFile  func(path string) ([]byte, error)
}

func systemHost() host {
	return host{hostname: os.Hostname, machineID: readMachineID, hostID: gethostid, readFile: linksec.ReadFile}
}

// identity caches the parts of a host that have been looked up.
type identity struct {
	h                      host
	hostname, uuid         string
	haveHostname, haveUUID bool
	hostIDName             string // "hostid<N>"
	haveHostID             bool
}

func (id *identity) getHostname() (string, error) {
	if !id.haveHostname {
		name, err := id.h.hostname()
		if err != nil {
			return "", fmt.Errorf("get hostname: %w", err)
		}
		id.hostname, id.haveHostname = name, true
	}
	return id.hostname, nil
}

func (id *identity) getUUID() (string, error) {
	if !id.haveUUID {
		u, err := id.h.machineID()
		if err != nil {
			return "", fmt.Errorf("get machine id: %w", err)
		}
		id.uuid, id.haveUUID = u, true
	}
	return id.uuid, nil
}

func (id *identity) getHostIDName() (string, error) {
	if !id.haveHostID {
		n, err := id.h.hostID()
		if err != nil {
			return "", fmt.Errorf("get host id: %w", err)
		}
		id.hostIDName, id.haveHostID = "hostid"+strconv.FormatUint(uint64(n), 10), true
	}
	return id.hostIDName, nil
}

// isMe is hastd's isitme(): full hostname, then the hostname up to its first dot, then the
// machine id ignoring case, then "hostid<N>".
func (id *identity) isMe(name string) (bool, error) {
	hn, err := id.getHostname()
	if err != nil {
		return false, err
	}
	if name == hn {
		return true, nil
	}
	if i := strings.IndexByte(hn, '.'); i >= 0 && hn[:i] == name {
		return true, nil
	}
	uuid, err := id.getUUID()
	if err != nil {
		return false, err
	}
	if uuid != "" && strings.EqualFold(uuid, name) {
		return true, nil
	}
	// Only a name that can be "hostid<N>" needs the host id, which may cost a lookup.
	if !strings.HasPrefix(name, "hostid") {
		return false, nil
	}
	hid, err := id.getHostIDName()
	if err != nil {
		return false, err
	}
	return name == hid, nil
}

// names lists the names a section may use for this host, in hastd's order (node_names()):
// short hostname (when it differs), full hostname, machine id, host id. Parts that cannot be
// determined are left out.
func (id *identity) names() []string {
	var out []string
	hn, err := id.getHostname()
	if err == nil {
		if i := strings.IndexByte(hn, '.'); i > 0 {
			out = append(out, hn[:i])
		}
		out = append(out, hn)
	}
	if uuid, err := id.getUUID(); err == nil && uuid != "" {
		out = append(out, uuid)
	}
	if hid, err := id.getHostIDName(); err == nil {
		out = append(out, hid)
	}
	return out
}

// NodeNames returns the names an "on" section may use to mean this host, in the order hastd
// lists them: short hostname (when the hostname has a dot), full hostname, machine id and
// "hostid<N>". Names that cannot be determined are left out.
func NodeNames() []string {
	id := identity{h: systemHost()}
	return id.names()
}

// readMachineID returns the systemd machine id, the Linux counterpart of kern.hostuuid.
func readMachineID() (string, error) {
	b, err := os.ReadFile("/etc/machine-id")
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}

// gethostid computes what glibc's gethostid() returns, as an unsigned 32-bit value: the
// contents of /etc/hostid, or else the first IPv4 address of the hostname with its 16-bit
// halves swapped, or 0 when the name has no IPv4 address.
func gethostid() (uint32, error) {
	b, err := os.ReadFile("/etc/hostid")
	switch {
	case err == nil && len(b) >= 4:
		return binary.NativeEndian.Uint32(b[:4]), nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return 0, err
	}
	hn, err := os.Hostname()
	if err != nil {
		return 0, err
	}
	// Bounded, because the name may only be known to a DNS server that does not answer.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip4", hn)
	if err != nil || len(ips) == 0 {
		return 0, nil
	}
	return hostIDFromIPv4(ips[0].To4()), nil
}

// hostIDFromIPv4 is glibc's transformation: the address as an in_addr_t in memory order,
// rotated by 16 bits.
func hostIDFromIPv4(ip net.IP) uint32 {
	if len(ip) != 4 {
		return 0
	}
	a := binary.NativeEndian.Uint32(ip)
	return a<<16 | a>>16
}
