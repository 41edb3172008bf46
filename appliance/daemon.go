package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"hast/appliance/config"
	"hast/blockdev"
	"hast/fuse"
	"hast/internal/linksec"
	"hast/nbd"
	"hast/perf"
	"hast/replicate"
)

const defaultPort = 8457

// APIVersion prefixes every control API path.
const APIVersion = "v1"

// Options configure a daemon beyond hast.conf.
type Options struct {
	ConfigPath string
	Node       string // --node: resolve `on` sections for this name (two nodes on one machine)
	Pidfile    string // -P: overrides the config's pidfile
	NBD        []string
	FUSE       string // mount directory for the FUSE file view, "" = off
	UBLK       string // --ublk: on, off or auto (default): /dev/hast/<name> block devices
	StateDir   string // split-brain reports and saved data (default /var/lib/hast)
	Metrics    string // listen address of the Prometheus endpoint, "" = off
	LocalIO    string // "pwrite" (default) or "uring": how the local component is driven
	Probes     string // --probes: auto (default), on or off: the eBPF probes of hast perf
	Keepalive  time.Duration
	Reconnect  time.Duration
	SyncRate   int64
	Dial       replicate.Dialer

	NBDSec NBDSecurity // how the NBD listeners on TCP admit clients
}

// Daemon is a running hastd.
type Daemon struct {
	opt   Options
	log   zerolog.Logger
	hooks *hooks

	mu        sync.Mutex
	cfg       *config.Config
	resources map[string]*resource
	order     []string

	exMu    sync.Mutex
	exports map[string]replicate.Volume
	nbdSrv  *nbd.Server
	fuseFS  *fuse.FS
	ublk    *ublkFrontend // nil without ublk

	acceptor   *replicate.Acceptor
	listeners  []net.Listener
	ctl        net.Listener
	httpSrv    *http.Server
	metricsSrv *http.Server
	pidfile    *os.File
	wg         sync.WaitGroup

	probes      *perf.Kernel // nil when the probes are off or unavailable
	probeStatus string
}

// NewDaemon loads the configuration, takes the pidfile and opens the control socket and the
// listen addresses. Errors carry the sysexits code HAST uses (see ExitCode).
func NewDaemon(opt Options, log zerolog.Logger) (*Daemon, error) {
	if err := checkFrontendPaths(opt.FUSE, opt.NBD); err != nil {
		return nil, exitErr(exUsage, err)
	}
	nbdTCP, err := nbdPolicy(opt.NBDSec, opt.NBD)
	if err != nil {
		return nil, exitErr(exUsage, err)
	}
	cfg, err := config.Load(opt.ConfigPath, config.Options{Node: opt.Node})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, exitErr(exOSFile, err)
		}
		return nil, exitErr(exConfig, err)
	}
	switch opt.LocalIO {
	case "", "pwrite", "uring":
	default:
		return nil, exitErr(exUsage, fmt.Errorf("--local-io %q: expected pwrite or uring", opt.LocalIO))
	}
	if opt.StateDir == "" {
		opt.StateDir = "/var/lib/hast"
	}
	d := &Daemon{opt: opt, log: log, hooks: &hooks{log: log}, cfg: cfg,
		resources: map[string]*resource{}, exports: map[string]replicate.Volume{}}
	for _, rc := range cfg.Resources {
		r, err := newResource(d, rc)
		if err != nil {
			return nil, exitErr(exConfig, err)
		}
		d.resources[rc.Name] = r
		d.order = append(d.order, rc.Name)
	}
	pid := cfg.Pidfile
	if opt.Pidfile != "" {
		pid = opt.Pidfile
	}
	if err := d.takePidfile(pid); err != nil {
		return nil, err
	}
	if err := d.startProbes(); err != nil {
		d.Close()
		return nil, err
	}
	if err := d.openControl(); err != nil {
		d.Close()
		return nil, exitErr(exOSErr, err)
	}
	ls := &linksec.Server{Lookup: d.linkConfig}
	d.acceptor = &replicate.Acceptor{Lookup: d.lookupTarget, Known: d.knownPeer, Log: log,
		Upgrade: func(c net.Conn) (net.Conn, replicate.Link, error) {
			uc, info, err := ls.Upgrade(c)
			return uc, replicate.Link{Secure: info.Secure, Resource: info.Resource, Peer: info.Peer}, err
		}}
	for _, a := range cfg.Listen {
		l, err := listenAddr(a)
		if err != nil {
			// HAST opens each default family only when the kernel supports it.
			if len(cfg.Listen) > 1 && strings.HasPrefix(a, "tcp6://") {
				log.Warn().Err(err).Str("listen", a).Msg("IPv6 listen address unavailable; skipped")
				continue
			}
			d.Close()
			return nil, exitErr(exOSErr, fmt.Errorf("listen on %s: %w", a, err))
		}
		d.listeners = append(d.listeners, l)
	}
	if len(d.listeners) == 0 {
		d.Close()
		return nil, exitErr(exOSErr, errors.New("no listen address could be opened"))
	}
	if len(opt.NBD) > 0 {
		d.nbdSrv = nbd.NewServer(d, log.With().Str("frontend", "nbd").Logger())
		for _, a := range opt.NBD {
			l, err := listenAddr(a)
			if err != nil {
				d.Close()
				return nil, exitErr(exOSErr, fmt.Errorf("nbd listen on %s: %w", a, err))
			}
			var p nbd.Policy
			if l.Addr().Network() != "unix" {
				p = nbdTCP
			}
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				if err := d.nbdSrv.ServePolicy(l, p); err != nil {
					log.Error().Err(err).Msg("nbd server stopped")
				}
			}()
		}
	}
	if opt.Metrics != "" {
		if err := d.serveMetrics(opt.Metrics); err != nil {
			d.Close()
			return nil, exitErr(exOSErr, fmt.Errorf("metrics listen on %s: %w", opt.Metrics, err))
		}
	}
	if d.ublk, err = newUblkFrontend(opt.UBLK, log.With().Str("frontend", "ublk").Logger()); err != nil {
		d.Close()
		return nil, err
	}
	if opt.FUSE != "" {
		fs, err := fuse.Mount(opt.FUSE, fuse.Options{}, log.With().Str("frontend", "fuse").Logger())
		if err != nil {
			d.Close()
			return nil, exitErr(exOSErr, fmt.Errorf("mount FUSE view on %s: %w", opt.FUSE, err))
		}
		d.fuseFS = fs
	}
	return d, nil
}

// openLocal opens a local component the way --local-io says.
func (d *Daemon) openLocal(path string) (blockdev.Device, error) {
	if d.opt.LocalIO == "uring" {
		return blockdev.OpenURing(path)
	}
	return blockdev.Open(path)
}

func listenAddr(s string) (net.Listener, error) {
	a, err := config.ParseAddr(s, defaultPort)
	if err != nil {
		return nil, err
	}
	if a.Network == "unix" {
		os.Remove(a.Address)
		if err := os.MkdirAll(filepath.Dir(a.Address), 0o755); err != nil {
			return nil, err
		}
		return net.Listen("unix", a.Address)
	}
	lc := net.ListenConfig{}
	return lc.Listen(context.Background(), a.Network, a.Address)
}

func (d *Daemon) takePidfile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return exitErr(exOSErr, fmt.Errorf("pidfile %s: %w", path, err))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return exitErr(exOSErr, fmt.Errorf("pidfile %s: %w", path, err))
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return exitErr(exTempFail, fmt.Errorf("Another hastd is already running (pidfile %s is locked).", path))
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	d.pidfile = f
	return nil
}

func (d *Daemon) openControl() error {
	a, err := config.ParseAddr(d.cfg.Control, 0)
	if err != nil {
		return fmt.Errorf("control address %s: %w", d.cfg.Control, err)
	}
	if a.Network != "unix" {
		return fmt.Errorf("control address %s: must be a unix socket", d.cfg.Control)
	}
	if err := os.MkdirAll(filepath.Dir(a.Address), 0o755); err != nil {
		return fmt.Errorf("control socket %s: %w", a.Address, err)
	}
	// A socket left by a dead daemon would make listen fail; the pidfile lock proves it is stale.
	os.Remove(a.Address)
	old := unix.Umask(0o077)
	l, err := net.Listen("unix", a.Address)
	unix.Umask(old)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", a.Address, err)
	}
	if err := os.Chmod(a.Address, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("control socket %s: %w", a.Address, err)
	}
	d.ctl = l
	d.httpSrv = &http.Server{Handler: d.api(), ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// memoryLimit is the soft limit a daemon puts on the Go runtime's memory, unless GOMEMLIMIT
// says otherwise. It is the budget behind "128 MiB resident with three resources at depth
// 128" (RSSTarget, `hast bench --daemon-rss`):
//
//	NBD payload buffers, all clients together    64 MiB (nbd.MaxInFlightBytes)
//	the rest: heap, goroutine stacks, runtime    ~16 MiB with three resources
//	garbage between two collections              the remaining ~16 MiB
//
// and the binary's text, about 12 MiB, is resident besides. Without a limit the collector lets
// the heap grow to twice what was live at the last collection (GOGC=100): some 160 MiB with the
// payload budget full. The limit is soft: a daemon whose live data exceeds it (a FUSE mount,
// async resources whose peers fall behind: up to replicate.AsyncBufferBytes each) spends more
// CPU on collections, at most about half, instead of failing.
const memoryLimit = nbd.MaxInFlightBytes + 32<<20

// Run serves until ctx is cancelled or SIGTERM/SIGINT arrives; SIGHUP reloads hast.conf.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.httpSrv.Serve(d.ctl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error().Err(err).Msg("control API stopped")
		}
	}()
	for _, l := range d.listeners {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := d.acceptor.Serve(l); err != nil {
				d.log.Error().Err(err).Msg("listener stopped")
			}
		}()
	}
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	d.log.Info().Str("node", d.cfg.Node).Msgf("Started successfully, running protocol version %d.", 2)
	for {
		select {
		case <-ctx.Done():
			d.Close()
			return nil
		case s := <-sig:
			if s == syscall.SIGHUP {
				if err := d.Reload(); err != nil {
					d.log.Error().Err(err).Msg("Configuration not reloaded.")
				}
				continue
			}
			d.log.Info().Str("signal", s.String()).Msg("exiting")
			d.Close()
			return nil
		}
	}
}

// Close stops every resource and closes all sockets. Exported volumes are flushed first, so
// what the frontends acknowledged is durable before anything is torn down.
func (d *Daemon) Close() {
	for _, name := range d.Names() {
		if v, ok := d.Lookup(name); ok {
			if err := v.Flush(); err != nil {
				d.log.Warn().Err(err).Str("resource", name).Msg("flush before shutdown")
			}
		}
	}
	d.mu.Lock()
	rs := make([]*resource, 0, len(d.resources))
	for _, n := range d.order {
		rs = append(rs, d.resources[n])
	}
	d.mu.Unlock()
	for _, r := range rs {
		r.shutdown()
	}
	for _, l := range d.listeners {
		l.Close()
	}
	if d.httpSrv != nil {
		d.httpSrv.Close()
	}
	if d.metricsSrv != nil {
		d.metricsSrv.Close()
	}
	if d.nbdSrv != nil {
		d.nbdSrv.Close()
	}
	if d.fuseFS != nil {
		if err := d.fuseFS.Unmount(); err != nil {
			d.log.Warn().Err(err).Msg("unmount FUSE view")
		}
	}
	d.wg.Wait()
	if d.probes != nil {
		d.probes.Close()
	}
	if d.pidfile != nil {
		os.Remove(d.pidfile.Name())
		d.pidfile.Close()
	}
}

// Reload re-reads hast.conf (SIGHUP, hast-reference §2.7). A file that does not parse changes
// nothing. New resources start in init; changed ones are reconfigured (see reconfigure: in place
// where they can be); removed ones are stopped. A change the demotion guard refuses (the volume
// is open) is logged and leaves that resource as it was.
func (d *Daemon) Reload() error {
	cfg, err := config.Load(d.opt.ConfigPath, config.Options{Node: d.opt.Node})
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[string]bool{}
	var order []string
	for _, rc := range cfg.Resources {
		seen[rc.Name] = true
		order = append(order, rc.Name)
		r, ok := d.resources[rc.Name]
		if !ok {
			nr, err := newResource(d, rc)
			if err != nil {
				return err
			}
			d.resources[rc.Name] = nr
			d.log.Info().Str("resource", rc.Name).Msg("resource added")
			continue
		}
		r.mu.Lock()
		same := *r.cfg == *rc
		r.mu.Unlock()
		if same {
			continue
		}
		if err := r.reconfigure(rc); err != nil {
			d.log.Error().Err(err).Str("resource", rc.Name).Msg("resource not reconfigured")
			continue
		}
		d.log.Info().Str("resource", rc.Name).Msg("resource reconfigured")
	}
	for _, name := range d.order {
		if seen[name] {
			continue
		}
		r := d.resources[name]
		if _, err := r.setRole(RoleInit, false); err != nil {
			d.log.Error().Err(err).Str("resource", name).Msg("resource not removed: it stays configured until its volume is closed")
			order = append(order, name)
			continue
		}
		r.shutdown()
		delete(d.resources, name)
		d.log.Info().Str("resource", name).Msg("resource removed")
	}
	d.cfg, d.order = cfg, order
	d.updateProbes(cfg)
	d.log.Info().Msg("Configuration reloaded.")
	return nil
}

func (d *Daemon) lookupTarget(name string) (replicate.Target, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.resources[name]
	return r, ok
}

// linkConfig gives the TLS server the credentials of the resource a client names.
func (d *Daemon) linkConfig(name string) (*linksec.Config, error) {
	d.mu.Lock()
	r, ok := d.resources[name]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("TLS connection for resource %q, which is not configured", name)
	}
	r.mu.Lock()
	link := r.link
	r.mu.Unlock()
	if link == nil {
		return nil, fmt.Errorf("TLS connection for resource %s, which has no link security configured (tls-psk or tls-cert in hast.conf)", name)
	}
	return link, nil
}

// knownPeer reports whether ip is the remote of any resource (others are dropped at once).
func (d *Daemon) knownPeer(ip net.IP) bool {
	d.mu.Lock()
	rs := make([]*resource, 0, len(d.resources))
	for _, r := range d.resources {
		rs = append(rs, r)
	}
	d.mu.Unlock()
	// Remote names are looked up here, outside the locks.
	for _, r := range rs {
		r.mu.Lock()
		remote := r.remote
		r.mu.Unlock()
		if remote.is(ip, r.log) {
			return true
		}
	}
	return false
}

// ----- frontends -----

// Lookup implements nbd.Exports.
func (d *Daemon) Lookup(name string) (replicate.Volume, bool) {
	d.exMu.Lock()
	defer d.exMu.Unlock()
	v, ok := d.exports[name]
	return v, ok
}

// Names implements nbd.Exports.
func (d *Daemon) Names() []string {
	d.exMu.Lock()
	defer d.exMu.Unlock()
	names := make([]string, 0, len(d.exports))
	for n := range d.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (d *Daemon) export(name string, v replicate.Volume) {
	d.exMu.Lock()
	d.exports[name] = v
	d.exMu.Unlock()
	if d.fuseFS != nil {
		if err := d.fuseFS.Add(name, v); err != nil {
			d.log.Error().Err(err).Str("resource", name).Msg("unable to add FUSE file")
		}
	}
	if d.ublk != nil {
		if err := d.ublk.add(name, v); err != nil {
			d.log.Error().Err(err).Str("resource", name).Msg("unable to add ublk device")
		}
	}
}

// unexport withdraws a volume from the frontends; an open FUSE file refuses unless forced.
func (d *Daemon) unexport(name string, force bool) error {
	if d.ublk != nil && !force {
		if err := d.ublk.busy(name); err != nil {
			return fmt.Errorf("%w: %v (unmount or close it, or use --force to demote anyway)", ErrBusy, err)
		}
	}
	if d.fuseFS != nil {
		if err := d.fuseFS.Remove(name, force); err != nil {
			if errors.Is(err, fuse.ErrBusy) {
				return fmt.Errorf("%w: %v (use --force to demote anyway)", ErrBusy, err)
			}
			d.log.Warn().Err(err).Str("resource", name).Msg("remove FUSE file")
		}
	}
	if d.ublk != nil {
		d.ublk.remove(name)
	}
	d.exMu.Lock()
	delete(d.exports, name)
	d.exMu.Unlock()
	if d.nbdSrv != nil {
		d.nbdSrv.Disconnect(name)
	}
	return nil
}

// ----- control API -----

// frontends says where primary volumes are served.
type frontends struct {
	NBD     []string `json:"nbd,omitempty"`
	FUSE    string   `json:"fuse,omitempty"`
	Exports []string `json:"exports"`
}

type roleRequest struct {
	Role      string   `json:"role"`
	Resources []string `json:"resources"`
	Force     bool     `json:"force"`
}

type roleResult struct {
	Name     string `json:"name"`
	Previous string `json:"previous,omitempty"`
	Error    string `json:"error,omitempty"`
	Code     int    `json:"code,omitempty"` // HAST's EHAST code: 1 no such resource, 2 invalid
}

// Status reply: resources in request order (config order for "all").
type statusReply struct {
	Resources []statusEntry `json:"resources"`
}

type statusEntry struct {
	ResourceStatus
	Error string `json:"error,omitempty"`
	Code  int    `json:"code,omitempty"`
}

const (
	ehastNoEntry = 1
	ehastInvalid = 2
)

func (d *Daemon) api() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /"+APIVersion+"/status", func(w http.ResponseWriter, req *http.Request) {
		names := req.URL.Query()["resource"]
		d.mu.Lock()
		if len(names) == 0 || (len(names) == 1 && names[0] == "all") {
			names = append([]string(nil), d.order...)
		}
		rs := make([]*resource, len(names))
		for i, n := range names {
			rs[i] = d.resources[n]
		}
		d.mu.Unlock()
		var rep statusReply
		for i, r := range rs {
			if r == nil {
				rep.Resources = append(rep.Resources, statusEntry{ResourceStatus: ResourceStatus{Name: names[i]}, Error: "no such resource", Code: ehastNoEntry})
				continue
			}
			e := statusEntry{ResourceStatus: r.status()}
			e.Device, e.UblkDevice = d.ublk.paths(names[i])
			rep.Resources = append(rep.Resources, e)
		}
		writeJSON(w, rep)
	})
	mux.HandleFunc("POST /"+APIVersion+"/role", func(w http.ResponseWriter, req *http.Request) {
		var rr roleRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<20)).Decode(&rr); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		role, err := ParseRole(rr.Role)
		if err != nil || len(rr.Resources) == 0 {
			if err == nil {
				err = errors.New("no resource named")
			}
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		names := rr.Resources
		if len(names) == 1 && names[0] == "all" {
			names = append([]string(nil), d.order...)
		}
		rs := make([]*resource, len(names))
		for i, n := range names {
			rs[i] = d.resources[n]
		}
		d.mu.Unlock()
		out := make([]roleResult, len(names))
		for i, r := range rs {
			out[i].Name = names[i]
			if r == nil {
				out[i].Error, out[i].Code = "no such resource", ehastNoEntry
				continue
			}
			prev, err := r.setRole(role, rr.Force)
			if err == nil && role == RoleSecondary {
				d.ublk.dropOrphan(names[i]) // a device a killed daemon left here
			}
			out[i].Previous = prev.String()
			if err != nil {
				out[i].Error, out[i].Code = err.Error(), ehastInvalid
			}
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST /"+APIVersion+"/verify", func(w http.ResponseWriter, req *http.Request) {
		var vr struct {
			Resource string `json:"resource"`
			Rate     int64  `json:"rate"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<16)).Decode(&vr); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		r := d.resources[vr.Resource]
		d.mu.Unlock()
		if r == nil {
			http.Error(w, "no such resource: "+vr.Resource, http.StatusNotFound)
			return
		}
		if err := r.verify(vr.Rate); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		writeJSON(w, map[string]string{"result": "started"})
	})
	mux.HandleFunc("GET /"+APIVersion+"/splitbrain", func(w http.ResponseWriter, req *http.Request) {
		d.mu.Lock()
		r := d.resources[req.URL.Query().Get("resource")]
		d.mu.Unlock()
		if r == nil {
			http.Error(w, "no such resource", http.StatusNotFound)
			return
		}
		writeJSON(w, map[string]any{"report": r.splitBrainReport()})
	})
	mux.HandleFunc("POST /"+APIVersion+"/resolve", func(w http.ResponseWriter, req *http.Request) {
		var rr struct{ Resource, Keep string }
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<16)).Decode(&rr); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		r := d.resources[rr.Resource]
		d.mu.Unlock()
		if r == nil {
			http.Error(w, "no such resource", http.StatusNotFound)
			return
		}
		msg, err := r.resolve(rr.Keep)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		writeJSON(w, map[string]string{"result": msg})
	})
	mux.HandleFunc("GET /"+APIVersion+"/frontends", func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, frontends{NBD: d.opt.NBD, FUSE: d.opt.FUSE, Exports: d.Names()})
	})
	mux.HandleFunc("POST /"+APIVersion+"/reload", func(w http.ResponseWriter, req *http.Request) {
		if err := d.Reload(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]string{"result": "reloaded"})
	})
	d.perfAPI(mux)
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
