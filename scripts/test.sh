#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (as root) and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
need=()
for pair in keepalived:keepalived fio:fio qemu-io:qemu-utils qemu-img:qemu-utils nbdkit:nbdkit mkfs.ext4:e2fsprogs losetup:util-linux ip:iproute2 nft:nftables qemu-system-x86_64:qemu-system-x86 gcc:gcc; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
go vet ./...
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# -count=1: every run runs every test; a cached result says nothing about this machine now.
go test -race -count=1 -timeout 30m ./... 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -c '^ok ' "$log" || true)
failed=$(grep -cE '^(FAIL|---.FAIL)' "$log" || true)
if [ "$status" -ne 0 ]; then
	echo "packages: $passed passed, $failed failed"
	exit "$status"
fi
# Every fuzz target runs a bounded number of inputs on top of its seed corpus (which `go test` already
# ran). A count, not a duration: a time limit races the fuzzing engine on a loaded 2-core machine.
fuzztime=${HAST_FUZZTIME:-100000x}
grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u | while read -r dir; do
	for target in $(grep -h '^func Fuzz' "$dir"/*_test.go | sed 's/func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do
		echo "fuzz $dir $target ($fuzztime)"
		if ! out=$(go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$dir" 2>&1); then
			echo "$out"
			exit 1
		fi
	done
done
echo "fuzzing: no failures"
echo "packages: $passed passed, 0 failed"
