#!/usr/bin/env bash
# bench-caps.sh: striper against per-flow bandwidth caps, side by side with
# the alternatives, in two network namespaces on this machine.
#
#   sudo scripts/bench-caps.sh            # full run (about 12-15 min)
#   sudo QUICK=1 scripts/bench-caps.sh    # smoke run (about 2-3 min)
#
# Topology (needs root; without it the script says so and exits 0):
#
#   netns stc: 10.77.0.1 (+ .11-.17)  ==veth stc0/sts0==  netns sts: 10.77.0.2 (+ .21-.27)
#     iperf3 -c / sender                 HTB on both ends:     iperf3 -s, stripe-server,
#     stripe-client, agg-tunnel client   one class per TCP     agg-tunnel server, receiver
#                                        flow, RATE Mbit/s
#
# Every TCP flow crossing the veth gets its own HTB class ("rate RATE ceil
# RATE", no borrowing), picked by a u32 hash on the client-side port (256
# buckets; KEY=bits1_8: (port >> 1) & 255, so that both the even ports of plain
# connect() and the random odd ports of bound sockets (MPTCP's extra subflows)
# spread over all 256 buckets; KEY=low8: port & 255). Measured, for N in $NS:
#   tput   goodput (receiver side, iperf3) of: 1 plain TCP stream (the capped
#          baseline); iperf3 -P N (the ideal aggregate); Linux MPTCP with N
#          subflows (mptcpize, N-1 extra client addresses as subflow endpoints);
#          agg-tunnel with N links (when on the PATH); striper with N stripes.
#          Each run samples `ss -tni` mid-way (which flows carry data, their
#          ports/buckets, their congestion control) and the HTB class byte
#          counters (which classes ran at >= 50% of the cap). Runs whose data
#          flows shared a bucket are re-run (COLL_RETRIES) and reported.
#   het    HET_N flows, one of them capped at RATE/HET_DIV (its class is changed
#          on both veth ends ~1 s into the run, before the measured part):
#          goodput against the sum of the caps.
#   drop   DROP_N flows; at t=DROP_AT s one flow's cap drops to DROP_TO; goodput
#          per 0.5 s from the iperf3 server (receiver) and the recovery time.
#   lat    latency under load: scripts/bench_caps.py sends timestamped 16 KiB
#          records through the path as fast as it goes (small SO_SNDBUF), the
#          receiver (the tunnel's target) reads them at once (small SO_RCVBUF)
#          and verifies every byte; per-record delay and the bytes queued
#          between the apps and inside the tunnel. Plain TCP (1 flow), MPTCP,
#          agg-tunnel and striper, LAT_N flows each.
#   integ  one record stream through striper per N, every byte verified.
# Every measurement is run REPS times; the tables quote medians. The tables
# go to stdout and docs/bench/caps-results.md, the raw result lines to
# docs/bench/caps-raw.jsonl, and PNG plots to docs/bench/ when matplotlib is
# importable (otherwise the plots are skipped with a note).
#
# Exit status: 0 when every run worked (whatever the figures), 1 when a run
# was broken (a tool missing, a process failing, an iperf3 error, bytes lost
# or corrupted), 0 with a message without root.
#
# Env knobs (defaults; QUICK=1 changes the ones marked *):
#   RATE=20 (Mbit/s per flow)  NS="1 2 4 8"*  REPS=3*  DURATION=6* (s measured)
#   OMIT=1 (s warm-up not counted)  CC=bbr (congestion control, all systems)
#   HET_N=4 HET_DIV=10 HET_OMIT=4* HET_SECS=8*  DROP_N=4 DROP_SECS=12* DROP_AT=4* DROP_TO=RATE/10
#   LAT_N=4 LAT_SECS=8* LAT_SKIP=3* LAT_RECORD=16384 LAT_SNDBUF=65536 LAT_RCVBUF=65536
#   LAT_MPTCP_RCVBUF=0 (0 = kernel autotuning; see measure_lat)
#   INTEG_SECS=3*  COLL_RETRIES=3  PHASES="integ tput het drop lat"
#   SYSTEMS="single ideal mptcp agg striper"  KEY=bits1_8 (or low8)  QLEN=100 (pkts/class)
#   STRIPER_BIN=target/release (copied at the start; BUILD=1 runs cargo build --release first)  AGG=agg-tunnel  OUT=docs/bench  CNS=stc SNS=sts  KEEP=1 (keep logs)
#
# The namespace/HTB set-up is adapted from the reference script
# shared/bench/netns-caps.sh (tc_batch, the client-port u32 hash, the
# class-counter "busy" check) and its README's lessons; this copy makes the
# project self-contained.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
CMDLINE=""
for v in QUICK RATE NS REPS DURATION CC PHASES SYSTEMS; do
    if [ -n "${!v:-}" ]; then CMDLINE+="$v=$(printf %q "${!v}") "; fi
done
CMDLINE+="scripts/bench-caps.sh"

if [ "$(id -u)" != 0 ]; then
    echo "bench-caps.sh: needs root (network namespaces, tc); skipping the benchmark."
    exit 0
fi

# ---------------------------------------------------------------- knobs
if [ "${QUICK:-0}" = 1 ]; then
    : "${NS:=1 4}" "${REPS:=1}" "${DURATION:=3}" "${DROP_SECS:=9}" "${DROP_AT:=3}"
    : "${LAT_SECS:=6}" "${LAT_SKIP:=2}" "${INTEG_SECS:=2}" "${HET_SECS:=4}" "${HET_OMIT:=3}"
fi
RATE=${RATE:-20}
NS=${NS:-1 2 4 8}
REPS=${REPS:-3}
DURATION=${DURATION:-6}
OMIT=${OMIT:-1}
CC=${CC:-bbr}
HET_N=${HET_N:-4}
HET_DIV=${HET_DIV:-10}
HET_OMIT=${HET_OMIT:-4}
HET_SECS=${HET_SECS:-8}
DROP_N=${DROP_N:-4}
DROP_SECS=${DROP_SECS:-12}
DROP_AT=${DROP_AT:-4}
LAT_N=${LAT_N:-4}
LAT_SECS=${LAT_SECS:-8}
LAT_SKIP=${LAT_SKIP:-3}
LAT_RECORD=${LAT_RECORD:-16384}
LAT_SNDBUF=${LAT_SNDBUF:-65536}
LAT_RCVBUF=${LAT_RCVBUF:-65536}
LAT_MPTCP_RCVBUF=${LAT_MPTCP_RCVBUF:-0}
INTEG_SECS=${INTEG_SECS:-3}
COLL_RETRIES=${COLL_RETRIES:-3}
PHASES=${PHASES:-integ tput het drop lat}
SYSTEMS=${SYSTEMS:-single ideal mptcp agg striper}
KEY=${KEY:-bits1_8}
QLEN=${QLEN:-100}
LINK_MBIT=${LINK_MBIT:-1000}
STRIPER_BIN=${STRIPER_BIN:-$ROOT/target/release}
AGG=${AGG:-agg-tunnel}
OUT=${OUT:-$ROOT/docs/bench}
CNS=${CNS:-stc} SNS=${SNS:-sts}
CDEV=${CNS}0 SDEV=${SNS}0 CIP=10.77.0.1 SIP=10.77.0.2
SLOW=$(python3 -c "print(f'{$RATE/$HET_DIV:g}')" 2>/dev/null || echo 2)
DROP_TO=${DROP_TO:-$SLOW}
PY="python3 $HERE/bench_caps.py"
# ports: iperf3 5201 (plain), 5202 (MPTCP); latency receiver 5300;
# stripe-server 7900 (-> 5201) and 7910 (-> 5300); stripe-client 7901 / 7911;
# agg-tunnel server 5800, its client 7902 (-> 5201) and 7912 (-> 5300)

die() { echo "bench-caps: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }
has() { case " $SYSTEMS " in *" $1 "*) return 0 ;; esac; return 1; }
phase() { case " $PHASES " in *" $1 "*) return 0 ;; esac; return 1; }

for t in ip tc iperf3 python3 ss timeout awk; do command -v $t >/dev/null || die "missing required tool: $t"; done
[[ "$RATE" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "RATE must be a number (Mbit/s)"
for n in $NS $HET_N $DROP_N $LAT_N; do
    [[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 && n <= 8 )) || die "flow counts must be 1..8 (MPTCP allows at most 8 subflows), got $n"
done
for ns in $CNS $SNS; do
    [ -e /run/netns/$ns ] && die "network namespace $ns already exists (another run? remove it with 'ip netns del $ns' or set CNS/SNS)"
done

NOTES=()
note() { NOTES+=("$*"); log "note: $*"; }
SKIPPED=()
if has mptcp; then
    if ! command -v mptcpize >/dev/null; then
        note "MPTCP skipped: mptcpize (mptcpd) not installed"; SKIPPED+=(mptcp)
    elif [ "$(sysctl -n net.mptcp.enabled 2>/dev/null || echo 0)" != 1 ]; then
        note "MPTCP skipped: net.mptcp.enabled is not 1 in this kernel"; SKIPPED+=(mptcp)
    fi
fi
if has agg; then
    if AGG_PATH=$(command -v "$AGG"); then
        AGG_VERSION=$("$AGG_PATH" --version 2>/dev/null | head -1 || echo agg-tunnel)
    else
        note "agg-tunnel skipped: '$AGG' not on the PATH (cargo install aggligator-util@0.18.12 --locked)"; SKIPPED+=(agg)
        AGG_VERSION="agg-tunnel absent"
    fi
fi
for s in "${SKIPPED[@]}"; do SYSTEMS=$(echo " $SYSTEMS " | sed "s/ $s / /"); done

if [ "${BUILD:-0}" = 1 ] || [ ! -x "$STRIPER_BIN/stripe-client" ] || [ ! -x "$STRIPER_BIN/stripe-server" ]; then
    if [ "$STRIPER_BIN" = "$ROOT/target/release" ] && command -v cargo >/dev/null; then
        log "building striper (cargo build --release)"
        (cd "$ROOT" && cargo build --release --quiet -p striper-client -p striper-server) || die "cargo build failed"
    fi
    [ -x "$STRIPER_BIN/stripe-client" ] && [ -x "$STRIPER_BIN/stripe-server" ] || die "no stripe-client/stripe-server in $STRIPER_BIN"
fi

WORK=$(mktemp -d /tmp/bench-caps.XXXXXX)
RESULTS=$WORK/results.jsonl
# run a private copy of the binaries: a rebuild during the run (cargo build by someone
# else) must not swap versions between measurements, or between client and server
mkdir -p "$WORK/bin"
cp "$STRIPER_BIN/stripe-client" "$STRIPER_BIN/stripe-server" "$WORK/bin/"
STRIPER_GIT="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- . ':!scripts' ':!docs/bench' 2>/dev/null || echo ' (work tree modified)')"
STRIPER_ID="built $(date -r "$STRIPER_BIN/stripe-server" '+%Y-%m-%d %H:%M:%S'), stripe-server sha256 $(sha256sum "$WORK/bin/stripe-server" | cut -c1-12)"
STRIPER_BIN=$WORK/bin
# striper authenticates its stripes with a pre-shared key (when this build has --key-file)
STRIPER_AUTH=()
if "$STRIPER_BIN/stripe-server" --help 2>&1 | grep -q -- '--key-file'; then
    "$STRIPER_BIN/stripe-server" genkey "$WORK/striper.key" >/dev/null 2>&1 || die "stripe-server genkey failed"
    STRIPER_AUTH=(--key-file "$WORK/striper.key")
fi
: >"$RESULTS"
BROKEN=0
PIDS=()
CREATED=()

# ---------------------------------------------------------------- processes
# bg VAR NS TIMEOUT LOG cmd...: start cmd in netns NS under `timeout`, PID -> VAR
bg() {
    local __var=$1 ns=$2 tmo=$3 logf=$4; shift 4
    ip netns exec "$ns" timeout -k 5 "$tmo" "$@" >"$logf" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    printf -v "$__var" %s "$pid"
}
# stop PID [NAME]: TERM it (`timeout` passes it on, and KILLs the command 5 s later if
# it is still there: every process runs under `timeout -k 5`), wait for it, forget it
stop() {
    local pid=$1 name=${2:-} t0=$EPOCHREALTIME
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ -n "$name" ] && python3 -c "import sys; sys.exit(0 if $EPOCHREALTIME - $t0 >= 4.5 else 1)"; then
        note "$name ignored SIGTERM at the end of a run and was killed with SIGKILL after 5 s"
    fi
    forget "$pid"
}
# forget PID: drop an already reaped process from the list (never signal a reaped PID)
forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for p in "${CREATED[@]}"; do ip netns del "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
        echo "bench-caps: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_listen() { # ns port [secs]
    local i
    for ((i = 0; i < ${3:-5} * 20; i++)); do
        ip netns exec "$1" ss -ltnH "sport = :$2" | grep -q . && return 0
        sleep 0.05
    done
    return 1
}
alive() { # pid name logfile
    kill -0 "$1" 2>/dev/null && return 0
    echo "bench-caps: $2 died; its log ($3):" >&2
    tail -20 "$3" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- namespaces + caps
bucket_of() { if [ "$KEY" = low8 ]; then echo $(( ($1 & 0xff) )); else echo $(( ($1 >> 1) & 0xff )); fi; }
case "$KEY" in
    low8) CMASK=0x00ff0000 SMASK=0x000000ff ;;
    bits1_8) CMASK=0x01fe0000 SMASK=0x000001fe ;;
    *) die "KEY must be low8 or bits1_8" ;;
esac
NB=256

# tc batch for one veth end (from netns-caps.sh): $1=dev $2=hashmask $3=rate_mbit
tc_batch() {
    local dev=$1 mask=$2 rate=$3 b cls
    echo "qdisc add dev $dev root handle 1: htb default 2"
    echo "class add dev $dev parent 1: classid 1:1 htb rate ${LINK_MBIT}mbit ceil ${LINK_MBIT}mbit quantum 60000"
    echo "class add dev $dev parent 1:1 classid 1:2 htb rate 10mbit ceil ${LINK_MBIT}mbit quantum 60000"
    for ((b = 0; b < NB; b++)); do
        cls=$(printf %x $((0x100 + b)))
        echo "class add dev $dev parent 1:1 classid 1:$cls htb rate ${rate}mbit ceil ${rate}mbit quantum 60000"
        echo "qdisc add dev $dev parent 1:$cls handle $(printf %x $((0x1000 + b))): pfifo limit $QLEN"
    done
    echo "filter add dev $dev parent 1: prio 10 protocol ip u32"
    echo "filter add dev $dev parent 1: prio 10 handle 2: protocol ip u32 divisor $NB"
    for ((b = 0; b < NB; b++)); do
        echo "filter add dev $dev parent 1: prio 10 protocol ip u32 ht 2:$(printf %x $b): match u32 0 0 flowid 1:$(printf %x $((0x100 + b)))"
    done
    # TCP without IP options -> hash on the client-port bits (sport on stc0, dport on sts0)
    echo "filter add dev $dev parent 1: prio 10 protocol ip u32 ht 800:: match ip protocol 6 0xff match u8 0x05 0x0f at 0 hashkey mask $mask at 20 link 2:"
}

# set_class PORT RATE_MBIT: re-cap the class of the flow whose client port is PORT, both ends
set_class() {
    local cls; cls=$(printf %x $((0x100 + $(bucket_of "$1"))))
    ip netns exec $CNS tc class change dev $CDEV parent 1:1 classid 1:$cls htb rate "${2}mbit" ceil "${2}mbit" quantum 60000
    ip netns exec $SNS tc class change dev $SDEV parent 1:1 classid 1:$cls htb rate "${2}mbit" ceil "${2}mbit" quantum 60000
}
tc_snap() { # file: "c|s classid bytes"
    { ip netns exec $CNS tc -s class show dev $CDEV | awk '/^class htb/ {c=$3} /^ Sent/ {print "c", c, $2}'
      ip netns exec $SNS tc -s class show dev $SDEV | awk '/^class htb/ {c=$3} /^ Sent/ {print "s", c, $2}'; } >"$1"
}

setup_netns() {
    ip netns add $CNS; CREATED+=($CNS)
    ip netns add $SNS; CREATED+=($SNS)
    ip link add $CDEV netns $CNS type veth peer name $SDEV netns $SNS
    ip -n $CNS addr add $CIP/24 dev $CDEV
    ip -n $SNS addr add $SIP/24 dev $SDEV
    local i
    for i in 1 2 3 4 5 6 7; do
        ip -n $CNS addr add 10.77.0.1$i/24 dev $CDEV   # MPTCP subflow endpoints
        ip -n $SNS addr add 10.77.0.2$i/24 dev $SDEV   # agg-tunnel: one server address per link
    done
    for ns in $CNS $SNS; do ip -n $ns link set lo up; done
    ip -n $CNS link set $CDEV up
    ip -n $SNS link set $SDEV up
    local f=$WORK/tc.batch
    tc_batch $CDEV $CMASK "$RATE" >"$f"; ip netns exec $CNS tc -batch "$f"
    tc_batch $SDEV $SMASK "$RATE" >"$f"; ip netns exec $SNS tc -batch "$f"
    # congestion control: the same for every system if it can be the netns default
    CC_OPT=()
    local ok=1
    for ns in $CNS $SNS; do
        ip netns exec $ns sysctl -qw net.ipv4.tcp_congestion_control="$CC" 2>/dev/null || ok=0
    done
    NETNS_CC=$(ip netns exec $CNS sysctl -n net.ipv4.tcp_congestion_control)
    if [ $ok = 1 ]; then
        CC_NOTE="Congestion control: $CC for every system (set as the default of both namespaces; iperf3, MPTCP subflows, agg-tunnel and striper all use it; \`CC seen\` below is read from \`ss -tni\`)."
    else
        CC_OPT=(-C "$CC")
        CC_NOTE="Congestion control: $CC could not be the namespaces' default (net.ipv4.tcp_allowed_congestion_control = '$(sysctl -n net.ipv4.tcp_allowed_congestion_control)'; that list is global, not per namespace, and this script does not change the host's settings), so the iperf3 and MPTCP runs use \`iperf3 -C $CC\` while agg-tunnel and striper use the namespace default $NETNS_CC: NOT a like-for-like comparison. Use CC=bbr or CC=reno for a fair one."
        note "CC=$CC is not allowed as a namespace default; tunnels use $NETNS_CC"
    fi
    if has mptcp; then
        for ns in $CNS $SNS; do ip -n $ns mptcp limits set subflows 8 add_addr_accepted 8; done
    fi
    local ncls; ncls=$(ip netns exec $CNS tc class show dev $CDEV | grep -c '^class htb 1:1[0-9a-f][0-9a-f] ')
    log "namespaces $CNS($CIP) <-> $SNS($SIP): $ncls per-flow HTB classes per side at $RATE Mbit/s (key $KEY, pfifo $QLEN pkts), cc $NETNS_CC"
}

mptcp_endpoints() { # n: n-1 extra client addresses as subflow endpoints
    ip -n $CNS mptcp endpoint flush
    local i
    for ((i = 1; i < $1; i++)); do ip -n $CNS mptcp endpoint add 10.77.0.1$i dev $CDEV subflow; done
}

BUDGET=$(( 7200 ))   # upper bound for every long-lived process
start_servers() {
    bg IPERF_PID $SNS $BUDGET "$WORK/iperf3-s.log" iperf3 -s -p 5201 -i 0.5
    SERVERS=("$IPERF_PID:iperf3 server:$WORK/iperf3-s.log")
    if has mptcp; then
        bg MPIPERF_PID $SNS $BUDGET "$WORK/iperf3-s-mptcp.log" mptcpize run iperf3 -s -p 5202 -i 0.5
        SERVERS+=("$MPIPERF_PID:MPTCP iperf3 server:$WORK/iperf3-s-mptcp.log")
    fi
    bg SSRV_PID $SNS $BUDGET "$WORK/stripe-server.log" "$STRIPER_BIN/stripe-server" --listen $SIP:7900 --target 127.0.0.1:5201 "${STRIPER_AUTH[@]}"
    bg SSRV2_PID $SNS $BUDGET "$WORK/stripe-server-lat.log" "$STRIPER_BIN/stripe-server" --listen $SIP:7910 --target 127.0.0.1:5300 "${STRIPER_AUTH[@]}"
    SERVERS+=("$SSRV_PID:stripe-server:$WORK/stripe-server.log" "$SSRV2_PID:stripe-server (latency):$WORK/stripe-server-lat.log")
    if has agg; then
        bg AGGS_PID $SNS $BUDGET "$WORK/agg-server.log" "$AGG_PATH" server --tcp 5800 -p 5201 -p 5300 -n
        SERVERS+=("$AGGS_PID:agg-tunnel server:$WORK/agg-server.log")
        wait_listen $SNS 5800 || alive "$AGGS_PID" "agg-tunnel server" "$WORK/agg-server.log"
    fi
    wait_listen $SNS 5201 || alive "$IPERF_PID" "iperf3 server" "$WORK/iperf3-s.log"
    if has mptcp; then wait_listen $SNS 5202 || alive "$MPIPERF_PID" "MPTCP iperf3 server" "$WORK/iperf3-s-mptcp.log"; fi
    wait_listen $SNS 7900 || alive "$SSRV_PID" stripe-server "$WORK/stripe-server.log"
    wait_listen $SNS 7910 || alive "$SSRV2_PID" stripe-server "$WORK/stripe-server-lat.log"
}
check_servers() {
    local s
    for s in "${SERVERS[@]}"; do IFS=: read -r pid name logf <<<"$s"; alive "$pid" "$name" "$logf"; done
}

# ---------------------------------------------------------------- per-system plumbing
# sys_up SYS N [lat]: start what SYS needs for N flows; sets CMD (the iperf3 client
# command, or the latency sender's destination) and DPORT (server port of its TCP flows)
CLI_PID=""
sys_up() {
    local sys=$1 n=$2 lat=${3:-} i
    CLI_PID=""
    MPTCP_FLAG=()
    case $sys in
        single|ideal)
            CMD=(iperf3 -c $SIP -p 5201 -P "$n" "${CC_OPT[@]}"); DPORT=5201 DEST=$SIP:5300 ;;
        plain)
            DPORT=5300 DEST=$SIP:5300 LAT_PORTS=0,5300,5300 ;;
        mptcp)
            mptcp_endpoints "$n"
            CMD=(mptcpize run iperf3 -c $SIP -p 5202 "${CC_OPT[@]}"); DPORT=5202 DEST=$SIP:5300 MPTCP_FLAG=(--mptcp)
            LAT_PORTS=0,5300,5300
            if [ -n "$lat" ]; then DPORT=5300; fi ;;
        striper)
            local lp=7901 sp=7900
            if [ -n "$lat" ]; then lp=7911 sp=7910; fi
            CLI_LOG=$WORK/stripe-client-$n-$RANDOM.log
            bg CLI_PID $CNS $BUDGET "$CLI_LOG" "$STRIPER_BIN/stripe-client" --listen 127.0.0.1:$lp --server $SIP:$sp --stripes "$n" "${STRIPER_AUTH[@]}"
            wait_listen $CNS $lp || alive "$CLI_PID" stripe-client "$CLI_LOG"
            CMD=(iperf3 -c 127.0.0.1 -p $lp); DPORT=$sp DEST=127.0.0.1:$lp LAT_PORTS=$lp,$sp,5300 ;;
        agg)
            local tcp=()
            for ((i = 0; i < n; i++)); do
                if ((i == 0)); then tcp+=(--tcp $SIP:5800); else tcp+=(--tcp 10.77.0.2$i:5800); fi
            done
            CLI_LOG=$WORK/agg-client-$n-$RANDOM.log
            bg CLI_PID $CNS $BUDGET "$CLI_LOG" "$AGG_PATH" client "${tcp[@]}" --tcp-link-filter interface-ip -p 5201:7902 -p 5300:7912 -n
            wait_listen $CNS 7902 10 || alive "$CLI_PID" "agg-tunnel client" "$CLI_LOG"
            CMD=(iperf3 -c 127.0.0.1 -p 7902); DPORT=5800 DEST=127.0.0.1:7912 LAT_PORTS=7912,5800,5300 ;;
        *) die "unknown system $sys" ;;
    esac
}
sys_down() {
    if [ -n "$CLI_PID" ]; then
        alive "$CLI_PID" "$1 client" "$CLI_LOG"
        stop "$CLI_PID" "$1 client"; CLI_PID=""
    fi
    if [ "$1" = mptcp ]; then ip -n $CNS mptcp endpoint flush; fi
    check_servers
}
ss_snap() { ip netns exec $CNS ss -tniH state established "( dport = :$1 )" >"$2" 2>&1 || true; }
# ss_pair DPORT PREFIX: two samples 0.5 s apart (PREFIX.a, PREFIX.b): the data-carrying
# flows are those whose bytes_acked grew in between (not idle control or stale connections)
ss_pair() { ss_snap "$1" "$2.a"; sleep 0.5; ss_snap "$1" "$2.b"; }

# slow_one DPORT FILE RATE: pick the data-carrying flow with the lowest client port, re-cap it
slow_one() {
    local dport=$1 f=$2 r=$3 i port=""
    for ((i = 0; i < 5; i++)); do
        ss_pair "$dport" "$f"
        port=$($PY flows --ss "$f.b" --ss-prev "$f.a" --key $KEY --min-bytes 65536 | sort -n | awk 'NR==1 {print $1}')
        [ -n "$port" ] && break
    done
    [ -n "$port" ] || return 1
    set_class "$port" "$r"
    echo "$port"
}

record() { # file rc -> append, judge
    cat "$1" >>"$RESULTS"
    if [ "$2" = 1 ]; then BROKEN=$((BROKEN + 1)); log "BROKEN run: $(cat "$1")"; fi
}

# ---------------------------------------------------------------- measurements
# measure KIND SYS N REP  (KIND tput|het)
measure() {
    local kind=$1 sys=$2 n=$3 rep=$4 attempt=0 omit=$OMIT dur=$DURATION rc prc slowp=""
    if [ "$kind" = het ]; then omit=$HET_OMIT dur=$HET_SECS; fi
    while :; do
        local f=$WORK/$kind-$sys-$n-$rep-$attempt
        sys_up "$sys" "$n"
        tc_snap "$f.tc0"
        local t0=$EPOCHREALTIME
        ip netns exec $CNS timeout -k 5 $((dur + omit + 40)) "${CMD[@]}" -t "$dur" -O "$omit" -J >"$f.json" 2>"$f.err" &
        local ipid=$!
        PIDS+=("$ipid")
        if [ "$kind" = het ]; then
            sleep 1
            slowp=$(slow_one $DPORT "$f.ss0" "$SLOW") || { log "het $sys: no data flow found to slow"; slowp=""; }
        fi
        local mid; mid=$(python3 -c "print(max(0.1, $omit + $dur / 2 - 0.25 - ($EPOCHREALTIME - $t0)))")
        sleep "$mid"
        ss_pair $DPORT "$f.ss"
        rc=0; wait "$ipid" || rc=$?
        forget "$ipid"
        tc_snap "$f.tc1"
        if [ -n "$slowp" ]; then set_class "$slowp" "$RATE"; fi
        sys_down "$sys"
        prc=0
        $PY tput --kind "$kind" --iperf "$f.json" --ss "$f.ss.b" --ss-prev "$f.ss.a" --sys "$sys" --n "$n" --rep "$rep" --attempt $attempt \
            --rate "$RATE" --key $KEY --tc-before "$f.tc0" --tc-after "$f.tc1" --secs $((dur + omit)) \
            ${slowp:+--slow-rate "$SLOW" --slow-port "$slowp"} >"$f.rec" || prc=$?
        if [ "$kind" = het ] && [ -z "$slowp" ] && [ $prc = 0 ]; then prc=1; fi
        if [ $prc = 3 ] && [ $attempt -lt "$COLL_RETRIES" ]; then
            attempt=$((attempt + 1))
            log "  bucket collision among $sys's flows; re-running (attempt $attempt)"
            # keep the collided run's line for the record (it is flagged, and ignored by the medians)
            sed 's/"kind": "\(tput\|het\)"/"kind": "\1-collided"/' "$f.rec" >>"$RESULTS"
            sleep 0.5
            continue
        fi
        # a collision that outlived the re-runs is kept (flagged) like in measure_drop; iperf3 must still have succeeded
        [ $prc = 3 ] && prc=0
        [ $rc != 0 ] && [ $prc = 0 ] && { log "iperf3 exited $rc: $(tail -3 "$f.err")"; prc=1; }
        record "$f.rec" "$prc"
        sleep 0.3
        return 0
    done
}

# measure_drop SYS N REP
measure_drop() {
    local sys=$1 n=$2 rep=$3 attempt=0 rc prc slowp
    while :; do
        local f=$WORK/drop-$sys-$n-$rep-$attempt
        sys_up "$sys" "$n"
        local t0=$EPOCHREALTIME
        ip netns exec $CNS timeout -k 5 $((DROP_SECS + 40)) "${CMD[@]}" -t "$DROP_SECS" -i 0.5 --get-server-output -J >"$f.json" 2>"$f.err" &
        local ipid=$!
        PIDS+=("$ipid")
        # slow_one samples ss for 0.5 s (and starts a few processes) before it re-caps: start early
        sleep "$(python3 -c "print(max(0.0, $DROP_AT - 0.9 - ($EPOCHREALTIME - $t0)))")"
        slowp=$(slow_one $DPORT "$f.ss" "$DROP_TO") || slowp=""
        local at; at=$(python3 -c "print(round($EPOCHREALTIME - $t0, 2))")
        rc=0; wait "$ipid" || rc=$?
        forget "$ipid"
        if [ -n "$slowp" ]; then set_class "$slowp" "$RATE"; fi
        sys_down "$sys"
        prc=0
        $PY drop --iperf "$f.json" --ss "$f.ss.b" --ss-prev "$f.ss.a" --sys "$sys" --n "$n" --rep "$rep" --attempt $attempt --rate "$RATE" \
            --key $KEY --slow-rate "$DROP_TO" --drop-at "$at" ${slowp:+--slow-port "$slowp"} >"$f.rec" || prc=$?
        [ -z "$slowp" ] && [ $prc = 0 ] && { log "drop $sys: no data flow found to slow"; prc=1; }
        if [ $prc = 3 ] && [ $attempt -lt "$COLL_RETRIES" ]; then
            attempt=$((attempt + 1))
            log "  bucket collision among $sys's flows; re-running (attempt $attempt)"
            sed 's/"kind": "drop"/"kind": "drop-collided"/' "$f.rec" >>"$RESULTS"
            continue
        fi
        [ $prc = 3 ] && prc=0
        [ $rc != 0 ] && [ $prc = 0 ] && { log "iperf3 exited $rc: $(tail -3 "$f.err")"; prc=1; }
        record "$f.rec" "$prc"
        sleep 0.3
        return 0
    done
}

# measure_lat KIND SYS N REP SECS  (KIND lat|integrity)
measure_lat() {
    local kind=$1 sys=$2 n=$3 rep=$4 secs=$5 rc=0 rpid
    local f=$WORK/$kind-$sys-$n-$rep
    sys_up "$sys" "$n" lat
    local rcvbuf=$LAT_RCVBUF
    # MPTCP reassembles in the receiving app's own socket: a small SO_RCVBUF there is a small
    # window shared by all subflows and caps it near one subflow's rate, so MPTCP's receiver
    # keeps the kernel's autotuning (LAT_MPTCP_RCVBUF=0). The tunnels' receivers sit behind
    # their exit, on loopback, where the small buffer costs nothing.
    if [ "$sys" = mptcp ]; then rcvbuf=$LAT_MPTCP_RCVBUF; fi
    bg rpid $SNS $((secs + 120)) "$f.recv.log" $PY lat-recv --listen 0.0.0.0:5300 --out "$f.recv.json" \
        --record "$LAT_RECORD" --rcvbuf "$rcvbuf" --timeout $((secs + 100)) "${MPTCP_FLAG[@]}"
    wait_listen $SNS 5300 || alive "$rpid" "latency receiver" "$f.recv.log"
    local t0=$EPOCHREALTIME spid
    ip netns exec $CNS timeout -k 5 $((secs + 90)) $PY lat-send --connect "$DEST" --out "$f.send.json" --duration "$secs" \
        --record "$LAT_RECORD" --sndbuf "$LAT_SNDBUF" --drain 60 "${MPTCP_FLAG[@]}" >"$f.send.log" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    # where the bytes sit: 1 s samples of every socket queue on both sides + the HTB backlog
    local k=0 ts
    if [ "$kind" = lat ]; then
        for ts in $(python3 -c "import math; print(*[$LAT_SKIP + 0.5 + i for i in range(max(1, math.floor($secs - $LAT_SKIP - 0.5)))])"); do
            sleep "$(python3 -c "print(max(0.0, $ts - ($EPOCHREALTIME - $t0)))")"
            ip netns exec $CNS ss -tnH state established >"$f.where.$k.c" 2>/dev/null || true
            ip netns exec $SNS ss -tnH state established >"$f.where.$k.s" 2>/dev/null || true
            ip netns exec $CNS tc -s qdisc show dev $CDEV >"$f.where.$k.q" 2>/dev/null || true
            k=$((k + 1))
        done
    fi
    wait "$spid" || rc=$?
    forget "$spid"
    local rrc=0
    wait "$rpid" || rrc=$?
    forget "$rpid"
    sys_down "$sys"
    if [ ! -s "$f.send.json" ] || [ ! -s "$f.recv.json" ]; then
        printf '{"kind": "%s", "sys": "%s", "n": %s, "rep": %s, "broken": "sender exit %s, receiver exit %s: %s"}\n' \
            "$kind" "$sys" "$n" "$rep" $rc $rrc "$(tail -1 "$f.send.log" "$f.recv.log" | tr -d '"\\\n' | cut -c1-200)" >"$f.rec"
        record "$f.rec" 1
        return 0
    fi
    local prc=0
    $PY lat-analyze --kind "$kind" --send "$f.send.json" --recv "$f.recv.json" --sys "$sys" --n "$n" --rep "$rep" \
        --skip "$LAT_SKIP" --where "$f.where" --where-count $k --ports "$LAT_PORTS" >"$f.rec" || prc=$?
    record "$f.rec" "$prc"
    sleep 0.3
}

# ---------------------------------------------------------------- run
START=$SECONDS
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
log "bench-caps: RATE=$RATE Mbit/s NS='$NS' REPS=$REPS DURATION=$DURATION s (+$OMIT s warm-up) PHASES='$PHASES' SYSTEMS='$SYSTEMS' load $LOAD"
setup_netns
start_servers

if phase integ && has striper; then
    log "== integrity: every byte through striper, N = $NS"
    for n in $NS; do measure_lat integrity striper "$n" 1 "$INTEG_SECS"; done
fi

if phase tput; then
    log "== throughput: N = $NS, $REPS reps"
    for ((rep = 1; rep <= REPS; rep++)); do
        if has single; then measure tput single 1 $rep; fi
        for n in $NS; do
            for sys in ideal mptcp agg striper; do
                has $sys || continue
                [ $sys = ideal ] && [ "$n" = 1 ] && continue   # = the single stream
                measure tput $sys "$n" $rep
            done
        done
    done
fi

if phase het; then
    log "== heterogeneous caps: $HET_N flows, one at $SLOW Mbit/s"
    for ((rep = 1; rep <= REPS; rep++)); do
        for sys in ideal mptcp agg striper; do has $sys && measure het $sys "$HET_N" $rep; done
    done
fi

if phase drop; then
    log "== cap drop: $DROP_N flows, one drops to $DROP_TO Mbit/s at t=$DROP_AT s of $DROP_SECS s"
    for ((rep = 1; rep <= REPS; rep++)); do
        for sys in ideal mptcp agg striper; do has $sys && measure_drop $sys "$DROP_N" $rep; done
    done
fi

if phase lat; then
    log "== latency under load: $LAT_N flows, $LAT_SECS s"
    for ((rep = 1; rep <= REPS; rep++)); do
        measure_lat lat plain 1 $rep "$LAT_SECS"
        for sys in mptcp agg striper; do has $sys && measure_lat lat $sys "$LAT_N" $rep "$LAT_SECS"; done
    done
fi

# ---------------------------------------------------------------- report
ELAPSED=$((SECONDS - START))
mkdir -p "$OUT"
export B_RATE=$RATE B_REPS=$REPS B_DUR=$DURATION B_OMIT=$OMIT B_CMD="$CMDLINE" B_LOAD="$LOAD" B_CCNOTE="$CC_NOTE" \
    B_AGG="${AGG_VERSION:-agg-tunnel not used}" B_ELAPSED="$((ELAPSED / 60)) min $((ELAPSED % 60)) s" \
    B_REV="$STRIPER_GIT at the start, binary $STRIPER_ID" \
    B_IPERF="$(iperf3 --version | head -1 | cut -d' ' -f1-2)" B_HETSECS=$HET_SECS B_HETOMIT=$HET_OMIT B_SNDBUF=$LAT_SNDBUF B_MPRCVBUF=$LAT_MPTCP_RCVBUF B_RCVBUF=$LAT_RCVBUF B_SKIP=$LAT_SKIP \
    B_INTEG=$INTEG_SECS B_SKIPPED="${SKIPPED[*]}" B_NOTES="$(printf '%s\n' "${NOTES[@]}")"
python3 - "$WORK/meta.json" <<'PY'
import json, os, sys, time, platform
e = os.environ
json.dump({"rate": float(e["B_RATE"]), "reps": e["B_REPS"], "duration": e["B_DUR"], "omit": e["B_OMIT"],
           "command": e["B_CMD"], "load": e["B_LOAD"], "cc_note": e["B_CCNOTE"], "agg_version": e["B_AGG"],
           "elapsed": e["B_ELAPSED"], "striper_rev": e["B_REV"], "iperf_version": e["B_IPERF"],
           "het_secs": e["B_HETSECS"], "het_omit": e["B_HETOMIT"], "lat_sndbuf": e["B_SNDBUF"], "lat_mptcp_rcvbuf": e["B_MPRCVBUF"], "lat_rcvbuf": e["B_RCVBUF"], "lat_skip": e["B_SKIP"],
           "integ_secs": e["B_INTEG"], "skipped": e["B_SKIPPED"].split(),
           "notes": [n for n in e["B_NOTES"].splitlines() if n.strip()],
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "kernel": platform.release(), "nproc": os.cpu_count()},
          open(sys.argv[1], "w"))
PY
cp "$RESULTS" "$OUT/caps-raw.jsonl"
echo
$PY report --results "$RESULTS" --meta "$WORK/meta.json" --md "$OUT/caps-results.md" --plots "$OUT"
echo
log "wrote $OUT/caps-results.md and $OUT/caps-raw.jsonl ($((ELAPSED / 60)) min $((ELAPSED % 60)) s)"
if [ $BROKEN != 0 ]; then
    echo "bench-caps: $BROKEN broken run(s); see above" >&2
    exit 1
fi
