package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary files to the parser (seeds in testdata/fuzz/FuzzParse). It must
// never panic; an error must be a *ParseError inside the file; a success must be a
// consistent Config that says the same thing when written back out and parsed again.
func FuzzParse(f *testing.F) {
	f.Add([]byte("resource r { on hast1 { local /dev/x remote 10.0.0.2 } }"), "")
	f.Fuzz(func(t *testing.T, src []byte, node string) {
		var opt Options
		if node != "" && !strings.ContainsAny(node, " \t\r\n#{}") {
			opt.Node = node
		}
		h := fakeHost("hast1.example.org", "3d1219c7c4c5404aaa1f6d2a48adfda4", 8323328)
		c, err := parse("f.conf", src, opt, h)
		if err != nil {
			checkParseError(t, src, err)
			return
		}
		checkConsistent(t, c)

		again, err := parse("f.conf", []byte(render(c)), Options{Node: c.Node}, h)
		if err != nil {
			t.Fatalf("rendered config does not parse: %v\n%s", err, render(c))
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("rendered config parses differently:\n%s\nvs\n%s", dump(again), dump(c))
		}
	})
}

func checkParseError(t *testing.T, src []byte, err error) {
	t.Helper()
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v is %T, want *ParseError", err, err)
	}
	lines := bytes.Count(src, []byte("\n")) + 1
	if pe.File != "f.conf" || pe.Line < 1 || pe.Line > lines || pe.Col < 1 || pe.Msg == "" {
		t.Fatalf("error %q out of the file's %d lines", err, lines)
	}
	// The position must be a real place on its line (or just past its end, for end of file).
	line := bytes.Split(src, []byte("\n"))[pe.Line-1]
	if pe.Col > len(line)+1 {
		t.Fatalf("error %q at column %d of a %d-byte line", err, pe.Col, len(line))
	}
}

func checkConsistent(t *testing.T, c *Config) {
	t.Helper()
	if c.Path != "f.conf" || c.Control == "" || c.Pidfile == "" || len(c.Listen) == 0 {
		t.Fatalf("incomplete config:\n%s", dump(c))
	}
	if _, err := ParseAddr(c.Control, DefaultPort); err != nil {
		t.Fatalf("control: %v", err)
	}
	for _, l := range c.Listen {
		if _, err := ParseAddr(l, DefaultPort); err != nil {
			t.Fatalf("listen: %v", err)
		}
	}
	if len(c.Resources) > 0 && c.Node == "" {
		t.Fatalf("resources resolved for no node:\n%s", dump(c))
	}
	seen := map[string]bool{}
	for _, r := range c.Resources {
		switch {
		case seen[r.Name]:
			t.Fatalf("resource %q twice", r.Name)
		case c.Resource(r.Name) != r:
			t.Fatalf("Resource(%q) returns another resource", r.Name)
		case r.Name == "" || len(r.Name) >= maxNameLen, r.Provname == "" || len(r.Provname) >= maxNameLen:
			t.Fatalf("bad name in %+v", r)
		case r.Local == "" || len(r.Local) >= maxPathLen || len(r.Exec) >= maxPathLen:
			t.Fatalf("bad path in %+v", r)
		case r.Timeout <= 0:
			t.Fatalf("bad timeout in %+v", r)
		case strings.Contains(r.Replication.String()+r.Checksum.String()+r.Compression.String(), "("):
			t.Fatalf("bad enum in %+v", r)
		case r.TLS.PSK != "" && (r.TLS.Cert != "" || r.TLS.Key != "" || r.TLS.CA != ""),
			r.TLS.Cert != "" && (r.TLS.Key == "" || r.TLS.CA == ""),
			r.TLS.Cert == "" && (r.TLS.Key != "" || r.TLS.CA != ""),
			r.TLS.Enabled() != (r.TLS.Digest != [32]byte{}):
			t.Fatalf("inconsistent link security in %+v", r)
		}
		seen[r.Name] = true
		if r.Remote != "none" {
			if _, err := ParseAddr(r.Remote, DefaultPort); err != nil {
				t.Fatalf("remote: %v", err)
			}
		}
		if r.Source != "" {
			if _, err := ParseAddr(r.Source, 0); err != nil {
				t.Fatalf("source: %v", err)
			}
		}
	}
}

// render writes c back as hast.conf, with every value explicit and set for c.Node only.
func render(c *Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "control %s\npidfile %s\n", c.Control, c.Pidfile)
	for _, l := range c.Listen {
		fmt.Fprintf(&b, "listen %s\n", l)
	}
	for _, r := range c.Resources {
		fmt.Fprintf(&b, "resource %s {\n\treplication %s\n\tchecksum %s\n\tcompression %s\n\ttimeout %d\n",
			r.Name, r.Replication, r.Checksum, r.Compression, r.Timeout)
		if r.Exec != "" {
			fmt.Fprintf(&b, "\texec %s\n", r.Exec)
		}
		switch {
		case r.TLS.PSK != "":
			fmt.Fprintf(&b, "\ttls-psk %s\n", r.TLS.PSK)
		case r.TLS.Cert != "":
			fmt.Fprintf(&b, "\ttls-cert %s\n\ttls-key %s\n\ttls-ca %s\n", r.TLS.Cert, r.TLS.Key, r.TLS.CA)
		}
		mf := "off"
		if r.MetaFlush {
			mf = "on"
		}
		fmt.Fprintf(&b, "\ton %s {\n\t\tname %s\n\t\tlocal %s\n\t\tremote %s\n\t\tmetaflush %s\n", c.Node, r.Provname, r.Local, r.Remote, mf)
		if r.Source != "" {
			fmt.Fprintf(&b, "\t\tsource %s\n", r.Source)
		}
		b.WriteString("\t}\n}\n")
	}
	return b.String()
}

// TestRenderRoundTrip runs the fuzz checks on the tutorial and a file using every keyword, so
// they are exercised on every test run, not only when fuzzing.
func TestRenderRoundTrip(t *testing.T) {
	full := `control uds:///run/hast/ctl pidfile /run/hastd.pid listen 0.0.0.0:9000
replication async checksum crc32 compression lzf timeout 7 exec /usr/local/sbin/hook metaflush off
on hast1 { listen [::1]:9001 control /run/hast1.ctl }
resource r1 { name p1 local /dev/sdb timeout 3 on hast1 { remote none source 10.0.0.1 metaflush on } }
resource r2 { replication fullsync on hast1 { local /var/lib/r2.img remote tcp4://10.0.0.2:7000 } on hast2 { local /x remote 10.0.0.1 } }
`
	h := fakeHost("hast1", "", 1)
	c, err := parse("f.conf", []byte(full), Options{}, h)
	if err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, c)
	again, err := parse("f.conf", []byte(render(c)), Options{Node: c.Node}, h)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, c) {
		t.Fatalf("rendered config parses differently:\n%s\nvs\n%s", dump(again), dump(c))
	}
	// And the values are the ones written, so the round trip is not trivially empty.
	r1, r2 := c.Resource("r1"), c.Resource("r2")
	want1 := Resource{Name: "r1", Provname: "p1", Local: "/dev/sdb", Remote: "none", Source: "10.0.0.1",
		Replication: ReplAsync, Checksum: ChecksumCRC32, Compression: CompressionLZF, Timeout: 3,
		Exec: "/usr/local/sbin/hook", MetaFlush: true}
	want2 := Resource{Name: "r2", Provname: "r2", Local: "/var/lib/r2.img", Remote: "tcp4://10.0.0.2:7000",
		Replication: ReplFullsync, Checksum: ChecksumCRC32, Compression: CompressionLZF, Timeout: 7,
		Exec: "/usr/local/sbin/hook", MetaFlush: false}
	if r1 == nil || *r1 != want1 || r2 == nil || *r2 != want2 {
		t.Errorf("got\n%+v\n%+v\nwant\n%+v\n%+v", r1, r2, want1, want2)
	}
	if c.Control != "/run/hast1.ctl" || c.Pidfile != "/run/hastd.pid" ||
		!reflect.DeepEqual(c.Listen, []string{"0.0.0.0:9000", "[::1]:9001"}) {
		t.Errorf("got control %q pidfile %q listen %q", c.Control, c.Pidfile, c.Listen)
	}
}
