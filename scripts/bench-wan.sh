#!/usr/bin/env bash
# bench-wan.sh: striper on an emulated real path (round-trip time + a per-flow
# policer that drops), side by side with N plain TCP flows and Linux MPTCP.
#
#   sudo scripts/bench-wan.sh            # full run (estimated 34 min, printed at the start; QUICK came in
#                                        # ~15% under its estimate)
#   sudo QUICK=1 scripts/bench-wan.sh    # smoke run (about 2.5 min)
#
# The path is scripts/wan/wan.sh (vendored from shared/bench/): three network
# namespaces, upload from wc to ws through the router wr:
#
#   netns wc 10.88.1.1 (+ .11-.17)  ==veth==  netns wr  ==veth==  netns ws 10.88.2.1
#     iperf3 -c, stripe-client,            delayq (NFQUEUE):       iperf3 -s, stripe-server,
#     MPTCP client, senders                DELAY_MS = RTT/2 each   the receivers
#                                          way, and a token bucket
#                                          per TCP 5-tuple (RATE Mbit/s of IP
#                                          bytes, BURST KB) that DROPS what
#                                          does not fit, like an ISP policer
#
# For every RTT in RTTS (wan.sh up once per RTT) and every SYSCC (the
# namespaces' default congestion control: MPTCP's subflows and agg-tunnel's
# links use it; striper's stripes too with STRIPER_ARGS="--congestion system",
# otherwise builds that have --congestion pick bbr themselves), median of REPS
# runs of SECS s, receiver goodput:
#   1. one flow, iperf3 -C cubic and -C bbr          (once per RTT: -C sets the cc)
#   2. for N in NS: iperf3 -P N -C cubic / -C bbr   (once per RTT)
#                   Linux MPTCP, N subflows          (per SYSCC; mptcpize, N-1 extra
#                                                     client addresses as subflow endpoints)
#                   agg-tunnel, N links              (per SYSCC, when on the PATH)
#                   striper, N stripes               (per SYSCC; one tunnel per (RTT, SYSCC, N),
#                                                     every rep through it)
#      and retransmitted bytes per MB delivered (TcpRetransSegs of wc x 1448).
#   3. latency under load (RTT in LAT_RTTS, SYSCC in LAT_SYSCC): one stream of
#      timestamped records (scripts/bench_caps.py lat-send / lat-recv /
#      lat-analyze, as bench-caps.sh uses them) straight over the path (plain
#      TCP) and through striper with LAT_N stripes.
#   4. recovery (RTT REC_RTT, SYSCC REC_SYSCC): a REC_SECS transfer through
#      striper with REC_N stripes, and iperf3-like REC_N plain bbr flows as the
#      reference; at t=REC_AT one flow is capped to REC_TO Mbit/s by an HTB class
#      on the router's egress towards ws; receiver progress sampled every 0.1 s.
# The tables go to stdout and docs/bench/wan-results.md, one JSON line per run
# to docs/bench/wan-raw.jsonl, plots to docs/bench/wan-goodput.png and
# wan-recovery.png when matplotlib is importable.
#
# Exit status: 0 when every run worked (whatever the figures), 1 when a run was
# broken (a tool missing, a process failing to start or dying, an iperf3 error,
# zero goodput, bytes lost or corrupted), 0 with a message without root.
#
# Env knobs (defaults; QUICK=1 changes the ones marked *):
#   RTTS="40 100 200"* (ms)  NS="4 8"*  SYSCC="cubic bbr"  REPS=3*  SECS=10*  OMIT=0 (iperf3 -O;
#     0 = the slow start counts, as in a real transfer of SECS, and the retransmissions and the
#     bytes delivered cover the same span)  RATE=20 (Mbit/s per 5-tuple)  BURST=64 (KB)
#   STRIPER_ARGS="" (extra args to both binaries)  BIN=target/release (cargo build --release if missing)
#   LAT_RTTS="40 100"  LAT_SYSCC="bbr cubic"  LAT_N=4  LAT_SECS=8*  LAT_SKIP=3*  LAT_RECORD=16384
#   LAT_SNDBUF=65536 LAT_RCVBUF=65536 (striper's apps, on loopback, as in bench-caps.sh)
#   LAT_PLAIN_SNDBUF=bdp2 (2 x RATE x RTT bytes; 0 = kernel autotuning)  LAT_PLAIN_RCVBUF=0 (autotuning)
#   REC_RTT=100 REC_SYSCC=bbr REC_N=4 REC_SECS=20* REC_AT=8* REC_TO=5 (Mbit/s) REC_QLEN=100 (packets)
#   PARTS="tput lat rec" (which of 1+2, 3 and 4 to run)
#   AGG=agg-tunnel  OUT=docs/bench  KEEP=1 (keep the work directory)
# Only one wan.sh set-up can exist at a time (fixed namespace names wc/wr/ws):
# the script refuses to start when they exist.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
WAN=$HERE/wan/wan.sh
CMDLINE=""
for v in QUICK RTTS NS SYSCC REPS SECS STRIPER_ARGS; do
    if [ -n "${!v:-}" ]; then CMDLINE+="$v=$(printf %q "${!v}") "; fi
done
CMDLINE+="scripts/bench-wan.sh"

if [ "$(id -u)" != 0 ]; then
    echo "bench-wan.sh: needs root (network namespaces, iptables, tc); skipping the benchmark."
    exit 0
fi

# ---------------------------------------------------------------- knobs
if [ "${QUICK:-0}" = 1 ]; then
    : "${RTTS:=100}" "${NS:=4}" "${REPS:=1}" "${SECS:=8}"
    : "${LAT_SECS:=6}" "${LAT_SKIP:=2}" "${REC_SECS:=14}" "${REC_AT:=6}"
fi
RTTS=${RTTS:-40 100 200}
NS=${NS:-4 8}
SYSCC=${SYSCC:-cubic bbr}
REPS=${REPS:-3}
SECS=${SECS:-10}
OMIT=${OMIT:-0}
RATE=${RATE:-20}
BURST=${BURST:-64}
STRIPER_ARGS=${STRIPER_ARGS:-}
BIN=${BIN:-$ROOT/target/release}
LAT_RTTS=${LAT_RTTS:-40 100}
PARTS=${PARTS:-tput lat rec}
LAT_SYSCC=${LAT_SYSCC:-bbr cubic}
LAT_N=${LAT_N:-4}
LAT_SECS=${LAT_SECS:-8}
LAT_SKIP=${LAT_SKIP:-3}
LAT_RECORD=${LAT_RECORD:-16384}
LAT_SNDBUF=${LAT_SNDBUF:-65536}
LAT_RCVBUF=${LAT_RCVBUF:-65536}
LAT_PLAIN_SNDBUF=${LAT_PLAIN_SNDBUF:-bdp2}
LAT_PLAIN_RCVBUF=${LAT_PLAIN_RCVBUF:-0}
REC_RTT=${REC_RTT:-100}
REC_SYSCC=${REC_SYSCC:-bbr}
REC_N=${REC_N:-4}
REC_SECS=${REC_SECS:-20}
REC_AT=${REC_AT:-8}
REC_TO=${REC_TO:-5}
REC_QLEN=${REC_QLEN:-100}
AGG=${AGG:-agg-tunnel}
OUT=${OUT:-$ROOT/docs/bench}
CNS=wc RNS=wr SNS=ws SIP=10.88.2.1
PY=(python3 "$HERE/bench_wan.py")
CAPS=(python3 "$HERE/bench_caps.py")
# ports. ws: iperf3 10.88.2.1:5201 (plain), 10.88.2.1:5203 (MPTCP), 127.0.0.1:5202 (tunnel target);
#   stripe-server 7900 (-> 5202), 7910 (-> 127.0.0.1:5300, latency), 7920 (-> 127.0.0.1:5400, recovery);
#   lat-recv :5300; sinks 10.88.2.1:5401 (plain) and 127.0.0.1:5400 (striper); agg-tunnel server 5800.
# wc: stripe-client 127.0.0.1:2300 / 2310 / 2320; agg-tunnel client 127.0.0.1:2400.

die() { echo "bench-wan: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }
inlist() { case " $2 " in *" $1 "*) return 0 ;; esac; return 1; }

IPT=iptables; command -v iptables-legacy >/dev/null && IPT=iptables-legacy
APT="apt-get install iproute2 iptables gcc libnetfilter-queue-dev iputils-ping iperf3 mptcpize python3"
for t in ip tc ss gcc $IPT ping iperf3 mptcpize python3 timeout taskset awk; do
    command -v "$t" >/dev/null || die "missing $t ($APT)"
done
[ -r /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || die "missing libnetfilter_queue headers ($APT)"
[ "$(sysctl -n net.mptcp.enabled 2>/dev/null || echo 0)" = 1 ] || die "net.mptcp.enabled is not 1 in this kernel"
for n in $NS $LAT_N $REC_N; do
    [[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 && n <= 8 )) || die "flow counts must be 1..8 (MPTCP allows at most 8 subflows), got $n"
done
for r in $RTTS; do [[ "$r" =~ ^[0-9]+$ ]] && (( r >= 2 )) || die "RTTS are whole milliseconds >= 2, got $r"; done
avail=$(sysctl -n net.ipv4.tcp_available_congestion_control)
for cc in $SYSCC cubic bbr; do inlist "$cc" "$avail" || die "congestion control $cc is not available (modprobe tcp_$cc)"; done
for ns in $CNS $RNS $SNS; do
    [ -e "/run/netns/$ns" ] && die "network namespace $ns already exists (another wan.sh set-up is running; 'scripts/wan/wan.sh down' removes it)"
done
MAXN=1
for n in $NS $REC_N $LAT_N; do (( n > MAXN )) && MAXN=$n; done

NOTES=()
note() { NOTES+=("$*"); log "note: $*"; }
HAVE_AGG=0
if AGG_PATH=$(command -v "$AGG"); then
    HAVE_AGG=1
    AGG_VERSION=$("$AGG_PATH" --version 2>/dev/null | head -1 || echo agg-tunnel)
    note "agg-tunnel: $AGG_VERSION"
else
    note "agg-tunnel not installed ('$AGG' not on the PATH; cargo install aggligator-util@0.18.12 --locked): its column is empty"
fi

if [ ! -x "$BIN/stripe-client" ] || [ ! -x "$BIN/stripe-server" ]; then
    if [ "$BIN" = "$ROOT/target/release" ] && command -v cargo >/dev/null; then
        log "building striper (cargo build --release)"
        (cd "$ROOT" && cargo build --release --quiet) || die "cargo build failed"
    fi
    [ -x "$BIN/stripe-client" ] && [ -x "$BIN/stripe-server" ] || die "no stripe-client/stripe-server in $BIN"
fi

WORK=$(mktemp -d /tmp/bench-wan.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
# a private copy of the binaries: a rebuild during the run (someone else's cargo build) must
# not swap versions between measurements, or between client and server
mkdir -p "$WORK/bin"
cp "$BIN/stripe-client" "$BIN/stripe-server" "$WORK/bin/"
COMMIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
COMMIT_NOTE="$COMMIT$(cd "$ROOT" && git diff --quiet HEAD -- . ':!scripts' ':!docs/bench' 2>/dev/null || echo ' (work tree modified)'), binary built $(date -r "$BIN/stripe-server" '+%Y-%m-%d %H:%M')"
SBIN=$WORK/bin
KEY=$WORK/striper.key
"$SBIN/stripe-server" genkey "$KEY" >/dev/null 2>&1 || die "stripe-server genkey failed"
chmod 600 "$KEY"
read -ra SARGS <<<"$STRIPER_ARGS"
# Builds with --congestion pick the stripes' congestion control themselves (default bbr), whatever
# the system default: the SYSCC rows then show what striper gets on such a system, as installed.
if "$SBIN/stripe-client" --help 2>&1 | grep -q -- '--congestion' && [[ " $STRIPER_ARGS" != *" --congestion"* ]]; then
    note "striper sets its stripes' congestion control itself (--congestion, default bbr), so its stripes run bbr under every system CC (column 'stripes' CC (seen)'); STRIPER_ARGS='--congestion system' makes them follow the system default"
fi
SARGS=(--key-file "$KEY" "${SARGS[@]}")

BROKEN=0
PIDS=()
WAN_IS_UP=0
OLD_ALLOWED=""

# ---------------------------------------------------------------- processes
# bg VAR NS TIMEOUT LOG cmd...: start cmd in netns NS under `timeout`, its PID -> VAR. `ip netns
# exec` execs `timeout`, so the PID is timeout's own: a TERM to it reaches the command.
bg() {
    local __var=$1 ns=$2 tmo=$3 logf=$4; shift 4
    ip netns exec "$ns" timeout -k 5 "$tmo" "$@" >"$logf" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    printf -v "$__var" %s "$pid"
}
# forget PID: drop a reaped process from the list (never signal a reaped PID)
forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
# stop PID: TERM it (timeout KILLs the command 5 s later if it is still there), reap it
stop() {
    [ -n "${1:-}" ] || return 0
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}
# alive PID NAME LOG: a process that should be running has died -> show its log, exit 1
alive() {
    kill -0 "$1" 2>/dev/null && return 0
    echo "bench-wan: $2 died; its log ($3):" >&2
    tail -20 "$3" >&2 || true
    exit 1
}
wait_listen() { # ns port [secs]: poll ss until something listens on TCP port
    local i
    for ((i = 0; i < ${3:-10} * 20; i++)); do
        ip netns exec "$1" ss -ltnH "sport = :$2" | grep -q . && return 0
        sleep 0.05
    done
    return 1
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "$WAN_IS_UP" = 1 ] && { "$WAN" down >/dev/null 2>&1 || true; }
    if [ -n "$OLD_ALLOWED" ]; then
        sysctl -qw net.ipv4.tcp_allowed_congestion_control="$OLD_ALLOWED" || true
    fi
    if [ "${KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
        echo "bench-wan: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

record() { # file rc: append the result line(s); rc 1 = a broken run
    cat "$1" >>"$RESULTS"
    if [ "$2" != 0 ]; then BROKEN=$((BROKEN + 1)); log "BROKEN run: $(cut -c1-300 "$1")"; fi
}
# ctx SYS N CC SYSCC REP -> the JSON fields that place a run ("-" = null)
ctx() {
    local q3=null q4=null
    [ "$3" != - ] && q3="\"$3\""
    [ "$4" != - ] && q4="\"$4\""
    printf '{"rtt": %s, "sys": "%s", "n": %s, "cc": %s, "syscc": %s, "rep": %s}' "$RTT" "$1" "$2" "$q3" "$q4" "$5"
}
retrans() { # ns -> TcpRetransSegs (absolute)
    ip netns exec "$1" awk '$1 == "Tcp:" { if (!h) { split($0, n); h = 1 } else { for (i = 2; i <= NF; i++) if (n[i] == "RetransSegs") print $i; exit } }' /proc/net/snmp
}
# ss_pair DPORT PREFIX: two samples of wc's connections to DPORT 0.5 s apart (PREFIX.a, .b);
# the data-carrying flows are those whose bytes_acked grew in between
ss_pair() {
    ip netns exec $CNS ss -tniH state established "( dport = :$1 )" >"$2.a" 2>&1 || true
    sleep 0.5
    ip netns exec $CNS ss -tniH state established "( dport = :$1 )" >"$2.b" 2>&1 || true
}
sleep_until() { # EPOCHREALTIME_START OFFSET_S: sleep until START + OFFSET
    sleep "$(python3 -c "print(max(0.0, $1 + $2 - $EPOCHREALTIME))")"
}

# ---------------------------------------------------------------- host congestion-control list
# A namespace may default only to an algorithm in net.ipv4.tcp_allowed_congestion_control, which
# is global: add SYSCC's algorithms for the run, restore the old list at exit.
ALLOWED=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
NEW_ALLOWED=$ALLOWED
for cc in $SYSCC; do inlist "$cc" "$NEW_ALLOWED" || NEW_ALLOWED="$NEW_ALLOWED $cc"; done
if [ "$NEW_ALLOWED" != "$ALLOWED" ]; then
    OLD_ALLOWED=$ALLOWED
    sysctl -qw net.ipv4.tcp_allowed_congestion_control="$NEW_ALLOWED" || die "cannot set net.ipv4.tcp_allowed_congestion_control"
    log "host net.ipv4.tcp_allowed_congestion_control: '$ALLOWED' -> '$(sysctl -n net.ipv4.tcp_allowed_congestion_control)' (restored at exit)"
fi

# ---------------------------------------------------------------- the path
RTT=0
wan_up() { # rtt_ms
    local d; d=$(python3 -c "print($1 / 2)")
    WAN_IS_UP=1
    DELAY_MS=$d RATE_MBIT=$RATE BURST_KB=$BURST "$WAN" up >"$WORK/wan-up-$1.log" 2>&1 || { cat "$WORK/wan-up-$1.log" >&2; die "wan.sh up failed"; }
    log "$(grep RESULT "$WORK/wan-up-$1.log" | sed 's/^RESULT //')"
    INHERITED_CC=$(ip netns exec $CNS sysctl -n net.ipv4.tcp_congestion_control)
    # MPTCP: up to 8 subflows, N-1 extra client addresses (endpoints are added per N)
    local k
    for ns in $CNS $SNS; do ip -n "$ns" mptcp limits set subflows 8 add_addr_accepted 8; done
    ip -n $CNS mptcp endpoint flush
    for ((k = 1; k < MAXN; k++)); do ip -n $CNS addr add 10.88.1.$((10 + k))/24 dev wc0; done
    # agg-tunnel makes one link per server address: ws gets N-1 more
    if [ $HAVE_AGG = 1 ]; then
        for ((k = 1; k < MAXN; k++)); do ip -n $SNS addr add 10.88.2.$((20 + k))/24 dev ws0; done
    fi
}
set_syscc() { # cc: the namespaces' default congestion control (tunnels' and MPTCP's sockets use it)
    local ns got
    for ns in $CNS $SNS; do
        ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$1" || die "cannot make $1 the default congestion control of netns $ns (allowed: $(sysctl -n net.ipv4.tcp_allowed_congestion_control))"
        got=$(ip netns exec "$ns" sysctl -n net.ipv4.tcp_congestion_control)
        [ "$got" = "$1" ] || die "netns $ns: tcp_congestion_control reads '$got' after setting '$1'"
    done
}
mptcp_endpoints() { # n: n-1 extra client addresses as subflow endpoints
    ip -n $CNS mptcp endpoint flush
    local k
    for ((k = 1; k < $1; k++)); do ip -n $CNS mptcp endpoint add 10.88.1.$((10 + k)) dev wc0 subflow; done
}

BUDGET=7200   # upper bound for every long-lived process
SERVERS=()
start_servers() {
    bg IPS_PID $SNS $BUDGET "$WORK/iperf3-s-$RTT.log" iperf3 -s -B $SIP -p 5201
    bg MPS_PID $SNS $BUDGET "$WORK/iperf3-s-mptcp-$RTT.log" mptcpize run iperf3 -s -B $SIP -p 5203
    bg TGS_PID $SNS $BUDGET "$WORK/iperf3-s-target-$RTT.log" iperf3 -s -B 127.0.0.1 -p 5202
    SERVERS=("$IPS_PID:iperf3 server:$WORK/iperf3-s-$RTT.log" "$MPS_PID:MPTCP iperf3 server:$WORK/iperf3-s-mptcp-$RTT.log"
             "$TGS_PID:iperf3 server (tunnel target):$WORK/iperf3-s-target-$RTT.log")
    wait_listen $SNS 5201 || alive "$IPS_PID" "iperf3 server" "$WORK/iperf3-s-$RTT.log"
    wait_listen $SNS 5203 || alive "$MPS_PID" "MPTCP iperf3 server" "$WORK/iperf3-s-mptcp-$RTT.log"
    wait_listen $SNS 5202 || alive "$TGS_PID" "iperf3 server (tunnel target)" "$WORK/iperf3-s-target-$RTT.log"
    ip netns exec $SNS ss -MlnH | grep -q ":5203" || die "the MPTCP iperf3 server is not an MPTCP listener (mptcpize failed?)"
    if [ $HAVE_AGG = 1 ]; then
        bg AGS_PID $SNS $BUDGET "$WORK/agg-server-$RTT.log" "$AGG_PATH" server --tcp 5800 -p 5202 -n
        SERVERS+=("$AGS_PID:agg-tunnel server:$WORK/agg-server-$RTT.log")
        wait_listen $SNS 5800 || alive "$AGS_PID" "agg-tunnel server" "$WORK/agg-server-$RTT.log"
    fi
}
check_servers() {
    local s pid name logf
    for s in "${SERVERS[@]}"; do IFS=: read -r pid name logf <<<"$s"; alive "$pid" "$name" "$logf"; done
}
stop_servers() {
    local s pid name logf
    for s in "${SERVERS[@]}"; do IFS=: read -r pid name logf <<<"$s"; stop "$pid"; done
    SERVERS=()
}

# tunnel_up NAME N SPORT TARGET CPORT: stripe-server in ws on SIP:SPORT relaying to TARGET,
# stripe-client in wc on 127.0.0.1:CPORT with N stripes; PIDs -> TS_PID / TC_PID
tunnel_up() {
    local name=$1 n=$2 sport=$3 target=$4 cport=$5
    TS_LOG=$WORK/stripe-server-$name-$RTT-$CUR_CC-$n.log TC_LOG=$WORK/stripe-client-$name-$RTT-$CUR_CC-$n.log
    bg TS_PID $SNS $BUDGET "$TS_LOG" "$SBIN/stripe-server" --listen $SIP:"$sport" --target "$target" "${SARGS[@]}"
    wait_listen $SNS "$sport" || { alive "$TS_PID" stripe-server "$TS_LOG"; die "stripe-server did not listen on $SIP:$sport"; }
    bg TC_PID $CNS $BUDGET "$TC_LOG" "$SBIN/stripe-client" --listen 127.0.0.1:"$cport" --server $SIP:"$sport" --stripes "$n" "${SARGS[@]}"
    wait_listen $CNS "$cport" || { alive "$TC_PID" stripe-client "$TC_LOG"; die "stripe-client did not listen on 127.0.0.1:$cport"; }
}
tunnel_down() {
    alive "$TC_PID" stripe-client "$TC_LOG"
    alive "$TS_PID" stripe-server "$TS_LOG"
    stop "$TC_PID"; stop "$TS_PID"
    TC_PID='' TS_PID=''
}
agg_up() { # n
    local tcp=(--tcp "$SIP:5800") k
    for ((k = 1; k < $1; k++)); do tcp+=(--tcp 10.88.2.$((20 + k)):5800); done
    AC_LOG=$WORK/agg-client-$RTT-$CUR_CC-$1.log
    bg AC_PID $CNS $BUDGET "$AC_LOG" "$AGG_PATH" client "${tcp[@]}" --tcp-link-filter interface-ip -p 5202:2400 -n
    wait_listen $CNS 2400 || { alive "$AC_PID" "agg-tunnel client" "$AC_LOG"; die "agg-tunnel client did not listen on 2400"; }
}

# ---------------------------------------------------------------- measurements
RUNNO=0
# iperf_run SYS N CC SYSCC REP DPORT cmd...: one iperf3 client run of SECS s in wc (cmd is the
# client command without -t/-J), the sender's retransmissions around it, an ss pair mid-run
iperf_run() {
    local sys=$1 n=$2 cc=$3 syscc=$4 rep=$5 dport=$6; shift 6
    RUNNO=$((RUNNO + 1))
    local f=$WORK/run$RUNNO-$sys-$n-$cc-$syscc-$rep r0 r1 rc=0 prc=0 ipid t0
    local omit=(); [ "$OMIT" != 0 ] && omit=(-O "$OMIT")
    r0=$(retrans $CNS)
    t0=$EPOCHREALTIME
    ip netns exec $CNS timeout -k 5 $((SECS + OMIT + 40)) "$@" -t "$SECS" "${omit[@]}" -J >"$f.json" 2>"$f.err" &
    ipid=$!
    PIDS+=("$ipid")
    sleep_until "$t0" "$(python3 -c "print($OMIT + $SECS / 2)")"
    ss_pair "$dport" "$f.ss"
    wait "$ipid" || rc=$?
    forget "$ipid"
    r1=$(retrans $CNS)
    "${PY[@]}" iperf --json "$f.json" --rc $rc --retrans $((r1 - r0)) --ss "$f.ss.b" --ss-prev "$f.ss.a" \
        --ctx "$(ctx "$sys" "$n" "$cc" "$syscc" "$rep")" >"$f.rec" || prc=$?
    [ $prc != 0 ] && [ -s "$f.err" ] && log "iperf3 stderr: $(tail -3 "$f.err")"
    record "$f.rec" $prc
    sleep 0.3
}

# lat_run SYS REP: one record stream, plain (straight to ws) or through the latency tunnel
lat_run() {
    local sys=$1 rep=$2 rc=0 rrc=0 rpid prc=0 listen dest sndbuf rcvbuf n
    RUNNO=$((RUNNO + 1))
    local f=$WORK/run$RUNNO-lat-$sys-$CUR_CC-$rep
    if [ "$sys" = plain ]; then
        listen=$SIP:5300 dest=$SIP:5300 n=1 rcvbuf=$LAT_PLAIN_RCVBUF sndbuf=$LAT_PLAIN_SNDBUF
        # the plain stream crosses the path itself: its buffers must hold the bandwidth-delay
        # product, or the socket (not the path) sets its rate
        [ "$sndbuf" = bdp2 ] && sndbuf=$(python3 -c "print(int(2 * $RATE * 1e6 / 8 * $RTT / 1000))")
    else
        listen=127.0.0.1:5300 dest=127.0.0.1:2310 n=$LAT_N rcvbuf=$LAT_RCVBUF sndbuf=$LAT_SNDBUF
    fi
    bg rpid $SNS $((LAT_SECS + 120)) "$f.recv.log" "${CAPS[@]}" lat-recv --listen "$listen" --out "$f.recv.json" \
        --record "$LAT_RECORD" --rcvbuf "$rcvbuf" --timeout $((LAT_SECS + 100))
    wait_listen $SNS 5300 || alive "$rpid" "latency receiver" "$f.recv.log"
    ip netns exec $CNS timeout -k 5 $((LAT_SECS + 90)) "${CAPS[@]}" lat-send --connect "$dest" --out "$f.send.json" \
        --duration "$LAT_SECS" --record "$LAT_RECORD" --sndbuf "$sndbuf" --drain 60 >"$f.send.log" 2>&1 || rc=$?
    wait "$rpid" || rrc=$?
    forget "$rpid"
    local c; c=$(ctx "$sys" "$n" - "$CUR_CC" "$rep")
    c=${c%\}}", \"sndbuf\": $sndbuf, \"rcvbuf\": $rcvbuf}"
    if [ ! -s "$f.send.json" ] || [ ! -s "$f.recv.json" ]; then
        printf '{"kind": "lat", "broken": "sender exit %s, receiver exit %s: %s"}\n' $rc $rrc \
            "$(tail -q -n 1 "$f.send.log" "$f.recv.log" | tr -d '"\\\n' | cut -c1-200)" >"$f.raw"
    else
        "${CAPS[@]}" lat-analyze --kind lat --send "$f.send.json" --recv "$f.recv.json" --sys "$sys" --n "$n" --rep "$rep" \
            --skip "$LAT_SKIP" >"$f.raw" || true
        [ -s "$f.raw" ] || printf '{"kind": "lat", "broken": "lat-analyze printed nothing"}\n' >"$f.raw"
    fi
    "${PY[@]}" tag --ctx "$c" "$f.raw" >"$f.rec" || prc=$?
    record "$f.rec" $prc
    sleep 0.3
}

# rec_run SYS REP: REC_SECS of bulk data; at REC_AT one data flow's packets towards ws go into
# the router's 1:2 class (REC_TO Mbit/s); receiver progress every 0.1 s
rec_run() {
    local sys=$1 rep=$2 spid bpid rc=0 src=0 prc=0 listen dest conns cc=() dport port="" t0 cap_at=""
    RUNNO=$((RUNNO + 1))
    local f=$WORK/run$RUNNO-rec-$sys-$rep
    if [ "$sys" = par ]; then
        listen=$SIP:5401 dest=$SIP:5401 conns=$REC_N cc=(--cc bbr) dport=5401
    else
        listen=127.0.0.1:5400 dest=127.0.0.1:2320 conns=1 dport=7920
    fi
    bg spid $SNS $((REC_SECS + 120)) "$f.sink.log" "${PY[@]}" sink --listen "$listen" --conns "$conns" --out "$f.sink.json" \
        --timeout $((REC_SECS + 100))
    wait_listen $SNS "${listen##*:}" || alive "$spid" "recovery sink" "$f.sink.log"
    t0=$EPOCHREALTIME
    bg bpid $CNS $((REC_SECS + 90)) "$f.blast.log" "${PY[@]}" blast --connect "$dest" --conns "$conns" "${cc[@]}" \
        --secs "$REC_SECS" --out "$f.blast.json"
    # pick the flow to cap from two ss samples just before REC_AT: the data-carrying one with
    # the lowest client port (striper: one of this session's stripes)
    # (sampling and choosing take ~1 s here: ip netns exec, ss, python start-up)
    sleep_until "$t0" "$(python3 -c "print($REC_AT - 1.5)")"
    ss_pair "$dport" "$f.ss"
    port=$("${CAPS[@]}" flows --ss "$f.ss.b" --ss-prev "$f.ss.a" | sort -n | awk 'NR == 1 { print $1 }')
    sleep_until "$t0" "$REC_AT"
    if [ -n "$port" ]; then
        tc -n $RNS filter add dev wr1 parent 1: protocol ip prio 1 u32 \
            match ip src 10.88.1.1/32 match ip protocol 6 0xff match ip sport "$port" 0xffff flowid 1:2
        cap_at=$EPOCHREALTIME
        log "  t=$(python3 -c "print(round($cap_at - $t0, 2))") s: flow from port $port capped to $REC_TO Mbit/s"
    else
        log "  no data flow found to cap"
    fi
    wait "$bpid" || rc=$?
    forget "$bpid"
    wait "$spid" || src=$?
    forget "$spid"
    [ -n "$port" ] && tc -n $RNS filter del dev wr1 parent 1: protocol ip prio 1
    "${PY[@]}" recovery --sink "$f.sink.json" --blast "$f.blast.json" ${cap_at:+--cap-at "$cap_at"} ${port:+--cap-port "$port"} \
        --cap-to "$REC_TO" --rate "$RATE" --n "$REC_N" --ctx "$(ctx "$sys" "$REC_N" "$([ "$sys" = par ] && echo bbr || echo -)" "$CUR_CC" "$rep")" \
        >"$f.rec" || prc=$?
    if [ $prc = 0 ] && { [ $rc != 0 ] || [ $src != 0 ]; }; then prc=1; fi
    record "$f.rec" $prc
    sleep 0.3
}

# ---------------------------------------------------------------- run
nw() { wc -w <<<"$1"; }
est_args=(--ns "$NS" --syscc "$SYSCC" --lat-rtts "$LAT_RTTS" --lat-syscc "$LAT_SYSCC" --rec-syscc "$REC_SYSCC"
          --rec-rtt "$REC_RTT" --omit "$OMIT" --lat-secs "$LAT_SECS" --rec-secs "$REC_SECS" --agg "$HAVE_AGG")
EST=$("${PY[@]}" estimate --rtts "$RTTS" --reps "$REPS" --secs "$SECS" "${est_args[@]}")
FULL_EST=$("${PY[@]}" estimate --rtts "40 100 200" --reps 3 --secs 10 --ns "4 8" --syscc "cubic bbr" --lat-rtts "40 100" \
    --lat-syscc "bbr cubic" --rec-syscc bbr --rec-rtt 100 --omit 0 --lat-secs 8 --rec-secs 20 --agg "$HAVE_AGG")
START=$SECONDS
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
log "bench-wan: RTTS='$RTTS' ms NS='$NS' SYSCC='$SYSCC' REPS=$REPS SECS=$SECS RATE=$RATE Mbit/s BURST=$BURST KB, load $LOAD"
log "estimated time: ~$(( (EST + 59) / 60 )) min (a full run with the defaults: ~$(( (FULL_EST + 59) / 60 )) min)"

CUR_CC=-
for RTT in $RTTS; do
    log "== RTT $RTT ms"
    wan_up "$RTT"
    log "namespaces' default congestion control when created: $INHERITED_CC"
    start_servers
    CUR_CC=$INHERITED_CC

    # 1 + 2a. plain flows with iperf3 -C: the system default does not matter, so once per RTT
    log "-- one flow and iperf3 -P N (iperf3 -C cubic / bbr)"
    inlist tput "$PARTS" && for ((rep = 1; rep <= REPS; rep++)); do
        for cc in cubic bbr; do iperf_run single 1 $cc - $rep 5201 iperf3 -c $SIP -p 5201 -C $cc; done
        for n in $NS; do
            for cc in cubic bbr; do iperf_run par "$n" $cc - $rep 5201 iperf3 -c $SIP -p 5201 -P "$n" -C $cc; done
        done
    done
    check_servers

    for cc in $SYSCC; do
        set_syscc "$cc"
        CUR_CC=$cc
        # 2b. the systems whose own TCP connections take the namespaces' default
        inlist tput "$PARTS" && for n in $NS; do
            log "-- system CC $cc, N=$n: MPTCP, agg-tunnel, striper"
            mptcp_endpoints "$n"
            for ((rep = 1; rep <= REPS; rep++)); do
                iperf_run mptcp "$n" - "$cc" $rep 5203 mptcpize run iperf3 -c $SIP -p 5203
            done
            ip -n $CNS mptcp endpoint flush
            if [ $HAVE_AGG = 1 ]; then
                agg_up "$n"
                for ((rep = 1; rep <= REPS; rep++)); do
                    iperf_run agg "$n" - "$cc" $rep 5800 iperf3 -c 127.0.0.1 -p 2400
                done
                alive "$AC_PID" "agg-tunnel client" "$AC_LOG"; stop "$AC_PID"
            fi
            tunnel_up tput "$n" 7900 127.0.0.1:5202 2300
            for ((rep = 1; rep <= REPS; rep++)); do
                iperf_run striper "$n" - "$cc" $rep 7900 iperf3 -c 127.0.0.1 -p 2300
            done
            tunnel_down
            check_servers
        done

        # 3. latency under load: plain TCP vs striper, the same record stream
        if inlist lat "$PARTS" && inlist "$RTT" "$LAT_RTTS" && inlist "$cc" "$LAT_SYSCC"; then
            log "-- latency under load, system CC $cc: plain TCP and striper ($LAT_N stripes), $LAT_SECS s"
            tunnel_up lat "$LAT_N" 7910 127.0.0.1:5300 2310
            for ((rep = 1; rep <= REPS; rep++)); do
                lat_run plain $rep
                lat_run striper $rep
            done
            tunnel_down
        fi

        # 4. recovery from one capped flow
        if inlist rec "$PARTS" && [ "$RTT" = "$REC_RTT" ] && [ "$cc" = "$REC_SYSCC" ]; then
            log "-- recovery, system CC $cc: $REC_N flows, one capped to $REC_TO Mbit/s at t=$REC_AT s of $REC_SECS s"
            # wan.sh's egress HTB on wr1 (towards ws) has root 1: and class 1:1 (the link); the
            # capped flow's class 1:2 sits beside it, so it cannot borrow
            tc -n $RNS class add dev wr1 parent 1: classid 1:2 htb rate "${REC_TO}mbit" ceil "${REC_TO}mbit"
            tc -n $RNS qdisc add dev wr1 parent 1:2 handle 20: pfifo limit "$REC_QLEN"
            tunnel_up rec "$REC_N" 7920 127.0.0.1:5400 2320
            for ((rep = 1; rep <= REPS; rep++)); do
                rec_run par $rep
                rec_run striper $rep
            done
            tunnel_down
            tc -n $RNS class del dev wr1 classid 1:2
        fi
    done
    check_servers
    stop_servers
done
"$WAN" down >/dev/null
WAN_IS_UP=0

# ---------------------------------------------------------------- report
ELAPSED=$((SECONDS - START))
LAT_DESC="Timestamped records of $LAT_RECORD B sent as fast as the path takes them for $LAT_SECS s (the first $LAT_SKIP s not counted) \
by \`scripts/bench_caps.py lat-send\`, read at once and every byte checked by \`lat-recv\`; delay = receive time − send time \
of each record (one clock). Plain TCP: one flow straight over the path, with SO_SNDBUF $([ "$LAT_PLAIN_SNDBUF" = bdp2 ] && echo "2 × ${RATE} Mbit/s × RTT" || echo "$LAT_PLAIN_SNDBUF (0 = autotuning)") \
and SO_RCVBUF $LAT_PLAIN_RCVBUF (0 = autotuning): its socket must hold the bandwidth-delay product or the socket, not the path, \
sets its rate (in a trial at RTT 100 ms with bbr, SO_SNDBUF 64K / 125K / 250K / 500K / autotuning gave 6 / 10 / 14 / 18 / 19 Mbit/s \
at a median delay of 64 / 72 / 157 / 209 / 777 ms); striper: \
$LAT_N stripes, the applications on loopback with SO_SNDBUF $LAT_SNDBUF and SO_RCVBUF $LAT_RCVBUF (as in bench-caps.sh). \
\"inside the tunnel\" = bytes between the sending application's socket and the receiving application's socket. \
Goal: striper's median delay ≤ plain TCP's median + 1 RTT."
LAT_NOTE=""
lat_any=0
for r in $RTTS; do inlist "$r" "$LAT_RTTS" && lat_any=1; done
[ $lat_any = 0 ] && LAT_NOTE="Skipped: no RTT of RTTS ($RTTS) is in LAT_RTTS ($LAT_RTTS)."
REC_DESC="RTT $REC_RTT ms, system CC $REC_SYSCC, $REC_SECS s of bulk data from wc to ws (\`bench_wan.py blast\`; the reference: $REC_N plain flows with \
TCP_CONGESTION bbr; striper: one connection through $REC_N stripes), receiver progress sampled every 0.1 s. At t=$REC_AT s \
one data flow (the one with the lowest client port among those carrying data) is sent through an HTB class of $REC_TO Mbit/s \
(pfifo $REC_QLEN packets) on the router's egress towards ws, by a u32 filter on its client port. New ideal = $((REC_N - 1)) × \
$(python3 -c "print(f'{$RATE * 1448 / 1500:.1f}')") + $(python3 -c "print(f'{$REC_TO * 1448 / 1514:.1f}')") Mbit/s (payload \
ceilings of the policer and of the HTB class). Recovery time = from the cap to the first moment t from which the goodput \
averaged over [t, t'] is ≥ 0.9 × the new ideal for every t' ≥ t + 0.5 s: the 0.5 s average is there and the transfer never \
falls behind that pace afterwards (0 = it never did; a dip made up by a burst right after costs no bytes, as in bench-caps.sh). \
The worst 0.5 s and the time below 0.9 × the new ideal (share of the 0.5 s averages, every 0.1 s, after the cap) show the dips. \
Medians over REPS."
REC_NOTE=""
if ! inlist "$REC_RTT" "$RTTS" || ! inlist "$REC_SYSCC" "$SYSCC"; then
    REC_NOTE="Skipped: REC_RTT=$REC_RTT is not in RTTS or REC_SYSCC=$REC_SYSCC not in SYSCC."
fi
B_IPERF=$(iperf3 --version | head -1 | cut -d' ' -f1-2)
B_NOTES=$(printf '%s\n' "${NOTES[@]}")
export B_IPERF B_NOTES B_CMD="$CMDLINE" B_LOAD="$LOAD" B_COMMIT="$COMMIT_NOTE" B_ELAPSED="$((ELAPSED / 60)) min $((ELAPSED % 60)) s" \
    B_RTTS="$RTTS" B_NS="$NS" B_SYSCC="$SYSCC" B_REPS=$REPS \
    B_SECS=$SECS B_OMIT=$OMIT B_SARGS="$STRIPER_ARGS" B_RATE=$RATE B_BURST=$BURST B_AGG=$HAVE_AGG \
    B_FULL="~$(( (FULL_EST + 59) / 60 )) min (estimate; RTTS=\"40 100 200\" NS=\"4 8\" SYSCC=\"cubic bbr\" REPS=3 SECS=10)" \
    B_LATDESC="$LAT_DESC" B_LATNOTE="$LAT_NOTE" B_LATN=$LAT_N \
    B_RECDESC="$REC_DESC" B_RECNOTE="$REC_NOTE" B_RECN=$REC_N \
    B_WAN="scripts/wan/wan.sh, delayq policer, shared link 1000 Mbit/s"
python3 - "$WORK/meta.json" <<'PY'
import json, os, sys, time, platform
e = os.environ
json.dump({"command": e["B_CMD"], "load": e["B_LOAD"], "commit": e["B_COMMIT"], "elapsed": e["B_ELAPSED"],
           "iperf": e["B_IPERF"], "rtts": e["B_RTTS"], "ns": e["B_NS"], "syscc": e["B_SYSCC"], "reps": e["B_REPS"],
           "secs": e["B_SECS"], "omit": e["B_OMIT"], "striper_args": e["B_SARGS"], "rate": float(e["B_RATE"]),
           "burst": e["B_BURST"], "agg": e["B_AGG"] == "1", "full_estimate": e["B_FULL"], "wan": e["B_WAN"],
           "notes": [n for n in e["B_NOTES"].splitlines() if n.strip()],
           "lat_desc": e["B_LATDESC"], "lat_note": e["B_LATNOTE"], "lat_n": e["B_LATN"],
           "rec_desc": e["B_RECDESC"], "rec_note": e["B_RECNOTE"], "rec_n": e["B_RECN"],
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "kernel": platform.release(), "nproc": os.cpu_count()},
          open(sys.argv[1], "w"))
PY
mkdir -p "$OUT"
cp "$RESULTS" "$OUT/wan-raw.jsonl"
echo
"${PY[@]}" report --results "$RESULTS" --meta "$WORK/meta.json" --md "$OUT/wan-results.md" --plots "$OUT"
echo
log "wrote $OUT/wan-results.md and $OUT/wan-raw.jsonl ($((ELAPSED / 60)) min $((ELAPSED % 60)) s; estimated ~$(( (EST + 59) / 60 )) min)"
if [ $BROKEN != 0 ]; then
    echo "bench-wan: $BROKEN broken run(s); see above" >&2
    exit 1
fi
