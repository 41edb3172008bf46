package appliance

import (
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"hast/internal/hist"
	"hast/perf"
)

// metrics exports every resource's state as Prometheus metrics. Values are read from the
// resources at scrape time, so the data path pays nothing for it beyond its histograms.
type metrics struct{ d *Daemon }

var (
	mRole = prometheus.NewDesc("hast_role", "Role of the resource on this node (1 for the current role).",
		[]string{"resource", "role"}, nil)
	mConnected = prometheus.NewDesc("hast_connected", "1 when the replication link to the peer is up.",
		[]string{"resource"}, nil)
	mComplete = prometheus.NewDesc("hast_complete", "1 when the resource is connected and nothing is left to synchronise.",
		[]string{"resource"}, nil)
	mSplitBrain = prometheus.NewDesc("hast_split_brain", "1 while a split-brain is unresolved.",
		[]string{"resource"}, nil)
	mDirty = prometheus.NewDesc("hast_dirty_bytes", "Bytes in extents that are dirty (in flight or to synchronise).",
		[]string{"resource"}, nil)
	mSyncTotal = prometheus.NewDesc("hast_sync_total_bytes", "Bytes to copy in the running synchronisation.",
		[]string{"resource"}, nil)
	mSyncDone = prometheus.NewDesc("hast_sync_done_bytes", "Bytes copied so far in the running synchronisation.",
		[]string{"resource"}, nil)
	mOps = prometheus.NewDesc("hast_requests_total", "Requests served by the primary.",
		[]string{"resource", "op"}, nil)
	mErrors = prometheus.NewDesc("hast_local_errors_total", "Local component errors.",
		[]string{"resource", "op"}, nil)
	mSynced = prometheus.NewDesc("hast_synced_bytes_total", "Bytes copied by synchronisation since the resource became primary.",
		[]string{"resource"}, nil)
	mLatency = prometheus.NewDesc("hast_latency_seconds", "Latency of the data path by stage (write, read, flush; activemap, local, peer parts of a write).",
		[]string{"resource", "stage"}, nil)
)

func (m metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mRole, mConnected, mComplete, mSplitBrain, mDirty, mSyncTotal, mSyncDone, mOps, mErrors, mSynced, mLatency} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m metrics) Collect(ch chan<- prometheus.Metric) {
	m.d.mu.Lock()
	rs := make([]*resource, 0, len(m.d.order))
	for _, n := range m.d.order {
		rs = append(rs, m.d.resources[n])
	}
	m.d.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, r := range rs {
		s := r.status()
		n := s.Name
		for _, role := range []string{"init", "primary", "secondary"} {
			gauge(mRole, b2f(s.Role == role), n, role)
		}
		gauge(mConnected, b2f(s.Connected), n)
		gauge(mComplete, b2f(s.Status == "complete"), n)
		gauge(mSplitBrain, b2f(s.SplitBrain), n)
		gauge(mDirty, float64(s.Dirty), n)
		gauge(mSyncTotal, float64(s.SyncTotal), n)
		gauge(mSyncDone, float64(s.SyncDone), n)
		st := s.Stats
		counter(mOps, st.Reads, n, "read")
		counter(mOps, st.Writes, n, "write")
		counter(mOps, st.Deletes, n, "delete")
		counter(mOps, st.Flushes, n, "flush")
		counter(mErrors, st.ReadErrors, n, "read")
		counter(mErrors, st.WriteErrors, n, "write")
		counter(mErrors, st.DeleteErrors, n, "delete")
		counter(mErrors, st.FlushErrors, n, "flush")
		counter(mSynced, st.SyncedBytes, n)
		for stage, snap := range r.latency() {
			ch <- histMetric(snap, n, stage)
		}
	}
}

// histMetric converts a log2 histogram into a Prometheus histogram with the same bounds.
func histMetric(s hist.Snapshot, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, hist.Buckets)
	var cum uint64
	for i, c := range s.Counts {
		cum += c
		buckets[hist.UpperBound(i).Seconds()] = cum
	}
	return prometheus.MustNewConstHistogram(mLatency, cum, s.Sum.Seconds(), buckets, labels...)
}

// serveMetrics serves /metrics on addr until the daemon closes.
func (d *Daemon) serveMetrics(addr string) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics{d})
	if d.probes != nil {
		reg.MustRegister(perf.Collector{K: d.probes})
	}
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	d.metricsSrv = srv
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error().Err(err).Msg("metrics endpoint stopped")
		}
	}()
	d.log.Info().Str("addr", l.Addr().String()).Msg("serving Prometheus metrics")
	return nil
}
