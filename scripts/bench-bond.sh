#!/usr/bin/env bash
# bench-bond.sh: bonding two links of different rates. striper against one
# TCP flow on each link alone, Linux MPTCP (one subflow per link) and
# aggligator's agg-tunnel (one link per interface), in the same run; then
# failover runs (a black hole and a reset) through striper.
#
#   sudo scripts/bench-bond.sh   # A: 30 Mbit/s, 20 ms RTT; B: 10 Mbit/s, 80 ms
#
# Two network namespaces joined by two veth pairs, each pair one link whose
# whole rate is capped by HTB on both ends (one class for the link, not per
# flow, a drop-tail queue of LINK_QMS ms at the link's rate) and whose
# packets are held DELAY_x ms on arrival at either end (the NFQUEUE delay
# line scripts/wan/delayq.c, one per link and direction; the kernel here has
# no netem):
#
#   netns bondc                         netns bonds (10.99.9.1 on lo)
#     bcA 10.99.1.1  ==== link A ====  bsA 10.99.1.2   RATE_A Mbit/s, DELAY_A ms
#     bcB 10.99.2.1  ==== link B ====  bsB 10.99.2.2   RATE_B Mbit/s, DELAY_B ms
#
# The delay is applied on arrival (mangle INPUT), after the sender's HTB
# queue, so a TCP sender's own queue limits (TSQ) never see held packets,
# and before the filter table, so a REJECT answers only after the delay.
#
# The client reaches the server's 10.99.9.1 over either link. striper's
# paths are `--via bcA --via bcB` (SO_BINDTODEVICE); MPTCP's subflows leave
# from the two client addresses (subflow endpoints, with a routing rule per
# source address); agg-tunnel binds one link to each interface.
#
# Throughput: iperf3 uploads of SECS seconds after OMIT seconds of start-up
# (iperf3 -O: slow start on the 80 ms link is not what a bond carries),
# RUNS rounds of every system in turn; the receiver's goodput, the median of
# the rounds, and each link's share of the bytes (HTB counters of the
# client's two links around the run, headers included).
#
# Failover (scripts/bench_bond.py: a seeded stream, CRC32 checked, every
# read timed at the receiver), through striper and, for comparison, MPTCP
# and agg-tunnel: link B fails at FO_DOWN s and is restored at FO_UP s.
#   blackhole  `ip link set bcB down`: packets vanish, nobody is told;
#   reset      the server's side of link B answers every TCP segment with an
#              RST (iptables REJECT --reject-with tcp-reset).
# Printed: the receiver's Mbit/s per second and the gap (the longest time
# with no byte delivered) after each event.
#
# Env: RATE_A=30 RATE_B=10 (Mbit/s) DELAY_A=10 DELAY_B=40 (ms one way)
#      LINK_QMS=200 (each link's queue, ms at its rate) CC (congestion
#      control in both namespaces; default: the system's) SECS=25 OMIT=2 RUNS=3
#      STRIPES=2
#      SYSTEMS="single mptcp agg striper" (single: one TCP flow on A, then B)
#      FAILOVER="blackhole reset" FO_SECS=20 FO_DOWN=6 FO_UP=14 FO_RUNS=3
#      FO_SYSTEMS="striper mptcp agg" (mptcp and agg only if in SYSTEMS)
#      STRIPER_ARGS="" BIN=target/release AGG=agg-tunnel (skipped if absent;
#      cargo install aggligator-util@0.18.12 --locked --no-default-features)
#      PLOTS=dir (failover-<case>.svg per case; default the work directory)
#      KEEP=1 (keep the logs; striper's client logs at debug level then)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
: "${RATE_A:=30}" "${RATE_B:=10}" "${DELAY_A:=10}" "${DELAY_B:=40}" "${LINK_QMS:=200}"
: "${SECS:=25}" "${OMIT:=2}" "${RUNS:=3}" "${STRIPES:=2}"
: "${SYSTEMS=single mptcp agg striper}" "${FAILOVER=blackhole reset}"
: "${FO_SECS:=20}" "${FO_DOWN:=6}" "${FO_UP:=14}" "${FO_RUNS:=3}" "${STRIPER_ARGS:=}"
: "${FO_SYSTEMS=striper mptcp agg}"
: "${BIN:=$ROOT/target/release}" "${AGG:=agg-tunnel}"

if [ "$(id -u)" != 0 ]; then
    echo "bench-bond.sh: needs root (network namespaces, tc); skipping the benchmark."
    exit 0
fi
for t in ip tc iperf3 python3 gcc; do
    command -v "$t" >/dev/null || { echo "bench-bond.sh: $t is missing" >&2; exit 1; }
done
if command -v iptables-legacy >/dev/null; then IPT=iptables-legacy; else IPT=iptables; fi
command -v $IPT >/dev/null || { echo "bench-bond.sh: iptables is missing" >&2; exit 1; }
has() { [[ " $SYSTEMS " == *" $1 "* ]]; }
note() { echo "bench-bond.sh: $*" >&2; }
if has mptcp && ! command -v mptcpize >/dev/null; then
    note "MPTCP skipped: mptcpize is missing (apt-get install mptcpize)"
    SYSTEMS=${SYSTEMS/mptcp/}
fi
if has agg && ! AGG_PATH=$(command -v "$AGG"); then
    note "agg-tunnel skipped: '$AGG' is not on the PATH"
    SYSTEMS=${SYSTEMS/agg/}
fi
if [ ! -x "$BIN/stripe-client" ] || [ ! -x "$BIN/stripe-server" ]; then
    (cd "$ROOT" && cargo build --release -p striper-client -p striper-server)
fi
if ip netns list | grep -qE '^bond[cs]( |$)'; then
    echo "bench-bond.sh: namespaces bondc/bonds exist (another run?); remove them first" >&2
    exit 1
fi

WORK=$(mktemp -d)
PLOTS=${PLOTS:-$WORK}
mkdir -p "$PLOTS"
gcc -O2 -Wall -o "$WORK/delayq" "$HERE/wan/delayq.c" -lnetfilter_queue -lnfnetlink -lm ||
    { echo "bench-bond.sh: cannot build delayq (apt-get install libnetfilter-queue-dev)" >&2; exit 1; }
PIDS=()
OLD_ALLOWED=
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "$OLD_ALLOWED" ]; then
        sysctl -qw net.ipv4.tcp_allowed_congestion_control="$OLD_ALLOWED" || true
    fi
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
if [ -n "${CC:-}" ]; then
    # A namespace may default only to an algorithm the host allows (a
    # global list): add CC for the run, restore the list at exit.
    allowed=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
    if [[ " $allowed " != *" $CC "* ]]; then
        OLD_ALLOWED=$allowed
        sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed $CC"
    fi
    $C sysctl -qw net.ipv4.tcp_congestion_control="$CC"
    $S sysctl -qw net.ipv4.tcp_congestion_control="$CC"
fi
CC_NOW=$($C sysctl -n net.ipv4.tcp_congestion_control)
queue=0
for l in A:1:"$RATE_A":"$DELAY_A" B:2:"$RATE_B":"$DELAY_B"; do
    IFS=: read -r name net rate delay <<<"$l"
    ip link add "bc$name" netns bondc type veth peer name "bs$name" netns bonds
    $C ip addr add "10.99.$net.1/24" dev "bc$name"
    $S ip addr add "10.99.$net.2/24" dev "bs$name"
    $C ip link set "bc$name" up
    $S ip link set "bs$name" up
    # The server's address over this link; a stripe bound to the interface
    # finds the route of its own device, a socket bound to the link's
    # address (an MPTCP subflow) the table its rule names.
    $C ip route add 10.99.9.1/32 via "10.99.$net.2" dev "bc$name" metric "$net"
    $C ip route add 10.99.9.1/32 via "10.99.$net.2" dev "bc$name" table "10$net"
    $C ip rule add from "10.99.$net.1" table "10$net"
    for end in "bondc bc$name" "bonds bs$name"; do
        read -r ns dev <<<"$end"
        ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: htb default 10
        ip netns exec "$ns" tc class add dev "$dev" parent 1: classid 1:10 htb \
            rate "${rate}mbit" ceil "${rate}mbit"
        ip netns exec "$ns" tc qdisc add dev "$dev" parent 1:10 handle 10: pfifo \
            limit $((rate * 1000 * LINK_QMS / 8 / 1514 + 10))
        # Held on arrival at this end: one delay line per link and direction.
        queue=$((queue + 1))
        ip netns exec "$ns" $IPT -t mangle -A INPUT -i "$dev" -j NFQUEUE --queue-num $queue
        ip netns exec "$ns" "$WORK/delayq" -q $queue -d "$delay" -t 3600 \
            >"$WORK/delayq-$dev.log" 2>&1 </dev/null &
        PIDS+=($!)
        for _ in $(seq 100); do grep -q 'delayq: ready' "$WORK/delayq-$dev.log" && break; sleep 0.05; done
        grep -q 'delayq: ready' "$WORK/delayq-$dev.log" ||
            { cat "$WORK/delayq-$dev.log" >&2; echo "bench-bond.sh: delayq did not start" >&2; exit 1; }
    done
done
if has mptcp; then
    $S sysctl -qw net.mptcp.enabled=1
    $C sysctl -qw net.mptcp.enabled=1
    for ns in bondc bonds; do ip -n $ns mptcp limits set subflows 2 add_addr_accepted 2; done
    # The first subflow leaves by link A (the lower metric); this endpoint
    # adds one from link B.
    ip -n bondc mptcp endpoint add 10.99.2.1 dev bcB subflow
fi

wait_listen() { # ns port: up to 5 s for a listener
    for _ in $(seq 50); do
        ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q . && return 0
        sleep 0.1
    done
    echo "bench-bond.sh: nothing listens on port $2 in $1" >&2
    exit 1
}
start() { # ns log command...: a background process, killed at the end
    local ns=$1 log=$2
    shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 &
    PIDS+=($!)
}

# Ports (server namespace): an iperf3 server per system (a single-test
# server refuses a client while the last test's tunnel still winds down):
# 5201 one flow, 5204 MPTCP, 5206 agg-tunnel, 5207 striper; the failover
# sinks 5301 (striper's), 5302 (MPTCP's), 5303 (agg-tunnel's); striper
# 7900, agg-tunnel 5800. Client namespace: striper 5202 (-> iperf3) and 5203
# (-> its sink), agg-tunnel 5205 (-> iperf3) and 5304 (-> its sink).
start bonds "$WORK/iperf3.log" iperf3 -s -p 5201
has mptcp && start bonds "$WORK/iperf3-mptcp.log" mptcpize run iperf3 -s -p 5204
has agg && start bonds "$WORK/iperf3-agg.log" iperf3 -s -p 5206
has striper && start bonds "$WORK/iperf3-striper.log" iperf3 -s -p 5207
CLIENT_LOG=info
[ "${KEEP:-0}" = 1 ] && CLIENT_LOG=debug
if has striper || [ -n "${FAILOVER// /}" ]; then
    start bonds "$WORK/server.log" "$BIN/stripe-server" --listen 10.99.9.1:7900 \
        --target 127.0.0.1:5207 --target sink=127.0.0.1:5301 --insecure-no-auth $STRIPER_ARGS
    wait_listen bonds 7900
    start bondc "$WORK/client.log" env RUST_LOG="$CLIENT_LOG" "$BIN/stripe-client" \
        --listen 127.0.0.1:5202 --forward 127.0.0.1:5203=sink --server 10.99.9.1:7900 \
        --via bcA --via bcB --stripes "$STRIPES" --insecure-no-auth $STRIPER_ARGS
    wait_listen bondc 5202
fi
if has agg; then
    start bonds "$WORK/agg-server.log" "$AGG_PATH" server --tcp 5800 -p 5206 -p 5303 -n
    wait_listen bonds 5800
    start bondc "$WORK/agg-client.log" "$AGG_PATH" client --tcp 10.99.9.1:5800 \
        --tcp-link-filter interface-ip -p 5206:5205 -p 5303:5304 -n
    wait_listen bondc 5205
fi
wait_listen bonds 5201

tx_bytes() { # dev: bytes HTB sent on the client's end of a link
    $C tc -s class show dev "$1" | awk '/Sent/ { print $2; exit }'
}
# One upload: name, then the iperf3 client's arguments. Appends
# "name mbit share_of_A" to results.
upload() {
    local name=$1 a0 b0 a1 b1 mbit
    shift
    a0=$(tx_bytes bcA) b0=$(tx_bytes bcB)
    $C "$@" -t "$SECS" -O "$OMIT" -J >"$WORK/upload.json" || true
    mbit=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
if "error" in d:
    sys.exit("bench-bond.sh: iperf3: " + d["error"])
print("%.1f" % (d["end"]["sum_received"]["bits_per_second"] / 1e6))' "$WORK/upload.json")
    a1=$(tx_bytes bcA) b1=$(tx_bytes bcB)
    echo "$name $mbit $(((a1 - a0) * 100 / (a1 - a0 + b1 - b0 + 1)))" >>"$WORK/results"
    echo "  $name: $mbit Mbit/s, link A $((a1 - a0)) / link B $((b1 - b0)) bytes"
}

# The close line of the largest striper session logged after line $1
# (iperf3's control connection is a session too): its DATA bytes per path,
# re-sends included.
paths_of_largest_session() {
    tail -n +"$(($1 + 1))" "$WORK/client.log" | python3 -c '
import re, sys
unit = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
best = None
for line in sys.stdin:
    m = re.search(r"sent ([\d.]+) (\w+), .*(\[paths: [^]]*\])", line)
    if m:
        size = float(m.group(1)) * unit.get(m.group(2), 1)
        if best is None or size > best[0]:
            best = (size, m.group(3))
if best:
    print("    " + best[1])
'
}

SUM=$((RATE_A + RATE_B))
echo "links: A $RATE_A Mbit/s, RTT $((2 * DELAY_A)) ms; B $RATE_B Mbit/s, RTT $((2 * DELAY_B)) ms (HTB per link, queues of $LINK_QMS ms); congestion control $CC_NOW; $SECS s uploads after $OMIT s, $RUNS rounds"
: >"$WORK/results"
for r in $(seq "$RUNS"); do
    echo "round $r"
    if has single; then
        upload "one TCP flow, link A" iperf3 -c 10.99.1.2 -p 5201
        upload "one TCP flow, link B" iperf3 -c 10.99.2.2 -p 5201
    fi
    has mptcp && upload "MPTCP (a subflow per link)" mptcpize run iperf3 -c 10.99.9.1 -p 5204
    has agg && upload "agg-tunnel (a link per interface)" iperf3 -c 127.0.0.1 -p 5205
    if has striper; then
        seen=$(wc -l <"$WORK/client.log")
        upload "striper ($STRIPES stripes per link)" iperf3 -c 127.0.0.1 -p 5202
        sleep 0.5
        paths_of_largest_session "$seen"
    fi
done
echo
python3 - "$WORK/results" "$SUM" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, mbit, share = line.rsplit(" ", 2)
    rows.setdefault(name, []).append((float(mbit), int(share)))
total = int(sys.argv[2])
print("| run | Mbit/s per round | median | of %d | share of link A |" % total)
print("|---|---|---:|---:|---:|")
for name, runs in rows.items():
    mbits = [m for m, _ in runs]
    med = statistics.median(mbits)
    share = statistics.median(s for _, s in runs)
    print("| %s | %s | %.1f | %.2f | %d%% |" % (
        name, " / ".join("%.1f" % m for m in mbits), med, med / total, share))
EOF

# striper always runs the failover; MPTCP and agg-tunnel when they are in
# both SYSTEMS (set up above) and FO_SYSTEMS.
fo_has() { [[ " $FO_SYSTEMS " == *" $1 "* ]] && { [ "$1" = striper ] || has "$1"; }; }
# One failover run: system, case, round, the commands that fail and restore
# link B. Appends the run's figures to $WORK/failover.jsonl.
failover_run() {
    local sys=$1 case=$2 r=$3 fail=$4 back=$5 sink send label wrap=()
    local tag="$sys-$case-$r"
    case $sys in
        striper) sink=(127.0.0.1 5301) send=(127.0.0.1 5203) label=striper ;;
        mptcp) sink=(10.99.9.1 5302) send=(10.99.9.1 5302) label=MPTCP wrap=(mptcpize run) ;;
        agg) sink=(127.0.0.1 5303) send=(127.0.0.1 5304) label=agg-tunnel ;;
    esac
    echo
    echo "failover ($label, $case, run $r): link B fails at $FO_DOWN s, is back at $FO_UP s"
    start bonds "$WORK/sink-$tag.log" "${wrap[@]}" python3 "$HERE/bench_bond.py" sink \
        "${sink[@]}" "$WORK/sink-$tag.json"
    wait_listen bonds "${sink[1]}"
    $C "${wrap[@]}" python3 "$HERE/bench_bond.py" send "${send[@]}" "$FO_SECS" \
        "$WORK/send-$tag.json" --links bcA,bcB \
        --at "$((FO_DOWN - 1))" "ss -tin >$WORK/ss-$tag.txt" \
        --at "$FO_DOWN" "$fail" --label "B fails" --at "$FO_UP" "$back" --label "B back"
    for _ in $(seq 100); do [ -s "$WORK/sink-$tag.json" ] && break; sleep 0.1; done
    python3 "$HERE/bench_bond.py" report "$WORK/sink-$tag.json" "$WORK/send-$tag.json" \
        --summary "$WORK/failover.jsonl" "$label, $case"
    if [ "$r" = 1 ]; then
        python3 "$HERE/bench_bond.py" plot "$WORK/sink-$tag.json" "$WORK/send-$tag.json" \
            "$PLOTS/failover-$case-$sys.svg" --title "$label, $case: link B fails at $FO_DOWN s, \
back at $FO_UP s (A $RATE_A Mbit/s $((2 * DELAY_A)) ms, B $RATE_B Mbit/s $((2 * DELAY_B)) ms, $CC_NOW)"
        echo "plot: $PLOTS/failover-$case-$sys.svg"
    fi
    # The smoothed round trips of the flows on each link a second before
    # the failure (under load: the HTB queues included).
    python3 - "$WORK/ss-$tag.txt" <<'EOF'
import re, sys
rtt = {}
src = None
for line in open(sys.argv[1]):
    if re.match(r"\S", line):
        m = re.search(r"(10\.99\.[12])\.1(%\w+)?:\d+\s", line)
        src = m.group(1) if m else None
    m = re.search(r"\brtt:([\d.]+)/", line)
    if m and src:
        rtt.setdefault(src, []).append(float(m.group(1)))
for net, name in (("10.99.1", "A"), ("10.99.2", "B")):
    if net in rtt:
        print("link %s flows' srtt before the failure: %s ms" % (
            name, ", ".join("%.1f" % r for r in rtt[net])))
EOF
}

: >"$WORK/failover.jsonl"
for case in $FAILOVER; do
    case $case in
        blackhole)
            fail="ip link set bcB down"
            back="ip link set bcB up && ip route replace 10.99.9.1/32 via 10.99.2.2 dev bcB metric 2 && ip route replace 10.99.9.1/32 via 10.99.2.2 dev bcB table 102" ;;
        reset)
            rule="INPUT -i bsB -p tcp -j REJECT --reject-with tcp-reset"
            fail="ip netns exec bonds $IPT -I $rule"
            back="ip netns exec bonds $IPT -D $rule" ;;
        *) echo "bench-bond.sh: unknown failover case $case" >&2; exit 1 ;;
    esac
    for r in $(seq "$FO_RUNS"); do
        for sys in striper mptcp agg; do
            fo_has $sys && failover_run $sys "$case" "$r" "$fail" "$back"
        done
    done
done
if [ -s "$WORK/failover.jsonl" ]; then
    echo
    echo "failover: link B fails at $FO_DOWN s, is back at $FO_UP s; $FO_RUNS runs each"
    python3 - "$WORK/failover.jsonl" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs.setdefault(d["name"], []).append(d)
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
print("| system, case | gap after the failure (ms) per run | median | largest interval before (ms) | 100 ms bins under half the mean before | Mbit/s before / down / back | bytes |")
print("|---|---|---:|---:|---:|---|---|")
for name, rs in runs.items():
    gaps = [r["gaps"].get("B fails") for r in rs]
    mbit = [med([r["mbit"][k] for r in rs if len(r["mbit"]) > k]) for k in range(3)]
    print("| %s | %s | %.0f | %.0f | %s of 50 | %s | %s |" % (
        name, " / ".join("%.0f" % g for g in gaps), med(gaps),
        med([r.get("quiet_ms") for r in rs]),
        " / ".join(str(r.get("lumps", "?")) for r in rs),
        " / ".join("%.1f" % m for m in mbit),
        "equal" if all(r["ok"] for r in rs) else "DIFFERENT"))
EOF
fi
echo
grep -E ": path [^ ]+ (down:|is back)" "$WORK/client.log" | sed 's/^/client: /' || true
