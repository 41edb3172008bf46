package perf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Options say what to observe.
type Options struct {
	// PID is the process (thread group) whose system calls and threads are observed; 0 is
	// this process.
	PID int
	// Devices are the local components (files or block devices); block requests are counted
	// on the disks under them. More can be set later with SetDevices.
	Devices []string
	// Ports are the replication TCP ports; connections from or to them are observed.
	Ports []uint16
	// Groups are the probe groups to load; nil loads every group.
	Groups []Group
}

// AllGroups are the probe groups.
var AllGroups = []Group{GroupBlock, GroupSyscalls, GroupSched, GroupTCP}

// ParseGroups parses a comma-separated list of group names.
func ParseGroups(s string) ([]Group, error) {
	var out []Group
	for _, f := range strings.Split(s, ",") {
		g := Group(strings.TrimSpace(f))
		if !slices.Contains(AllGroups, g) {
			return nil, fmt.Errorf("unknown probe group %q (want %v)", g, AllGroups)
		}
		out = append(out, g)
	}
	return out, nil
}

// Group is a set of probes that load together.
type Group string

const (
	GroupBlock    Group = "block"    // raw tracepoints block_rq_issue / block_rq_complete
	GroupSyscalls Group = "syscalls" // raw tracepoints sys_enter / sys_exit
	GroupSched    Group = "sched"    // BTF tracepoints sched_wakeup(_new) / sched_switch
	GroupTCP      Group = "tcp"      // tcp_retransmit_skb / tcp_probe tracepoints
)

// Kernel holds the loaded probes.
type Kernel struct {
	pid    uint32
	hists  *ebpf.Map
	mem    []byte
	slots  []uint64 // mem as u64s
	devs   *ebpf.Map
	ports  *ebpf.Map
	starts []*ebpf.Map
	progs  []*ebpf.Program
	links  []link.Link
	failed map[Group]error

	mu      sync.Mutex
	devList []string
	memMu   sync.RWMutex // read-held while the histograms are read, write-held by Close
	closed  bool
}

// Load loads and attaches every probe this kernel allows. A group that cannot load is left out
// and reported by Failed; Load fails only when nothing could be attached.
func Load(opt Options) (*Kernel, error) {
	pid := opt.PID
	if pid == 0 {
		pid = os.Getpid()
	}
	k := &Kernel{pid: uint32(pid), failed: map[Group]error{}}
	var err error
	k.hists, err = ebpf.NewMap(&ebpf.MapSpec{Name: "hast_hists", Type: ebpf.Array, KeySize: 4,
		ValueSize: uint32(totalSlots * 8), MaxEntries: 1, Flags: unix.BPF_F_MMAPABLE})
	if err != nil {
		return nil, fmt.Errorf("perf: BPF unavailable: %w", err)
	}
	size := (totalSlots*8 + os.Getpagesize() - 1) &^ (os.Getpagesize() - 1)
	if k.mem, err = unix.Mmap(k.hists.FD(), 0, size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		k.hists.Close()
		return nil, fmt.Errorf("perf: map the histograms: %w", err)
	}
	k.slots = unsafe.Slice((*uint64)(unsafe.Pointer(&k.mem[0])), totalSlots)
	if k.devs, err = ebpf.NewMap(&ebpf.MapSpec{Name: "hast_devs", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 64}); err != nil {
		k.Close()
		return nil, fmt.Errorf("perf: BPF unavailable: %w", err)
	}
	if k.ports, err = ebpf.NewMap(&ebpf.MapSpec{Name: "hast_ports", Type: ebpf.Hash, KeySize: 2, ValueSize: 4, MaxEntries: 64}); err != nil {
		k.Close()
		return nil, fmt.Errorf("perf: BPF unavailable: %w", err)
	}
	groups := opt.Groups
	if groups == nil {
		groups = AllGroups
	}
	loaders := map[Group]func() error{GroupBlock: k.loadBlock, GroupSyscalls: k.loadSyscalls, GroupSched: k.loadSched, GroupTCP: k.loadTCP}
	for _, g := range groups {
		if err := loaders[g](); err != nil {
			k.failed[g] = err
		}
	}
	if len(k.links) == 0 {
		err := k.failedErr()
		k.Close()
		return nil, err
	}
	if err := k.SetDevices(opt.Devices); err != nil {
		k.Close()
		return nil, err
	}
	if err := k.SetPorts(opt.Ports); err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

// Failed returns the groups that could not be loaded, with why.
func (k *Kernel) Failed() map[Group]error { return k.failed }

func (k *Kernel) failedErr() error {
	var errs []error
	for g, err := range k.failed {
		errs = append(errs, fmt.Errorf("%s: %w", g, err))
	}
	return fmt.Errorf("perf: no probe could be attached: %w", errors.Join(errs...))
}

// newArray makes an array of per-thread or per-request slots (see slot and rqSlot).
func (k *Kernel) newArray(name string, value, entries uint32) (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.Array, KeySize: 4, ValueSize: value, MaxEntries: entries})
	if err != nil {
		return nil, err
	}
	k.starts = append(k.starts, m)
	return m, nil
}

// probe is a program and how to attach it.
type probe struct {
	name   string
	spec   ebpf.ProgramSpec
	attach func(*ebpf.Program) (link.Link, error)
}

func tracepoint(group, name string, ins asm.Instructions) probe {
	return probe{name: group + ":" + name, spec: ebpf.ProgramSpec{Type: ebpf.TracePoint, Instructions: ins},
		attach: func(p *ebpf.Program) (link.Link, error) { return link.Tracepoint(group, name, p, nil) }}
}

func rawTracepoint(name string, ins asm.Instructions) probe {
	return probe{name: name, spec: ebpf.ProgramSpec{Type: ebpf.RawTracepoint, Instructions: ins},
		attach: func(p *ebpf.Program) (link.Link, error) {
			return link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: p})
		}}
}

func btfTracepoint(name string, ins asm.Instructions) probe {
	return probe{name: name, spec: ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: name, Instructions: ins},
		attach: func(p *ebpf.Program) (link.Link, error) { return link.AttachTracing(link.TracingOptions{Program: p}) }}
}

// attach loads and attaches the probes in order: those that end a measurement first, so no
// start is recorded that nothing would take.
func (k *Kernel) attach(ps ...probe) error {
	for _, pr := range ps {
		spec := pr.spec
		spec.Name = "hast_" + strings.NewReplacer(":", "_", "block_", "", "sched_", "").Replace(pr.name)
		if len(spec.Name) > 15 {
			spec.Name = spec.Name[:15]
		}
		spec.License = "GPL" // tracing helpers need a GPL-compatible program
		p, err := ebpf.NewProgram(&spec)
		if err != nil {
			return fmt.Errorf("load %s: %w", pr.name, err)
		}
		k.progs = append(k.progs, p)
		l, err := pr.attach(p)
		if err != nil {
			return fmt.Errorf("attach %s: %w", pr.name, err)
		}
		k.links = append(k.links, l)
	}
	return nil
}

func (k *Kernel) loadSyscalls() error {
	slots, err := k.newArray("hast_sys_slots", 16, 1<<slotBits)
	if err != nil {
		return err
	}
	return k.attach(rawTracepoint("sys_exit", sysExit(k.pid, slots.FD(), k.hists.FD())),
		rawTracepoint("sys_enter", sysEnter(k.pid, slots.FD())))
}

func (k *Kernel) loadBlock() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	var f blockFields
	for _, m := range []struct {
		dst           *int16
		strct, member string
	}{
		{&f.rqQ, "request", "q"}, {&f.rqFlags, "request", "cmd_flags"}, {&f.rqLen, "request", "__data_len"},
		{&f.qDisk, "request_queue", "disk"}, {&f.major, "gendisk", "major"}, {&f.firstMinor, "gendisk", "first_minor"},
	} {
		if *m.dst, err = memberOffset(spec, m.strct, m.member); err != nil {
			return err
		}
	}
	slots, err := k.newArray("hast_blk_slots", 24, 1<<rqSlotBits)
	if err != nil {
		return err
	}
	return k.attach(rawTracepoint("block_rq_complete", blockComplete(slots.FD(), k.hists.FD())),
		rawTracepoint("block_rq_issue", blockIssue(f, k.devs.FD(), slots.FD(), k.hists.FD())))
}

// memberOffset is the byte offset of a (direct) member of a struct in the kernel's BTF.
func memberOffset(spec *btf.Spec, strct, member string) (int16, error) {
	var s *btf.Struct
	if err := spec.TypeByName(strct, &s); err != nil {
		return 0, fmt.Errorf("kernel BTF: struct %s: %w", strct, err)
	}
	for _, m := range s.Members {
		if m.Name == member {
			return int16(m.Offset.Bytes()), nil
		}
	}
	return 0, fmt.Errorf("kernel BTF: struct %s has no member %s", strct, member)
}

func (k *Kernel) loadSched() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	var t taskFields
	if t.pid, err = memberOffset(spec, "task_struct", "pid"); err != nil {
		return err
	}
	if t.tgid, err = memberOffset(spec, "task_struct", "tgid"); err != nil {
		return err
	}
	// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
	// unsigned int prev_state) since Linux 5.18; refuse anything else.
	var sw *btf.Typedef
	if err := spec.TypeByName("btf_trace_sched_switch", &sw); err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	if ptr, ok := sw.Type.(*btf.Pointer); !ok {
		return errors.New("kernel BTF: btf_trace_sched_switch is not a function pointer")
	} else if fp, ok := ptr.Target.(*btf.FuncProto); !ok || len(fp.Params) != 5 {
		return fmt.Errorf("kernel BTF: sched_switch has an unexpected prototype %v", ptr.Target)
	}
	runq, err := k.newArray("hast_runq_slots", 16, 1<<slotBits)
	if err != nil {
		return err
	}
	return k.attach(btfTracepoint("sched_switch", switchIn(k.pid, t, runq.FD(), k.hists.FD())),
		btfTracepoint("sched_wakeup", wakeup(k.pid, t, runq.FD())),
		btfTracepoint("sched_wakeup_new", wakeup(k.pid, t, runq.FD())))
}

func (k *Kernel) loadTCP() error {
	rt, err := tracepointFields("tcp", "tcp_retransmit_skb", "sport", "dport")
	if err != nil {
		return err
	}
	pr, err := tracepointFields("tcp", "tcp_probe", "sport", "dport", "srtt")
	if err != nil {
		return err
	}
	f := tcpFields{rsport: rt["sport"], rdport: rt["dport"], psport: pr["sport"], pdport: pr["dport"], srtt: pr["srtt"]}
	return k.attach(tracepoint("tcp", "tcp_retransmit_skb", tcpRetransmit(f, k.ports.FD(), k.hists.FD())),
		tracepoint("tcp", "tcp_probe", tcpProbe(f, k.ports.FD(), k.hists.FD())))
}

const tracefs = "/sys/kernel/tracing"

var mountOnce sync.Once
var mountErr error

// mountTracefs mounts tracefs where the kernel expects it, unless it is there already.
func mountTracefs() error {
	mountOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(tracefs, "events")); err == nil {
			return
		}
		if err := unix.Mount("tracefs", tracefs, "tracefs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			mountErr = fmt.Errorf("mount tracefs on %s: %w", tracefs, err)
		}
	})
	return mountErr
}

// tracepointFields reads the offsets of a tracepoint's record fields from its format file.
// The fields needed must be present: a missing one is an error.
func tracepointFields(group, name string, need ...string) (map[string]int16, error) {
	if err := mountTracefs(); err != nil {
		return nil, err
	}
	path := filepath.Join(tracefs, "events", group, name, "format")
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int16{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "field:") {
			continue
		}
		var decl, off string
		for _, part := range strings.Split(line, ";") {
			part = strings.TrimSpace(part)
			if v, ok := strings.CutPrefix(part, "field:"); ok {
				decl = v
			} else if v, ok := strings.CutPrefix(part, "offset:"); ok {
				off = v
			}
		}
		fields := strings.Fields(decl)
		if len(fields) == 0 {
			continue
		}
		n := fields[len(fields)-1]
		if i := strings.IndexByte(n, '['); i >= 0 {
			n = n[:i]
		}
		o, err := strconv.Atoi(off)
		if err != nil {
			return nil, fmt.Errorf("%s: field %s: offset %q", path, n, off)
		}
		out[n] = int16(o)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, n := range need {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("%s: no field %s", path, n)
		}
	}
	return out, nil
}

// SetDevices replaces the devices whose block requests are counted by the disks under paths
// (a file's file system, a partition's disk, the disks under a device-mapper or md device).
func (k *Kernel) SetDevices(paths []string) error {
	want := map[uint32]bool{}
	for _, p := range paths {
		devs, err := disksUnder(p)
		if err != nil {
			return fmt.Errorf("perf: %s: %w", p, err)
		}
		for _, d := range devs {
			want[d] = true
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var key, val uint32
	var stale []uint32
	it := k.devs.Iterate()
	for it.Next(&key, &val) {
		if !want[key] {
			stale = append(stale, key)
		}
	}
	for _, d := range stale {
		k.devs.Delete(d)
	}
	k.devList = k.devList[:0]
	for d := range want {
		if err := k.devs.Put(d, uint32(1)); err != nil {
			return fmt.Errorf("perf: device filter: %w", err)
		}
		k.devList = append(k.devList, fmt.Sprintf("%d:%d", d>>20, d&(1<<20-1)))
	}
	return nil
}

// Devices lists the block devices observed, as major:minor.
func (k *Kernel) Devices() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.devList...)
}

// SetPorts adds TCP ports whose connections are observed.
func (k *Kernel) SetPorts(ports []uint16) error {
	for _, p := range ports {
		if err := k.ports.Put(p, uint32(1)); err != nil {
			return fmt.Errorf("perf: port filter: %w", err)
		}
	}
	return nil
}

// disksUnder returns the kernel dev_t (major<<20 | minor) of the request-based disks that
// serve path.
func disksUnder(path string) ([]uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, err
	}
	dev := st.Dev
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		dev = st.Rdev
	}
	return sysDisks(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(dev), unix.Minor(dev)), 0)
}

func sysDisks(dir string, depth int) ([]uint32, error) {
	if depth > 8 {
		return nil, fmt.Errorf("%s: devices nested too deep", dir)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("not a block device (%w)", err)
	}
	if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
		real = filepath.Dir(real)
	}
	if slaves, _ := os.ReadDir(filepath.Join(real, "slaves")); len(slaves) > 0 {
		var out []uint32
		for _, s := range slaves {
			d, err := sysDisks(filepath.Join(real, "slaves", s.Name()), depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, d...)
		}
		return out, nil
	}
	b, err := os.ReadFile(filepath.Join(real, "dev"))
	if err != nil {
		return nil, err
	}
	var maj, min uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err != nil {
		return nil, fmt.Errorf("%s/dev: %q", real, b)
	}
	return []uint32{maj<<20 | min}, nil
}

// Snapshot is what the probes counted since they were loaded.
type Snapshot struct {
	Time     time.Time         `json:"time"`
	Probes   map[string]*Hist  `json:"probes"`
	Counters map[string]uint64 `json:"counters"`
	Devices  []string          `json:"devices"`
	Failed   map[string]string `json:"failed,omitempty"`
}

// Snapshot reads every histogram. The kernel keeps counting while it reads; each value is
// read whole.
func (k *Kernel) Snapshot() Snapshot {
	s := Snapshot{Time: time.Now(), Probes: map[string]*Hist{}, Counters: map[string]uint64{}, Devices: k.Devices()}
	k.memMu.RLock()
	defer k.memMu.RUnlock()
	if k.closed {
		return s
	}
	for _, p := range Probes() {
		h := &Hist{}
		base := int(p) * stride
		for i := range h.Counts {
			h.Counts[i] = atomic.LoadUint64(&k.slots[base+i])
		}
		h.SumNs = atomic.LoadUint64(&k.slots[base+slotSum])
		h.Bytes = atomic.LoadUint64(&k.slots[base+slotByte])
		h.Errors = atomic.LoadUint64(&k.slots[base+slotErr])
		s.Probes[p.String()] = h
	}
	for c := Counter(0); c < numCounters; c++ {
		s.Counters[c.String()] = atomic.LoadUint64(&k.slots[int(numProbes)*stride+int(c)])
	}
	// A program that fires while it (or, for classic tracepoints, any tracing program) is
	// already running on the CPU is skipped by the kernel: those events are lost.
	var misses uint64
	for _, p := range k.progs {
		if st, err := p.Stats(); err == nil {
			misses += st.RecursionMisses
		}
	}
	s.Counters["probe_misses"] = misses
	for g, err := range k.failed {
		if s.Failed == nil {
			s.Failed = map[string]string{}
		}
		s.Failed[string(g)] = err.Error()
	}
	return s
}

// Close detaches every probe and frees the maps.
func (k *Kernel) Close() error {
	k.memMu.Lock()
	defer k.memMu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	for _, l := range k.links {
		l.Close()
	}
	for _, p := range k.progs {
		p.Close()
	}
	for _, m := range k.starts {
		m.Close()
	}
	if k.mem != nil {
		unix.Munmap(k.mem)
	}
	for _, m := range []*ebpf.Map{k.devs, k.ports, k.hists} {
		if m != nil {
			m.Close()
		}
	}
	return nil
}
