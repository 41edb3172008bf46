package config

import (
	"fmt"
	"os"
)

// Defaults of hastd (hast.h) used when the file does not say otherwise.
const (
	DefaultControl = "uds:///var/run/hastctl"
	DefaultPidfile = "/var/run/hastd.pid"
	DefaultTimeout = 20 // seconds
	DefaultPort    = 8457
)

// DefaultListen is where hastd listens when neither the top level nor this node's section has
// a listen statement.
var DefaultListen = []string{"tcp4://0.0.0.0:8457", "tcp6://[::]:8457"}

// Replication is a resource's replication mode. The numeric values are HAST's.
type Replication int

// Replication modes; HAST's default is memsync.
const (
	ReplFullsync Replication = iota
	ReplMemsync
	ReplAsync
)

func (r Replication) String() string {
	switch r {
	case ReplFullsync:
		return "fullsync"
	case ReplMemsync:
		return "memsync"
	case ReplAsync:
		return "async"
	}
	return fmt.Sprintf("Replication(%d)", int(r))
}

// Checksum is the checksum algorithm applied to replicated data. The numeric values are HAST's.
type Checksum int

// Checksum algorithms; HAST's default is none.
const (
	ChecksumNone Checksum = iota
	ChecksumCRC32
	ChecksumSHA256
)

func (c Checksum) String() string {
	switch c {
	case ChecksumNone:
		return "none"
	case ChecksumCRC32:
		return "crc32"
	case ChecksumSHA256:
		return "sha256"
	}
	return fmt.Sprintf("Checksum(%d)", int(c))
}

// Compression is the compression applied to replicated data. The numeric values are HAST's.
type Compression int

// Compression algorithms; HAST's default is hole.
const (
	CompressionNone Compression = iota
	CompressionHole
	CompressionLZF
)

func (c Compression) String() string {
	switch c {
	case CompressionNone:
		return "none"
	case CompressionHole:
		return "hole"
	case CompressionLZF:
		return "lzf"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

// Config is hast.conf resolved for one node: every value is final (precedence and defaults
// applied) and only resources and sections that apply to this node contribute.
type Config struct {
	Path string // file it came from
	// Node is the name the file was resolved for: Options.Node when given, otherwise the first
	// "on" name that matched this host; empty when no section matched and none was given.
	Node      string
	Control   string   // control socket address
	Pidfile   string   // pidfile path
	Listen    []string // listen addresses in file order (top level and this node's section)
	Resources []*Resource
}

// Resource is one resource of hast.conf, resolved for this node.
type Resource struct {
	Name        string
	Provname    string // provider name (/dev/hast/<Provname>); the resource name unless "name" is set
	Local       string // path to the local component
	Remote      string // peer address, or "none"
	Source      string // local address to bind before connecting; empty for any
	Replication Replication
	Checksum    Checksum
	Compression Compression
	Timeout     int    // seconds, > 0
	Exec        string // hook program; empty for none
	MetaFlush   bool   // flush metadata writes

	// Extensions of ours (not HAST's) are added below this line.

	// TLS is the resource's link security; the zero value means none (plain HAST).
	TLS LinkSecurity
}

// LinkSecurity is how a resource's replication link is authenticated and encrypted (our
// extension; see package hast/internal/linksec): with a pre-shared key (PSK) or with
// certificates (Cert, Key and CA), never both. Paths are as written in the file.
type LinkSecurity struct {
	PSK  string // tls-psk: file holding the pre-shared secret
	Cert string // tls-cert: this node's certificate (PEM)
	Key  string // tls-key: its private key (PEM)
	CA   string // tls-ca: the CA certificates the peer's certificate must chain to (PEM)
	// Digest is a SHA-256 over the files' contents as they were when the configuration was
	// loaded. The files were checked then; the digest makes a reload that finds a new secret
	// behind an unchanged path see a changed resource.
	Digest [32]byte
}

// Enabled reports whether the resource uses link security.
func (l LinkSecurity) Enabled() bool { return l.PSK != "" || l.Cert != "" }

// Resource returns the resource called name, or nil if there is none.
func (c *Config) Resource(name string) *Resource {
	for _, r := range c.Resources {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// Options select which node the file is resolved for.
type Options struct {
	// Node, when non-empty, is the only name "on" sections match (our --node override, so two
	// nodes can run on one machine). When empty, a section matches this host's full hostname,
	// its short hostname (up to the first '.'), its machine id (/etc/machine-id, compared
	// case-insensitively) or "hostid<N>" with N the host id in decimal, as hastd does.
	Node string
}

// Load reads and parses the file at path. A missing file gives an error wrapping
// fs.ErrNotExist.
func Load(path string, opt Options) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return Parse(path, src, opt)
}

// Parse parses src, naming it name in errors and in Config.Path.
func Parse(name string, src []byte, opt Options) (*Config, error) {
	return parse(name, src, opt, systemHost())
}

// ParseError is a problem in a configuration file, at a position in it.
type ParseError struct {
	File      string
	Line, Col int // from 1; Col counts bytes
	Msg       string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}
