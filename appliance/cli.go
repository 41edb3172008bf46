package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"hast/appliance/config"
	"hast/bench"
	"hast/blockdev"
)

// DefaultConfig is where hast.conf lives, as on FreeBSD.
const DefaultConfig = "/etc/hast.conf"

// CLI runs one verb with its arguments and returns the process exit status.
type CLI struct {
	Stdout, Stderr io.Writer
}

const usage = `usage: hast <verb> [options] ...
  hast daemon  [-c config] [-P pidfile] [--node NAME] [--nbd ADDR]... [--fuse DIR]   (alias: hastd)
  hast create  [-d] [-c config] [--node NAME] [-e extentsize] [-k keepdirty] [-m mediasize] [--hast-layout] name ...
  hast role    [-d] [-c config] [--node NAME] [--force] <init | primary | secondary> all | name ...
  hast list    [-d] [-c config] [--node NAME] [-o json] [all | name ...]
  hast status  [-d] [-c config] [--node NAME] [-o json] [all | name ...]
  hast dump    [-d] [-c config] [--node NAME] [all | name ...]
  hast attach  [-c config] [--node NAME] name        (qemu -drive / libvirt <disk> for the NBD export)
  hast verify  [-c config] [--node NAME] [--rate SIZE] [--no-wait] name   (online verify, repairs from the primary)
  hast split-brain [-c config] [--node NAME] [-o json] name   (what diverged when both nodes were primary)
  hast resolve [-c config] [--node NAME] --keep local|remote name   (saves the losing side, resyncs only what diverged)
  hast failover notify MASTER|BACKUP|FAULT|STOP | check   (keepalived's notify script and track_script; hast failover -h)
  hast perf    [-c config] [--node NAME] [-o json] [--count N] [--interval D] [name]   (engine stages beside the eBPF probes, refreshed every second)
  hast bench   [--quick] [-o json] [--png FILE] [--fio] ...   (benchmarks with same-run baselines; hast bench -h)
  hast bench --daemon-rss [--resources N] [--mode M] [--depth N] [--size SIZE] [--runtime D]   (two real daemons' memory under load)
  hast demo    [--keep] [--size BYTES]
Invoked as hastctl, the verb is the first argument; invoked as hastd, it runs the daemon.
`

// Main dispatches on the verb. args excludes the program name.
func (c *CLI) Main(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.Stderr, usage)
		return exUsage
	}
	verb, rest := args[0], args[1:]
	var err error
	switch verb {
	case "daemon", "hastd":
		err = c.daemon(rest)
	case "create":
		err = c.create(rest)
	case "role":
		err = c.role(rest)
	case "list":
		err = c.status(rest, true)
	case "status":
		err = c.status(rest, false)
	case "dump":
		err = c.dump(rest)
	case "demo":
		err = c.demo(rest)
	case "attach":
		err = c.attach(rest)
	case "verify":
		err = c.verify(rest)
	case "perf":
		err = c.perf(rest)
	case "bench":
		if slices.ContainsFunc(rest, func(a string) bool { return a == "--daemon-rss" || a == "-daemon-rss" }) {
			err = c.benchRSS(rest)
			break
		}
		return bench.Main(rest, c.Stdout, c.Stderr)
	case "split-brain":
		err = c.splitBrain(rest)
	case "resolve":
		err = c.resolve(rest)
	case "failover":
		err = c.failover(rest)
	case "help", "-h", "--help":
		fmt.Fprint(c.Stdout, usage)
		return exOK
	default:
		fmt.Fprintf(c.Stderr, "hast: unknown verb %q\n%s", verb, usage)
		return exUsage
	}
	if err != nil {
		if !errors.Is(err, errQuiet) {
			fmt.Fprintf(c.Stderr, "hast %s: %v\n", verb, err)
		}
		return ExitCode(err)
	}
	return exOK
}

// errQuiet marks an error already reported per resource.
var errQuiet = errors.New("reported")

type common struct {
	fs     *flag.FlagSet
	config string
	node   string
	debug  int
	output string
}

func (c *CLI) flags(verb string) *common {
	cm := &common{fs: flag.NewFlagSet(verb, flag.ContinueOnError)}
	cm.fs.SetOutput(c.Stderr)
	cm.fs.StringVar(&cm.config, "c", DefaultConfig, "configuration file")
	cm.fs.StringVar(&cm.node, "node", "", "resolve hast.conf for this node name instead of the host name")
	cm.fs.Var(countFlag{&cm.debug}, "d", "more debugging output (repeatable)")
	cm.fs.Usage = func() {
		fmt.Fprintf(c.Stderr, "usage:\n%soptions:\n", verbUsage(verb))
		cm.fs.PrintDefaults()
	}
	return cm
}

// verbUsage is the part of the usage text about verb.
func verbUsage(verb string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(usage, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "hast" && f[1] == verb {
			b.WriteString(l)
		}
	}
	return b.String()
}

// splitCombined spells out FreeBSD's combined single-letter options (getopt: hastd -dF,
// hastctl -dd, -c/etc/hast.conf, -dc FILE) for the flag package, which takes one per word. A
// word is split only when every letter is a one-letter option of fs; a letter that takes a
// value takes the rest of the word, or else the next word.
func splitCombined(fs *flag.FlagSet, args []string) []string {
	var out []string
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) < 3 || a[0] != '-' || a[1] == '-' || strings.Contains(a, "=") || fs.Lookup(a[1:]) != nil {
			out = append(out, a)
			continue
		}
		var words []string
		for j := 1; j < len(a); j++ {
			f := fs.Lookup(a[j : j+1])
			if f == nil {
				words = nil
				break
			}
			words = append(words, "-"+a[j:j+1])
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
				if j+1 < len(a) {
					words = append(words, a[j+1:])
				}
				break
			}
		}
		if words == nil {
			words = []string{a}
		}
		out = append(out, words...)
	}
	return out
}

// countFlag lets -d be repeated without a value, as hastctl's -d.
type countFlag struct{ n *int }

func (f countFlag) String() string   { return "" }
func (f countFlag) Set(string) error { *f.n++; return nil }
func (f countFlag) IsBoolFlag() bool { return true }

// parse accepts options before and after the operands (`hast resolve disk1 --keep remote`);
// "--" ends the options.
func (cm *common) parse(args []string) error {
	args = splitCombined(cm.fs, args)
	var operands []string
	for {
		if err := cm.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitErr(exOK, errQuiet)
			}
			return exitErr(exUsage, errQuiet)
		}
		rest := cm.fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			operands = append(operands, rest...)
			break
		}
		operands = append(operands, rest[0])
		args = rest[1:]
	}
	// Re-parse the operands alone so fs.Args() returns them.
	return cm.fs.Parse(append([]string{"--"}, operands...))
}

func (cm *common) load() (*config.Config, error) {
	cfg, err := config.Load(cm.config, config.Options{Node: cm.node})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, exitErr(exOSFile, err)
		}
		return nil, exitErr(exConfig, err)
	}
	return cfg, nil
}

// ----- daemon -----

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func (c *CLI) daemon(args []string) error {
	cm := c.flags("daemon")
	var opt Options
	var nbdAddrs multiFlag
	cm.fs.StringVar(&opt.Pidfile, "P", "", "pidfile (overrides the configuration)")
	cm.fs.Bool("F", true, "run in the foreground (always; accepted for compatibility)")
	cm.fs.Var(&nbdAddrs, "nbd", "export primary volumes over NBD on this address (unix:///path or tcp://127.0.0.1:10809); repeatable")
	var nbdAllow multiFlag
	cm.fs.StringVar(&opt.NBDSec.TLSCert, "nbd-tls-cert", "", "require TLS (NBD_OPT_STARTTLS) on NBD over TCP, with this server certificate (PEM)")
	cm.fs.StringVar(&opt.NBDSec.TLSKey, "nbd-tls-key", "", "the private key (PEM) of --nbd-tls-cert")
	cm.fs.StringVar(&opt.NBDSec.TLSCA, "nbd-tls-ca", "", "require NBD clients over TCP to present a certificate issued by this CA (PEM)")
	cm.fs.Var(&nbdAllow, "nbd-allow", "accept NBD clients over TCP only from these networks (CIDR or address, comma-separated); repeatable")
	cm.fs.BoolVar(&opt.NBDSec.Insecure, "nbd-insecure", false, "serve NBD on a non-loopback TCP address with neither TLS nor --nbd-allow")
	cm.fs.StringVar(&opt.FUSE, "fuse", "", "mount the FUSE file view of primary volumes on this directory")
	cm.fs.StringVar(&opt.UBLK, "ublk", "auto", "serve primary volumes as block devices /dev/hast/<resource> through ublk: on, off, or auto (where the kernel has ublk_drv)")
	cm.fs.StringVar(&opt.LocalIO, "local-io", "pwrite", "drive local components with pwrite (page cache) or uring (io_uring, O_DIRECT where aligned)")
	cm.fs.StringVar(&opt.Probes, "probes", "auto", "eBPF latency probes for hast perf and the metrics: auto (block and tcp, where the kernel allows), on (every group), off, or some of block,syscalls,sched,tcp")
	cm.fs.StringVar(&opt.Metrics, "metrics", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9457)")
	cm.fs.StringVar(&opt.StateDir, "state-dir", "/var/lib/hast", "where split-brain reports and discarded data are kept")
	cm.fs.DurationVar(&opt.Reconnect, "reconnect-interval", 0, "how often a primary retries its peer (HAST: 10s)")
	cm.fs.DurationVar(&opt.Keepalive, "keepalive-interval", 0, "idle time before a keepalive is sent (HAST: 10s)")
	cm.fs.Int64Var(&opt.SyncRate, "sync-rate", 0, "limit resynchronisation to this many bytes per second (0: unlimited)")
	logFormat := cm.fs.String("log-format", "console", "log lines as console text (coloured on a terminal unless NO_COLOR is set) or json")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() > 0 {
		return exitErr(exUsage, fmt.Errorf("unexpected arguments %q", cm.fs.Args()))
	}
	opt.ConfigPath, opt.Node, opt.NBD = cm.config, cm.node, nbdAddrs
	opt.NBDSec.Allow = nbdAllow
	log, err := newLogger(c.Stderr, *logFormat, cm.debug)
	if err != nil {
		return exitErr(exUsage, err)
	}
	d, err := NewDaemon(opt, log)
	if err != nil {
		return err
	}
	return d.Run(context.Background())
}

// ----- create / dump (offline) -----

func parseSize(s, what string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	t := strings.ToLower(s)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("kmgtpe", t[n-1]); i >= 0 {
			mult = 1 << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || (v > 0 && mult > 1 && v > (1<<62)/mult) {
		return 0, exitErr(exUsage, fmt.Errorf("Invalid %s: %q", what, s))
	}
	return v * mult, nil
}

func (c *CLI) create(args []string) error {
	cm := c.flags("create")
	var es, ks, ms string
	cm.fs.StringVar(&es, "e", "", "extent size (default 2M)")
	cm.fs.StringVar(&ks, "k", "", "keepdirty (default 64)")
	cm.fs.StringVar(&ms, "m", "", "media size (default: the device's)")
	hastLayout := cm.fs.Bool("hast-layout", false, "round the bitmap to the sector size exactly as FreeBSD's hastctl (user data then may not be page aligned); needed to pair with a FreeBSD node")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() == 0 {
		fmt.Fprint(c.Stderr, usage)
		return exitErr(exUsage, errQuiet)
	}
	var opt blockdev.CreateOptions
	e, err := parseSize(es, "extentsize")
	if err != nil {
		return err
	}
	k, err := parseSize(ks, "keepdirty")
	if err != nil {
		return err
	}
	m, err := parseSize(ms, "mediasize")
	if err != nil {
		return err
	}
	if e > 1<<31 || k > 1<<31 {
		return exitErr(exUsage, errors.New("Invalid extentsize or keepdirty: too large"))
	}
	opt.ExtentSize, opt.KeepDirty, opt.MediaSize = uint32(e), uint32(k), m
	if !*hastLayout {
		opt.Align = blockdev.PageAlign
	}
	cfg, err := cm.load()
	if err != nil {
		return err
	}
	var first error
	for _, name := range cm.fs.Args() {
		if err := createOne(cfg, name, opt); err != nil {
			fmt.Fprintf(c.Stderr, "hast create: %s: %s\n", name, strings.TrimPrefix(err.Error(), "create "+name+": "))
			if first == nil {
				first = err
			}
		}
	}
	if first != nil {
		return exitErr(ExitCode(first), errQuiet)
	}
	return nil
}

func createOne(cfg *config.Config, name string, opt blockdev.CreateOptions) error {
	rc := cfg.Resource(name)
	if rc == nil {
		return exitErr(exDataErr, fmt.Errorf("Unknown resource %s.", name))
	}
	dev, err := blockdev.Open(rc.Local)
	if err != nil {
		return exitErr(exNoInput, err)
	}
	defer dev.Close()
	if _, err := blockdev.Create(dev, name, opt); err != nil {
		return exitErr(exDataErr, err)
	}
	return nil
}

func (c *CLI) resourceNames(cfg *config.Config, args []string) []string {
	if len(args) == 0 || (len(args) == 1 && args[0] == "all") {
		names := make([]string, 0, len(cfg.Resources))
		for _, r := range cfg.Resources {
			names = append(names, r.Name)
		}
		return names
	}
	return args
}

func (c *CLI) dump(args []string) error {
	cm := c.flags("dump")
	if err := cm.parse(args); err != nil {
		return err
	}
	cfg, err := cm.load()
	if err != nil {
		return err
	}
	var first error
	for _, name := range c.resourceNames(cfg, cm.fs.Args()) {
		rc := cfg.Resource(name)
		if rc == nil {
			fmt.Fprintf(c.Stderr, "hast dump: Unknown resource %s.\n", name)
			if first == nil {
				first = exitErr(exDataErr, errQuiet)
			}
			continue
		}
		md, err := readMetadataRO(rc.Local, name)
		if err != nil {
			fmt.Fprintf(c.Stderr, "hast dump: %s: %v\n", name, err)
			if first == nil {
				first = exitErr(255, errQuiet)
			}
			continue
		}
		printDump(c.Stdout, name, md)
	}
	return first
}

func readMetadataRO(path, name string) (*blockdev.Metadata, error) {
	dev, err := blockdev.OpenReadOnly(path)
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	return blockdev.ReadMetadata(dev, name)
}

func printDump(w io.Writer, name string, md *blockdev.Metadata) {
	fmt.Fprintf(w, "resource: %s\n", name)
	fmt.Fprintf(w, "    datasize: %d (%sB)\n", md.DataSize, humanize(md.DataSize))
	fmt.Fprintf(w, "    extentsize: %d (%sB)\n", md.ExtentSize, humanize(uint64(md.ExtentSize)))
	fmt.Fprintf(w, "    keepdirty: %d\n", md.KeepDirty)
	fmt.Fprintf(w, "    localoff: %d\n", md.LocalOff)
	fmt.Fprintf(w, "    resuid: %d\n", md.ResUID)
	fmt.Fprintf(w, "    localcnt: %d\n", md.LocalCnt)
	fmt.Fprintf(w, "    remotecnt: %d\n", md.RemoteCnt)
	fmt.Fprintf(w, "    prevrole: %s\n", md.PrevRole)
}

// ----- control client -----

// Client talks to a daemon's control API.
type Client struct {
	hc   *http.Client
	path string
}

// NewClient returns a client for the daemon whose control address is addr (hast.conf syntax).
func NewClient(addr string) (*Client, error) {
	a, err := config.ParseAddr(addr, 0)
	if err != nil {
		return nil, fmt.Errorf("control address %s: %w", addr, err)
	}
	if a.Network != "unix" {
		return nil, fmt.Errorf("control address %s: not a unix socket", addr)
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.Address)
	}}
	return &Client{hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}, path: a.Address}, nil
}

func (cl *Client) do(method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, "http://hastd/"+APIVersion+path, rd)
	if err != nil {
		return err
	}
	resp, err := cl.hc.Do(req)
	if err != nil {
		// The HTTP and dial layers each repeat the URL and the socket path; the socket
		// error alone is what is new.
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err
		}
		return exitErr(exUnavailable, fmt.Errorf("cannot reach hastd on %s: %w", cl.path, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return exitErr(exSoftware, fmt.Errorf("hastd: %s", strings.TrimSpace(string(msg))))
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return exitErr(exUnavailable, fmt.Errorf("bad reply from hastd: %w", err))
	}
	return nil
}

// Status asks for the status of the named resources (all when none).
func (cl *Client) Status(names ...string) ([]statusEntry, error) {
	q := url.Values{}
	for _, n := range names {
		q.Add("resource", n)
	}
	var rep statusReply
	if err := cl.do("GET", "/status?"+q.Encode(), nil, &rep); err != nil {
		return nil, err
	}
	return rep.Resources, nil
}

// SetRole changes the role of the named resources.
func (cl *Client) SetRole(role string, force bool, names ...string) ([]roleResult, error) {
	var out []roleResult
	err := cl.do("POST", "/role", roleRequest{Role: role, Resources: names, Force: force}, &out)
	return out, err
}

func (c *CLI) client(cm *common) (*Client, error) {
	cfg, err := cm.load()
	if err != nil {
		return nil, err
	}
	cl, err := NewClient(cfg.Control)
	if err != nil {
		return nil, exitErr(exOSErr, err)
	}
	return cl, nil
}

// Verify starts an online verify of resource on the daemon.
func (cl *Client) Verify(resource string, rate int64) error {
	var out map[string]string
	return cl.do("POST", "/verify", map[string]any{"resource": resource, "rate": rate}, &out)
}

func (c *CLI) verify(args []string) error {
	cm := c.flags("verify")
	rate := cm.fs.String("rate", "", "limit verify to this many bytes per second (k/m/g suffixes)")
	noWait := cm.fs.Bool("no-wait", false, "start the verify and return")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() != 1 {
		fmt.Fprint(c.Stderr, usage)
		return exitErr(exUsage, errQuiet)
	}
	r, err := parseSize(*rate, "rate")
	if err != nil {
		return err
	}
	name := cm.fs.Arg(0)
	cl, err := c.client(cm)
	if err != nil {
		return err
	}
	if err := cl.Verify(name, r); err != nil {
		return err
	}
	if *noWait {
		fmt.Fprintf(c.Stdout, "%s: verify started\n", name)
		return nil
	}
	last := time.Time{}
	for {
		st, err := cl.Status(name)
		if err != nil {
			return err
		}
		v := st[0].Verify
		if v == nil {
			return exitErr(exSoftware, fmt.Errorf("%s: the daemon reports no verify", name))
		}
		if !v.Running {
			fmt.Fprintf(c.Stdout, "%s: verified %d bytes in %v, %d extents differed", name, v.Done, v.Finished.Sub(v.Started).Round(time.Millisecond), len(v.Mismatched))
			if len(v.Mismatched) > 0 {
				fmt.Fprintf(c.Stdout, " (extents %v; resynchronised from the primary)", v.Mismatched)
			}
			fmt.Fprintln(c.Stdout)
			if v.Error != "" {
				return exitErr(exSoftware, fmt.Errorf("verify stopped: %s", v.Error))
			}
			return nil
		}
		if time.Since(last) > 2*time.Second && v.Total > 0 {
			fmt.Fprintf(c.Stdout, "%s: %d of %d bytes (%.0f%%), %d extents differ so far\n", name, v.Done, v.Total, 100*float64(v.Done)/float64(v.Total), len(v.Mismatched))
			last = time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *CLI) role(args []string) error {
	cm := c.flags("role")
	force := cm.fs.Bool("force", false, "change the role even if it is unsafe (stale or split-brained data, open volume)")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() < 2 {
		fmt.Fprint(c.Stderr, usage)
		return exitErr(exUsage, errQuiet)
	}
	role := cm.fs.Arg(0)
	if _, err := ParseRole(role); err != nil {
		return exitErr(exUsage, err)
	}
	cl, err := c.client(cm)
	if err != nil {
		return err
	}
	res, err := cl.SetRole(role, *force, cm.fs.Args()[1:]...)
	if err != nil {
		return err
	}
	code := 0
	for _, r := range res {
		if r.Error != "" {
			fmt.Fprintf(c.Stderr, "%s: %s\n", r.Name, r.Error)
			if code == 0 {
				code = r.Code
			}
		}
	}
	if code != 0 {
		return exitErr(code, errQuiet)
	}
	return nil
}

func (c *CLI) status(args []string, verbose bool) error {
	verb := "status"
	if verbose {
		verb = "list"
	}
	cm := c.flags(verb)
	cm.fs.StringVar(&cm.output, "o", "text", "output format: text or json")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.output != "text" && cm.output != "json" {
		return exitErr(exUsage, fmt.Errorf("unknown output format %q (expected text or json)", cm.output))
	}
	cl, err := c.client(cm)
	if err != nil {
		return err
	}
	res, err := cl.Status(cm.fs.Args()...)
	if err != nil {
		return err
	}
	if cm.output == "json" {
		enc := json.NewEncoder(c.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	} else if verbose {
		printList(c.Stdout, res)
	} else {
		printStatus(c.Stdout, res)
	}
	for _, r := range res {
		if r.Code != 0 {
			return exitErr(r.Code, errQuiet)
		}
	}
	return nil
}

// printStatus prints hastctl's terse layout (hast-reference §4.4).
func printStatus(w io.Writer, res []statusEntry) {
	fmt.Fprintf(w, "Name\tStatus\t Role\t\tComponents\n")
	for _, r := range res {
		if r.Code != 0 {
			fmt.Fprintf(w, "%s\tERR%d\n", r.Name, r.Code)
			continue
		}
		st := r.Status
		if st == "" {
			st = "-"
		}
		fmt.Fprintf(w, "%s\t%-9s%-15s%s\t%s\n", r.Name, st, r.Role, r.LocalPath, r.RemoteAddr)
	}
}

// printList prints hastctl's verbose layout (hast-reference §4.5).
func printList(w io.Writer, res []statusEntry) {
	for _, r := range res {
		fmt.Fprintf(w, "%s:\n", r.Name)
		if r.Code != 0 {
			fmt.Fprintf(w, "  error: %d\n", r.Code)
			continue
		}
		fmt.Fprintf(w, "  role: %s\n", r.Role)
		fmt.Fprintf(w, "  provname: %s\n", r.Provname)
		fmt.Fprintf(w, "  localpath: %s\n", r.LocalPath)
		if r.Device != "" {
			fmt.Fprintf(w, "  device: %s (%s)\n", r.Device, r.UblkDevice)
		}
		fmt.Fprintf(w, "  extentsize: %d (%sB)\n", r.ExtentSize, humanize(uint64(r.ExtentSize)))
		fmt.Fprintf(w, "  keepdirty: %d\n", r.KeepDirty)
		fmt.Fprintf(w, "  remoteaddr: %s\n", r.RemoteAddr)
		if r.SourceAddr != "" {
			fmt.Fprintf(w, "  sourceaddr: %s\n", r.SourceAddr)
		}
		fmt.Fprintf(w, "  replication: %s\n", r.Replication)
		if r.LinkSecurity != "" {
			fmt.Fprintf(w, "  link security: %s\n", r.LinkSecurity)
		}
		if r.Status != "" {
			fmt.Fprintf(w, "  status: %s\n", r.Status)
		}
		if r.LastError != "" {
			fmt.Fprintf(w, "  last error: %s\n", r.LastError)
		}
		if r.WorkerPID != 0 {
			fmt.Fprintf(w, "  workerpid: %d\n", r.WorkerPID)
		}
		fmt.Fprintf(w, "  dirty: %d (%sB)\n", r.Dirty, humanize(uint64(r.Dirty)))
		s := r.Stats
		fmt.Fprintf(w, "  statistics:\n")
		fmt.Fprintf(w, "    reads: %d\n", s.Reads)
		fmt.Fprintf(w, "    writes: %d\n", s.Writes)
		fmt.Fprintf(w, "    deletes: %d\n", s.Deletes)
		fmt.Fprintf(w, "    flushes: %d\n", s.Flushes)
		fmt.Fprintf(w, "    activemap updates: %d\n", s.ActivemapUpdates)
		fmt.Fprintf(w, "    local errors: read: %d, write: %d, delete: %d, flush: %d\n", s.ReadErrors, s.WriteErrors, s.DeleteErrors, s.FlushErrors)
		q := r.Queue
		fmt.Fprintf(w, "    queues: local: %d, send: %d, recv: %d, done: %d, idle: %d\n", q.Local, q.Send, q.Recv, q.Done, q.Idle)
		if r.SplitBrain {
			fmt.Fprintf(w, "  split-brain: yes (both nodes wrote as primary; see the logs)\n")
		}
		if r.Syncing && r.SyncTotal > 0 {
			fmt.Fprintf(w, "  synchronization: from %s, %d of %d bytes (%.0f%%)\n", r.SyncSource, r.SyncDone, r.SyncTotal, 100*float64(r.SyncDone)/float64(r.SyncTotal))
		}
	}
}
