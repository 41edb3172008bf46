package bench

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// testdata/fio-3.33.json is real output of fio 3.33 (--output-format=json) running the bundled
// job set (common.fio + every job, as FioJobFile combines them) for one second per job on a
// 64 MiB file (verify-crc32c shrunk to 32 MiB).
const fioSample = "testdata/fio-3.33.json"

func TestParseFioSample(t *testing.T) {
	data, err := os.ReadFile(fioSample)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ParseFio(append([]byte("fio: some warning before the JSON\n"), data...), "fuse", 2)
	if err != nil {
		t.Fatal(err)
	}
	// The expected figures come from decoding the same file generically.
	var raw struct {
		Jobs []map[string]any `json:"jobs"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(raw.Jobs) || len(rows) != len(FioJobs) {
		t.Fatalf("%d rows from %d jobs, want %d", len(rows), len(raw.Jobs), len(FioJobs))
	}
	num := func(m map[string]any, path ...string) float64 {
		var v any = m
		for _, p := range path {
			v = v.(map[string]any)[p]
		}
		return v.(float64)
	}
	for i, r := range rows {
		j := raw.Jobs[i]
		if r.Workload != FioJobs[i] || r.Workload != j["jobname"] || r.Source != SourceFio || r.Target != "fuse" {
			t.Fatalf("row %d is %s %s/%s, want job %s", i, r.Source, r.Workload, r.Target, FioJobs[i])
		}
		if r.Stats == nil {
			t.Fatalf("%s: no stats (error %q)", r.Workload, r.Error)
		}
		dir := "write"
		if num(j, "read", "total_ios") > num(j, "write", "total_ios") {
			dir = "read"
		}
		// The bundled jobs ask for total-latency percentiles (lat_percentiles=1).
		lat := []string{dir, "lat_ns"}
		if r.Workload == "fsync-etcd" {
			lat = []string{"sync", "lat_ns"}
		}
		wantMiBps := (num(j, "read", "bw_bytes") + num(j, "write", "bw_bytes")) / (1 << 20)
		wantIOPS := num(j, "read", "iops") + num(j, "write", "iops")
		wantP99 := num(j, append(lat, "percentile", "99.000000")...) / 1000
		wantP50 := num(j, append(lat, "percentile", "50.000000")...) / 1000
		wantMean := num(j, append(lat, "mean")...) / 1000
		if !near(r.Stats.MiBps, wantMiBps) || !near(r.Stats.IOPS, wantIOPS) || !near(r.Stats.LatP99Us, wantP99) ||
			!near(r.Stats.LatP50Us, wantP50) || !near(r.Stats.LatMeanUs, wantMean) {
			t.Errorf("%s: MiB/s %v IOPS %v p50 %v p99 %v mean %v; want %v %v %v %v %v", r.Workload,
				r.Stats.MiBps, r.Stats.IOPS, r.Stats.LatP50Us, r.Stats.LatP99Us, r.Stats.LatMeanUs, wantMiBps, wantIOPS, wantP50, wantP99, wantMean)
		}
		wantCPU := (num(j, "usr_cpu") + num(j, "sys_cpu")) / 100 * num(j, "job_runtime") / 1000
		if !near(r.Stats.CPUSeconds, wantCPU) || r.Stats.ElapsedS <= 0 || r.Stats.CPUShare < 0 || r.Stats.CPUShare > 1 {
			t.Errorf("%s: CPU %v s (want %v) over %v s (share %v)", r.Workload, r.Stats.CPUSeconds, wantCPU, r.Stats.ElapsedS, r.Stats.CPUShare)
		}
		rb, wb := num(j, "read", "io_bytes"), num(j, "write", "io_bytes")
		if want := int(100 * rb / max(rb+wb, 1)); r.ReadPercent != want {
			t.Errorf("%s: read %d%%, want %d%%", r.Workload, r.ReadPercent, want)
		}
	}
	byName := map[string]*Row{}
	for _, r := range rows {
		byName[r.Workload] = r
	}
	for name, want := range map[string][3]int{ // block size, depth × jobs, read %
		"randwrite-4k-qd32": {4096, 128, 0},
		"randread-4k-qd32":  {4096, 128, 100},
		"seqwrite-1m":       {1 << 20, 512, 0},
		"fsync-etcd":        {2300, 1, 0},
		"verify-crc32c":     {4096, 16, 50},
	} {
		r := byName[name]
		if r.BlockSize != want[0] || r.QueueDepth != want[1] || (want[2] >= 0 && r.ReadPercent != want[2]) {
			t.Errorf("%s: bs %d depth %d read %d%%, want %v", name, r.BlockSize, r.QueueDepth, r.ReadPercent, want)
		}
	}
}

func TestParseFioErrors(t *testing.T) {
	for _, in := range []string{"", "no json here", "{not json", `{"jobs": []}`} {
		if _, err := ParseFio([]byte(in), "t", 2); err == nil {
			t.Errorf("ParseFio(%q) succeeded", in)
		}
	}
	rows, err := ParseFio([]byte(`{"jobs":[{"jobname":"x","error":5,"job options":{"bs":"4k"}}]}`), "t", 2)
	if err != nil || len(rows) != 1 || rows[0].Stats != nil || !strings.Contains(rows[0].Error, "error 5") {
		t.Fatalf("failed job: rows %+v err %v", rows, err)
	}
}

func TestFioJobFile(t *testing.T) {
	text, err := FioJobFile(FioJobs, "/dev/hast/disk1", 128<<20, 3*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[global]", "ioengine=libaio", "direct=1", "percentile_list=50:90:99:99.9:99.99",
		"filename=/dev/hast/disk1\nsize=134217728\nruntime=3000ms\nramp_time=0ms\n",
		"[fsync-etcd]", "fdatasync=1", "size=22m",
		"[verify-crc32c]", "verify=crc32c", "size=134217728\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("job file lacks %q:\n%s", want, text)
		}
	}
	for _, j := range FioJobs {
		if !strings.Contains(text, "["+j+"]") {
			t.Errorf("job file lacks [%s]", j)
		}
	}
	if strings.Contains(text, "size=256m") {
		t.Error("verify-crc32c's 256m was not shrunk to the 128 MiB target")
	}
	// The job files' own runtime stays when not overridden.
	text, err = FioJobFile([]string{"lat-4k-qd1-write"}, "/x", 1<<30, 0, -1)
	if err != nil || strings.Contains(text, "runtime=0") || strings.Contains(text, "ramp_time=0") || strings.Contains(text, "[randread") {
		t.Fatalf("err %v, text:\n%s", err, text)
	}
	if _, err := FioJobFile([]string{"nope"}, "/x", 1<<30, 0, 0); err == nil {
		t.Error("unknown job accepted")
	}
	if _, err := FioJobFile(FioJobs, "/a:b", 1<<30, 0, 0); err == nil {
		t.Error("a filename with ':' accepted")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "4k": 4096, "4K": 4096, "4KiB": 4096, "1m": 1 << 20,
		"2G": 2 << 30, "1.5G": 3 << 29, "1T": 1 << 40, "2300": 2300, "128kB": 128 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "4q", "1e30G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
}
