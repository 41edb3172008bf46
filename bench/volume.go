package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"hast/blockdev"
	"hast/fuse"
	"hast/internal/nv"
	"hast/nbd"
	"hast/replicate"
	"hast/replicate/proto"
)

// resourceName is the resource (and FUSE file and NBD export) name of the bench volume.
const resourceName = "bench"

// PairOptions are the resource settings of the in-process pair; zero values are HAST's defaults
// except where noted.
type PairOptions struct {
	Checksum    proto.Checksum
	Compression proto.Compression
	// MetaFlush flushes the activemap after every update (HAST's default, "metaflush on").
	MetaFlush  bool
	ExtentSize uint32
	KeepDirty  uint32
	// LocalIO is "uring" to open the components with blockdev.OpenURing (O_DIRECT), else pwrite.
	LocalIO string
}

// DefaultPairOptions are hast.conf's defaults: no checksum, hole compression, metaflush on.
func DefaultPairOptions() PairOptions {
	return PairOptions{Compression: proto.CompressionHole, MetaFlush: true}
}

// Pair is a two-node replicated volume in this process: a secondary behind a replicate.Acceptor
// on 127.0.0.1 and a replicate.Primary connected to it, each on its own preallocated file.
type Pair struct {
	opts  PairOptions
	log   zerolog.Logger
	paths [2]string
	pdev  blockdev.Device
	sdev  blockdev.Device
	ln    net.Listener
	sec   *secondaryNode

	primary *replicate.Primary
	mode    replicate.Mode
	events  chan eventAt
}

type eventAt struct {
	ev replicate.Event
	at time.Time
}

// CreatePair makes the two component files in dir (size bytes each, preallocated), writes fresh
// HAST metadata on both and starts the secondary's listener. Start brings the primary up.
func CreatePair(dir string, size int64, opts PairOptions, log zerolog.Logger) (*Pair, error) {
	paths := [2]string{filepath.Join(dir, "primary.img"), filepath.Join(dir, "secondary.img")}
	pp := &Pair{opts: opts, log: log, paths: paths, events: make(chan eventAt, 256)}
	devs := [2]*blockdev.Device{&pp.pdev, &pp.sdev}
	for i, path := range paths {
		if err := blockdev.CreateFile(path, size); err != nil {
			pp.Close()
			return nil, err
		}
		if err := prefill(path); err != nil {
			pp.Close()
			return nil, err
		}
		open := blockdev.Open
		if opts.LocalIO == "uring" {
			open = blockdev.OpenURing
		}
		d, err := open(path)
		if err != nil {
			pp.Close()
			return nil, err
		}
		*devs[i] = d
		if _, err := blockdev.Create(d, resourceName, blockdev.CreateOptions{ExtentSize: opts.ExtentSize, KeepDirty: opts.KeepDirty, Align: blockdev.PageAlign}); err != nil {
			pp.Close()
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pp.Close()
		return nil, fmt.Errorf("secondary listener: %w", err)
	}
	pp.ln = ln
	pp.sec = &secondaryNode{dev: pp.sdev, log: log, cfg: pp.config(replicate.ModeFullsync, 0)}
	acc := &replicate.Acceptor{
		Lookup: func(name string) (replicate.Target, bool) { return pp.sec, name == resourceName },
		Known:  func(ip net.IP) bool { return ip.IsLoopback() },
		Log:    log,
	}
	go acc.Serve(ln)
	return pp, nil
}

func (pp *Pair) config(mode replicate.Mode, syncRate int64) replicate.Config {
	return replicate.Config{
		Name: resourceName, Mode: mode, Checksum: pp.opts.Checksum, Compression: pp.opts.Compression,
		MetaFlush: pp.opts.MetaFlush, SyncRate: syncRate,
		// Reconnect quickly: the resync benchmark times from the reconnection.
		Reconnect: 50 * time.Millisecond,
		Dial:      raceFenceDialer(),
	}
}

// Start opens the primary in mode and waits until the two nodes are connected and in sync (the
// first Start copies the whole volume: a new resource is fully synchronised).
func (pp *Pair) Start(ctx context.Context, mode replicate.Mode, syncRate int64) error {
	if pp.primary != nil {
		return errors.New("pair: primary already running")
	}
	cfg := pp.config(mode, syncRate)
	cfg.Remote = pp.ln.Addr().String()
	cfg.OnEvent = func(e replicate.Event) {
		select {
		case pp.events <- eventAt{e, time.Now()}:
		default:
		}
	}
	pp.sec.setConfig(pp.config(mode, syncRate))
	p, err := replicate.OpenPrimary(cfg, pp.pdev, pp.log)
	if err != nil {
		return fmt.Errorf("open primary: %w", err)
	}
	pp.primary, pp.mode = p, mode
	return pp.WaitSynced(ctx)
}

// WaitSynced waits until the primary is connected, not syncing and has nothing dirty.
func (pp *Pair) WaitSynced(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		s := pp.primary.Status()
		if s.Connected && !s.Syncing && s.DirtyBytes == 0 && !s.Degraded {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the pair to be in sync (connected %v, syncing %v, dirty %d bytes): %w",
				s.Connected, s.Syncing, s.DirtyBytes, ctx.Err())
		case <-t.C:
		}
	}
}

// Volume is the primary's volume (nil before Start).
func (pp *Pair) Volume() *replicate.Primary { return pp.primary }

// Mode is the replication mode of the running primary.
func (pp *Pair) Mode() replicate.Mode { return pp.mode }

// Stop closes the primary and ends the secondary's session; the files stay for the next Start.
func (pp *Pair) Stop() error {
	var err error
	if pp.primary != nil {
		err = pp.primary.Close()
		pp.primary = nil
	}
	if pp.sec != nil {
		pp.sec.stop()
	}
	return err
}

// Disconnect cuts the link and refuses reconnections until Reconnect: the primary keeps serving
// and marks what it writes dirty.
func (pp *Pair) Disconnect(ctx context.Context) error {
	pp.sec.setOffline(true)
	pp.sec.stop()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for pp.primary.Status().Connected {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the primary to notice the disconnection: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Reconnect lets the primary connect again (it retries every 50 ms).
func (pp *Pair) Reconnect() { pp.sec.setOffline(false) }

// drainEvents forgets hook events seen so far.
func (pp *Pair) drainEvents() {
	for {
		select {
		case <-pp.events:
		default:
			return
		}
	}
}

// waitEvent waits for hook event e and returns when it happened.
func (pp *Pair) waitEvent(ctx context.Context, e replicate.Event) (time.Time, error) {
	for {
		select {
		case ev := <-pp.events:
			if ev.ev == e {
				return ev.at, nil
			}
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for %s: %w", e, ctx.Err())
		}
	}
}

// Close stops both nodes and closes the files.
func (pp *Pair) Close() error {
	errs := []error{pp.Stop()}
	if pp.ln != nil {
		pp.ln.Close()
	}
	for _, d := range []blockdev.Device{pp.pdev, pp.sdev} {
		if d != nil {
			errs = append(errs, d.Close())
		}
	}
	return errors.Join(errs...)
}

// secondaryNode is the secondary as the Acceptor sees it.
type secondaryNode struct {
	dev blockdev.Device
	log zerolog.Logger

	mu      sync.Mutex
	cfg     replicate.Config
	offline bool
	session replicate.SecondarySlot
}

func (s *secondaryNode) setConfig(c replicate.Config) {
	s.mu.Lock()
	s.cfg = c
	s.mu.Unlock()
}

func (s *secondaryNode) setOffline(v bool) {
	s.mu.Lock()
	s.offline = v
	s.mu.Unlock()
}

func (s *secondaryNode) Admit(net.IP, replicate.Link) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offline {
		return "Secondary is offline (bench).", false
	}
	return "", false
}

func (s *secondaryNode) Serve(c1, c2 net.Conn, version uint8, hello *nv.List) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.offline {
		s.session.Stop()
		c1.Close()
		c2.Close()
		return
	}
	log := s.log
	s.session.Start(s.cfg, s.dev, c1, c2, version, hello, log, func(err error) {
		if err != nil {
			log.Debug().Err(err).Msg("bench: secondary session ended")
		}
	})
}

func (s *secondaryNode) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.session.Stop()
}

// fileTarget drives a file (the FUSE view of a volume) with pread/pwrite on an O_DIRECT
// descriptor, as a database or qemu with cache=none would.
type fileTarget struct {
	f    *os.File
	size int64
}

func openFileTarget(path string, direct bool) (*fileTarget, error) {
	flags := os.O_RDWR
	if direct {
		flags |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	return &fileTarget{f: f, size: st.Size()}, nil
}

func (t *fileTarget) Size() int64 { return t.size }

func (t *fileTarget) ReadAt(p []byte, off int64) (int, error) {
	n, err := unix.Pread(int(t.f.Fd()), p, off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	if err != nil {
		return n, fmt.Errorf("pread %s at %d: %w", t.f.Name(), off, err)
	}
	return n, nil
}

func (t *fileTarget) WriteAt(p []byte, off int64) (int, error) {
	n, err := unix.Pwrite(int(t.f.Fd()), p, off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short write: %d of %d bytes", n, len(p))
	}
	if err != nil {
		return n, fmt.Errorf("pwrite %s at %d: %w", t.f.Name(), off, err)
	}
	return n, nil
}

func (t *fileTarget) Flush() error {
	if err := unix.Fdatasync(int(t.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", t.f.Name(), err)
	}
	return nil
}

func (t *fileTarget) Close() error { return t.f.Close() }

// FUSEView is a volume served through the FUSE file view and driven through the file.
type FUSEView struct {
	fs *fuse.FS
	*fileTarget
}

// OpenFUSE mounts a FUSE view at mnt, adds v as its one file and opens it with O_DIRECT.
func OpenFUSE(mnt string, v replicate.Volume, log zerolog.Logger) (*FUSEView, error) {
	fs, err := fuse.Mount(mnt, fuse.Options{}, log)
	if err != nil {
		return nil, err
	}
	if err := fs.Add(resourceName, v); err != nil {
		fs.Unmount()
		return nil, err
	}
	ft, err := openFileTarget(filepath.Join(mnt, resourceName), true)
	if err != nil {
		fs.Unmount()
		return nil, err
	}
	return &FUSEView{fs: fs, fileTarget: ft}, nil
}

// Close closes the file, removes it from the view and unmounts.
func (f *FUSEView) Close() error {
	err := f.fileTarget.Close()
	return errors.Join(err, f.fs.Remove(resourceName, true), f.fs.Unmount())
}

// oneExport exports a single volume under resourceName.
type oneExport struct{ v replicate.Volume }

func (e oneExport) Lookup(name string) (replicate.Volume, bool) { return e.v, name == resourceName }
func (e oneExport) Names() []string                             { return []string{resourceName} }

// NBDExport is a volume served by our NBD server on a unix socket and driven by nbd.Client (one
// connection; concurrent requests are pipelined on it).
type NBDExport struct {
	srv *nbd.Server
	ln  net.Listener
	*nbd.Client
}

// OpenNBD exports v on a unix socket at sock and connects a client to it.
func OpenNBD(ctx context.Context, sock string, v replicate.Volume, log zerolog.Logger) (*NBDExport, error) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("nbd listener: %w", err)
	}
	srv := nbd.NewServer(oneExport{v}, log)
	go srv.Serve(ln)
	c, err := nbd.Dial(ctx, "unix", sock, resourceName)
	if err != nil {
		srv.Close()
		return nil, err
	}
	return &NBDExport{srv: srv, ln: ln, Client: c}, nil
}

// Close disconnects the client and stops the server.
func (e *NBDExport) Close() error {
	return errors.Join(e.Client.Close(), e.srv.Close())
}

// ErrNoNBDKit means the nbdkit binary is not installed; the nbdkit row is skipped, never faked.
var ErrNoNBDKit = errors.New("nbdkit is not installed (Debian package nbdkit); its row is skipped")

// NBDKit is Debian's `nbdkit file` plugin serving a file on a unix socket, driven by the same
// nbd.Client; its CPU time is added to the runs'.
type NBDKit struct {
	cmd *exec.Cmd
	*nbd.Client
	exited chan struct{}
}

// StartNBDKit runs `nbdkit -U sock -f file path` and connects to it.
func StartNBDKit(ctx context.Context, sock, path string) (*NBDKit, error) {
	bin, err := exec.LookPath("nbdkit")
	if err != nil {
		return nil, ErrNoNBDKit
	}
	// A socket left by an earlier nbdkit would make this one fail to bind.
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", sock, err)
	}
	cmd := exec.Command(bin, "--exit-with-parent", "-U", sock, "-f", "file", path)
	out := &tailBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start nbdkit: %w", err)
	}
	k := &NBDKit{cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(k.exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := nbd.Dial(dctx, "unix", sock, "")
		cancel()
		if err == nil {
			k.Client = c
			return k, nil
		}
		select {
		case <-k.exited:
			return nil, fmt.Errorf("nbdkit exited before serving: %s", out.String())
		case <-ctx.Done():
			k.stop()
			return nil, fmt.Errorf("waiting for nbdkit: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			k.stop()
			return nil, fmt.Errorf("nbdkit did not serve %s within 10 s: %v (output: %s)", sock, err, out.String())
		}
	}
}

// ExternalCPU is nbdkit's CPU time so far.
func (k *NBDKit) ExternalCPU() (time.Duration, error) { return pidCPU(k.cmd.Process.Pid) }

func (k *NBDKit) stop() {
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(5 * time.Second):
		k.cmd.Process.Kill()
		<-k.exited
	}
}

// Close disconnects and stops nbdkit.
func (k *NBDKit) Close() error {
	var err error
	if k.Client != nil {
		err = k.Client.Close()
	}
	k.stop()
	return err
}

// tailBuffer keeps the last max bytes written to it (a child's output, for error messages).
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
