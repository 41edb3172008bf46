package perf

import (
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkProbeCost measures what the probes add to one system call of the observed process:
// pwrite64 (counted: a start stored and taken, a histogram updated) and getppid (not counted:
// the programs run and return), with the probes off and on, interleaved.
func BenchmarkProbeCost(b *testing.B) {
	fd, err := unix.Open("/dev/null", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	calls := map[string]func(){
		"pwrite64": func() { unix.Pwrite(fd, buf, 0) },
		"getppid":  func() { unix.Getppid() },
	}
	for _, name := range []string{"pwrite64", "getppid"} {
		call := calls[name]
		for _, on := range []bool{false, true} {
			label := name + "/off"
			if on {
				label = name + "/on"
			}
			b.Run(label, func(b *testing.B) {
				if on {
					k, err := Load(Options{})
					if err != nil {
						b.Fatal(err)
					}
					defer k.Close()
				}
				for b.Loop() {
					call()
				}
			})
		}
	}
}
