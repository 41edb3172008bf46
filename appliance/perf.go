package appliance

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"hast/appliance/config"
	"hast/internal/hist"
	"hast/perf"
)

// startProbes loads the eBPF probes as --probes says: off never; on, or a list of probe
// groups, or fail; auto where the kernel allows (said once in the log when it does not).
// defaultProbeGroups are what --probes auto loads.
var defaultProbeGroups = []perf.Group{perf.GroupBlock, perf.GroupTCP}

func (d *Daemon) startProbes() error {
	var groups []perf.Group
	required := true
	switch d.opt.Probes {
	case "off":
		d.probeStatus = "off"
		return nil
	case "", "auto":
		// Only the groups whose probes fire per block request or per TCP event of the
		// replication link by default: the syscall and scheduler probes run on every system
		// call and context switch of every process on the machine (measured: +150 ns per
		// system call, +3 µs per thread ping-pong), which an operator asks for by name.
		groups, required = defaultProbeGroups, false
	case "on":
	default:
		var err error
		if groups, err = perf.ParseGroups(d.opt.Probes); err != nil {
			return exitErr(exUsage, fmt.Errorf("--probes %q: expected auto, on, off or probe groups: %w", d.opt.Probes, err))
		}
	}
	devs, ports := probeTargets(d.cfg)
	k, err := perf.Load(perf.Options{Devices: devs, Ports: ports, Groups: groups})
	if err != nil {
		if required {
			return exitErr(exOSErr, err)
		}
		d.probeStatus = "unavailable: " + err.Error()
		d.log.Warn().Err(err).Msg("eBPF probes unavailable; hast perf shows the engine's stages only")
		return nil
	}
	for g, err := range k.Failed() {
		d.log.Warn().Err(err).Str("probes", string(g)).Msg("eBPF probe group not loaded")
	}
	d.probes, d.probeStatus = k, "on"
	d.log.Info().Strs("devices", k.Devices()).Msg("eBPF probes loaded")
	return nil
}

// probeTargets are the local components and the replication ports of cfg.
func probeTargets(cfg *config.Config) (devs []string, ports []uint16) {
	port := func(s string) {
		a, err := config.ParseAddr(s, defaultPort)
		if err != nil || a.Network == "unix" {
			return
		}
		if _, p, err := net.SplitHostPort(a.Address); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil && n > 0 {
				ports = append(ports, uint16(n))
			}
		}
	}
	for _, l := range cfg.Listen {
		port(l)
	}
	for _, r := range cfg.Resources {
		devs = append(devs, r.Local)
		if r.Remote != "" && r.Remote != "none" {
			port(r.Remote)
		}
	}
	return devs, ports
}

// updateProbes points the probes at the devices and ports of a reloaded configuration.
func (d *Daemon) updateProbes(cfg *config.Config) {
	if d.probes == nil {
		return
	}
	devs, ports := probeTargets(cfg)
	if err := d.probes.SetDevices(devs); err != nil {
		d.log.Warn().Err(err).Msg("eBPF probes: devices not updated")
	}
	if err := d.probes.SetPorts(ports); err != nil {
		d.log.Warn().Err(err).Msg("eBPF probes: ports not updated")
	}
}

// perfSample is the engine's histograms of one resource (all primaries when name is "") and
// the probes' histograms.
func (d *Daemon) perfSample(name string) (perf.Sample, error) {
	s := perf.Sample{Time: time.Now(), Resource: name, Engine: map[string]hist.Snapshot{}, Probes: d.probeStatus}
	d.mu.Lock()
	var rs []*resource
	if name == "" {
		for _, n := range d.order {
			rs = append(rs, d.resources[n])
		}
	} else if r := d.resources[name]; r != nil {
		rs = append(rs, r)
	}
	d.mu.Unlock()
	if name != "" && len(rs) == 0 {
		return s, fmt.Errorf("no such resource: %s", name)
	}
	for _, r := range rs {
		for stage, snap := range r.latency() {
			sum := s.Engine[stage]
			for i, c := range snap.Counts {
				sum.Counts[i] += c
			}
			sum.Sum += snap.Sum
			s.Engine[stage] = sum
		}
	}
	if d.probes != nil {
		k := d.probes.Snapshot()
		s.Kernel = &k
	}
	return s, nil
}

func (d *Daemon) perfAPI(mux *http.ServeMux) {
	mux.HandleFunc("GET /"+APIVersion+"/perf", func(w http.ResponseWriter, req *http.Request) {
		s, err := d.perfSample(req.URL.Query().Get("resource"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		writeJSON(w, s)
	})
}

// Perf fetches the engine's and the probes' histograms; resource "" sums every resource.
func (cl *Client) Perf(resource string) (perf.Sample, error) {
	var s perf.Sample
	err := cl.do("GET", "/perf?resource="+url.QueryEscape(resource), nil, &s)
	return s, err
}

func (c *CLI) perf(args []string) error {
	cm := c.flags("perf")
	cm.fs.StringVar(&cm.output, "o", "", "output format: json (one frame per line)")
	count := cm.fs.Int("count", 0, "exit after this many refreshes (0: run until interrupted)")
	interval := cm.fs.Duration("interval", time.Second, "time between refreshes")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() > 1 || (cm.output != "" && cm.output != "json") || *count < 0 || *interval <= 0 {
		fmt.Fprint(c.Stderr, verbUsage("perf"))
		return exitErr(exUsage, errQuiet)
	}
	cl, err := c.client(cm)
	if err != nil {
		return err
	}
	name := cm.fs.Arg(0)
	return perf.Watch(c.Stdout, func() (perf.Sample, error) { return cl.Perf(name) },
		perf.WatchOptions{Interval: *interval, Count: *count, JSON: cm.output == "json"})
}
