package perf

import (
	"encoding/json"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"hast/internal/hist"
)

// Sample is what `hast perf` fetches from the daemon at each refresh: the engine's stage
// histograms and the probes' histograms, both counted since they started.
type Sample struct {
	Time     time.Time                `json:"time"`
	Resource string                   `json:"resource,omitempty"` // "" when Engine sums every primary resource
	Engine   map[string]hist.Snapshot `json:"engine"`             // stage → histogram
	Kernel   *Snapshot                `json:"kernel,omitempty"`   // nil when the probes are off or unavailable
	Probes   string                   `json:"probes"`             // "on", "off", or why they are not loaded
}

// EngineStages are the engine's stages in the order of a write's path, then reads.
var EngineStages = []string{"write", "activemap", "local", "peer", "flush", "read"}

// RowBucket is one non-empty histogram bucket of a Row.
type RowBucket struct {
	LeUs  float64 `json:"le_us"` // exclusive upper bound, microseconds
	Count uint64  `json:"count"`
}

// Row is one histogram over one interval.
type Row struct {
	Name    string      `json:"name"`
	Count   uint64      `json:"count"`
	Rate    float64     `json:"rate"` // per second
	P50Us   float64     `json:"p50_us"`
	P99Us   float64     `json:"p99_us"`
	P999Us  float64     `json:"p999_us"`
	MeanUs  float64     `json:"mean_us"`
	Bytes   uint64      `json:"bytes,omitempty"`
	Errors  uint64      `json:"errors,omitempty"`
	Buckets []RowBucket `json:"buckets"`
	cols    [sparkCols]uint64
}

// Frame is one refresh of `hast perf`: what happened between two samples.
type Frame struct {
	Time      time.Time         `json:"time"`
	IntervalS float64           `json:"interval_s"`
	Resource  string            `json:"resource,omitempty"`
	Probes    string            `json:"probes"`
	Devices   []string          `json:"devices,omitempty"`
	Engine    []Row             `json:"engine"`
	Kernel    []Row             `json:"kernel,omitempty"`
	Counters  map[string]uint64 `json:"counters,omitempty"`
}

// sparkCols columns of the compact histogram: octaves from 1 µs (kernel: 1.024 µs) up.
const sparkCols = 20

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// NewFrame computes the frame between two samples of the same daemon.
func NewFrame(old, cur Sample) Frame {
	iv := cur.Time.Sub(old.Time).Seconds()
	f := Frame{Time: cur.Time, IntervalS: iv, Resource: cur.Resource, Probes: cur.Probes}
	rate := func(n uint64) float64 {
		if iv <= 0 {
			return 0
		}
		return float64(n) / iv
	}
	for _, st := range EngineStages {
		c, o := cur.Engine[st], old.Engine[st]
		var d hist.Snapshot
		for i := range d.Counts {
			d.Counts[i] = c.Counts[i] - o.Counts[i]
		}
		d.Sum = c.Sum - o.Sum
		r := Row{Name: st, Count: d.Count(), P50Us: us(d.Quantile(.5)), P99Us: us(d.Quantile(.99)), P999Us: us(d.Quantile(.999))}
		r.Rate = rate(r.Count)
		if r.Count > 0 {
			r.MeanUs = us(d.Sum) / float64(r.Count)
		}
		for i, n := range d.Counts {
			if n == 0 {
				continue
			}
			r.Buckets = append(r.Buckets, RowBucket{LeUs: us(hist.UpperBound(i)), Count: n})
			r.cols[min(max(i-1, 0), sparkCols-1)] += n // bucket i is [2^(i-1), 2^i) µs
		}
		f.Engine = append(f.Engine, r)
	}
	if cur.Kernel == nil || old.Kernel == nil {
		return f
	}
	f.Devices = cur.Kernel.Devices
	for _, p := range Probes() {
		c, o := cur.Kernel.Probes[p.String()], old.Kernel.Probes[p.String()]
		if c == nil || o == nil {
			continue
		}
		d := c.Sub(o)
		r := Row{Name: p.String(), Count: d.Count(), Bytes: d.Bytes, Errors: d.Errors,
			P50Us: us(d.Quantile(.5)), P99Us: us(d.Quantile(.99)), P999Us: us(d.Quantile(.999))}
		r.Rate = rate(r.Count)
		if r.Count > 0 {
			r.MeanUs = float64(d.SumNs) / 1e3 / float64(r.Count)
		}
		for i, n := range d.Counts {
			if n == 0 {
				continue
			}
			r.Buckets = append(r.Buckets, RowBucket{LeUs: float64(Upper(i)) / 1e3, Count: n})
			k := bits.Len64(Lower(i)) - 1 - 10 // octave of 2^10 ns ≈ 1 µs
			r.cols[min(max(k, 0), sparkCols-1)] += n
		}
		f.Kernel = append(f.Kernel, r)
	}
	f.Counters = map[string]uint64{}
	for name, v := range cur.Kernel.Counters {
		f.Counters[name] = v - old.Kernel.Counters[name]
	}
	return f
}

// fmtUs prints a latency in microseconds compactly.
func fmtUs(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v < 1:
		return fmt.Sprintf("%.0fns", v*1e3)
	case v < 100:
		return fmt.Sprintf("%.1fµs", v)
	case v < 1e3:
		return fmt.Sprintf("%.0fµs", v)
	case v < 1e4:
		return fmt.Sprintf("%.2fms", v/1e3)
	case v < 1e5:
		return fmt.Sprintf("%.1fms", v/1e3)
	case v < 1e6:
		return fmt.Sprintf("%.0fms", v/1e3)
	case v < 1e7:
		return fmt.Sprintf("%.2fs", v/1e6)
	}
	return fmt.Sprintf("%.1fs", v/1e6)
}

// fmtRate prints a rate per second in 7 columns.
func fmtRate(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%7.1f", v)
	}
	return fmt.Sprintf("%7.0f", v)
}

func spark(cols [sparkCols]uint64) string {
	const levels = " ▁▂▃▄▅▆▇█"
	lv := []rune(levels)
	var peak uint64
	for _, c := range cols {
		peak = max(peak, c)
	}
	var b strings.Builder
	for _, c := range cols {
		i := 0
		if c > 0 {
			i = 1 + int(float64(c)/float64(peak)*float64(len(lv)-2)+0.5)
			i = min(i, len(lv)-1)
		}
		b.WriteRune(lv[i])
	}
	return b.String()
}

func (r Row) line() string {
	name := strings.TrimPrefix(r.Name, "sys_")
	if r.Count == 0 {
		return fmt.Sprintf("%-14s %7s %7s %7s %7s |%s|", name, "-", "", "", "", spark(r.cols))
	}
	return fmt.Sprintf("%-14s %s %7s %7s %7s |%s|", name, fmtRate(r.Rate), fmtUs(r.P50Us), fmtUs(r.P99Us), fmtUs(r.P999Us), spark(r.cols))
}

const rowHeader = "                rate/s     p50     p99    p999 |1µs ×2 per column → |"

// Text renders the frame as `hast perf` shows it: the engine's stages beside the kernel's, or
// below them when width (a terminal's columns; 0 for any) is too narrow for both.
func (f Frame) Text(width int) string {
	var b strings.Builder
	res := f.Resource
	if res == "" {
		res = "all resources"
	}
	fmt.Fprintf(&b, "hast perf: %s at %s over %.1fs; probes %s", res, f.Time.Format("15:04:05"), f.IntervalS, f.Probes)
	if len(f.Devices) > 0 {
		fmt.Fprintf(&b, " (block devices %s)", strings.Join(f.Devices, ", "))
	}
	b.WriteString("\n\n")
	left := []string{"ENGINE (per request)", rowHeader}
	for _, r := range f.Engine {
		left = append(left, r.line())
	}
	right := []string{"KERNEL (eBPF probes; sys_ calls of the daemon)", rowHeader}
	for _, r := range f.Kernel {
		l := r.line()
		if r.Bytes > 0 && f.IntervalS > 0 {
			l += fmt.Sprintf(" %7.1f MB/s", float64(r.Bytes)/f.IntervalS/1e6)
		}
		if r.Errors > 0 {
			l += fmt.Sprintf(" errors %d", r.Errors)
		}
		right = append(right, l)
	}
	names := make([]string, 0, len(f.Counters))
	for n := range f.Counters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		right = append(right, fmt.Sprintf("%-14s %8d in the interval", n, f.Counters[n]))
	}
	col := len([]rune(rowHeader)) + 2
	if width > 0 && width < col+len([]rune(rowHeader))+16 {
		for _, l := range append(append(left, ""), right...) {
			b.WriteString(l + "\n")
		}
		return b.String()
	}
	for i := 0; i < max(len(left), len(right)); i++ {
		var l, r string
		if i < len(left) {
			l = left[i]
		}
		if i < len(right) {
			r = right[i]
		}
		pad := col - len([]rune(l))
		b.WriteString(l + strings.Repeat(" ", max(pad, 1)) + r)
		b.WriteString("\n")
	}
	return b.String()
}

// WatchOptions shape Watch.
type WatchOptions struct {
	Interval time.Duration // between refreshes; 1 s when 0
	Count    int           // refreshes before returning; 0 runs until fetch fails
	JSON     bool          // one JSON frame per line instead of the terminal view
}

// Watch fetches a sample, then every interval another, and prints each frame to out: the
// terminal view (redrawn in place on a terminal) or JSON lines.
func Watch(out io.Writer, fetch func() (Sample, error), opt WatchOptions) error {
	if opt.Interval <= 0 {
		opt.Interval = time.Second
	}
	tty, width := false, 0
	if f, ok := out.(*os.File); ok && !opt.JSON {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil {
			tty, width = true, int(ws.Col)
		}
	}
	old, err := fetch()
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	for n := 0; opt.Count == 0 || n < opt.Count; n++ {
		time.Sleep(opt.Interval)
		cur, err := fetch()
		if err != nil {
			return err
		}
		f := NewFrame(old, cur)
		old = cur
		switch {
		case opt.JSON:
			if err := enc.Encode(f); err != nil {
				return err
			}
		case tty:
			fmt.Fprint(out, "\033[H\033[2J"+f.Text(width))
		default:
			fmt.Fprintln(out, f.Text(0))
		}
	}
	return nil
}
