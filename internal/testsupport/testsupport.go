// Package testsupport holds what test packages share: the race-enabled hast binary the
// end-to-end packages' (appliance, scenario) daemons run as, a buffer the CLI and daemons write
// to from several goroutines, waits for what the code under test alone must bring about, and a
// throwaway PKI for TLS. Only tests import it.
package testsupport

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// BuildRaceBinary builds the hast binary with the race detector into a new temporary directory
// and returns its path; remove the directory with cleanup.
func BuildRaceBinary() (path string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "hast-bin-")
	if err != nil {
		return "", nil, err
	}
	path = filepath.Join(dir, "hast")
	cmd := exec.Command("go", "build", "-race", "-buildvcs=auto", "-o", path, "hast")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("build the hast binary: %w", err)
	}
	return path, func() { os.RemoveAll(dir) }, nil
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *SyncBuffer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *SyncBuffer) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// WaitUntil polls cond until it holds. The minute is a liveness guard, not a performance
// assertion: every condition waited for is reached by the code under test alone, and one that
// is not reached is a hang (the failure being tested for).
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Receive returns what ch delivers, with the same liveness guard as WaitUntil.
func Receive[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("never returned: %s", what)
	}
	var zero T
	return zero
}

// ReadFileAt fills p from the file at path at offset off.
func ReadFileAt(path string, p []byte, off int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadAt(p, off)
	return err
}
