package config

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// fakeHost is a machine with fixed names. Of its files only the test keys under
// testdata/linksec/ can be read, so fuzzed paths reach nothing else.
func fakeHost(hostname, uuid string, hostid uint32) host {
	return host{
		hostname:  func() (string, error) { return hostname, nil },
		machineID: func() (string, error) { return uuid, nil },
		hostID:    func() (uint32, error) { return hostid, nil },
		readFile:  readTestKey,
	}
}

func readTestKey(path string) ([]byte, error) {
	dir, name := filepath.Split(path)
	if dir != "testdata/linksec/" || name == "" || name == "." || name == ".." {
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return os.ReadFile(path)
}

// dump renders a Config as stable text for golden files.
func dump(c *Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "path %q\nnode %q\ncontrol %q\npidfile %q\n", c.Path, c.Node, c.Control, c.Pidfile)
	for _, l := range c.Listen {
		fmt.Fprintf(&b, "listen %q\n", l)
	}
	for _, r := range c.Resources {
		fmt.Fprintf(&b, "resource %q\n", r.Name)
		fmt.Fprintf(&b, "\tname %q\n\tlocal %q\n\tremote %q\n\tsource %q\n", r.Provname, r.Local, r.Remote, r.Source)
		fmt.Fprintf(&b, "\treplication %s\n\tchecksum %s\n\tcompression %s\n", r.Replication, r.Checksum, r.Compression)
		fmt.Fprintf(&b, "\ttimeout %d\n\texec %q\n\tmetaflush %t\n", r.Timeout, r.Exec, r.MetaFlush)
		// Only when set, so the golden files of plain HAST configurations stay HAST's.
		if r.TLS.Enabled() {
			fmt.Fprintf(&b, "\ttls-psk %q\n\ttls-cert %q\n\ttls-key %q\n\ttls-ca %q\n\ttls-digest %x\n",
				r.TLS.PSK, r.TLS.Cert, r.TLS.Key, r.TLS.CA, r.TLS.Digest)
		}
	}
	return b.String()
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestTutorial(t *testing.T) {
	const path = "testdata/tutorial.conf"
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		node   string // resolved through Options.Node when set
		host   host   // otherwise through the host's names
		remote string
		golden string
	}{
		{node: "hast1", remote: "172.16.0.2", golden: "testdata/tutorial.hast1.golden"},
		{host: fakeHost("hast2.example.org", "", 7), remote: "172.16.0.1", golden: "testdata/tutorial.hast2.golden"},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var c *Config
			if tc.node != "" {
				c, err = Load(path, Options{Node: tc.node})
			} else {
				c, err = parse(path, src, Options{}, tc.host)
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Resources) != 3 {
				t.Fatalf("got %d resources, want 3", len(c.Resources))
			}
			for i, r := range c.Resources {
				name := fmt.Sprintf("disk%d", i+1)
				local := fmt.Sprintf("/dev/vtbd%d", i+1)
				if r.Name != name || r.Provname != name || r.Local != local || r.Remote != tc.remote {
					t.Errorf("resource %d = %+v, want name %s, local %s, remote %s", i, r, name, local, tc.remote)
				}
				if c.Resource(name) != r {
					t.Errorf("Resource(%q) does not return resource %d", name, i)
				}
			}
			checkGolden(t, tc.golden, dump(c))
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "hast.conf"), Options{Node: "a"})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want an error wrapping fs.ErrNotExist", err)
	}
}

func TestResourceUnknown(t *testing.T) {
	c, err := Parse("hast.conf", []byte("resource r { on a { local /l remote none } }"), Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Resource("x"); r != nil {
		t.Errorf("Resource(x) = %+v, want nil", r)
	}
	if r := c.Resource("r"); r == nil || r.Remote != "none" {
		t.Errorf("Resource(r) = %+v, want the resource with remote none", r)
	}
}

// TestResourceValues covers every resource keyword at every level it is allowed, its default
// and its precedence. Each case is resolved for node "a"; the sections for node "b" must not
// matter.
func TestResourceValues(t *testing.T) {
	const node = `on a { local /dev/a remote 10.0.0.2 }`
	base := func(f func(r *Resource)) Resource {
		r := Resource{
			Name: "r", Provname: "r", Local: "/dev/a", Remote: "10.0.0.2",
			Replication: ReplMemsync, Checksum: ChecksumNone, Compression: CompressionHole,
			Timeout: 20, MetaFlush: true,
		}
		if f != nil {
			f(&r)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		src  string
		want Resource
	}{
		{"defaults", `resource r { ` + node + ` }`, base(nil)},

		{"replication global", `replication async resource r { ` + node + ` }`,
			base(func(r *Resource) { r.Replication = ReplAsync })},
		{"replication global after resource", `resource r { ` + node + ` } replication fullsync`,
			base(func(r *Resource) { r.Replication = ReplFullsync })},
		{"replication resource", `resource r { replication async ` + node + ` }`,
			base(func(r *Resource) { r.Replication = ReplAsync })},
		{"replication resource over global", `replication async resource r { replication fullsync ` + node + ` }`,
			base(func(r *Resource) { r.Replication = ReplFullsync })},
		{"replication later wins", `replication async replication memsync resource r { ` + node + ` }`,
			base(nil)},

		{"checksum global", `checksum crc32 resource r { ` + node + ` }`,
			base(func(r *Resource) { r.Checksum = ChecksumCRC32 })},
		{"checksum resource over global", `checksum crc32 resource r { checksum sha256 ` + node + ` }`,
			base(func(r *Resource) { r.Checksum = ChecksumSHA256 })},
		{"checksum none over global", `checksum sha256 resource r { checksum none ` + node + ` }`,
			base(nil)},

		{"compression global", `compression lzf resource r { ` + node + ` }`,
			base(func(r *Resource) { r.Compression = CompressionLZF })},
		{"compression resource over global", `compression lzf resource r { compression none ` + node + ` }`,
			base(func(r *Resource) { r.Compression = CompressionNone })},

		{"timeout global", `timeout 5 resource r { ` + node + ` }`,
			base(func(r *Resource) { r.Timeout = 5 })},
		{"timeout resource over global", `timeout 5 resource r { timeout 0007 ` + node + ` }`,
			base(func(r *Resource) { r.Timeout = 7 })},

		{"exec global", `exec /g.sh resource r { ` + node + ` }`,
			base(func(r *Resource) { r.Exec = "/g.sh" })},
		{"exec resource over global", `exec /g.sh resource r { exec /r.sh ` + node + ` }`,
			base(func(r *Resource) { r.Exec = "/r.sh" })},

		{"metaflush global", `metaflush off resource r { ` + node + ` }`,
			base(func(r *Resource) { r.MetaFlush = false })},
		{"metaflush resource over global", `metaflush off resource r { metaflush on ` + node + ` }`,
			base(nil)},
		{"metaflush resource", `resource r { metaflush off ` + node + ` }`,
			base(func(r *Resource) { r.MetaFlush = false })},
		{"metaflush node over resource", `resource r { metaflush on on a { metaflush off local /dev/a remote 10.0.0.2 } }`,
			base(func(r *Resource) { r.MetaFlush = false })},
		{"metaflush node over global", `metaflush off resource r { on a { metaflush on local /dev/a remote 10.0.0.2 } }`,
			base(nil)},
		{"metaflush other node ignored", `resource r { on b { metaflush off } ` + node + ` }`,
			base(nil)},

		{"name resource", `resource r { name prov ` + node + ` }`,
			base(func(r *Resource) { r.Provname = "prov" })},
		{"name node over resource", `resource r { name prov on a { name mine local /dev/a remote 10.0.0.2 } }`,
			base(func(r *Resource) { r.Provname = "mine" })},
		{"name node before resource level", `resource r { on a { name mine local /dev/a remote 10.0.0.2 } name prov }`,
			base(func(r *Resource) { r.Provname = "mine" })},
		{"name other node ignored", `resource r { on b { name theirs } ` + node + ` }`,
			base(nil)},

		{"local resource", `resource r { local /dev/shared on a { remote 10.0.0.2 } on b { remote 10.0.0.1 } }`,
			base(func(r *Resource) { r.Local = "/dev/shared" })},
		{"local node over resource", `resource r { local /dev/shared ` + node + ` }`,
			base(nil)},
		{"local other node ignored", `resource r { local /dev/shared on b { local /dev/b } on a { remote 10.0.0.2 } }`,
			base(func(r *Resource) { r.Local = "/dev/shared" })},

		{"remote none", `resource r { on a { local /dev/a remote none } }`,
			base(func(r *Resource) { r.Remote = "none" })},
		{"remote other node ignored", `resource r { ` + node + ` on b { local /dev/b remote 10.0.0.1 } }`,
			base(nil)},
		{"remote later wins", `resource r { on a { local /dev/a remote 10.0.0.9 remote tcp://[fe80::1]:7777 } }`,
			base(func(r *Resource) { r.Remote = "tcp://[fe80::1]:7777" })},

		{"source", `resource r { on a { local /dev/a remote 10.0.0.2 source 10.0.0.1 } }`,
			base(func(r *Resource) { r.Source = "10.0.0.1" })},
		{"source other node ignored", `resource r { ` + node + ` on b { source 10.0.0.2 } }`,
			base(nil)},

		{"two matching sections", `resource r { on a { local /dev/a } on a { remote 10.0.0.2 } }`,
			base(nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("hast.conf", []byte(tc.src), Options{Node: "a"})
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Resources) != 1 {
				t.Fatalf("got %d resources, want 1", len(c.Resources))
			}
			if got := *c.Resources[0]; got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestGlobalValues covers control, pidfile and listen at top level and in node sections.
func TestGlobalValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		src     string
		control string
		pidfile string
		listen  []string
	}{
		{"defaults", ``, DefaultControl, DefaultPidfile, DefaultListen},
		{"control top", `control uds:///run/hast.sock`, "uds:///run/hast.sock", DefaultPidfile, DefaultListen},
		{"control node over top", `on a { control /run/a.sock } control /run/top.sock`, "/run/a.sock", DefaultPidfile, DefaultListen},
		{"control other node ignored", `control /run/top.sock on b { control /run/b.sock }`, "/run/top.sock", DefaultPidfile, DefaultListen},
		{"pidfile top", `pidfile /run/hastd.pid`, DefaultControl, "/run/hastd.pid", DefaultListen},
		{"pidfile node over top", `on a { pidfile /run/a.pid } pidfile /run/top.pid`, DefaultControl, "/run/a.pid", DefaultListen},
		{"pidfile other node ignored", `on b { pidfile /run/b.pid }`, DefaultControl, DefaultPidfile, DefaultListen},
		{"listen top", `listen 10.0.0.1`, DefaultControl, DefaultPidfile, []string{"10.0.0.1"}},
		{"listen node", `on a { listen 10.0.0.1:9000 }`, DefaultControl, DefaultPidfile, []string{"10.0.0.1:9000"}},
		{"listen union in file order",
			`listen tcp://0.0.0.0 on a { listen tcp6://[::1] listen /run/a.sock } on b { listen 10.9.9.9 } listen 127.0.0.1:1`,
			DefaultControl, DefaultPidfile, []string{"tcp://0.0.0.0", "tcp6://[::1]", "/run/a.sock", "127.0.0.1:1"}},
		{"listen only other node", `on b { listen 10.9.9.9 }`, DefaultControl, DefaultPidfile, DefaultListen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("hast.conf", []byte(tc.src), Options{Node: "a"})
			if err != nil {
				t.Fatal(err)
			}
			if c.Control != tc.control || c.Pidfile != tc.pidfile || !reflect.DeepEqual(c.Listen, tc.listen) {
				t.Errorf("got control %q pidfile %q listen %q\nwant control %q pidfile %q listen %q",
					c.Control, c.Pidfile, c.Listen, tc.control, tc.pidfile, tc.listen)
			}
			if len(c.Resources) != 0 {
				t.Errorf("got %d resources, want none", len(c.Resources))
			}
		})
	}
}

// TestDefaultListenNotShared makes sure a caller changing one Config's listen list cannot
// change the defaults of the next.
func TestDefaultListenNotShared(t *testing.T) {
	c, err := Parse("hast.conf", nil, Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	c.Listen[0] = "changed"
	if DefaultListen[0] != "tcp4://0.0.0.0:8457" {
		t.Fatalf("DefaultListen changed through a Config: %q", DefaultListen)
	}
}

// TestReferenceExample is hast-reference §2.6: one file for both nodes.
func TestReferenceExample(t *testing.T) {
	const src = `listen tcp://0.0.0.0
on hasta { listen tcp://2001:db8::1 }     # hasta listens on 0.0.0.0:8457 AND 2001:db8::1:8457
resource shared {
        local /dev/da0                    # same path on both nodes
        on hasta { remote tcp://10.0.0.2 }
        on hastb { remote tcp://10.0.0.1 }
}
`
	for _, tc := range []struct {
		node   string
		listen []string
		remote string
	}{
		{"hasta", []string{"tcp://0.0.0.0", "tcp://2001:db8::1"}, "tcp://10.0.0.2"},
		{"hastb", []string{"tcp://0.0.0.0"}, "tcp://10.0.0.1"},
	} {
		c, err := Parse("hast.conf", []byte(src), Options{Node: tc.node})
		if err != nil {
			t.Fatalf("%s: %v", tc.node, err)
		}
		if !reflect.DeepEqual(c.Listen, tc.listen) {
			t.Errorf("%s: listen %q, want %q", tc.node, c.Listen, tc.listen)
		}
		r := c.Resource("shared")
		if r == nil || r.Local != "/dev/da0" || r.Remote != tc.remote || r.Provname != "shared" {
			t.Errorf("%s: resource %+v, want local /dev/da0 remote %s", tc.node, r, tc.remote)
		}
		for _, l := range c.Listen {
			if _, err := ParseAddr(l, DefaultPort); err != nil {
				t.Errorf("%s: listen address does not parse: %v", tc.node, err)
			}
		}
	}
}

func TestLexing(t *testing.T) {
	// Comments anywhere, no spaces needed around braces, CRLF line ends, and words that only
	// start like keywords or numbers are strings.
	src := "#top\r\nresource onx{#c\r\n on a{local /dev/1a#c\r\nremote 10.0.0.1}name none_x}\r\n"
	c, err := Parse("hast.conf", []byte(src), Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	r := c.Resource("onx")
	if r == nil || r.Local != "/dev/1a" || r.Remote != "10.0.0.1" || r.Provname != "none_x" {
		t.Fatalf("got %+v", r)
	}
}

func TestNodeMatching(t *testing.T) {
	const uuid = "3d1219c7c4c5404aaa1f6d2a48adfda4"
	full := fakeHost("hast1.example.org", uuid, 8323328)
	for _, tc := range []struct {
		name  string
		host  host
		on    string
		match bool
	}{
		{"full hostname", full, "hast1.example.org", true},
		{"short hostname", full, "hast1", true},
		{"longer prefix is not short name", full, "hast1.example", false},
		{"domain is not a name", full, "example.org", false},
		{"prefix of short name", full, "hast", false},
		{"hostname is case-sensitive", full, "HAST1", false},
		{"machine id", full, uuid, true},
		{"machine id any case", full, strings.ToUpper(uuid), true},
		{"hostid", full, "hostid8323328", true},
		{"other hostid", full, "hostid8323329", false},
		{"hex hostid", full, "hostid007f0100", false},
		{"no machine id", fakeHost("hast1", "", 1), "hostid1", true},
		{"dotless hostname", fakeHost("vm", uuid, 1), "vm", true},
		{"other node", full, "hast2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "resource r { on " + tc.on + " { local /l remote 10.0.0.2 } on zz { local /z remote 10.0.0.1 } }"
			c, err := parse("hast.conf", []byte(src), Options{}, tc.host)
			if tc.match {
				if err != nil {
					t.Fatal(err)
				}
				if c.Node != tc.on || c.Resources[0].Local != "/l" {
					t.Errorf("node %q resource %+v, want node %q with local /l", c.Node, c.Resources[0], tc.on)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "No resource r configuration for this node") {
				t.Fatalf("got %v, want no configuration for this node", err)
			}
		})
	}
}

func TestNodeOverride(t *testing.T) {
	// Options.Node replaces the host's names: the hostname no longer matches.
	src := "resource r { on hast1 { local /one remote 10.0.0.2 } on hast2 { local /two remote 10.0.0.1 } }"
	h := fakeHost("hast1", "", 1)
	c, err := parse("hast.conf", []byte(src), Options{Node: "hast2"}, h)
	if err != nil {
		t.Fatal(err)
	}
	if c.Node != "hast2" || c.Resources[0].Local != "/two" {
		t.Errorf("node %q resource %+v, want hast2 with /two", c.Node, c.Resources[0])
	}
	_, err = parse("hast.conf", []byte(src), Options{Node: "hast3"}, h)
	want := "hast.conf:1:1: No resource r configuration for this node (acceptable node names: hast3)."
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestNodeWithoutResources(t *testing.T) {
	c, err := parse("hast.conf", []byte("on b { listen 10.0.0.1 } on a { listen 10.0.0.2 }"), Options{}, fakeHost("a", "", 1))
	if err != nil {
		t.Fatal(err)
	}
	if c.Node != "a" {
		t.Errorf("node %q, want a", c.Node)
	}
	c, err = parse("hast.conf", nil, Options{}, fakeHost("a", "", 1))
	if err != nil {
		t.Fatal(err)
	}
	if c.Node != "" {
		t.Errorf("node %q for an empty file, want none", c.Node)
	}
}

func TestAcceptableNames(t *testing.T) {
	src := "resource r {\n  on other { local /l remote 10.0.0.2 }\n}\n"
	for _, tc := range []struct {
		host host
		want string
	}{
		{fakeHost("hast1.example.org", "ABCD", 3735928559),
			"hast1, hast1.example.org, ABCD, hostid3735928559"},
		{fakeHost("vm", "", 0), "vm, hostid0"},
		{fakeHost(".odd", "", 5), ".odd, hostid5"},
	} {
		_, err := parse("hast.conf", []byte(src), Options{}, tc.host)
		want := "hast.conf:1:1: No resource r configuration for this node (acceptable node names: " + tc.want + ")."
		if err == nil || err.Error() != want {
			t.Errorf("got  %v\nwant %s", err, want)
		}
	}
}

func TestHostLookupsAreLazy(t *testing.T) {
	var hostIDCalls, uuidCalls int
	h := host{
		hostname:  func() (string, error) { return "a", nil },
		machineID: func() (string, error) { uuidCalls++; return "", nil },
		hostID:    func() (uint32, error) { hostIDCalls++; return 1, nil },
	}
	src := "resource r { on a { local /l remote none } on b { } on c { } } resource s { on hostid1 { local /l remote none } }"
	c, err := parse("hast.conf", []byte(src), Options{}, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Resources) != 2 {
		t.Fatalf("got %d resources, want 2", len(c.Resources))
	}
	// The host id costs a name lookup, so it is only fetched for a name that can be one.
	if hostIDCalls != 1 || uuidCalls != 1 {
		t.Errorf("host id fetched %d times, machine id %d times; want 1 and 1", hostIDCalls, uuidCalls)
	}
}

func TestHostLookupError(t *testing.T) {
	h := fakeHost("a", "", 1)
	h.hostname = func() (string, error) { return "", fs.ErrPermission }
	_, err := parse("hast.conf", []byte("\n  on x { }"), Options{}, h)
	if !errors.Is(err, fs.ErrPermission) || !strings.HasPrefix(err.Error(), `hast.conf:2:6: match node "x": get hostname: `) {
		t.Fatalf("got %v, want a positioned error wrapping the hostname failure", err)
	}
}

func TestEnumStrings(t *testing.T) {
	for _, tc := range []struct {
		v    fmt.Stringer
		want string
	}{
		{ReplFullsync, "fullsync"}, {ReplMemsync, "memsync"}, {ReplAsync, "async"}, {Replication(9), "Replication(9)"},
		{ChecksumNone, "none"}, {ChecksumCRC32, "crc32"}, {ChecksumSHA256, "sha256"}, {Checksum(-1), "Checksum(-1)"},
		{CompressionNone, "none"}, {CompressionHole, "hole"}, {CompressionLZF, "lzf"}, {Compression(3), "Compression(3)"},
	} {
		if got := tc.v.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.v, got, tc.want)
		}
	}
	// The keyword tables and String must agree, since dumps and hastctl print these names.
	for k, v := range replicationValues {
		if v.String() != k {
			t.Errorf("replication keyword %q parses to %v", k, v)
		}
	}
	for k, v := range checksumValues {
		if v.String() != k {
			t.Errorf("checksum keyword %q parses to %v", k, v)
		}
	}
	for k, v := range compressionValues {
		if v.String() != k {
			t.Errorf("compression keyword %q parses to %v", k, v)
		}
	}
}
