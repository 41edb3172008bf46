package config

import (
	"errors"
	"strings"
	"testing"
)

// TestErrors checks every kind of error with its exact position and wording. All cases are
// resolved for node "a".
func TestErrors(t *testing.T) {
	const topKeywords = "checksum, compression, control, exec, listen, metaflush, on, pidfile, replication, resource, timeout, tls-ca, tls-cert, tls-key, tls-psk"
	const resKeywords = `checksum, compression, exec, local, metaflush, name, on, replication, timeout, tls-ca, tls-cert, tls-key, tls-psk, "}"`
	long := func(n int) string { return strings.Repeat("x", n) }
	for _, tc := range []struct {
		name string
		src  string
		want string
	}{
		// Unknown words where a statement should start.
		{"unknown keyword in resource", "resource r {\n  replicaton async\n}",
			`hast.conf:2:3: unknown keyword "replicaton"; expected one of: ` + resKeywords + ` (did you mean "replication"?)`},
		{"unknown keyword at top", "\n\n   frobnicate on",
			`hast.conf:3:4: unknown keyword "frobnicate"; expected one of: ` + topKeywords},
		{"keywords are case-sensitive", "Resource r {}",
			`hast.conf:1:1: unknown keyword "Resource"; expected one of: ` + topKeywords + ` (did you mean "resource"?)`},
		{"unknown keyword in node section", "on a {\n\tlisten 10.0.0.1\n\tlistne 10.0.0.2\n}",
			`hast.conf:3:2: unknown keyword "listne"; expected one of: control, listen, pidfile, "}" (did you mean "listen"?)`},
		{"unknown keyword in resource node section", "resource r {\n on a {\n  remote 10.0.0.1\n  lokal /x\n }\n}",
			`hast.conf:4:3: unknown keyword "lokal"; expected one of: local, metaflush, name, remote, source, "}" (did you mean "local"?)`},
		{"value keyword as statement", "fullsync",
			`hast.conf:1:1: unexpected keyword "fullsync", which is a value, not a statement; expected one of: ` + topKeywords},
		{"number as statement", "timeout 5 5",
			`hast.conf:1:11: unexpected number 5; expected one of: ` + topKeywords},
		{"open brace as statement", "resource r {\n {",
			`hast.conf:2:2: unexpected "{"; expected one of: ` + resKeywords},

		// Keywords at a depth where they are not allowed.
		{"remote at top", "remote 10.0.0.1",
			`hast.conf:1:1: keyword "remote" is not allowed at top level; it belongs only in an "on" section of a resource`},
		{"remote in resource", "resource r {\n  remote 10.0.0.1\n}",
			`hast.conf:2:3: keyword "remote" is not allowed in resource "r"; it belongs only in an "on" section of a resource`},
		{"source in resource", "resource r { source 10.0.0.1 }",
			`hast.conf:1:14: keyword "source" is not allowed in resource "r"; it belongs only in an "on" section of a resource`},
		{"local at top", "local /dev/x",
			`hast.conf:1:1: keyword "local" is not allowed at top level; it belongs in a resource or in an "on" section of a resource`},
		{"name in node section", "on a {\n  name x\n}",
			`hast.conf:2:3: keyword "name" is not allowed in section "on a"; it belongs in a resource or in an "on" section of a resource`},
		{"control in resource", "resource r { control /run/x }",
			`hast.conf:1:14: keyword "control" is not allowed in resource "r"; it belongs at top level or in a top-level "on" section`},
		{"listen in resource node section", "resource r { on a { listen 10.0.0.1 } }",
			`hast.conf:1:21: keyword "listen" is not allowed in section "on a" of resource "r"; it belongs at top level or in a top-level "on" section`},
		{"replication in resource node section", "resource r { on a { replication async } }",
			`hast.conf:1:21: keyword "replication" is not allowed in section "on a" of resource "r"; it belongs at top level or in a resource`},
		{"metaflush in node section", "on a { metaflush on }",
			`hast.conf:1:8: keyword "metaflush" is not allowed in section "on a"; it belongs at top level, in a resource or in an "on" section of a resource`},
		{"on in on", "resource r { on a { on b { } } }",
			`hast.conf:1:21: keyword "on" is not allowed in section "on a" of resource "r"; it belongs at top level or in a resource (is a "}" missing? section "on a" of resource "r" opened at line 1 is still open)`},
		{"resource in resource", "resource r {\n  resource s { }\n}",
			`hast.conf:2:3: keyword "resource" is not allowed in resource "r"; it belongs only at top level (is a "}" missing? resource "r" opened at line 1 is still open)`},

		// Braces.
		{"missing open brace after resource", "resource r\n  on a { }\n",
			`hast.conf:2:3: expected "{" after "resource r", found keyword "on"`},
		{"missing open brace after on", "resource r {\n  on a local /x\n}",
			`hast.conf:2:8: expected "{" after "on a", found keyword "local"`},
		{"two node names", "on a b { }",
			`hast.conf:1:6: expected "{" after "on a", found "b"`},
		{"missing close brace before next resource", "resource r {\n  on a {\n    local /x\n    remote none\n  \nresource s {\n}",
			`hast.conf:6:1: keyword "resource" is not allowed in section "on a" of resource "r"; it belongs only at top level (is a "}" missing? section "on a" of resource "r" opened at line 2 is still open)`},
		{"extra close brace", "resource r { on a { local /x remote none } } }",
			`hast.conf:1:46: unexpected "}": no section is open`},
		{"unterminated resource at EOF", "resource r {\n  on a {\n    local /x\n    remote none\n  }\n",
			`hast.conf:1:1: resource "r" is not closed: expected "}" before end of file`},
		{"unterminated resource node section at EOF", "resource r {\n  on a {\n    local /x\n",
			`hast.conf:2:3: section "on a" of resource "r" is not closed: expected "}" before end of file`},
		{"unterminated node section at EOF", "listen 10.0.0.1\n\ton a {",
			`hast.conf:2:2: section "on a" is not closed: expected "}" before end of file`},
		{"open brace missing at EOF", "resource r { on a { local /x remote none } } resource s",
			`hast.conf:1:56: expected "{" after "resource s", found end of file`},

		// Arguments.
		{"bad replication", "replication fast",
			`hast.conf:1:13: expected fullsync, memsync or async after "replication", found "fast"`},
		{"bad checksum", "resource r {\n\tchecksum md5\n}",
			`hast.conf:2:11: expected none, crc32 or sha256 after "checksum", found "md5"`},
		{"bad compression", "compression hole\ncompression zstd",
			`hast.conf:2:13: expected none, hole or lzf after "compression", found "zstd"`},
		{"compression value of another enum", "compression crc32",
			`hast.conf:1:13: expected none, hole or lzf after "compression", found keyword "crc32"`},
		{"bad metaflush", "metaflush yes",
			`hast.conf:1:11: expected on or off after "metaflush", found "yes"`},
		{"number as resource name", "resource 123 { }",
			`hast.conf:1:10: expected a resource name after "resource", found number 123 (a word of digits only is a number)`},
		{"number as path", "resource r { on a { local 0 } }",
			`hast.conf:1:27: expected a path after "local", found number 0 (a word of digits only is a number)`},
		{"keyword as resource name", "resource on { }",
			`hast.conf:1:10: expected a resource name after "resource", found keyword "on" (keywords are reserved and cannot be names or values)`},
		{"keyword as node name", "resource r { on none { } }",
			`hast.conf:1:17: expected a node name after "on", found keyword "none" (keywords are reserved and cannot be names or values)`},
		{"keyword as path", "resource r { on a { local hole } }",
			`hast.conf:1:27: expected a path after "local", found keyword "hole" (keywords are reserved and cannot be names or values)`},
		{"none is only for remote", "resource r { on a { source none } }",
			`hast.conf:1:28: expected an address after "source", found keyword "none" (keywords are reserved and cannot be names or values)`},
		{"missing argument at EOF", "control",
			`hast.conf:1:8: expected an address after "control", found end of file`},
		{"missing argument before brace", "resource r { on a { local } }",
			`hast.conf:1:27: expected a path after "local", found "}"`},
		{"timeout zero", "timeout 0",
			`hast.conf:1:9: Negative or zero timeout.`},
		{"timeout zero in resource", "resource r {\n  timeout 000\n}",
			`hast.conf:2:11: Negative or zero timeout.`},
		{"timeout negative", "timeout -5",
			`hast.conf:1:9: Negative or zero timeout.`},
		{"timeout word", "timeout 20s",
			`hast.conf:1:9: expected a timeout in seconds after "timeout", found "20s"`},
		{"timeout too large", "timeout 99999999999",
			`hast.conf:1:9: timeout 99999999999 is too large (the limit is 2147483647)`},
		{"bad listen port", "listen 10.0.0.1:99999",
			`hast.conf:1:8: invalid listen address "10.0.0.1:99999": port 99999 out of range 1-65535`},
		{"bad remote", "resource r { on a { local /x remote 10.0.0.1:http } }",
			`hast.conf:1:37: invalid remote address "10.0.0.1:http": port "http" is not a number`},
		{"bad source family", "resource r { on a { local /x remote none source tcp4://[::1] } }",
			`hast.conf:1:49: invalid source address "tcp4://[::1]": tcp4:// needs an IPv4 address, ::1 is not one`},
		{"bad address in another node's section", "resource r { on b { remote 10.0.0.1:0 } }",
			`hast.conf:1:28: invalid remote address "10.0.0.1:0": port 0 out of range 1-65535`},
		{"bad control", "control uds://",
			`hast.conf:1:9: invalid control address "uds://": empty socket path`},

		// Characters outside HAST's words.
		{"quote", "resource r {\n  on a {\n    local \"/dev/x\"\n",
			`hast.conf:3:11: unexpected character '"'; words may contain only letters, digits and . - _ / : [ ] (there is no quoting)`},
		{"semicolon", "pidfile /a;",
			`hast.conf:1:11: unexpected character ';'; words may contain only letters, digits and . - _ / : [ ] (there is no quoting)`},
		{"non-ASCII", "# comment é is fine\nresource é",
			`hast.conf:2:10: unexpected character 'é'; words may contain only letters, digits and . - _ / : [ ] (there is no quoting)`},
		{"invalid UTF-8", "on \xff",
			`hast.conf:1:4: unexpected character byte 0xFF; words may contain only letters, digits and . - _ / : [ ] (there is no quoting)`},

		// Checks of a whole resource, with hastd's words, at the resource.
		{"duplicate resource", "resource r { on a { local /x remote none } }\n\nresource r { on a { local /y remote none } }",
			`hast.conf:3:1: Resource r configured more than once.`},
		{"no section for this node", "resource r {\n  on b { local /x remote none }\n}",
			`hast.conf:1:1: No resource r configuration for this node (acceptable node names: a).`},
		{"no section at all", "  resource r { local /x }",
			`hast.conf:1:3: No resource r configuration for this node (acceptable node names: a).`},
		{"missing remote", "resource r { local /x on a { } on b { remote 10.0.0.1 } }",
			`hast.conf:1:1: Remote address not configured for resource r.`},
		{"missing local", "resource r { on a { remote none } on b { local /x } }",
			`hast.conf:1:1: Path to local component not configured for resource r.`},

		// Lengths.
		{"resource name too long", "resource " + long(255) + " { }",
			`hast.conf:1:10: resource name is too long (255 bytes; the limit is 254)`},
		{"provider name too long", "resource r { name " + long(255) + " }",
			`hast.conf:1:19: name argument is too long (255 bytes; the limit is 254)`},
		{"node provider name too long", "resource r { on b { name " + long(300) + " } }",
			`hast.conf:1:26: name argument is too long (300 bytes; the limit is 254)`},
		{"local path too long", "resource r { on a { local /" + long(4095) + " } }",
			`hast.conf:1:27: local argument is too long (4096 bytes; the limit is 4095)`},
		{"exec path too long", "exec /" + long(4095),
			`hast.conf:1:6: exec argument is too long (4096 bytes; the limit is 4095)`},
		{"pidfile path too long", "on a { pidfile /" + long(4095) + " }",
			`hast.conf:1:16: pidfile argument is too long (4096 bytes; the limit is 4095)`},
		{"listen address too long", "listen " + long(1024),
			`hast.conf:1:8: listen argument is too long (1024 bytes; the limit is 1023)`},
		{"remote address too long", "resource r { on a { remote " + long(1024) + " } }",
			`hast.conf:1:28: remote argument is too long (1024 bytes; the limit is 1023)`},
		{"control address too long", "control /" + long(1023),
			`hast.conf:1:9: control argument is too long (1024 bytes; the limit is 1023)`},
		{"source address too long", "resource r { on a { source " + long(1024) + " } }",
			`hast.conf:1:28: source argument is too long (1024 bytes; the limit is 1023)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("hast.conf", []byte(tc.src), Options{Node: "a"})
			if err == nil {
				t.Fatalf("no error, want %s", tc.want)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is %T, want *ParseError", err, err)
			}
			if err.Error() != tc.want {
				t.Errorf("got  %s\nwant %s", err, tc.want)
			}
		})
	}
}

// TestLongLimitsAccepted checks the lengths just under each limit, so the limits are not
// off by one in the other direction. Addresses are left out: the host part of a TCP address
// and a socket path have tighter limits of their own (see TestParseAddr).
func TestLongLimitsAccepted(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	src := "exec /" + long(4094) + "\npidfile /" + long(4094) + "\nresource " + long(254) +
		" { on a { name " + long(254) + " local /" + long(4094) + " remote none } }"
	c, err := Parse("hast.conf", []byte(src), Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	r := c.Resources[0]
	if len(r.Name) != 254 || len(r.Provname) != 254 || len(r.Local) != 4095 || len(r.Exec) != 4095 || len(c.Pidfile) != 4095 {
		t.Errorf("lengths name %d provname %d local %d exec %d pidfile %d",
			len(r.Name), len(r.Provname), len(r.Local), len(r.Exec), len(c.Pidfile))
	}
}
