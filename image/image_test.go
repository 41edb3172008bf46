package image_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"hast/image"
	"hast/image/imagetest"
)

func TestCPIOReproducible(t *testing.T) {
	build := func(order []string) []byte {
		r := image.NewInitramfs()
		for _, n := range order {
			r.AddFile(n, []byte("contents of "+n), 0o644)
		}
		var b bytes.Buffer
		if _, err := r.WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	a := build([]string{"a/b/c", "init", "z"})
	b := build([]string{"z", "init", "a/b/c"})
	if !bytes.Equal(a, b) {
		t.Fatal("the same entries added in another order gave different bytes")
	}
	var raw bytes.Buffer
	if err := image.WriteCPIO(&raw, []image.Entry{{Name: "x/y", Mode: image.ModeFile | 0o600, Data: []byte("hi")}}); err != nil {
		t.Fatal(err)
	}
	// The parent directory comes first, then the file, then the trailer; 512-byte padded.
	s := raw.String()
	if !strings.HasPrefix(s, "070701") || strings.Index(s, "x\x00") > strings.Index(s, "x/y\x00") ||
		!strings.Contains(s, "TRAILER!!!") || raw.Len()%512 != 0 {
		t.Fatalf("unexpected archive %q", s)
	}
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-t")
		cmd.Stdin = bytes.NewReader(raw.Bytes())
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "x/y") {
			t.Fatalf("cpio -t: %v: %s", err, out)
		}
	}
}

// TestGuestBoot boots the 6.12 guest with ublk_drv and e2fsprogs and checks what the ublk tests
// rely on.
func TestGuestBoot(t *testing.T) {
	if imagetest.Boot(t, imagetest.Options{Modules: []string{imagetest.ModUblk}, Programs: []string{"mkfs.ext4"}}) {
		return
	}
	v, err := os.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(v), "Linux version 6.12") {
		t.Fatalf("guest kernel: %s", v)
	}
	if _, err := os.Stat("/dev/ublk-control"); err != nil {
		t.Fatalf("ublk_drv loaded but: %v", err)
	}
	out, err := exec.Command("mkfs.ext4", "-V").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4 -V: %v: %s", err, out)
	}
	t.Logf("guest: %s; %s", strings.TrimSpace(string(v)), strings.TrimSpace(string(out)))
}
