#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (as root) and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
need=()
for pair in fio:fio qemu-io:qemu-utils qemu-img:qemu-utils nbdkit:nbdkit mkfs.ext4:e2fsprogs losetup:util-linux ip:iproute2; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "installing: ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
go vet ./...
go test -race -timeout 20m ./...
