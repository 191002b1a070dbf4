#!/usr/bin/env bash
# demo.sh: striping beats a per-connection cap, on this machine, in a minute.
#
# Builds release, then on loopback:
#
#   tcpblast send ──> stripe-client ══N stripes══> linkemu ══> stripe-server ──> tcpblast serve
#                                         (each TCP connection capped at RATE Mbit/s)
#
# and pushes the same bytes through a plain TCP connection over the same
# capped path, then through 1, 4 and 8 stripes. Every transfer's length and
# CRC32 are compared at the far end. Prints a table; exits non-zero only if
# something broke (a process failed, bytes differed), never for a slow figure.
#
# Env: RATE (Mbit/s per connection, default 20), SIZE (default 24M),
#      STRIPES (default "1 4 8"), KEEP=1 keeps the logs directory.
set -euo pipefail

cd "$(dirname "$0")/.."
RATE=${RATE:-20}
SIZE=${SIZE:-24M}
STRIPES=${STRIPES:-1 4 8}

echo "== building (cargo build --release)"
cargo build --release --quiet -p striper-client -p striper-server -p striper-tests --bins
B=$PWD/target/release

WORK=$(mktemp -d /tmp/striper-demo.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

die() { echo "demo: $*" >&2; for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }

# Waits (at most 10 s) for "listening on ADDR" in a file; prints ADDR.
addr_from() {
    local f=$1 a
    for _ in $(seq 100); do
        a=$(grep -o 'listening on [^ ,]*' "$f" 2>/dev/null | head -n 1 | cut -d' ' -f3)
        if [ -n "$a" ]; then echo "$a"; return 0; fi
        sleep 0.1
    done
    die "no 'listening on' line in $f"
}

# Both ends prove they hold the same pre-shared key on every stripe.
"$B/stripe-server" genkey "$WORK/key" 2>/dev/null

# The sink prints one "received bytes=.. crc=.. secs=.. mbit=.." line per connection.
"$B/tcpblast" serve --listen 127.0.0.1:0 >"$WORK/sink.out" 2>"$WORK/sink.log" &
PIDS+=($!)
SINK=$(addr_from "$WORK/sink.out")

RUST_LOG=${RUST_LOG:-info} "$B/stripe-server" --listen 127.0.0.1:0 --target "$SINK" --key-file "$WORK/key" 2>"$WORK/server.log" &
PIDS+=($!)
SERVER=$(addr_from "$WORK/server.log")

# Two emulated paths with the same per-connection cap: one in front of the
# server (the stripes), one in front of the sink (the plain TCP baseline).
"$B/linkemu" --listen 127.0.0.1:0 --upstream "$SERVER" --rate-mbit "$RATE" >"$WORK/emu.out" 2>"$WORK/emu.log" &
PIDS+=($!)
EMU=$(addr_from "$WORK/emu.out")
"$B/linkemu" --listen 127.0.0.1:0 --upstream "$SINK" --rate-mbit "$RATE" >"$WORK/emu-plain.out" 2>"$WORK/emu-plain.log" &
PIDS+=($!)
EMU_PLAIN=$(addr_from "$WORK/emu-plain.out")

echo "== every TCP connection capped at $RATE Mbit/s by linkemu; sending $SIZE each run"

RESULTS=()
received=0
# run LABEL ADDR: one transfer, checked; appends "label mbit crc-ok" to RESULTS.
run() {
    local label=$1 addr=$2 sent got want_lines
    sent=$("$B/tcpblast" send --connect "$addr" --bytes "$SIZE" --seed $((received + 7)) --timeout 120) \
        || die "$label: sender failed"
    received=$((received + 1))
    for _ in $(seq 100); do
        [ "$(grep -c '^received' "$WORK/sink.out")" -ge "$received" ] && break
        sleep 0.1
    done
    got=$(grep '^received' "$WORK/sink.out" | sed -n "${received}p")
    [ -n "$got" ] || die "$label: the sink reported nothing"
    local s_bytes s_crc g_bytes g_crc mbit
    s_bytes=$(sed 's/.*bytes=\([0-9]*\).*/\1/' <<<"$sent"); s_crc=$(sed 's/.*crc=\([0-9a-f]*\).*/\1/' <<<"$sent")
    g_bytes=$(sed 's/.*bytes=\([0-9]*\).*/\1/' <<<"$got"); g_crc=$(sed 's/.*crc=\([0-9a-f]*\).*/\1/' <<<"$got")
    mbit=$(sed 's/.*mbit=\([0-9.]*\).*/\1/' <<<"$got")
    if [ "$s_bytes" != "$g_bytes" ] || [ "$s_crc" != "$g_crc" ]; then
        die "$label: sent $s_bytes bytes crc $s_crc, received $g_bytes bytes crc $g_crc"
    fi
    RESULTS+=("$label|$mbit|$g_bytes bytes, crc $g_crc")
    printf '   %-24s %8s Mbit/s  intact\n' "$label" "$mbit"
}

run "plain TCP (no tunnel)" "$EMU_PLAIN"
for n in $STRIPES; do
    RUST_LOG=${RUST_LOG:-info} "$B/stripe-client" --listen 127.0.0.1:0 --server "$EMU" --stripes "$n" --key-file "$WORK/key" \
        2>"$WORK/client-$n.log" &
    cpid=$!
    PIDS+=($cpid)
    run "striper, $n stripe(s)" "$(addr_from "$WORK/client-$n.log")"
    kill "$cpid"
done

base=$(cut -d'|' -f2 <<<"${RESULTS[0]}")
echo
echo "| path | throughput (Mbit/s) | speedup over one capped stream | data check |"
echo "|---|---:|---:|---|"
for r in "${RESULTS[@]}"; do
    IFS='|' read -r label mbit check <<<"$r"
    speed=$(awk -v a="$mbit" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')
    echo "| $label | $mbit | $speed | $check |"
done
echo
echo "Each TCP connection was capped at $RATE Mbit/s; N stripes get N caps."
