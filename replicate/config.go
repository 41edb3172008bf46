package replicate

import (
	"context"
	"fmt"
	"net"
	"time"

	"hast/replicate/proto"
)

// Mode is a resource's replication mode; it decides when a write is acknowledged.
type Mode int

const (
	ModeFullsync Mode = iota
	ModeMemsync
	ModeAsync
)

func (m Mode) String() string {
	switch m {
	case ModeFullsync:
		return "fullsync"
	case ModeMemsync:
		return "memsync"
	case ModeAsync:
		return "async"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Protocol constants of HAST (hast-reference §7.6) and our limits.
const (
	DefaultTimeout    = 20 * time.Second
	KeepaliveInterval = 10 * time.Second
	ReconnectInterval = 10 * time.Second
	// MaxIO is the largest request we send to a peer. HAST's MAXPHYS was 128 KiB for years; staying
	// at it keeps us compatible with every HAST secondary, and splitting a 1 MiB write into eight
	// frames sent in one writev costs little.
	MaxIO = 128 << 10
	// MaxRecvIO is the largest request we accept (FreeBSD 13+ peers may send 1 MiB).
	MaxRecvIO = 1 << 20
	// MaxInflight bounds requests in flight per resource (HAST: 256).
	MaxInflight = 1024
	// AsyncBufferBytes bounds, per resource, the copies of writes an async primary keeps
	// between acknowledging them (once the local disk has them) and the peer's reply, like
	// DRBD's send buffer: when the peer falls this far behind, async writes wait for it instead
	// of growing the daemon's memory. A write larger than this is charged all of it, so it
	// waits until no other copy is held. 32 MiB is a quarter of a second of a gigabit link, and
	// one NBD request of the largest size. The bound is per resource: with several async
	// resources whose peers all fall behind, the daemon holds this much for each of them on top
	// of the NBD server's budget (see appliance/daemon.go).
	AsyncBufferBytes = 32 << 20
)

// Dialer opens outgoing connections; tests substitute one that injects faults.
type Dialer func(ctx context.Context, network, laddr, raddr string) (net.Conn, error)

// TCPDialer dials with TCP_NODELAY (Go's default), binding laddr when set (HAST's `source`).
func TCPDialer(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	d := net.Dialer{}
	if laddr != "" {
		a, err := net.ResolveTCPAddr(network, laddr)
		if err != nil {
			return nil, fmt.Errorf("resolve source %s: %w", laddr, err)
		}
		d.LocalAddr = a
	}
	return d.DialContext(ctx, network, raddr)
}

// Event is one of HAST's hook events.
type Event string

const (
	EventConnect    Event = "connect"
	EventDisconnect Event = "disconnect"
	EventSyncStart  Event = "syncstart"
	EventSyncDone   Event = "syncdone"
	EventSyncIntr   Event = "syncintr"
	EventSplitBrain Event = "split-brain"
)

// Config is what the engines need to know about a resource; the daemon builds it from hast.conf.
type Config struct {
	Name        string
	Network     string // "tcp", "tcp4" or "tcp6"
	Remote      string // host:port, or "" for `remote none`
	Source      string // local host:port to bind, or ""
	Mode        Mode
	Checksum    proto.Checksum
	Compression proto.Compression
	Timeout     time.Duration
	MetaFlush   bool
	// Keepalive and Reconnect default to HAST's 10 s; tests shorten them.
	Keepalive time.Duration
	Reconnect time.Duration
	// SyncRate limits resynchronisation in bytes per second (0 = unlimited).
	SyncRate int64
	Dial     Dialer
	// SplitBrainDir is where the discarded side of a resolved split-brain is saved.
	SplitBrainDir string
	// DiscardOnSplitBrain (secondary): if this session finds a split-brain, resolve it by saving
	// this node's divergent extents to SplitBrainDir and taking the primary's data for them.
	DiscardOnSplitBrain bool
	// OnDiscardSaved is told where the discarded side of a split-brain was saved.
	OnDiscardSaved func(path string)
	// OnEvent is called for hook events; it must not block.
	OnEvent func(Event)
	// OnConnect, if set, is told the outcome of each attempt to connect to the peer (nil when
	// it succeeded), so that status can say why a primary is not connected; it must not block.
	OnConnect func(error)

	// asyncBuffer replaces AsyncBufferBytes when set (tests).
	asyncBuffer int64
}

func (c *Config) withDefaults() Config {
	cc := *c
	if cc.Timeout <= 0 {
		cc.Timeout = DefaultTimeout
	}
	if cc.Keepalive <= 0 {
		cc.Keepalive = KeepaliveInterval
	}
	if cc.Reconnect <= 0 {
		cc.Reconnect = ReconnectInterval
	}
	if cc.Network == "" {
		cc.Network = "tcp"
	}
	if cc.Dial == nil {
		cc.Dial = TCPDialer
	}
	if cc.OnEvent == nil {
		cc.OnEvent = func(Event) {}
	}
	if cc.asyncBuffer <= 0 {
		cc.asyncBuffer = AsyncBufferBytes
	}
	return cc
}
