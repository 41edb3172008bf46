package appliance

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"

	"hast/appliance/config"
)

// Frontends asks the daemon where its volumes are served.
func (cl *Client) Frontends() (frontends, error) {
	var f frontends
	err := cl.do("GET", "/frontends", nil, &f)
	return f, err
}

// attach prints how to give a KVM guest the volume: qemu -drive arguments and a libvirt <disk>
// element for each NBD address, and the FUSE file for tools that want a path.
func (c *CLI) attach(args []string) error {
	cm := c.flags("attach")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() != 1 {
		fmt.Fprint(c.Stderr, usage)
		return exitErr(exUsage, errQuiet)
	}
	name := cm.fs.Arg(0)
	cfg, err := cm.load()
	if err != nil {
		return err
	}
	if cfg.Resource(name) == nil {
		return exitErr(ehastNoEntry, fmt.Errorf("unknown resource %s", name))
	}
	cl, err := c.client(cm)
	if err != nil {
		return err
	}
	f, err := cl.Frontends()
	if err != nil {
		return err
	}
	if !slices.Contains(f.Exports, name) {
		return exitErr(ehastNoEntry, fmt.Errorf("%s is not exported here: it is not primary on this node", name))
	}
	if len(f.NBD) == 0 && f.FUSE == "" {
		return exitErr(exUnavailable, fmt.Errorf("the daemon serves no frontend: start it with --nbd ADDR or --fuse DIR"))
	}
	return printAttach(c.Stdout, name, f)
}

func printAttach(w io.Writer, name string, f frontends) error {
	for _, a := range f.NBD {
		addr, err := config.ParseAddr(a, 10809)
		if err != nil {
			return fmt.Errorf("nbd address %s: %w", a, err)
		}
		var uri, host string
		if addr.Network == "unix" {
			uri = fmt.Sprintf("nbd+unix:///%s?socket=%s", name, addr.Address)
			host = fmt.Sprintf("<host transport='unix' socket='%s'/>", addr.Address)
		} else {
			uri = fmt.Sprintf("nbd://%s/%s", addr.Address, name)
			h, p, _ := splitHostPort(addr.Address)
			host = fmt.Sprintf("<host name='%s' port='%s'/>", h, p)
		}
		fmt.Fprintf(w, "# qemu (NBD export %s):\n-drive file=%s,format=raw,if=virtio,cache=none\n", a, uri)
		fmt.Fprintf(w, "# libvirt:\n<disk type='network' device='disk'>\n  <driver name='qemu' type='raw' cache='none'/>\n  <source protocol='nbd' name='%s'>\n    %s\n  </source>\n  <target dev='vdb' bus='virtio'/>\n</disk>\n", name, host)
	}
	if f.FUSE != "" {
		fmt.Fprintf(w, "# qemu (FUSE file):\n-drive file=%s,format=raw,if=virtio,cache=none,aio=threads\n", filepath.Join(f.FUSE, name))
	}
	return nil
}

func splitHostPort(s string) (string, string, error) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == ':' {
			h := s[:i]
			if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
				h = h[1 : len(h)-1]
			}
			return h, s[i+1:], nil
		}
	}
	return s, "", fmt.Errorf("no port in %q", s)
}
