package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Test keys under testdata/linksec (not secret; made for these tests only).
const (
	tPSK      = "testdata/linksec/psk"
	tShortPSK = "testdata/linksec/short.psk"
	tCert     = "testdata/linksec/node.crt"
	tKey      = "testdata/linksec/node.key"
	tOtherKey = "testdata/linksec/other.key"
	tCA       = "testdata/linksec/ca.crt"
)

func TestLinkSecurityGolden(t *testing.T) {
	for _, node := range []string{"a", "b"} {
		t.Run(node, func(t *testing.T) {
			c, err := Load("testdata/linksec.conf", Options{Node: node})
			if err != nil {
				t.Fatal(err)
			}
			inh, certs, plain := c.Resource("inherits"), c.Resource("certificates"), c.Resource("plain")
			if inh.TLS.PSK != tPSK || certs.TLS.Cert != tCert || plain.TLS.Enabled() {
				t.Fatalf("link security: inherits %+v, certificates %+v, plain %+v", inh.TLS, certs.TLS, plain.TLS)
			}
			// The file is the same on both nodes, and so is what it says about link security.
			checkGolden(t, "testdata/linksec."+node+".golden", dump(c))
		})
	}
}

// TestLinkSecurityValues covers each keyword at each level it is allowed, "none", and the
// precedence: a resource with any tls-* statement uses only its own; the others use the top
// level's.
func TestLinkSecurityValues(t *testing.T) {
	const node = `on a { local /dev/a remote 10.0.0.2 }`
	certs := "tls-cert " + tCert + " tls-key " + tKey + " tls-ca " + tCA
	psk := LinkSecurity{PSK: tPSK}
	cert := LinkSecurity{Cert: tCert, Key: tKey, CA: tCA}
	for _, tc := range []struct {
		name string
		src  string
		want LinkSecurity
	}{
		{"none by default", `resource r { ` + node + ` }`, LinkSecurity{}},
		{"psk global", `tls-psk ` + tPSK + ` resource r { ` + node + ` }`, psk},
		{"psk global after resource", `resource r { ` + node + ` } tls-psk ` + tPSK, psk},
		{"psk resource", `resource r { tls-psk ` + tPSK + ` ` + node + ` }`, psk},
		{"certificates global", certs + ` resource r { ` + node + ` }`, cert},
		{"certificates resource, any order", `resource r { tls-ca ` + tCA + ` ` + node + ` tls-key ` + tKey + ` tls-cert ` + tCert + ` }`, cert},
		{"resource psk over global certificates", certs + ` resource r { tls-psk ` + tPSK + ` ` + node + ` }`, psk},
		{"resource certificates over global psk", `tls-psk ` + tPSK + ` resource r { ` + certs + ` ` + node + ` }`, cert},
		{"resource none over global psk", `tls-psk ` + tPSK + ` resource r { tls-psk none ` + node + ` }`, LinkSecurity{}},
		{"resource none over global certificates", certs + ` resource r { tls-psk none ` + node + ` }`, LinkSecurity{}},
		{"global none", `tls-psk none resource r { ` + node + ` }`, LinkSecurity{}},
		{"later wins", `tls-psk none tls-psk ` + tPSK + ` resource r { ` + node + ` }`, psk},
		{"later none wins", `resource r { tls-psk ` + tPSK + ` tls-psk none ` + node + ` }`, LinkSecurity{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("hast.conf", []byte(tc.src), Options{Node: "a"})
			if err != nil {
				t.Fatal(err)
			}
			got := c.Resources[0].TLS
			if got.Enabled() != (got.Digest != [32]byte{}) {
				t.Errorf("digest %x for link security enabled=%v", got.Digest, got.Enabled())
			}
			got.Digest = [32]byte{}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// The other resources' settings never leak into one another.
func TestLinkSecurityPerResource(t *testing.T) {
	src := `resource r { tls-psk ` + tPSK + ` on a { local /r remote none } }
resource s { on a { local /s remote none } }
resource u { tls-cert ` + tCert + ` tls-key ` + tKey + ` tls-ca ` + tCA + ` on a { local /u remote none } }`
	c, err := Parse("hast.conf", []byte(src), Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	r, s, u := c.Resource("r").TLS, c.Resource("s").TLS, c.Resource("u").TLS
	if r.PSK != tPSK || r.Cert != "" || s.Enabled() || u.PSK != "" || u.Cert != tCert {
		t.Fatalf("r %+v\ns %+v\nu %+v", r, s, u)
	}
	if r.Digest == u.Digest {
		t.Fatal("a pre-shared key and certificates have the same digest")
	}
}

func TestLinkSecurityDigestFollowsContents(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "psk")
	src := []byte("resource r { tls-psk " + key + " on a { local /l remote none } }")
	load := func(content string) [32]byte {
		t.Helper()
		if err := os.WriteFile(key, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Parse("hast.conf", src, Options{Node: "a"})
		if err != nil {
			t.Fatal(err)
		}
		return c.Resources[0].TLS.Digest
	}
	d1, d1again, d2 := load("first secret of the two\n"), load("first secret of the two\n"), load("second secret of the two\n")
	if d1 != d1again {
		t.Error("the same key file gave two digests")
	}
	if d1 == d2 {
		t.Error("a changed key behind the same path gave the same digest; a reload would not notice it")
	}
}

// TestLinkSecurityErrors checks each mistake with its exact position and wording, resolved for
// node "a" from the real file system.
func TestLinkSecurityErrors(t *testing.T) {
	dir := t.TempDir()
	const node = ` on a { local /l remote none } `
	for _, tc := range []struct {
		name string
		src  string
		want string
	}{
		// Depth.
		{"tls-psk in a node section", "on a {\n  tls-psk " + tPSK + "\n}",
			`hast.conf:2:3: keyword "tls-psk" is not allowed in section "on a"; it belongs at top level or in a resource`},
		{"tls-cert in a resource's node section", "resource r { on a { tls-cert " + tCert + " } }",
			`hast.conf:1:21: keyword "tls-cert" is not allowed in section "on a" of resource "r"; it belongs at top level or in a resource`},
		{"tls-ca in another node's section", "resource r { on b { tls-ca " + tCA + " }" + node + "}",
			`hast.conf:1:21: keyword "tls-ca" is not allowed in section "on b" of resource "r"; it belongs at top level or in a resource`},
		{"misspelt", "resource r {\n tls-pks " + tPSK + node + "}",
			`hast.conf:2:2: unknown keyword "tls-pks"; expected one of: checksum, compression, exec, local, metaflush, name, on, replication, timeout, tls-ca, tls-cert, tls-key, tls-psk, "}" (did you mean "tls-psk"?)`},

		// Arguments.
		{"missing argument", "tls-psk",
			`hast.conf:1:8: expected a key file or "none" after "tls-psk", found end of file`},
		{"number argument", "tls-key 0600",
			`hast.conf:1:9: expected a key file after "tls-key", found number 0600 (a word of digits only is a number)`},
		{"none is only for tls-psk", "tls-cert none",
			`hast.conf:1:10: expected a certificate file after "tls-cert", found keyword "none" (keywords are reserved and cannot be names or values)`},
		{"keyword as a resource name", "resource tls-psk { }",
			`hast.conf:1:10: expected a resource name after "resource", found keyword "tls-psk" (keywords are reserved and cannot be names or values)`},
		{"path too long", "tls-ca /" + strings.Repeat("x", 4095),
			`hast.conf:1:8: tls-ca argument is too long (4096 bytes; the limit is 4095)`},

		// Both styles at one level.
		{"both at top", "tls-psk " + tPSK + "\n\ntls-cert " + tCert,
			`hast.conf:3:1: "tls-cert" cannot be combined with "tls-psk" (line 1); link security uses either a pre-shared key (tls-psk) or certificates (tls-cert, tls-key, tls-ca)`},
		{"both in a resource", "resource r {\n  tls-ca " + tCA + "\n  tls-psk none\n}",
			`hast.conf:3:3: "tls-psk" cannot be combined with "tls-ca" (line 2); link security uses either a pre-shared key (tls-psk) or certificates (tls-cert, tls-key, tls-ca)`},

		// Incomplete certificates.
		{"key and CA missing at top", "tls-cert " + tCert,
			`hast.conf:1:1: tls-cert, tls-key and tls-ca go together, but tls-key is missing at top level`},
		{"certificate missing in resource", "resource r {\n  tls-key " + tKey + " tls-ca " + tCA + node + "}",
			`hast.conf:2:3: tls-cert, tls-key and tls-ca go together, but tls-cert is missing in resource "r"`},
		{"resource does not inherit a half", "tls-cert " + tCert + " tls-key " + tKey + " tls-ca " + tCA + "\nresource r { tls-ca " + tCA + node + "}",
			`hast.conf:2:14: tls-cert, tls-key and tls-ca go together, but tls-cert is missing in resource "r"`},

		// Files.
		{"missing psk file", "resource r {" + node + "\n\ttls-psk " + dir + "/nosuch }",
			`hast.conf:2:10: cannot read the tls-psk file: stat ` + dir + `/nosuch: no such file or directory`},
		{"psk is a directory", "tls-psk " + dir,
			`hast.conf:1:9: cannot read the tls-psk file: ` + dir + `: not a regular file`},
		{"psk is a device", "tls-psk /dev/zero",
			`hast.conf:1:9: cannot read the tls-psk file: /dev/zero: not a regular file`},
		{"unused top-level key is still checked", "tls-psk " + dir + "/nosuch\nresource r { tls-psk " + tPSK + node + "}",
			`hast.conf:1:9: cannot read the tls-psk file: stat ` + dir + `/nosuch: no such file or directory`},
		{"short psk", "tls-psk " + tShortPSK,
			`hast.conf:1:9: tls-psk file ` + tShortPSK + `: pre-shared key of 9 bytes is too short; it needs at least 16 (e.g. head -c 32 /dev/urandom | base64)`},
		{"missing key file", "tls-cert " + tCert + " tls-key " + dir + "/k tls-ca " + tCA,
			`hast.conf:1:44: cannot read the tls-key file: stat ` + dir + `/k: no such file or directory`},
		{"key of another certificate", "resource r {\n tls-key " + tOtherKey + "\n tls-cert " + tCert + "\n tls-ca " + tCA + node + "}",
			`hast.conf:3:11: tls-cert ` + tCert + ` and tls-key ` + tOtherKey + `: certificate and key: tls: private key does not match public key`},
		{"certificate and key swapped", "tls-cert " + tKey + " tls-key " + tCert + " tls-ca " + tCA,
			`hast.conf:1:44: tls-cert ` + tKey + ` and tls-key ` + tCert + `: certificate and key: tls: failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched`},
		{"key as CA", "tls-cert " + tCert + " tls-key " + tKey + " tls-ca " + tKey,
			`hast.conf:1:77: tls-ca file ` + tKey + `: CA file holds a "PRIVATE KEY" block; only certificates belong there`},
		{"PSK file as CA", "tls-cert " + tCert + " tls-key " + tKey + " tls-ca " + tPSK,
			`hast.conf:1:77: tls-ca file ` + tPSK + `: no PEM certificate in the CA file`},
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

// A resource's link security takes part in the equality the daemon's reload uses.
func TestLinkSecurityInResourceEquality(t *testing.T) {
	parse := func(src string) Resource {
		t.Helper()
		c, err := Parse("hast.conf", []byte(src), Options{Node: "a"})
		if err != nil {
			t.Fatal(err)
		}
		return *c.Resources[0]
	}
	plain := parse(`resource r { on a { local /l remote none } }`)
	withKey := parse(`tls-psk ` + tPSK + ` resource r { on a { local /l remote none } }`)
	again := parse(`resource r { tls-psk ` + tPSK + ` on a { local /l remote none } }`)
	if plain == withKey {
		t.Error("adding tls-psk leaves the resource equal")
	}
	if !reflect.DeepEqual(withKey, again) || withKey != again {
		t.Error("the same key at another level makes a different resource")
	}
}
