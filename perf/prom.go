package perf

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	promLatency = prometheus.NewDesc("hast_kernel_latency_seconds",
		"Latency seen by the eBPF probes: block requests on the local components' disks (issue to complete), the daemon's system calls, its threads' run-queue delay, TCP smoothed RTT of the replication connections.",
		[]string{"probe"}, nil)
	promBytes = prometheus.NewDesc("hast_kernel_bytes_total", "Bytes moved by the requests and system calls the probes counted.",
		[]string{"probe"}, nil)
	promErrors = prometheus.NewDesc("hast_kernel_errors_total", "Requests and system calls the probes saw fail.",
		[]string{"probe"}, nil)
	promRetransmits = prometheus.NewDesc("hast_tcp_retransmits_total", "TCP segments retransmitted on the replication connections.",
		nil, nil)
)

// Collector exports the probes' histograms as Prometheus metrics, with one bucket per power
// of two of nanoseconds.
type Collector struct{ K *Kernel }

func (c Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{promLatency, promBytes, promErrors, promRetransmits} {
		ch <- d
	}
}

func (c Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.K.Snapshot()
	for _, p := range Probes() {
		h := s.Probes[p.String()]
		if h == nil {
			continue
		}
		oct := h.Octaves()
		buckets := make(map[float64]uint64, len(oct))
		var cum uint64
		for k, n := range oct {
			cum += n
			buckets[float64(uint64(1)<<uint(k+1))/1e9] = cum
		}
		ch <- prometheus.MustNewConstHistogram(promLatency, cum, float64(h.SumNs)/1e9, buckets, p.String())
		ch <- prometheus.MustNewConstMetric(promBytes, prometheus.CounterValue, float64(h.Bytes), p.String())
		ch <- prometheus.MustNewConstMetric(promErrors, prometheus.CounterValue, float64(h.Errors), p.String())
	}
	ch <- prometheus.MustNewConstMetric(promRetransmits, prometheus.CounterValue, float64(s.Counters[TCPRetransmits.String()]))
}
