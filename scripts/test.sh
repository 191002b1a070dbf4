#!/usr/bin/env bash
# test.sh: everything the tests need, then every test in the workspace.
#
# The end-to-end tests start the real binaries (release builds, made by the
# test harness itself), a real sshd, check the metrics endpoint with
# promtool and the systemd units with systemd-analyze, so this installs
# OpenSSH, Prometheus (promtool) and systemd first when they are missing (as
# root, with apt-get; otherwise it says what to install).
# Extra arguments go to the test runner, e.g. `scripts/test.sh -E 'test(ssh)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
{ command -v ssh && command -v ssh-keygen; } >/dev/null || need+=(openssh-client)
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing ${need[*]} (the ssh, metrics and systemd tests need them)"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
    else
        echo "test.sh: please install ${need[*]} (the ssh, metrics and systemd tests need them)" >&2
        exit 1
    fi
fi

# The failover benchmark's report and plot, on synthetic data (no root, < 1 s).
if command -v python3 >/dev/null; then
    python3 scripts/bench_bond.py selftest
else
    echo "test.sh: python3 missing; skipping scripts/bench_bond.py selftest" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "== cargo-nextest not found; using cargo test"
    exec cargo test --workspace --no-fail-fast "$@"
fi
