#!/usr/bin/env bash
# bench-scale.sh: many sessions on one pair of processes, on loopback.
#
# For striper (this checkout's release build; with BASE=<git rev> also that
# revision, built in a temporary worktree, measured in the same run) and for
# a two-relay haproxy chain holding the same connections:
#   idle   SESSIONS connections (4 stripes each for striper) exchange 16
#          bytes and sit idle; after SETTLE s, the CPU each relay process
#          uses over WINDOW s (% of one core) and its resident memory per
#          session (VmRSS growth / sessions); then WAKE of them echo again.
#          WINDOW spans one whole idle keepalive interval (30 s): a shorter
#          window may fall between two rounds of probes and show nothing.
#   burst  BURST connections, BATCH at a time, each timed from connect to
#          its first echoed byte (p50 / p99 / max), and the kernel's
#          ListenOverflows and ListenDrops during the burst; it starts once
#          the relays are quiet again after the idle run's sessions closed.
# The target is scripts/bench_scale.py's echo server. The open-file limit is
# raised to the hard limit (3,500 four-stripe sessions need ~17,500 in the
# client). Prints a markdown table and writes it to docs/bench/scale-results.md.
# Exits non-zero only when a run is broken (a process failing, an echo
# wrong), never for a figure.
#
# Env: SESSIONS (3500)  SETTLE (8)  WINDOW (30)  WAKE (200)  BURST (2000)
#      BATCH (200)  STRIPES (4)  BASE (unset: no baseline)  HAPROXY (1)
#      OUT (docs/bench)
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-3500} SETTLE=${SETTLE:-8} WINDOW=${WINDOW:-30} WAKE=${WAKE:-200}
BURST=${BURST:-2000} BATCH=${BATCH:-200} STRIPES=${STRIPES:-4} BASE=${BASE:-}
HAPROXY=${HAPROXY:-1} OUT=${OUT:-docs/bench}
PY="python3 scripts/bench_scale.py"

die() { echo "bench-scale: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "missing python3"
if [ "$HAPROXY" = 1 ] && ! command -v haproxy >/dev/null; then
    echo "bench-scale: haproxy not found (apt-get install -y haproxy); its rows are skipped" >&2
    HAPROXY=0
fi
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/bench-scale.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]:-}" "${ECHO_PID:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${BASE_TREE:-}" ] && git worktree remove --force "$BASE_TREE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port: something listens within 10 s
    local i
    for ((i = 0; i < 200; i++)); do
        ss -ltnH "sport = :$1" | grep -q . && return 0
        sleep 0.05
    done
    die "nothing listens on port $1 (logs in $WORK)"
}
stop_all() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# ---- builds
cargo build --release -q
declare -A BIN=([current]=target/release)
LABELS=(current)
if [ -n "$BASE" ]; then
    BASE_TREE=$WORK/base
    git worktree add --detach "$BASE_TREE" "$BASE" >/dev/null
    (cd "$BASE_TREE" && CARGO_TARGET_DIR=$WORK/base-target cargo build --release -q)
    BIN[base]=$WORK/base-target/release
    LABELS=(base current)
fi
"${BIN[current]}/stripe-server" genkey "$WORK/key" >/dev/null 2>&1

echo_port=$(free_port)
$PY echo --listen "127.0.0.1:$echo_port" --secs 3600 >"$WORK/echo.log" 2>&1 &
ECHO_PID=$!
wait_port "$echo_port"

: >"$WORK/rows"
run_system() { # label entry_port client_pid server_pid
    local label=$1 port=$2 cpid=$3 spid=$4
    echo "== $label: $SESSIONS idle sessions" >&2
    # Failed connections are counted in the table (an older build may
    # have them); only this build's count decides the exit status.
    $PY idle --connect "127.0.0.1:$port" --pids "$cpid,$spid" --sessions "$SESSIONS" \
        --batch 100 --settle "$SETTLE" --window "$WINDOW" --wake "$WAKE" >"$WORK/idle-$label.json" \
        || [ -s "$WORK/idle-$label.json" ] || die "$label: idle run broken"
    echo "== $label: burst of $BURST, $BATCH at a time" >&2
    $PY burst --connect "127.0.0.1:$port" --conns "$BURST" --batch "$BATCH" --pids "$cpid,$spid" \
        >"$WORK/burst-$label.json" \
        || [ -s "$WORK/burst-$label.json" ] || die "$label: burst run broken"
    echo "$label $WORK/idle-$label.json $WORK/burst-$label.json" >>"$WORK/rows"
}

for label in "${LABELS[@]}"; do
    b=${BIN[$label]}
    sp=$(free_port); cp=$(free_port)
    "$b/stripe-server" --listen "127.0.0.1:$sp" --target "127.0.0.1:$echo_port" \
        --key-file "$WORK/key" --max-sessions 10000 2>"$WORK/server-$label.log" &
    PIDS+=($!); spid=$!
    wait_port "$sp"
    "$b/stripe-client" --listen "127.0.0.1:$cp" --server "127.0.0.1:$sp" --stripes "$STRIPES" \
        --key-file "$WORK/key" 2>"$WORK/client-$label.log" &
    PIDS+=($!); cpid=$!
    wait_port "$cp"
    run_system "striper-$label" "$cp" "$cpid" "$spid"
    stop_all
done

if [ "$HAPROXY" = 1 ]; then
    p1=$(free_port); p2=$(free_port)
    for hop in 1 2; do
        if [ $hop = 1 ]; then lp=$p1; to=$p2; else lp=$p2; to=$echo_port; fi
        cat >"$WORK/haproxy$hop.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    maxconn 9000
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend f
    bind 127.0.0.1:$lp
    default_backend b
backend b
    server s 127.0.0.1:$to
EOF
        haproxy -q -f "$WORK/haproxy$hop.cfg" -db 2>"$WORK/haproxy$hop.log" &
        PIDS+=($!)
        [ $hop = 1 ] && h1=$! || h2=$!
    done
    wait_port "$p1"; wait_port "$p2"
    run_system haproxy "$p1" "$h1" "$h2"
    stop_all
fi
kill "$ECHO_PID" 2>/dev/null || true

mkdir -p "$OUT"
python3 - "$WORK/rows" "$OUT/scale-results.md" "$SESSIONS" "$BURST" "$BATCH" "$WINDOW" "$STRIPES" "${BASE:-}" <<'PY'
import json, subprocess, sys
rows, out, sessions, burst, batch, window, stripes, base = sys.argv[1:9]
names = {"striper-current": "striper (this build)", "striper-base": f"striper at {base}",
         "haproxy": "haproxy chain (2 relays)"}
lines = []
P = lines.append
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
P(f"# Many sessions on one pair (`scripts/bench-scale.sh`)")
P("")
P(f"Loopback, {stripes} stripes per striper session, commit {rev}. Idle: {sessions} connections that "
  f"exchanged 16 bytes, CPU over {window} s and resident memory per session of the two relay "
  f"processes (client / server; for haproxy the first / second relay). Burst: {burst} new "
  f"connections {batch} at a time, connect to first echoed byte.")
P("")
P("| system | sessions | idle CPU (% of a core) | RSS per idle session (KiB) | woken again, slowest | "
  "burst p50 / p99 / max (ms) | listen overflows | failed connections |")
P("|---|---:|---:|---:|---:|---:|---:|---:|")
broken = False
for line in open(rows):
    label, idle, bur = line.split()
    i, b = json.load(open(idle)), json.load(open(bur))
    errs = i["error_count"] + b["error_count"]
    broken |= bool(errs) and label != "striper-base"
    P(f"| {names.get(label, label)} | {i['sessions']} | {i['cpu_pct'][0]:.1f} / {i['cpu_pct'][1]:.1f} | "
      f"{i['rss_kib_per_session'][0]:.1f} / {i['rss_kib_per_session'][1]:.1f} | {i['wake_ms_max']} ms | "
      f"{b['p50_ms']} / {b['p99_ms']} / {b['max_ms']} | {b['listen_overflows']} | {errs} |")
text = "\n".join(lines) + "\n"
print(text)
open(out, "w").write(text)
sys.exit(1 if broken else 0)
PY
