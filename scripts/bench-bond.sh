#!/usr/bin/env bash
# bench-bond.sh: striper bonding two links of different rates, against one
# TCP flow on each link alone, and a failover run.
#
#   sudo scripts/bench-bond.sh                 # RATE_A=30 RATE_B=10 SECS=10
#
# Two network namespaces joined by two veth pairs, each pair one link whose
# whole rate is capped by HTB on both ends (one class for the link, not per
# flow):
#
#   netns bondc                         netns bonds (10.99.9.1 on lo)
#     bcA 10.99.1.1  ==== link A ====  bsA 10.99.1.2   RATE_A Mbit/s
#     bcB 10.99.2.1  ==== link B ====  bsB 10.99.2.2   RATE_B Mbit/s
#
# The client reaches the server's 10.99.9.1 over either link; its paths are
# `--via bcA --via bcB` (SO_BINDTODEVICE: the stripes of each path leave by
# their interface). Runs, receiver goodput from iperf3 (upload):
#   1. one TCP flow on link A, then on link B, straight to the server;
#   2. iperf3 through striper over both links (STRIPES per path);
#   3. failover: iperf3 through striper for FO_SECS, 1 s intervals;
#      link B goes down at FO_DOWN s (`ip link set bcB down`) and up again at
#      FO_UP s (10 s: longer than the default --stripe-timeout, so the path
#      is declared dead and re-dialed); the receiver's intervals are printed.
# No added delay: the kernel here has no netem (the link emulator in
# tests/src/linkemu.rs does delay in the end-to-end tests). Linux MPTCP and
# aggligator are not compared (see docs/BENCHMARKS.md).
#
# Env: RATE_A=30 RATE_B=10 (Mbit/s) SECS=10 STRIPES=2 FO_SECS=24 FO_DOWN=6
#      FO_UP=16 STRIPER_ARGS="" BIN=target/release KEEP=1 (keep the logs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
: "${RATE_A:=30}" "${RATE_B:=10}" "${SECS:=10}" "${STRIPES:=2}"
: "${FO_SECS:=24}" "${FO_DOWN:=6}" "${FO_UP:=16}" "${STRIPER_ARGS:=}"
: "${BIN:=$ROOT/target/release}"

if [ "$(id -u)" != 0 ]; then
    echo "bench-bond.sh: needs root (network namespaces, tc); skipping the benchmark."
    exit 0
fi
for t in ip tc iperf3 python3; do
    command -v "$t" >/dev/null || { echo "bench-bond.sh: $t is missing" >&2; exit 1; }
done
if [ ! -x "$BIN/stripe-client" ] || [ ! -x "$BIN/stripe-server" ]; then
    (cd "$ROOT" && cargo build --release -p striper-client -p striper-server)
fi
if ip netns list | grep -qE '^bond[cs]( |$)'; then
    echo "bench-bond.sh: namespaces bondc/bonds exist (another run?); remove them first" >&2
    exit 1
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del bondc 2>/dev/null || true
    ip netns del bonds 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

C="ip netns exec bondc"
S="ip netns exec bonds"
ip netns add bondc
ip netns add bonds
$C ip link set lo up
$S ip link set lo up
$S ip addr add 10.99.9.1/32 dev lo
for l in A:1:"$RATE_A" B:2:"$RATE_B"; do
    IFS=: read -r name net rate <<<"$l"
    ip link add "bc$name" netns bondc type veth peer name "bs$name" netns bonds
    $C ip addr add "10.99.$net.1/24" dev "bc$name"
    $S ip addr add "10.99.$net.2/24" dev "bs$name"
    $C ip link set "bc$name" up
    $S ip link set "bs$name" up
    # The server's address over this link; a stripe bound to the interface
    # finds the route of its own device.
    $C ip route add 10.99.9.1/32 via "10.99.$net.2" dev "bc$name" metric "$net"
    for end in "bondc bc$name" "bonds bs$name"; do
        read -r ns dev <<<"$end"
        ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: htb default 10
        ip netns exec "$ns" tc class add dev "$dev" parent 1: classid 1:10 htb \
            rate "${rate}mbit" ceil "${rate}mbit"
    done
done

$S iperf3 -s -D -p 5201 --pidfile "$WORK/iperf3.pid" >/dev/null
sleep 0.3
PIDS+=("$(cat "$WORK/iperf3.pid")")
$S "$BIN/stripe-server" --listen 10.99.9.1:7900 --target 127.0.0.1:5201 \
    --insecure-no-auth $STRIPER_ARGS 2>"$WORK/server.log" &
PIDS+=($!)
$C "$BIN/stripe-client" --listen 127.0.0.1:5202 --server 10.99.9.1:7900 \
    --via bcA --via bcB --stripes "$STRIPES" --insecure-no-auth $STRIPER_ARGS \
    2>"$WORK/client.log" &
PIDS+=($!)
for _ in $(seq 50); do
    grep -q "listening on" "$WORK/client.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "listening on" "$WORK/client.log" || { cat "$WORK/client.log" >&2; exit 1; }

mbit() { # iperf3 JSON on stdin: receiver goodput in Mbit/s
    python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}

echo "links: A $RATE_A Mbit/s, B $RATE_B Mbit/s (HTB per link); $SECS s uploads"
a=$($C iperf3 -c 10.99.1.2 -p 5201 -t "$SECS" -J | mbit)
b=$($C iperf3 -c 10.99.2.2 -p 5201 -t "$SECS" -J | mbit)
s=$($C iperf3 -c 127.0.0.1 -p 5202 -t "$SECS" -J | mbit)
sum=$((RATE_A + RATE_B))
echo
echo "| run | Mbit/s | of $sum |"
echo "|---|---:|---:|"
for r in "one TCP flow, link A:$a" "one TCP flow, link B:$b" \
    "striper, links A + B ($STRIPES stripes each):$s"; do
    python3 -c "import sys; n,v=sys.argv[1].rsplit(':',1); print('| %s | %s | %.2f |' % (n, v, float(v)/$sum))" "$r"
done

echo
echo "failover: link B down at $FO_DOWN s, up at $FO_UP s"
$C iperf3 -c 127.0.0.1 -p 5202 -t "$FO_SECS" -i 1 -J --get-server-output >"$WORK/fo.json" &
fo=$!
sleep "$FO_DOWN"
$C ip link set bcB down
sleep $((FO_UP - FO_DOWN))
$C ip link set bcB up
$C ip route replace 10.99.9.1/32 via 10.99.2.2 dev bcB metric 2
wait "$fo"
python3 - "$WORK/fo.json" <<'EOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
print("| from s | to s | Mbit/s received |")
print("|---:|---:|---:|")
# The receiver's intervals (bytes delivered, not bytes the sender wrote);
# this iperf3 gives the server's report as text only.
unit = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}
pat = re.compile(r"(\d+\.\d+)-(\d+\.\d+)\s+sec\s+\S+ \S*Bytes\s+(\S+) ([KMG]?)bits/sec")
for line in d["server_output_text"].splitlines():
    m = pat.search(line)
    if m and "receiver" not in line and "sender" not in line:
        a, b, v, u = m.groups()
        print("| %s | %s | %.1f |" % (a, b, float(v) * unit[u]))
print("whole run: %.1f Mbit/s received" % (d["end"]["sum_received"]["bits_per_second"] / 1e6))
EOF
echo
grep -E "path .* (down|is back)" "$WORK/client.log" | sed 's/^/client: /' || true
