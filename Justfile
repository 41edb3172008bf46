# Recipes for hast. `just` itself: npm install -g rust-just

export PATH := env_var('PATH') + ":/usr/local/go/bin"

# The tutorial's two nodes, replicated, on this machine; fails on any lost byte.
demo:
    go run . demo

# Install test dependencies and run the whole suite (what CI runs).
test:
    bash scripts/test.sh

# Benchmarks with same-run baselines (raw files, ideal pipeline, nbdkit); ratios and red flags.
bench:
    go run . bench --quick

# Micro-benchmarks of the hot paths.
microbench:
    go test -run '^$' -bench . -benchmem ./internal/... ./replicate/... ./blockdev/...

lint:
    gofmt -l . | (! grep .)
    go vet ./...

build:
    go build -o hast .

# Not built yet: the bootable appliance image (see README, "Not yet").
image:
    @echo "hast image: not implemented yet" && exit 1

# Tests that need ublk, run inside qemu guests with Debian's 6.12 kernel (fetched through apt).
vm-test:
    go test -count=1 -run '^TestGuest' ./image/ ./ublk/ ./appliance/

# ublk against the loop device on the same file, and the replicated /dev/hast/disk1 against the
# NBD export, same fio jobs, in guests (run it alone: docs/BENCHMARKS.md).
vm-bench:
    go test -count=1 -run '^$' -bench '^BenchmarkGuest' -v ./ublk/ ./appliance/ | grep -A6 ' vs '
