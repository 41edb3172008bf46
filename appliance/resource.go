package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"hast/appliance/config"
	"hast/blockdev"
	"hast/internal/hist"
	"hast/internal/linksec"
	"hast/internal/nv"
	"hast/replicate"
	"hast/replicate/proto"
)

// Role is a resource's role on this node.
type Role int

const (
	RoleInit Role = iota + 1
	RolePrimary
	RoleSecondary
)

func (r Role) String() string {
	switch r {
	case RoleInit:
		return "init"
	case RolePrimary:
		return "primary"
	case RoleSecondary:
		return "secondary"
	}
	return "unknown"
}

// ParseRole parses a role word of `hast role`.
func ParseRole(s string) (Role, error) {
	switch s {
	case "init":
		return RoleInit, nil
	case "primary":
		return RolePrimary, nil
	case "secondary":
		return RoleSecondary, nil
	}
	return 0, fmt.Errorf("unknown role %q (expected init, primary or secondary)", s)
}

// resource is the worker of one configured resource.
type resource struct {
	d    *Daemon
	log  zerolog.Logger
	name string

	mu      sync.Mutex
	cfg     *config.Resource
	remote  *remoteName     // nil for `remote none`
	link    *linksec.Config // link security, nil for plain HAST
	rcfg    replicate.Config
	role    Role
	dev     blockdev.Device
	primary *replicate.Primary
	live    *liveVolume // what the frontends serve while primary
	// secondary session
	secCancel context.CancelFunc
	secDone   chan struct{}

	// evMu guards what engine events update. Events arrive on engine goroutines that role
	// changes wait for, so they must never need mu.
	evMu         sync.Mutex
	hookExec     string
	secConnected bool
	splitBrain   bool
	sbReport     *replicate.SplitBrainReport
	discardNext  bool   // resolve --keep remote: the next session discards our divergent extents
	lastSaved    string // where the last discarded split-brain data went
	lastErr      string
	connErr      string // why the primary's last attempt to connect failed, "" if it did not
}

func newResource(d *Daemon, rc *config.Resource) (*resource, error) {
	r := &resource{d: d, name: rc.Name, log: d.log.With().Str("resource", rc.Name).Logger(), role: RoleInit}
	if err := r.setConfig(rc); err != nil {
		return nil, err
	}
	r.loadSplitBrain()
	return r, nil
}

func toMode(m config.Replication) replicate.Mode {
	switch m {
	case config.ReplFullsync:
		return replicate.ModeFullsync
	case config.ReplAsync:
		return replicate.ModeAsync
	}
	return replicate.ModeMemsync
}

func toChecksum(c config.Checksum) proto.Checksum {
	switch c {
	case config.ChecksumCRC32:
		return proto.ChecksumCRC32
	case config.ChecksumSHA256:
		return proto.ChecksumSHA256
	}
	return proto.ChecksumNone
}

func toCompression(c config.Compression) proto.Compression {
	switch c {
	case config.CompressionHole:
		return proto.CompressionHole
	case config.CompressionLZF:
		return proto.CompressionLZF
	}
	return proto.CompressionNone
}

// setConfig derives the engine configuration from a hast.conf resource.
func (r *resource) setConfig(rc *config.Resource) error {
	rcfg := replicate.Config{
		Name:        rc.Name,
		Mode:        toMode(rc.Replication),
		Checksum:    toChecksum(rc.Checksum),
		Compression: toCompression(rc.Compression),
		Timeout:     time.Duration(rc.Timeout) * time.Second,
		MetaFlush:   rc.MetaFlush,
		Keepalive:   r.d.opt.Keepalive,
		Reconnect:   r.d.opt.Reconnect,
		SyncRate:    r.d.opt.SyncRate,
		Dial:        r.d.opt.Dial,
		OnEvent:     r.event,
		OnConnect: func(err error) {
			r.evMu.Lock()
			r.connErr = connectError(err)
			r.evMu.Unlock()
		},

		SplitBrainDir: r.d.opt.StateDir,
		OnDiscardSaved: func(path string) {
			r.evMu.Lock()
			r.lastSaved = path
			r.evMu.Unlock()
		},
	}
	var remote *remoteName
	if rc.Remote != "none" {
		a, err := config.ParseAddr(rc.Remote, defaultPort)
		if err != nil {
			return fmt.Errorf("resource %s: remote %s: %w", rc.Name, rc.Remote, err)
		}
		if a.Network == "unix" {
			return fmt.Errorf("resource %s: remote %s: replication needs a TCP address", rc.Name, rc.Remote)
		}
		host, _, err := net.SplitHostPort(a.Address)
		if err != nil {
			return fmt.Errorf("resource %s: remote %s: %w", rc.Name, rc.Remote, err)
		}
		// A name is looked up by each connection attempt, not here (see remoteName).
		rcfg.Network, rcfg.Remote, remote = a.Network, a.Address, newRemoteName(a.Network, host)
		if rc.Source != "" {
			sa, err := config.ParseAddr(rc.Source, 0)
			if err != nil {
				return fmt.Errorf("resource %s: source %s: %w", rc.Name, rc.Source, err)
			}
			rcfg.Source = sa.Address
		}
	}
	link, err := loadLink(rc, r.log)
	if err != nil {
		return err
	}
	if link != nil {
		dial := rcfg.Dial
		if dial == nil {
			dial = replicate.TCPDialer
		}
		rcfg.Dial = link.Dialer(dial)
	}
	r.mu.Lock()
	r.cfg, r.rcfg, r.remote, r.link = rc, rcfg, remote, link
	r.mu.Unlock()
	r.evMu.Lock()
	r.hookExec = rc.Exec
	r.evMu.Unlock()
	return nil
}

// loadLink makes the link security of a resource from the files hast.conf names (checked
// already when the file was parsed; read again here, so an error now means they changed).
func loadLink(rc *config.Resource, log zerolog.Logger) (*linksec.Config, error) {
	l := rc.TLS
	var (
		link   *linksec.Config
		err    error
		secret string
	)
	switch {
	case l.PSK != "":
		link, err = linksec.LoadPSK(l.PSK, rc.Name)
		secret = l.PSK
	case l.Cert != "":
		link, err = linksec.LoadCertificates(l.Cert, l.Key, l.CA, rc.Name)
		secret = l.Key
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("resource %s: link security: %w", rc.Name, err)
	}
	// Like ssh with a private key, say so when a secret is readable by others; refusing would
	// break configurations that work, so this only warns.
	if fi, err := os.Stat(secret); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn().Str("file", secret).Str("mode", fi.Mode().Perm().String()).
			Msg("link security secret is readable by other users than its owner; chmod 600 it")
	}
	return link, nil
}

// event runs the exec hook for an engine event and remembers split-brain for status.
func (r *resource) event(e replicate.Event) {
	r.evMu.Lock()
	switch e {
	case replicate.EventSplitBrain:
		r.splitBrain = true
	case replicate.EventConnect:
		r.secConnected = true
	case replicate.EventDisconnect:
		r.secConnected = false
	}
	exec := r.hookExec
	r.evMu.Unlock()
	switch e {
	case replicate.EventSplitBrain:
		go r.captureSplitBrain()
	case replicate.EventConnect:
		r.clearSplitBrain()
	}
	r.d.hooks.run(exec, string(e), r.name)
}

// connectError says why a primary could not connect, for status: a refusal in the peer's own
// words ("refused by peer: address not a configured remote"), otherwise the error.
func connectError(err error) string {
	if err == nil {
		return ""
	}
	const refused = "peer refused the connection: "
	msg := err.Error()
	i := strings.Index(msg, refused)
	if i < 0 {
		return msg
	}
	why := strings.TrimSuffix(msg[i+len(refused):], ".")
	if why != "" {
		why = strings.ToLower(why[:1]) + why[1:]
	}
	return "refused by peer: " + why
}

// ErrBusy is returned when a role change is refused because the volume is in use.
var ErrBusy = errors.New("resource is in use")

// openPrimaryLocked opens the local component, starts the primary engine on it and exports
// the volume to the frontends (r.mu held).
func (r *resource) openPrimaryLocked() error {
	dev, err := r.d.openLocal(r.cfg.Local)
	if err != nil {
		return fmt.Errorf("open local component: %w", err)
	}
	p, err := replicate.OpenPrimary(r.rcfg, dev, r.log)
	if err != nil {
		dev.Close()
		return err
	}
	r.dev, r.primary, r.live = dev, p, &liveVolume{v: p}
	r.d.export(r.cfg.Name, r.live)
	return nil
}

// openSecondaryLocked opens the local component for the secondary sessions to come (r.mu held).
func (r *resource) openSecondaryLocked() error {
	dev, err := r.d.openLocal(r.cfg.Local)
	if err != nil {
		return fmt.Errorf("open local component: %w", err)
	}
	if _, err := blockdev.ReadMetadata(dev, r.cfg.Name); err != nil {
		dev.Close()
		return err
	}
	r.dev = dev
	return nil
}

func (r *resource) stopSecondaryLocked() {
	if r.secCancel != nil {
		r.secCancel()
		done := r.secDone
		r.mu.Unlock()
		<-done
		r.mu.Lock()
		r.secCancel, r.secDone = nil, nil
	}
	r.evMu.Lock()
	r.secConnected = false
	r.evMu.Unlock()
}

// Link security refusals (our extension; the peer logs them like HAST's errmsg).
const (
	msgLinkRequired   = "Link security required."
	msgLinkNotEnabled = "Link security not configured for the resource."
)

// Admit implements replicate.Target.
func (r *resource) Admit(peer net.IP, link replicate.Link) (string, bool) {
	r.mu.Lock()
	remote := r.remote
	r.mu.Unlock()
	// The lookup of a remote name happens outside mu: status must not wait for DNS.
	if remote == nil || (peer != nil && !remote.is(peer, r.log)) {
		return "No access to the resource.", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// No downgrade: a resource with link security takes only secured connections, and one
	// without refuses them, so a misconfiguration shows on both nodes instead of working
	// half-secured. (The acceptor has already refused a secured connection whose handshake
	// names another resource than the one it authenticated for.)
	switch {
	case r.link != nil && !link.Secure:
		return msgLinkRequired, false
	case r.link == nil && link.Secure:
		return msgLinkNotEnabled, false
	}
	if r.role != RoleSecondary {
		return fmt.Sprintf("Remote node acts as %s for the resource and not as secondary.", r.role), r.role == RolePrimary
	}
	return "", false
}

// Serve implements replicate.Target: it replaces a running session with the new one.
func (r *resource) Serve(c1, c2 net.Conn, version uint8, hello *nv.List) {
	r.mu.Lock()
	if r.role != RoleSecondary {
		r.mu.Unlock()
		c1.Close()
		c2.Close()
		return
	}
	r.stopSecondaryLocked()
	if r.role != RoleSecondary || r.dev == nil {
		r.mu.Unlock()
		c1.Close()
		c2.Close()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	r.secCancel, r.secDone = cancel, done
	cfg, dev := r.rcfg, r.dev
	r.mu.Unlock()
	r.evMu.Lock()
	cfg.DiscardOnSplitBrain = r.discardNext
	r.evMu.Unlock()
	go func() {
		defer close(done)
		err := replicate.RunSecondary(ctx, cfg, dev, c1, c2, version, hello, r.log)
		r.evMu.Lock()
		if err != nil {
			r.lastErr = err.Error()
		}
		r.secConnected = false
		if cfg.DiscardOnSplitBrain && r.lastSaved != "" {
			r.discardNext = false
		}
		r.evMu.Unlock()
		var sbe *replicate.SplitBrainError
		if errors.As(err, &sbe) {
			r.recordSplitBrain(&sbe.Report)
		}
	}()
}

// ResourceStatus is one resource in the control API's status reply. Field names follow HAST's
// control protocol where there is one.
type ResourceStatus struct {
	Name        string `json:"name"`
	Role        string `json:"role"`
	Provname    string `json:"provname"`
	LocalPath   string `json:"localpath"`
	RemoteAddr  string `json:"remoteaddr"`
	SourceAddr  string `json:"sourceaddr,omitempty"`
	Replication string `json:"replication"`
	Checksum    string `json:"checksum"`
	Compression string `json:"compression"`
	Status      string `json:"status,omitempty"` // complete | degraded; empty without a worker
	WorkerPID   int    `json:"workerpid"`
	Dirty       int64  `json:"dirty"`
	ExtentSize  uint32 `json:"extentsize"`
	KeepDirty   uint32 `json:"keepdirty"`
	Connected   bool   `json:"connected"`
	SplitBrain  bool   `json:"split_brain"`
	Syncing     bool   `json:"syncing"`
	SyncSource  string `json:"sync_source,omitempty"`
	SyncTotal   int64  `json:"sync_total,omitempty"`
	SyncDone    int64  `json:"sync_done,omitempty"`
	DataSize    int64  `json:"datasize,omitempty"`
	LastError   string `json:"last_error,omitempty"`
	Device      string `json:"device,omitempty"`      // /dev/hast/<name> on a primary served by ublk
	UblkDevice  string `json:"ublk_device,omitempty"` // the /dev/ublkbN it links to

	Verify       *replicate.VerifyStatus `json:"verify,omitempty"`
	LastSaved    string                  `json:"discarded_saved_to,omitempty"`
	Inconsistent bool                    `json:"inconsistent,omitempty"`
	LinkSecurity string                  `json:"link_security,omitempty"` // "tls-psk" or "tls-cert"; empty for plain HAST

	Stats Statistics `json:"statistics"`
	Queue struct {
		Local int `json:"local"`
		Send  int `json:"send"`
		Recv  int `json:"recv"`
		Done  int `json:"done"`
		Idle  int `json:"idle"`
	} `json:"queues"`
}

// Statistics are a primary's request counters (replicate.Stats) with the snake_case names the
// rest of the status uses.
type Statistics struct {
	Reads            uint64 `json:"reads"`
	Writes           uint64 `json:"writes"`
	Deletes          uint64 `json:"deletes"`
	Flushes          uint64 `json:"flushes"`
	ActivemapUpdates uint64 `json:"activemap_updates"`
	ReadErrors       uint64 `json:"read_errors"`
	WriteErrors      uint64 `json:"write_errors"`
	DeleteErrors     uint64 `json:"delete_errors"`
	FlushErrors      uint64 `json:"flush_errors"`
	RemoteReads      uint64 `json:"remote_reads"`
	SyncedBytes      uint64 `json:"synced_bytes"`
}

func (r *resource) status() ResourceStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cfg
	s := ResourceStatus{
		Name: c.Name, Role: r.role.String(), Provname: c.Provname, LocalPath: c.Local, RemoteAddr: c.Remote,
		SourceAddr: c.Source, Replication: c.Replication.String(), Checksum: c.Checksum.String(),
		Compression: c.Compression.String(),
	}
	if r.link != nil {
		s.LinkSecurity = "tls-" + map[bool]string{true: "psk", false: "cert"}[r.link.Mode() == linksec.ModePSK]
	}
	r.evMu.Lock()
	s.SplitBrain, s.LastError, s.LastSaved = r.splitBrain, r.lastErr, r.lastSaved
	secConnected, connErr := r.secConnected, r.connErr
	r.evMu.Unlock()
	switch r.role {
	case RolePrimary:
		ps := r.primary.Status()
		s.WorkerPID = os.Getpid()
		s.Connected, s.Syncing = ps.Connected, ps.Syncing
		if !ps.Connected && connErr != "" {
			s.LastError = connErr
		}
		s.Status = "degraded"
		if ps.Connected && !ps.Degraded {
			s.Status = "complete"
		}
		s.Dirty, s.ExtentSize, s.KeepDirty, s.DataSize = ps.DirtyBytes, ps.ExtentSize, ps.KeepDirty, ps.DataSize
		s.SplitBrain = s.SplitBrain || ps.SplitBrain
		s.Inconsistent = ps.Metadata.Inconsistent
		if ps.Syncing {
			s.SyncSource, s.SyncTotal, s.SyncDone = ps.SyncSource.String(), ps.SyncTotal, ps.SyncDone
		}
		s.Stats = Statistics(ps.Stats)
		if v := r.primary.VerifyProgress(); !v.Started.IsZero() {
			s.Verify = &v
		}
		s.Queue.Local = ps.Inflight
		s.Queue.Idle = replicate.MaxInflight - ps.Inflight
	case RoleSecondary:
		if md, err := blockdev.ReadMetadata(r.dev, r.name); err == nil {
			s.Inconsistent = md.Inconsistent || fileExists(replicate.InconsistentMarkFile(r.d.opt.StateDir, r.name))
		}
		if secConnected {
			// What this node knows itself: while it is the target of an unfinished
			// synchronisation (inconsistent) it is not complete, whatever the link says.
			s.WorkerPID = os.Getpid()
			s.Connected = true
			s.Status = "complete"
			if s.Inconsistent {
				s.Status, s.Syncing = "degraded", true
			}
		}
	}
	return s
}

// checkConsistent refuses promotion of a copy that is the target of an unfinished
// synchronisation (it would serve a mix of old and new blocks).
func (r *resource) checkConsistent() error {
	dev, err := blockdev.OpenReadOnly(r.cfg.Local)
	if err != nil {
		return fmt.Errorf("open local component: %w", err)
	}
	defer dev.Close()
	md, err := blockdev.ReadMetadata(dev, r.cfg.Name)
	if err != nil {
		return err
	}
	if md.Inconsistent {
		return fmt.Errorf("refusing to promote %s: this node's copy is inconsistent (a synchronisation from the peer did not finish); promote the peer, or use --force to accept a partly synchronised copy", r.cfg.Name)
	}
	if mark := replicate.InconsistentMarkFile(r.d.opt.StateDir, r.cfg.Name); fileExists(mark) {
		return fmt.Errorf("refusing to promote %s: this node's disk failed writes the primary acknowledged and could not record it in its metadata (%s); promote the peer, or use --force", r.cfg.Name, mark)
	}
	return nil
}

// verify starts an online verify; only the primary can run one.
func (r *resource) verify(rate int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.role != RolePrimary {
		return fmt.Errorf("%s is %s here; run verify on the primary", r.cfg.Name, r.role)
	}
	return r.primary.Verify(rate)
}

// latency returns the primary's latency histograms (none in other roles).
func (r *resource) latency() map[string]hist.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.role != RolePrimary || r.primary == nil {
		return nil
	}
	return r.primary.LatencySnapshot()
}

func (r *resource) shutdown() {
	r.setRole(RoleInit, true)
}
