package appliance

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func TestPrometheusMetrics(t *testing.T) {
	port, err := freePort("127.0.0.1")
	must(t, err)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c, _ := newTestCluster(t, ClusterOptions{}, []string{"--metrics", addr})
	h1 := c.Nodes[0]
	pair(t, c)
	model := readVolume(t, c, h1, "disk1")
	writeRandom(t, c, h1, "disk1", model, 20, 31)
	resp, err := http.Get("http://" + addr + "/metrics")
	must(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	must(t, err)
	text := string(body)
	for _, want := range []string{
		`hast_role{resource="disk1",role="primary"} 1`,
		`hast_connected{resource="disk1"} 1`,
		`hast_requests_total{op="write",resource="disk1"} 20`,
		`hast_latency_seconds_count{resource="disk1",stage="write"} 20`,
		`hast_latency_seconds_bucket{resource="disk1",stage="peer",le="+Inf"} 20`,
		`hast_dirty_bytes{resource="disk1"}`,
	} {
		if !strings.Contains(text, want) {
			t.Fatalf("metrics lack %q:\n%s", want, grepHast(text))
		}
	}
	// What `promtool check metrics` checks: naming, units, help, types.
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	must(t, err)
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func grepHast(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "hast_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
