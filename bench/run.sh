#!/usr/bin/env bash
# The load benchmark of caddy-lb, in one command:
#
#   bench/run.sh [--rounds 3] [--duration 10s] [--unpinned] [--gomaxprocs N]
#                [--workloads tiny,64k,sleep5ms] [--memory-duration 60s] [--health10k]
#                [--grpc] [--overload] [--out DIR]
#
# It builds ./cmd/caddy (reverse_proxy and load_balancer in one binary), the
# backend (bench/backend) and the driver (bench/cmd/lbbench), installs wrk
# with apt-get if it is missing, and runs the driver, which starts and stops
# everything else. All traffic stays on 127.0.0.0/8. See bench/README.md;
# `bench/run.sh --help` lists every option.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cmdline="bench/run.sh${*:+ $*}"

for tool in go taskset getconf; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "run.sh: $tool is required" >&2
		exit 1
	fi
done
if ! command -v wrk >/dev/null 2>&1 && [[ " $* " != *" --help "* && " $* " != *" -h "* && " $* " != *" -help "* ]]; then
	echo "run.sh: wrk not found: installing the Debian package" >&2
	sudo=()
	if [ "$(id -u)" != 0 ]; then
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update
	"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y wrk
fi
if [[ " $* " == *" --dynamic10k "* || " $* " == *" -dynamic10k "* ]] && ! command -v etcd >/dev/null 2>&1; then
	echo "run.sh: etcd not found: installing the Debian package etcd-server" >&2
	sudo=()
	if [ "$(id -u)" != 0 ]; then
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y etcd-server
fi

bin=$(mktemp -d "${TMPDIR:-/tmp}/lbbench-bin.XXXXXX")
driver=
# shellcheck disable=SC2317 # called by the traps
cleanup() {
	trap - EXIT INT TERM HUP
	if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
		# The driver stops everything it started when it gets SIGTERM.
		kill -TERM "$driver" 2>/dev/null || true
		wait "$driver" 2>/dev/null || true
	fi
	rm -rf "$bin"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM HUP

cd "$repo"
echo "run.sh: building cmd/caddy, bench/backend, bench/cmd/lbbench ($(go version))" >&2
go build -o "$bin/caddy" ./cmd/caddy
go build -o "$bin/backend" ./bench/backend
go build -o "$bin/lbbench" ./bench/cmd/lbbench

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$rev" != unknown ] && [ -n "$(git --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ]; then
	rev="$rev with uncommitted changes"
fi

# In the background and waited for, so that a signal to this script runs
# the trap at once (bash would wait for a foreground child first).
"$bin/lbbench" -caddy "$bin/caddy" -backend "$bin/backend" -cmdline "$cmdline" -git "$rev" "$@" &
driver=$!
status=0
wait "$driver" || status=$?
driver=
exit "$status"
