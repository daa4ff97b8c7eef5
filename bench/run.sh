#!/usr/bin/env bash
# The load benchmark of caddy-lb, in one command:
#
#   bench/run.sh [--rounds 3] [--duration 10s] [--unpinned] [--gomaxprocs N]
#                [--workloads tiny,64k,sleep5ms] [--cases direct,rp,lb_rr,lb_lc,haproxy,nginx,respond]
#                [--memory-duration 60s] [--health10k] [--grpc] [--grpc-cases direct,rp,lb,haproxy,nginx]
#                [--overload] [--out DIR]
#
# It builds ./cmd/caddy (reverse_proxy and load_balancer in one binary), the
# backend (bench/backend) and the driver (bench/cmd/lbbench), asks the
# driver which commands the chosen parts need (wrk, haproxy, nginx, etcd),
# installs the missing ones with apt-get (with sudo when not root), and
# runs the driver, which starts and stops everything else. All traffic
# stays on 127.0.0.0/8. See bench/README.md; `bench/run.sh --help` lists
# every option.
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
# HAProxy and nginx are in /usr/sbin, which a user's PATH may lack.
for dir in /usr/sbin /sbin; do
	case ":$PATH:" in
	*":$dir:"*) ;;
	*) PATH="$PATH:$dir" ;;
	esac
done
export PATH
help=false
if [[ " $* " == *" --help "* || " $* " == *" -h "* || " $* " == *" -help "* ]]; then
	help=true
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

# The driver says which commands the chosen parts run, one
# "command debian-package" a line; install the packages of those missing.
if [ "$help" = false ]; then
	needs=$("$bin/lbbench" -caddy "$bin/caddy" -backend "$bin/backend" -needs "$@")
	missing=()
	while read -r cmd pkg; do
		if [ -n "$cmd" ] && ! command -v "$cmd" >/dev/null 2>&1; then
			echo "run.sh: $cmd not found: installing the Debian package $pkg" >&2
			missing+=("$pkg")
		fi
	done <<<"$needs"
	if [ "${#missing[@]}" -gt 0 ]; then
		sudo=()
		if [ "$(id -u)" != 0 ]; then
			sudo=(sudo)
		fi
		"${sudo[@]}" apt-get update
		"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y "${missing[@]}"
	fi
fi

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
