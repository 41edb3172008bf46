package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// startProfiles starts a CPU profile and an execution trace of this process when their
// paths are set. Every engine of a run (both nodes, the baselines, the frontends) is in
// this process, so one trace shows where a request waits: the targets are met or missed
// by scheduling and hand-offs as much as by CPU. The returned function stops both and
// closes the files.
func startProfiles(cpuPath, tracePath string) (stop func() error, err error) {
	var files []*os.File
	var stops []func()
	stop = func() error {
		for _, s := range stops {
			s()
		}
		var errs []error
		for _, f := range files {
			if err := f.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", f.Name(), err))
			}
		}
		return errors.Join(errs...)
	}
	for _, p := range []struct {
		what, path string
		start      func(io.Writer) error
		stop       func()
	}{
		{"cpu profile", cpuPath, pprof.StartCPUProfile, pprof.StopCPUProfile},
		{"trace", tracePath, trace.Start, trace.Stop},
	} {
		if p.path == "" {
			continue
		}
		f, err := os.Create(p.path)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("%s: %w", p.what, err), stop())
		}
		files = append(files, f)
		if err := p.start(f); err != nil {
			return nil, errors.Join(fmt.Errorf("%s %s: %w", p.what, p.path, err), stop())
		}
		stops = append(stops, p.stop)
	}
	return stop, nil
}
