#!/usr/bin/env bash
# bench-overhead.sh: what the tunnel costs when nothing caps the path.
#
# One connection on loopback, no caps. For each way of carrying it:
#   direct                    tcpblast -> sink
#   striper, 1 and 4 stripes  tcpblast -> stripe-client => stripe-server -> sink
#   striper4-plain            the same with an older, unencrypted build (protocol
#                             v1) when PLAIN_BIN names its directory
#   ssh -L                    one ssh connection forwarding a port (sshd on loopback)
#   TLS chain                 socat -> socat OPENSSL (TLS 1.3) -> socat OPENSSL-LISTEN -> sink
#   socat chain               tcpblast -> socat -b 131072 -> socat -b 131072 -> sink
#   haproxy chain             two haproxy tcp relays (nbthread 1), without splice
#   haproxy chain, splice     the same with splice forced both ways
#   agg-tunnel                aggligator's tunnel, when `agg-tunnel` is on the PATH
# it measures bulk throughput (SIZE bytes, REPS runs, median), the CPU seconds
# the relay processes spent per GiB moved, and the round trip of a 1-byte
# ping-pong (median and p99 over PINGS rounds). Every bulk transfer's length
# and CRC32 are checked at the sink.
#
# Prints a markdown table and writes it into docs/BENCHMARKS.md between the
# `overhead-results` markers. Exits non-zero only when a run is broken (a tool
# missing, a process failing, bytes corrupted), never for a slow figure.
#
# Env: SIZE (2G), REPS (3), PINGS (2000), SYSTEMS (space-separated subset of:
#      direct striper1 striper4 striper4-plain ssh tls socat haproxy
#      haproxy-splice agg-tunnel), PLAIN_BIN (directory holding an older
#      stripe-client/stripe-server, for striper4-plain).
set -euo pipefail

cd "$(dirname "$0")/.."
SIZE=${SIZE:-2G}
REPS=${REPS:-3}
PINGS=${PINGS:-2000}
SYSTEMS=${SYSTEMS:-direct striper1 striper4 striper4-plain ssh tls socat haproxy haproxy-splice agg-tunnel}
PLAIN_BIN=${PLAIN_BIN:-}

die() { echo "bench-overhead: $*" >&2; exit 1; }
for t in python3 socat haproxy ssh ssh-keygen openssl; do command -v $t >/dev/null || die "missing $t (apt-get install -y $t)"; done

echo "== building (cargo build --release)" >&2
cargo build --release --quiet -p striper-client -p striper-server -p striper-tests --bins
B=$PWD/target/release

WORK=$(mktemp -d /tmp/striper-overhead.XXXXXX)
PIDS=()
RELAY_PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}" "${RELAY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}" "${RELAY_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Waits (10 s at most) for "listening on ADDR" in a file; prints ADDR.
addr_from() {
    local a
    for _ in $(seq 100); do
        a=$(grep -o 'listening on [^ ,]*' "$1" 2>/dev/null | head -n 1 | cut -d' ' -f3)
        if [ -n "$a" ]; then echo "$a"; return 0; fi
        sleep 0.1
    done
    die "no 'listening on' line in $1"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (10 s at most) until something accepts on 127.0.0.1:PORT.
wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listening on port $1"
}

# The given pids and all their live descendants (sshd serves a connection
# in a child; a child's ticks move into its parent's once it is reaped).
with_descendants() {
    local pid
    for pid in "$@"; do
        echo "$pid"
        with_descendants $(cat /proc/"$pid"/task/*/children 2>/dev/null)
    done
}

# CPU ticks (user + system) of the given pids and their live descendants,
# children that were waited for included.
ticks() {
    local sum=0 pid f
    for pid in $(with_descendants "$@"); do
        [ -r "/proc/$pid/stat" ] || continue
        f=$(sed 's/.*) //' "/proc/$pid/stat")
        set -- $f
        sum=$((sum + ${12} + ${13} + ${14} + ${15}))
    done
    echo "$sum"
}
HZ=$(getconf CLK_TCK)

"$B/stripe-server" genkey "$WORK/key" 2>/dev/null
"$B/tcpblast" serve --listen 127.0.0.1:0 >"$WORK/sink.out" 2>"$WORK/sink.log" &
PIDS+=($!)
SINK=$(addr_from "$WORK/sink.out")
SINK_PORT=${SINK##*:}
"$B/tcpblast" echo --listen 127.0.0.1:0 >"$WORK/echo.out" 2>"$WORK/echo.log" &
PIDS+=($!)
ECHO=$(addr_from "$WORK/echo.out")
ECHO_PORT=${ECHO##*:}

RUN=0
# Starts the relays of SYSTEM towards TARGET_PORT; sets ENTRY (host:port) and RELAY_PIDS.
start_system() {
    local sys=$1 target=$2 tag=$3 p1 p2
    RELAY_PIDS=()
    case $sys in
    direct) ENTRY=127.0.0.1:$target ;;
    striper1 | striper4)
        local n=${sys#striper}
        "$B/stripe-server" --listen 127.0.0.1:0 --target "127.0.0.1:$target" --key-file "$WORK/key" \
            2>"$WORK/$tag-server.log" &
        RELAY_PIDS+=($!)
        local srv
        srv=$(addr_from "$WORK/$tag-server.log")
        "$B/stripe-client" --listen 127.0.0.1:0 --server "$srv" --stripes "$n" --key-file "$WORK/key" \
            2>"$WORK/$tag-client.log" &
        RELAY_PIDS+=($!)
        ENTRY=$(addr_from "$WORK/$tag-client.log")
        ;;
    striper4-plain)
        "$PLAIN_BIN/stripe-server" --listen 127.0.0.1:0 --target "127.0.0.1:$target" --key-file "$WORK/key" \
            2>"$WORK/$tag-server.log" &
        RELAY_PIDS+=($!)
        local psrv
        psrv=$(addr_from "$WORK/$tag-server.log")
        "$PLAIN_BIN/stripe-client" --listen 127.0.0.1:0 --server "$psrv" --stripes 4 --key-file "$WORK/key" \
            2>"$WORK/$tag-client.log" &
        RELAY_PIDS+=($!)
        ENTRY=$(addr_from "$WORK/$tag-client.log")
        ;;
    ssh)
        p1=$(free_port); p2=$(free_port)
        printf '%s\n' "Port $p2" "ListenAddress 127.0.0.1" "HostKey $WORK/ssh_host" \
            "AuthorizedKeysFile $WORK/ssh_user.pub" "PidFile none" "StrictModes no" "UsePAM no" \
            "PermitRootLogin yes" "AllowTcpForwarding yes" >"$WORK/sshd_config"
        "$(command -v sshd || echo /usr/sbin/sshd)" -D -e -f "$WORK/sshd_config" 2>"$WORK/$tag-sshd.log" &
        RELAY_PIDS+=($!)
        wait_port "$p2"
        ssh -N -i "$WORK/ssh_user" -p "$p2" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o BatchMode=yes -o LogLevel=ERROR -L "127.0.0.1:$p1:127.0.0.1:$target" "$(id -un)@127.0.0.1" &
        RELAY_PIDS+=($!)
        wait_port "$p1"
        ENTRY=127.0.0.1:$p1
        ;;
    tls)
        p1=$(free_port); p2=$(free_port)
        socat -b 131072 "OPENSSL-LISTEN:$p2,bind=127.0.0.1,reuseaddr,fork,cert=$WORK/tls.pem,verify=0" \
            "TCP:127.0.0.1:$target" &
        RELAY_PIDS+=($!)
        socat -b 131072 "TCP-LISTEN:$p1,bind=127.0.0.1,reuseaddr,fork" \
            "OPENSSL:127.0.0.1:$p2,verify=0" &
        RELAY_PIDS+=($!)
        wait_port "$p1"
        wait_port "$p2"
        ENTRY=127.0.0.1:$p1
        ;;
    socat)
        # With fork the listeners outlive the connection, and the CPU of a
        # finished (reaped) child counts in its parent's cutime/cstime.
        p1=$(free_port); p2=$(free_port)
        socat -b 131072 "TCP-LISTEN:$p2,bind=127.0.0.1,reuseaddr,fork" "TCP:127.0.0.1:$target" &
        RELAY_PIDS+=($!)
        socat -b 131072 "TCP-LISTEN:$p1,bind=127.0.0.1,reuseaddr,fork" "TCP:127.0.0.1:$p2" &
        RELAY_PIDS+=($!)
        wait_port "$p1"
        wait_port "$p2"
        ENTRY=127.0.0.1:$p1
        ;;
    haproxy | haproxy-splice)
        p1=$(free_port); p2=$(free_port)
        local splice="" global="nosplice"
        if [ "$sys" = haproxy-splice ]; then
            splice=$'    option splice-request\n    option splice-response'
            global=""
        fi
        for hop in 1 2; do
            local lp to
            if [ $hop = 1 ]; then lp=$p1; to=$p2; else lp=$p2; to=$target; fi
            cat >"$WORK/$tag-haproxy$hop.cfg" <<EOF
global
    nbthread 1
    $global
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
$splice
frontend f
    bind 127.0.0.1:$lp
    default_backend b
backend b
    server s 127.0.0.1:$to
EOF
            haproxy -q -f "$WORK/$tag-haproxy$hop.cfg" -db &
            RELAY_PIDS+=($!)
        done
        wait_port "$p1"
        ENTRY=127.0.0.1:$p1
        ;;
    agg-tunnel)
        p1=$(free_port); p2=$(free_port)
        agg-tunnel server --no-monitor --tcp "$p2" --port "$target" >"$WORK/$tag-agg-server.log" 2>&1 &
        RELAY_PIDS+=($!)
        wait_port "$p2"
        agg-tunnel client --no-monitor --tcp "127.0.0.1:$p2" --port "$target:$p1" >"$WORK/$tag-agg-client.log" 2>&1 &
        RELAY_PIDS+=($!)
        wait_port "$p1"
        ENTRY=127.0.0.1:$p1
        ;;
    *) die "unknown system $sys" ;;
    esac
}

stop_system() {
    local pid
    for pid in "${RELAY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${RELAY_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    RELAY_PIDS=()
}

# Waits (5 s at most) until the given pids have no children left, so the
# CPU of a forked relay that just finished is in its parent's counters.
wait_children_reaped() {
    local pid
    for _ in $(seq 50); do
        local busy=0
        for pid in "$@"; do
            [ -n "$(cat /proc/"$pid"/task/*/children 2>/dev/null)" ] && busy=1
        done
        [ $busy = 0 ] && return 0
        sleep 0.1
    done
}

# One bulk run through ENTRY: sets BULK_MBIT and BULK_TICKS.
bulk_run() {
    local sys=$1 sent got before after
    wait_children_reaped "${RELAY_PIDS[@]}"
    before=$(ticks "${RELAY_PIDS[@]}")
    RUN=$((RUN + 1))
    sent=$("$B/tcpblast" send --connect "$ENTRY" --bytes "$SIZE" --seed $((RUN + 3)) --timeout 300) \
        || die "$sys: sender failed"
    wait_children_reaped "${RELAY_PIDS[@]}"
    after=$(ticks "${RELAY_PIDS[@]}")
    # Every run has its own seed, so its length and CRC name its line at the
    # sink (probes of a relay's port show up there as empty connections).
    local want
    want=$(grep -o 'bytes=[0-9]* crc=[0-9a-f]*' <<<"$sent")
    for _ in $(seq 100); do
        got=$(grep "^received $want " "$WORK/sink.out" || true)
        [ -n "$got" ] && break
        sleep 0.1
    done
    [ -n "$got" ] || die "$sys: sent '$want' but the sink reported: $(grep '^received' "$WORK/sink.out" | tail -n 1)"
    BULK_MBIT=$(sed 's/.*mbit=\([0-9.]*\).*/\1/' <<<"$got")
    BULK_TICKS=$((after - before))
}

# Keys for the encrypting anchors.
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh_host"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh_user"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/tls.key" -out "$WORK/tls.crt" \
    -days 1 -subj /CN=bench 2>/dev/null
cat "$WORK/tls.crt" "$WORK/tls.key" >"$WORK/tls.pem"

RESULTS="$WORK/results.txt"
: >"$RESULTS"
for sys in $SYSTEMS; do
    if [ "$sys" = striper4-plain ] && [ ! -x "$PLAIN_BIN/stripe-server" ]; then
        echo "== striper4-plain: PLAIN_BIN does not name a directory with an older build, skipped" >&2
        continue
    fi
    if [ "$sys" = agg-tunnel ] && ! command -v agg-tunnel >/dev/null; then
        echo "== agg-tunnel: not on the PATH, skipped (cargo install aggligator-util@0.18.12 --locked)" >&2
        continue
    fi
    echo "== $sys" >&2
    for r in $(seq "$REPS"); do
        # socat serves one connection per chain: a fresh chain every run.
        start_system "$sys" "$SINK_PORT" "bulk$r"
        bulk_run "$sys"
        stop_system
        echo "   run $r: $BULK_MBIT Mbit/s, relays $BULK_TICKS CPU ticks" >&2
        echo "$sys bulk $BULK_MBIT $BULK_TICKS" >>"$RESULTS"
    done
    start_system "$sys" "$ECHO_PORT" ping
    pong=$("$B/tcpblast" ping --connect "$ENTRY" --count "$PINGS") || die "$sys: ping failed"
    stop_system
    echo "   ping: $pong" >&2
    echo "$sys ping $pong" >>"$RESULTS"
done

TABLE=$(python3 - "$RESULTS" "$SIZE" "$HZ" <<'PY'
import statistics, sys
path, size, hz = sys.argv[1], sys.argv[2], int(sys.argv[3])
mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
nbytes = int(size[:-1]) * mult[size[-1]] if size[-1] in mult else int(size)
names = {
    "direct": "direct (no relay)", "striper1": "striper, 1 stripe", "striper4": "striper, 4 stripes",
    "striper4-plain": "striper v1 (unencrypted), 4 stripes", "ssh": "ssh -L (one ssh connection)",
    "tls": "TLS chain (socat OPENSSL, 2 relays)",
    "socat": "socat chain (2 relays, -b 131072)", "haproxy": "haproxy chain (2 relays, no splice)",
    "haproxy-splice": "haproxy chain (2 relays, forced splice)", "agg-tunnel": "agg-tunnel (aggligator 0.18.12)",
}
bulk, ping, order = {}, {}, []
for line in open(path):
    f = line.split()
    if f[0] not in order:
        order.append(f[0])
    if f[1] == "bulk":
        bulk.setdefault(f[0], []).append((float(f[2]), int(f[3])))
    else:
        ping[f[0]] = dict(kv.split("=") for kv in f[2:])
base = statistics.median(m for m, _ in bulk["direct"]) if "direct" in bulk else None
print("| path | throughput (Gbit/s, median) | vs direct | relay CPU (s per GiB) | ping RTT median (µs) | p99 (µs) |")
print("|---|---:|---:|---:|---:|---:|")
for s in order:
    runs = bulk.get(s, [])
    mbit = statistics.median(m for m, _ in runs) if runs else 0
    cpu = statistics.median(t for _, t in runs) / hz / (nbytes / (1 << 30)) if runs else 0
    rel = f"{mbit / base:.2f}x" if base else "-"
    cpu_s = "-" if s == "direct" else f"{cpu:.2f}"
    p = ping.get(s, {})
    print(f"| {names.get(s, s)} | {mbit / 1000:.2f} | {rel} | {cpu_s} | {p.get('median_us', '-')} | {p.get('p99_us', '-')} |")
PY
)
echo
echo "$TABLE"
echo
NOTE="Measured by \`scripts/bench-overhead.sh\` (SIZE=$SIZE, REPS=$REPS, PINGS=$PINGS) on $(nproc) cores, $(date -u +%Y-%m-%d)."
echo "$NOTE"

DOC=docs/BENCHMARKS.md
if [ -f "$DOC" ] && grep -q '<!-- overhead-results -->' "$DOC"; then
    python3 - "$DOC" "$TABLE" "$NOTE" <<'PY'
import sys
path, table, note = sys.argv[1:4]
text = open(path).read()
start, end = "<!-- overhead-results -->", "<!-- /overhead-results -->"
a, b = text.index(start) + len(start), text.index(end)
open(path, "w").write(text[:a] + "\n" + table + "\n\n" + note + "\n" + text[b:])
PY
    echo "(table written into $DOC)"
fi
