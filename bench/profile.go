package bench

import (
	"errors"
	"fmt"
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
	create := func(path string) (*os.File, error) {
		f, err := os.Create(path)
		if err != nil {
			return nil, fmt.Errorf("profile: %w", err)
		}
		files = append(files, f)
		return f, nil
	}
	if cpuPath != "" {
		f, err := create(cpuPath)
		if err != nil {
			return nil, errors.Join(err, stop())
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, errors.Join(fmt.Errorf("cpu profile %s: %w", cpuPath, err), stop())
		}
		stops = append(stops, pprof.StopCPUProfile)
	}
	if tracePath != "" {
		f, err := create(tracePath)
		if err != nil {
			return nil, errors.Join(err, stop())
		}
		if err := trace.Start(f); err != nil {
			return nil, errors.Join(fmt.Errorf("trace %s: %w", tracePath, err), stop())
		}
		stops = append(stops, trace.Stop)
	}
	return stop, nil
}
