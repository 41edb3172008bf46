package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests drive the server with qemu's NBD client, which nobody here wrote.

// needTool returns the path of a qemu tool or fails the test loudly.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not on PATH: the NBD interoperability tests need it; install it with "+
			"`apt-get install -y qemu-utils`", name)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	// A safety net against a hung tool, not a performance assertion.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestQemuIO(t *testing.T) {
	const size = 8 << 20
	vol := newMemVolume(size, 512)
	ts := startServer(t, newExports("disk1", vol))
	targets := map[string]string{
		"unix": fmt.Sprintf("nbd+unix:///disk1?socket=%s", ts.sock),
		"tcp":  fmt.Sprintf("nbd://%s/disk1", ts.tcpAddr),
	}
	for _, name := range []string{"unix", "tcp"} {
		t.Run(name, func(t *testing.T) {
			vol.fill(0x55)
			_, _, f0, d0 := vol.counts()
			out := runTool(t, "qemu-io", "-f", "raw",
				"-c", "write -P 0xab 0 1M",
				"-c", "read -P 0xab 0 1M",
				"-c", "aio_write -P 0xcd 1M 1M",
				"-c", "aio_write -P 0xce 2M 512k",
				"-c", "aio_flush",
				"-c", "read -P 0xcd 1M 1M",
				"-c", "read -P 0xce 2M 512k",
				"-c", "write -f -P 0x11 3M 64k", // FUA
				"-c", "write -z 4M 1M", // NBD_CMD_WRITE_ZEROES
				"-c", "read -P 0 4M 1M",
				"-c", "flush",
				"-c", "discard 6M 1M",
				"-c", "read -P 0x55 7M 1M",
				targets[name])
			for _, bad := range []string{"failed", "error", "Error"} {
				if strings.Contains(out, bad) {
					t.Fatalf("qemu-io reported a failure:\n%s", out)
				}
			}
			for _, want := range []string{
				"wrote 1048576/1048576 bytes at offset 0",
				"read 1048576/1048576 bytes at offset 0",
				"read 1048576/1048576 bytes at offset 1048576",
				"read 524288/524288 bytes at offset 2097152",
				"wrote 65536/65536 bytes at offset 3145728",
				"wrote 1048576/1048576 bytes at offset 4194304",
				"discard 1048576/1048576 bytes at offset 6291456",
				"read 1048576/1048576 bytes at offset 7340032",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("qemu-io output lacks %q:\n%s", want, out)
				}
			}

			// The volume itself holds what qemu wrote.
			want := bytes.Repeat([]byte{0x55}, size)
			copy(want[0:], bytes.Repeat([]byte{0xab}, 1<<20))
			copy(want[1<<20:], bytes.Repeat([]byte{0xcd}, 1<<20))
			copy(want[2<<20:], bytes.Repeat([]byte{0xce}, 512<<10))
			copy(want[3<<20:], bytes.Repeat([]byte{0x11}, 64<<10))
			clear(want[4<<20 : 5<<20])
			got := vol.snapshot()
			for i := 0; i < size; i += 1 << 20 {
				if !bytes.Equal(got[i:i+1<<20], want[i:i+1<<20]) && (i < 6<<20 || i >= 7<<20) {
					t.Errorf("volume MiB %d differs from what qemu-io wrote", i>>20)
				}
			}
			_, _, f, _ := vol.counts()
			if f < f0+3 { // aio_flush, FUA write, flush
				t.Errorf("volume saw %d flushes, want at least 3", f-f0)
			}
			ds := vol.discardList()[d0:]
			var trimmed int64
			for _, d := range ds {
				if d[0] < 6<<20 || d[0]+d[1] > 7<<20 {
					t.Errorf("discard %v outside the range qemu-io discarded", d)
				}
				trimmed += d[1]
			}
			if trimmed != 1<<20 {
				t.Errorf("volume saw %d bytes discarded, want %d", trimmed, 1<<20)
			}
		})
	}
	vol.requireNoViolations(t)
}

// TestQemuIO4K checks that qemu honours the advertised 4096-byte minimum block size: its
// sub-block writes become read-modify-write cycles of whole blocks.
func TestQemuIO4K(t *testing.T) {
	const size = 1 << 20
	vol := newMemVolume(size, 4096)
	vol.fill(0x55)
	ts := startServer(t, newExports("disk1", vol))
	out := runTool(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 512 512",
		"-c", "read -P 0x55 0 512",
		"-c", "read -P 0xab 512 512",
		"-c", "read -P 0x55 1024 3072",
		fmt.Sprintf("nbd+unix:///disk1?socket=%s", ts.sock))
	if strings.Contains(out, "failed") || strings.Contains(out, "rror") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	want := bytes.Repeat([]byte{0x55}, size)
	copy(want[512:], bytes.Repeat([]byte{0xab}, 512))
	if !bytes.Equal(vol.snapshot(), want) {
		t.Errorf("volume differs after qemu-io's sub-block write")
	}
	vol.requireNoViolations(t)
}

func TestQemuImg(t *testing.T) {
	const size = 6<<20 + 4096
	vol := newMemVolume(size, 512)
	var seed [32]byte
	rand.NewChaCha8(seed).Read(vol.data)
	ts := startServer(t, newExports("disk1", vol))

	t.Run("info", func(t *testing.T) {
		out := runTool(t, "qemu-img", "info", "--output=json", fmt.Sprintf("nbd://%s/disk1", ts.tcpAddr))
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("qemu-img info output: %v\n%s", err, out)
		}
		if info.VirtualSize != size {
			t.Errorf("qemu-img info: virtual-size %d, want %d", info.VirtualSize, size)
		}
	})
	t.Run("convert", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "copy.raw")
		runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw",
			fmt.Sprintf("nbd+unix:///disk1?socket=%s", ts.sock), dst)
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, vol.snapshot()) {
			t.Errorf("qemu-img convert copy (%d bytes) differs from the export (%d bytes)", len(got), size)
		}
	})
	t.Run("convert-in", func(t *testing.T) {
		// The other direction: qemu-img writes a whole image into the export.
		src := filepath.Join(t.TempDir(), "src.raw")
		data := pattern(size, 0x21)
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		runTool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src,
			fmt.Sprintf("nbd://%s/disk1", ts.tcpAddr))
		if !bytes.Equal(vol.snapshot(), data) {
			t.Errorf("export differs from the image qemu-img wrote into it")
		}
	})
	vol.requireNoViolations(t)
}

// TestQemuIOTLS: qemu's client, with tls-creds-x509, upgrades with NBD_OPT_STARTTLS, proves
// its certificate and reads and writes; without credentials it is refused.
func TestQemuIOTLS(t *testing.T) {
	pki := newTestPKI(t)
	vol := newMemVolume(4<<20, 512)
	ts := startServer(t, newExports("disk1", vol))
	addr := servePolicy(t, ts.Server, "tcp", Policy{TLS: pki.serverConfig(true)})
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	vol.fill(0x55)
	out := runTool(t, "qemu-io",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+pki.Dir,
		"--image-opts", fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%s,export=disk1,tls-creds=tls0", host, port),
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "read -P 0x55 1M 1M")
	if strings.Contains(out, "fail") || strings.Contains(out, "rror") {
		t.Fatalf("qemu-io over TLS reported a failure:\n%s", out)
	}
	for _, want := range []string{"wrote 1048576/1048576 bytes at offset 0", "read 1048576/1048576 bytes at offset 1048576"} {
		if !strings.Contains(out, want) {
			t.Errorf("qemu-io over TLS: no %q in\n%s", want, out)
		}
	}
	if got := vol.snapshot()[:1<<20]; !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 1<<20)) {
		t.Error("the volume does not hold what qemu-io wrote over TLS")
	}

	// A safety net against a hung tool, not a performance assertion.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	plain, err := exec.CommandContext(ctx, needTool(t, "qemu-io"), "-f", "raw", "-c", "read 0 4k",
		fmt.Sprintf("nbd://%s/disk1", addr)).CombinedOutput()
	if err == nil {
		t.Fatalf("qemu-io without TLS read from a listener that requires TLS:\n%s", plain)
	}
	if !strings.Contains(string(plain), "TLS") {
		t.Errorf("qemu-io without TLS failed, but not for want of TLS:\n%s", plain)
	}
	t.Logf("qemu-io without TLS: %s", plain)
}
