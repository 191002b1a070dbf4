#!/usr/bin/env bash
# Vendored from shared/bench/wan.sh (the reference WAN emulator) for scripts/bench-wan.sh; unmodified below this line.
# wan.sh — a WAN path between two network namespaces, through a router namespace
# that adds propagation delay, a per-flow policer and a shared link.
#
#   wan.sh up               create wc/wr/ws, start the delay line (env below)
#   wan.sh down             stop the delay line (PID from the state file), delete the namespaces
#   wan.sh set-rate MBIT [BURST_KB]   change the per-flow policer rate live
#   wan.sh stats            delay-line counters, per-flow policer counters, queue/qdisc stats
#   wan.sh status           print the state file (exit 1 if the WAN is not up)
#   wan.sh verify           up + measurements + PASS/FAIL lines + down (~2.5 min)
#
# Topology (all IPv4):
#   netns wc: wc0 10.88.1.1/24 ==veth== wr0 10.88.1.2/24 [netns wr] wr1 10.88.2.2/24 ==veth== ws0 10.88.2.1/24 :netns ws
#   wc: default via 10.88.1.2; ws: default via 10.88.2.2; wr: ip_forward=1.
#
# In wr, every forwarded packet, both directions:
#   1. mangle/FORWARD -j NFQUEUE --queue-num 0 (no --queue-bypass: no reader => drop)
#      -> delayq (delayq.c, user space): policer first (POLICER=delayq), then held
#         DELAY_MS and released with batch verdicts in arrival order (FIFO, so no
#         reordering). RTT = 2 x DELAY_MS.
#   2. filter/FORWARD: only for POLICER=hashlimit|hashlimit-pkt (kernel policer, see below)
#   3. egress wr0/wr1: HTB root, one class LINK_MBIT (rate = ceil), pfifo LINK_QLEN packets
#      (the shared bottleneck; LINK_MBIT=0 leaves the default qdisc).
#
# Policer (POLICER):
#   delayq (default)  per directional 5-tuple (TCP; UDP too with POLICE_UDP=1) token bucket
#                     in delayq: rate RATE_MBIT of IP bytes, depth BURST_KB (1 KB = 1000 B);
#                     a packet that does not fit is dropped. All TCP packets count (ACKs too,
#                     in the reverse 5-tuple's own bucket).
#   hashlimit         iptables hashlimit, byte mode, srcip,srcport,dstip,dstport, --hashlimit-above
#                     RATE bytes/s -j DROP. CAVEAT: in byte mode the kernel bucket is always one
#                     second of traffic (RATE_MBIT/8 MB); iptables refuses a smaller burst
#                     ("burst cannot be smaller than 2500048b" at 20 Mbit/s). BURST_KB is ignored.
#   hashlimit-pkt     hashlimit, packet mode: RATE_MBIT / (1500 B x 8) packets/s, burst
#                     BURST_KB / 1.5 packets. Exact for 1500-byte packets, blind to size.
#   none              no policer.
#
# Env (up): DELAY_MS (20, one way, may be fractional)  RATE_MBIT (20)  BURST_KB (64)
#           LINK_MBIT (1000; 0 = no HTB)  LINK_QLEN (1000 packets)  POLICER (delayq)
#           POLICE_UDP (0)  QMAXLEN (8192, NFQUEUE maxlen)  GRAN_US (50, delay-line timer slack:
#           holds are DELAY..DELAY+GRAN)  DELAYQ_RTPRIO (10, SCHED_FIFO priority of delayq; 0 = off)
#           WAN_TTL (14400 s: delayq exits by itself after this long; the path then drops all)
#           DELAYQ_CPU (last CPU; "none" = no pinning/RPS): delayq is pinned there and RPS on
#           wc0/ws0/wr0/wr1 moves all receive softirq work to the other CPUs (see do_up)
#           WAN_STATE_DIR (/tmp/stbench-wan: state file, delayq binary, logs)
# Env (verify): VERIFY_DELAYS ("10 25 50": extra delays for the ping and single-flow checks)
#           VERIFY_TCP (1; 0 = ping only at the extra delays)  SECS (10)  CCS ("bbr cubic")
# Needs root. Touches only the namespaces wc/wr/ws, 10.88.0.0/16 and WAN_STATE_DIR.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

CNS=wc RNS=wr SNS=ws
CIP=10.88.1.1 RIP1=10.88.1.2 RIP2=10.88.2.2 SIP=10.88.2.1
STATE_DIR=${WAN_STATE_DIR:-/tmp/stbench-wan}
STATE=$STATE_DIR/state
DELAY_MS=${DELAY_MS:-20} RATE_MBIT=${RATE_MBIT:-20} BURST_KB=${BURST_KB:-64}
LINK_MBIT=${LINK_MBIT:-1000} LINK_QLEN=${LINK_QLEN:-1000} POLICER=${POLICER:-delayq}
POLICE_UDP=${POLICE_UDP:-0} QMAXLEN=${QMAXLEN:-8192} GRAN_US=${GRAN_US:-50}
DELAYQ_RTPRIO=${DELAYQ_RTPRIO:-10} WAN_TTL=${WAN_TTL:-14400}
NCPU=$(nproc)
DQCPU=${DELAYQ_CPU:-$(( NCPU > 1 ? NCPU - 1 : -1 ))}
[ "$DQCPU" = -1 ] && DQCPU=none
[ "$DQCPU" = none ] || (( DQCPU >= 0 && DQCPU < NCPU )) || { echo "wan: DELAYQ_CPU must be 0..$((NCPU - 1)) or none" >&2; exit 1; }

die() { echo "wan: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (ip netns, iptables, tc)"
if command -v iptables-legacy >/dev/null; then IPT=iptables-legacy; else IPT=iptables; fi
for t in ip tc gcc $IPT timeout python3; do command -v $t >/dev/null || die "missing $t (apt-get install iproute2 iptables gcc libnetfilter-queue-dev)"; done

case "$POLICER" in delayq|hashlimit|hashlimit-pkt|none) ;; *) die "POLICER must be delayq, hashlimit, hashlimit-pkt or none" ;; esac

ctr() { # ns name... -> "name=value ..." absolute SNMP counters of that namespace (nstat naming:
       # TcpRetransSegs, TcpExtTCPSACKReorder, UdpInDatagrams, ...). Not nstat itself: its
       # history file is per user, not per namespace.
  local ns=$1; shift
  ip netns exec "$ns" cat /proc/net/snmp /proc/net/netstat | awk -v want="$*" '
    BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) { need[w[i]] = 1; val[w[i]] = 0 } }
    { p = substr($1, 1, length($1) - 1)
      if (!(p in hdr)) { hdr[p] = $0; next }
      split(hdr[p], h); for (i = 2; i <= NF; i++) if ((p h[i]) in need) val[p h[i]] = $i
      delete hdr[p] }
    END { for (i = 1; i <= n; i++) printf "%s=%s ", w[i], val[w[i]]; print "" }'
}

backlog_drops() { # packets dropped at the per-CPU input backlogs (netdev_max_backlog), all CPUs
  local s=0 a b rest
  while read -r a b rest; do s=$((s + 0x$b)); done </proc/net/softnet_stat
  echo $s
}

state_get() { # key -> value from the state file ('' if absent)
  [ -f "$STATE" ] && sed -n "s/^$1=//p" "$STATE" | tail -1 || true
}

proc_start() { # pid -> starttime (field 22 of /proc/PID/stat), '' if gone
  [ -r "/proc/$1/stat" ] && awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null || true
}

dq_pid() { # the running delayq's PID, verified against the recorded start time; '' if none
  local pid st
  pid=$(state_get DQ_PID); st=$(state_get DQ_START)
  [ -n "$pid" ] && [ -n "$st" ] && [ "$(proc_start "$pid")" = "$st" ] && echo "$pid" || true
}

build_delayq() {
  mkdir -p "$STATE_DIR"
  local bin=$STATE_DIR/delayq
  if [ ! -x "$bin" ] || [ "$HERE/delayq.c" -nt "$bin" ]; then
    [ -r /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || die "missing libnetfilter_queue headers (apt-get install libnetfilter-queue-dev)"
    gcc -O2 -Wall -o "$bin.tmp" "$HERE/delayq.c" -lnetfilter_queue -lnfnetlink -lm || die "cannot build delayq.c"
    mv "$bin.tmp" "$bin"
  fi
}

hashlimit_rule() { # name rate_mbit burst_kb -> iptables match+target args (for POLICER=hashlimit*)
  local name=$1 rate=$2 burst=$3
  if [ "$POLICER" = hashlimit ]; then
    # byte mode: amount in bytes/s; the kernel bucket is 1 s of traffic, no smaller burst possible
    echo "-p tcp -m hashlimit --hashlimit-name $name --hashlimit-mode srcip,srcport,dstip,dstport" \
         "--hashlimit-above $(python3 -c "print(round($rate * 1e6 / 8))")b/s --hashlimit-htable-expire 10000 -j DROP"
  else
    echo "-p tcp -m hashlimit --hashlimit-name $name --hashlimit-mode srcip,srcport,dstip,dstport" \
         "--hashlimit-above $(python3 -c "print(max(1, round($rate * 1e6 / 8 / 1500)))")/sec" \
         "--hashlimit-burst $(python3 -c "print(max(1, round($burst * 1000 / 1500)))") --hashlimit-htable-expire 10000 -j DROP"
  fi
}

do_down() {
  local pid
  pid=$(dq_pid)
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do [ -d "/proc/$pid" ] || break; sleep 0.05; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  fi
  for ns in $CNS $RNS $SNS; do ip netns del $ns 2>/dev/null || true; done
  rm -f "$STATE"
}

do_up() {
  do_down
  build_delayq
  mkdir -p "$STATE_DIR"
  local ns
  for ns in $CNS $RNS $SNS; do
    ip netns add $ns
    ip -n $ns link set lo up
    ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  ip -n $CNS link add wc0 type veth peer name wr0 netns $RNS
  ip -n $RNS link add wr1 type veth peer name ws0 netns $SNS
  ip -n $CNS addr add $CIP/24 dev wc0
  ip -n $RNS addr add $RIP1/24 dev wr0
  ip -n $RNS addr add $RIP2/24 dev wr1
  ip -n $SNS addr add $SIP/24 dev ws0
  ip -n $CNS link set wc0 up; ip -n $RNS link set wr0 up; ip -n $RNS link set wr1 up; ip -n $SNS link set ws0 up
  ip -n $CNS route add default via $RIP1
  ip -n $SNS route add default via $RIP2
  ip netns exec $RNS sysctl -qw net.ipv4.ip_forward=1
  for ns in $CNS $SNS; do
    # no cached ssthresh/RTT from the previous test's connection to the same host
    ip netns exec $ns sysctl -qw net.ipv4.tcp_no_metrics_save=1
  done

  # CPU placement: delayq pinned to its own CPU; the receive softirq of all four veth ends
  # (wc0, ws0, wr0, wr1) steered by RPS to the other CPUs. Without this, each batch verdict
  # runs the whole downstream path (forwarding, the receiver's TCP, the sender's ACK
  # processing and its next transmissions) inside delayq's syscall: single verdicts took up
  # to 25 ms and releases were up to 25 ms late at 160 Mbit/s (this kernel runs
  # preempt=none, with softirq budgets of up to 8 ms).
  if [ "$DQCPU" != none ]; then
    local mask; mask=$(printf %x $(( ((1 << NCPU) - 1) & ~(1 << DQCPU) )))
    ip netns exec $CNS sh -c "echo $mask >/sys/class/net/wc0/queues/rx-0/rps_cpus"
    ip netns exec $SNS sh -c "echo $mask >/sys/class/net/ws0/queues/rx-0/rps_cpus"
    ip netns exec $RNS sh -c "echo $mask >/sys/class/net/wr0/queues/rx-0/rps_cpus; echo $mask >/sys/class/net/wr1/queues/rx-0/rps_cpus"
  fi

  # shared link: HTB on both egress interfaces of the router
  if [ "$LINK_MBIT" != 0 ]; then
    for dev in wr0 wr1; do
      tc -n $RNS qdisc add dev $dev root handle 1: htb default 1
      tc -n $RNS class add dev $dev parent 1: classid 1:1 htb rate ${LINK_MBIT}mbit ceil ${LINK_MBIT}mbit quantum 60000
      tc -n $RNS qdisc add dev $dev parent 1:1 handle 10: pfifo limit "$LINK_QLEN"
    done
  fi

  # delay line (and policer) in user space, via NFQUEUE
  local dqargs=(-q 0 -d "$DELAY_MS" -m "$QMAXLEN" -g "$GRAN_US" -S "$STATE_DIR/delayq.stats"
                -C "$STATE_DIR/policer" -p "$DELAYQ_RTPRIO" -t "$WAN_TTL")
  if [ "$POLICER" = delayq ]; then
    echo "$RATE_MBIT $BURST_KB" >"$STATE_DIR/policer"
    dqargs+=(-r "$RATE_MBIT" -b "$BURST_KB")
    [ "$POLICE_UDP" = 1 ] && dqargs+=(-U)
  else
    echo "0 $BURST_KB" >"$STATE_DIR/policer"
  fi
  $IPT -V >/dev/null
  ip netns exec $RNS $IPT -t mangle -A FORWARD -j NFQUEUE --queue-num 0
  if [ "$POLICER" = hashlimit ] || [ "$POLICER" = hashlimit-pkt ]; then
    # shellcheck disable=SC2046
    ip netns exec $RNS $IPT -t filter -A FORWARD $(hashlimit_rule wan1 "$RATE_MBIT" "$BURST_KB")
  fi
  : >"$STATE_DIR/delayq.log"
  # `ip netns exec` execs the program, so $! is delayq's own PID. Its lifetime is bounded by -t.
  local pin=()
  [ "$DQCPU" != none ] && pin=(taskset -c "$DQCPU")
  ip netns exec $RNS "${pin[@]}" "$STATE_DIR/delayq" "${dqargs[@]}" >>"$STATE_DIR/delayq.log" 2>&1 </dev/null &
  local pid=$!
  disown "$pid" 2>/dev/null || true
  for _ in $(seq 100); do grep -q 'delayq: ready' "$STATE_DIR/delayq.log" && break; [ -d /proc/$pid ] || break; sleep 0.05; done
  grep -q 'delayq: ready' "$STATE_DIR/delayq.log" || { cat "$STATE_DIR/delayq.log" >&2; do_down; die "delayq did not start"; }
  cat >"$STATE" <<EOF
DELAY_MS=$DELAY_MS
RATE_MBIT=$RATE_MBIT
BURST_KB=$BURST_KB
LINK_MBIT=$LINK_MBIT
LINK_QLEN=$LINK_QLEN
POLICER=$POLICER
POLICE_UDP=$POLICE_UDP
QMAXLEN=$QMAXLEN
GRAN_US=$GRAN_US
DELAYQ_CPU=$DQCPU
HL_SEQ=1
DQ_PID=$pid
DQ_START=$(proc_start $pid)
UP_AT=$(date +%s)
EOF
  ip netns exec $CNS ping -c 1 -W 3 -q $SIP >/dev/null 2>&1 || { do_down; die "wc cannot reach ws through wr"; }
  echo "RESULT wan up: wc $CIP <-> wr <-> ws $SIP, delay ${DELAY_MS} ms one way (RTT $(python3 -c "print(2*$DELAY_MS)") ms)," \
       "policer $POLICER ${RATE_MBIT} Mbit/s burst ${BURST_KB} KB per 5-tuple, link ${LINK_MBIT} Mbit/s, delayq pid $pid"
}

do_set_rate() {
  local rate=$1 burst=${2:-$(state_get BURST_KB)} pol pid seq
  [ -f "$STATE" ] || die "the WAN is not up"
  pol=$(state_get POLICER)
  python3 -c "import sys; r = float(sys.argv[1]); sys.exit(0 if r > 0 else 1)" "$rate" || die "rate must be > 0"
  case "$pol" in
    delayq)
      pid=$(dq_pid); [ -n "$pid" ] || die "delayq is not running"
      echo "$rate $burst" >"$STATE_DIR/policer.tmp"; mv "$STATE_DIR/policer.tmp" "$STATE_DIR/policer"
      kill -HUP "$pid" ;;
    hashlimit|hashlimit-pkt)
      # a new table name: xt_hashlimit reuses an existing table (and its old rate) by name
      seq=$(( $(state_get HL_SEQ) + 1 ))
      # shellcheck disable=SC2046
      POLICER=$pol ip netns exec $RNS $IPT -t filter -R FORWARD 1 $(POLICER=$pol hashlimit_rule wan$seq "$rate" "$burst")
      echo "HL_SEQ=$seq" >>"$STATE" ;;
    none) die "POLICER=none: nothing to change" ;;
  esac
  { echo "RATE_MBIT=$rate"; echo "BURST_KB=$burst"; } >>"$STATE"
  echo "wan: policer ($pol) now $rate Mbit/s, burst $burst KB per 5-tuple"
}

do_stats() {
  local pid
  [ -f "$STATE" ] || die "the WAN is not up"
  pid=$(dq_pid)
  if [ -n "$pid" ]; then
    kill -USR1 "$pid"; sleep 0.2
    cat "$STATE_DIR/delayq.stats"
    awk '{ print "delayq cpu_ticks utime=" $14 " stime=" $15 }' "/proc/$pid/stat"
  else
    echo "delayq: NOT RUNNING"
  fi
  echo "# /proc/net/netfilter/nfnetlink_queue (wr): queue portid waiting copy_mode copy_range queue_dropped user_dropped id_seq 1"
  ip netns exec $RNS cat /proc/net/netfilter/nfnetlink_queue
  ip netns exec $RNS $IPT -t mangle -nvxL FORWARD
  ip netns exec $RNS $IPT -t filter -nvxL FORWARD
  tc -n $RNS -s qdisc show
}

# ---------------------------------------------------------------- verify
VPIDS=() VW=
verify_cleanup() {
  local p
  for p in "${VPIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  do_down
  [ -n "$VW" ] && rm -rf "$VW"
}

do_verify() {
  command -v iperf3 >/dev/null || die "missing iperf3"
  local W secs=${SECS:-10} ccs=${CCS:-"bbr cubic"} vdel=${VERIFY_DELAYS-"10 25 50"} fails=0 d
  W=$(mktemp -d /tmp/stbench-wanv.XXXXXX)
  VW=$W; VPIDS=()
  trap verify_cleanup EXIT
  trap 'exit 130' INT TERM

  local pid="" rate ceil
  cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
  tcpctr() { # ns -> reorder-related counters (absolute)
    ctr "$1" TcpExtTCPSACKReorder TcpExtTCPTSReorder TcpExtTCPRenoReorder TcpExtTCPDSACKRecv TcpRetransSegs
  }
  local srv=""
  start_srv() {
    ip netns exec $SNS timeout 300 iperf3 -s -B $SIP -p 5201 >>"$W/srv.log" 2>&1 & srv=$!; VPIDS+=($srv)
    for _ in $(seq 50); do ip netns exec $SNS ss -ltnH "sport = :5201" | grep -q . && break; sleep 0.1; done
  }
  stop_srv() { [ -n "$srv" ] && { kill "$srv" 2>/dev/null || true; wait "$srv" 2>/dev/null || true; }; srv=""; }
  # client: tag, extra iperf3 args... -> JSON in $W/tag.json; prints "Mbit/s retrans cpu%"
  run_iperf() {
    local tag=$1; shift
    local c0 c1 t0 t1
    c0=$(cpu_ticks); t0=$(date +%s.%N)
    ip netns exec $CNS timeout $((secs + 30)) iperf3 -c $SIP -p 5201 -t "$secs" "$@" -J >"$W/$tag.json" 2>"$W/$tag.err" || true
    c1=$(cpu_ticks); t1=$(date +%s.%N)
    python3 - "$W/$tag.json" "$c0" "$c1" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1])); e = j['end']
    if 'sum_received' in e:
        r = e['sum_received']['bits_per_second'] / 1e6; rt = e['sum_sent'].get('retransmits', 0)
    else:
        r = e['sum']['bits_per_second'] / 1e6; rt = 0
except Exception as ex:
    r, rt = float('nan'), -1
c0, c1, t0, t1, hz = map(float, sys.argv[2:])
print(f"{r:.2f} {rt} {100 * (c1 - c0) / hz / (t1 - t0):.1f}")
PY
  }
  # one flow per congestion control at the current delay
  single_flows() { # delay_ms
    local d=$1 cc r rt cpu c0tcp c1tcp
    for cc in $ccs; do
      c0tcp=$(tcpctr $CNS)
      read -r r rt cpu < <(run_iperf single-$d-$cc -C "$cc")
      c1tcp=$(tcpctr $CNS)
      kill -USR1 "$pid"; sleep 0.2
      python3 - "$r" "$rt" "$cpu" "$rate" "$ceil" "$cc" "$c0tcp" "$c1tcp" "$W/single-$d-$cc.json" "$STATE_DIR/delayq.stats" "$secs" "$d" <<'PY'
import sys, json, re
r, rt, cpu, rate, ceil = map(float, sys.argv[1:6]); cc = sys.argv[6]; secs = float(sys.argv[11]); dl = sys.argv[12]
pol = ''
try:   # the data flow's IP bytes as counted by the delayq policer
    port = json.load(open(sys.argv[9]))['start']['connected'][0]['local_port']
    for l in open(sys.argv[10]):
        m = re.match(rf'flow proto=6 src=10\.88\.1\.1:{port} dst=10\.88\.2\.1:5201 pkts=(\d+) pass_bytes=(\d+) drops=(\d+)', l)
        if m:
            pk, pb, dr = map(int, m.groups())
            pol = (f"; policer passed {pb * 8 / secs / 1e6:.2f} Mbit/s of IP bytes over {secs:g} s "
                   f"({pb - rate * 1e6 / 8 * secs:+.0f} B vs rate x time), dropped {dr}/{pk} packets ({100 * dr / pk:.1f}%)")
except Exception:
    pass
c0 = dict(kv.split('=') for kv in sys.argv[7].split()); c1 = dict(kv.split('=') for kv in sys.argv[8].split())
d = {k: int(c1[k] or 0) - int(c0[k] or 0) for k in c0}
lo = 0.80 if cc == 'bbr' else 0.50
ok = r <= ceil * 1.01 and r >= lo * ceil
print(f"{'PASS' if ok else 'FAIL'} single flow {cc} DELAY_MS={dl}: {r:.2f} Mbit/s goodput, {int(rt)} retransmits, delayq cpu {cpu:.1f}% "
      f"(cap {rate:g} Mbit/s IP = {ceil:.2f} Mbit/s payload; want {lo:.2f}x..1.01x of that); "
      f"sender reorder counters SACKReorder={d['TcpExtTCPSACKReorder']} TSReorder={d['TcpExtTCPTSReorder']} "
      f"RenoReorder={d['TcpExtTCPRenoReorder']} DSACKRecv={d['TcpExtTCPDSACKRecv']} RetransSegs={d['TcpRetransSegs']}{pol}")
PY
    done
  }

  # 1. RTT at several delays (ping, 30 probes 50 ms apart); at the extra delays also one TCP
  #    flow per congestion control (VERIFY_TCP=1). The configured DELAY_MS comes last and
  #    everything after the loop runs on it.
  for d in $vdel $DELAY_MS; do
    DELAY_MS=$d do_up >/dev/null
    pid=$(dq_pid)
    rate=$(state_get RATE_MBIT)
    ceil=$(python3 -c "print($rate * 1448 / 1500)")   # payload share of a 1500-byte IP packet
    ip netns exec $CNS ping -c 3 -i 0.2 -q $SIP >/dev/null 2>&1 || true
    ip netns exec $CNS timeout 20 ping -c 30 -i 0.05 -q $SIP >"$W/ping-$d.txt" 2>&1 || true
    python3 - "$W/ping-$d.txt" "$d" >"$W/ping-$d.res" <<'PY'
import re, sys
txt = open(sys.argv[1]).read(); d = float(sys.argv[2])
m = re.search(r'= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms', txt)
loss = re.search(r'([\d.]+)% packet loss', txt)
if not m:
    print(f"FAIL rtt DELAY_MS={d:g}: ping failed"); sys.exit()
mn, avg, mx, mdev = map(float, m.groups())
ok = abs(avg - 2 * d) <= 2 and abs(mx - 2 * d) <= 2 and loss and float(loss.group(1)) == 0
print(f"{'PASS' if ok else 'FAIL'} rtt DELAY_MS={d:g}: ping min/avg/max {mn:.3f}/{avg:.3f}/{mx:.3f} ms (mdev {mdev:.3f}), expected {2*d:g} +-2 ms, loss {loss.group(1) if loss else '?'}%")
PY
    cat "$W/ping-$d.res"; grep -q '^PASS' "$W/ping-$d.res" || fails=$((fails + 1))
    start_srv
    if [ "${VERIFY_TCP:-1}" = 1 ] || [ "$d" = "$DELAY_MS" ]; then
      single_flows "$d" | tee "$W/single-$d.res"
      fails=$((fails + $(grep -c '^FAIL' "$W/single-$d.res" || true)))
    fi
    [ "$d" = "$DELAY_MS" ] || stop_srv
  done
  local single_bbr
  single_bbr=$(awk '/^(PASS|FAIL) single flow bbr/ { print $6 }' "$W/single-$DELAY_MS.res")
  [ -n "$single_bbr" ] || single_bbr=$(awk '/^(PASS|FAIL) single flow/ { print $6; exit }' "$W/single-$DELAY_MS.res")

  # 3. -P 4 and -P 8 (default cc)
  local P
  for P in 4 8; do
    read -r r rt cpu < <(run_iperf par-$P -P $P)
    python3 - "$r" "$rt" "$cpu" "$P" "$single_bbr" "$ceil" "$rate" <<'PY'
import sys
r, rt, cpu, P, single, ceil, rate = map(float, sys.argv[1:])
ok = r >= 0.9 * P * single and r <= P * ceil * 1.01
print(f"{'PASS' if ok else 'FAIL'} -P {P:g}: {r:.2f} Mbit/s total = {r / single:.2f} x one flow ({single:.2f}), "
      f"{r / (P * rate):.3f} of {P:g} x {rate:g} Mbit/s, {int(rt)} retransmits, delayq cpu {cpu:.1f}% of one core")
PY
  done | tee "$W/par.res"
  fails=$((fails + $(grep -c '^FAIL' "$W/par.res" || true)))

  # 4. UDP through the delay line (not policed unless POLICE_UDP=1): loss + out-of-order.
  #    Loss inside the emulator = datagrams sent by wc minus those that reached ws's UDP layer;
  #    drops at iperf3's own socket buffer (UdpRcvbufErrors in ws) are the receiver's, not the path's.
  local b
  for b in 100 300; do
    local u0c u0s u1c u1s
    u0c=$(ctr $CNS IpOutRequests UdpOutDatagrams); u0s=$(ctr $SNS IpInReceives UdpInDatagrams UdpRcvbufErrors)
    local sn0 sn1 q0 q1
    sn0=$(backlog_drops)
    q0=$(ip netns exec $RNS awk '{ print $6 + $7 }' /proc/net/netfilter/nfnetlink_queue)
    read -r r rt cpu < <(secs=5 run_iperf udp-$b -u -b ${b}M -l 1400)
    sleep "$(python3 -c "print(2 * $(state_get DELAY_MS) / 1000 + 0.2)")"   # the last packets are still on the line
    u1c=$(ctr $CNS IpOutRequests UdpOutDatagrams); u1s=$(ctr $SNS IpInReceives UdpInDatagrams UdpRcvbufErrors)
    sn1=$(backlog_drops)
    q1=$(ip netns exec $RNS awk '{ print $6 + $7 }' /proc/net/netfilter/nfnetlink_queue)
    python3 - "$W/udp-$b.json" "$cpu" "$b" "$u0c$u0s" "$u1c$u1s" "$((sn1 - sn0))" "$((q1 - q0))" <<'PY'
import json, sys
cpu = float(sys.argv[2]); b = sys.argv[3]
c0 = dict(kv.split('=') for kv in sys.argv[4].split()); c1 = dict(kv.split('=') for kv in sys.argv[5].split())
d = {k: int(c1[k]) - int(c0[k]) for k in c0}
backlog, qdrop = int(sys.argv[6]), int(sys.argv[7])
# path loss at the IP layer, wc -> ws: every IP packet wc sent (UDP + iperf3's TCP control) vs every
# IP packet ws received. (UdpInDatagrams counts datagrams the application *read*: those still
# queued when iperf3 closes its socket are in neither it nor UdpRcvbufErrors.)
sent, rcvd, rbuf = d['IpOutRequests'], d['IpInReceives'], d['UdpRcvbufErrors']
try:
    j = json.load(open(sys.argv[1])); s = j['end']['sum']
    st = j['end']['streams'][0]['udp']
    ooo = st.get('out_of_order', s.get('out_of_order', -1))
    pk, lost = s['packets'], s['lost_packets']
    pps = pk / s['seconds']
    path_lost = sent - rcvd
    # PASS: no reordering, nothing dropped by the delay line's queue, and < 0.1% of the IP packets
    # lost between the two hosts (that includes the kernel's per-CPU input backlogs,
    # netdev_max_backlog=1000, which overflow when a CPU is held >~35 ms at 26k packets/s)
    ok = ooo == 0 and qdrop == 0 and path_lost <= max(2, 0.001 * sent)
    print(f"{'PASS' if ok else 'FAIL'} udp {b} Mbit/s offered, 1400 B: {pps:.0f} packets/s, out_of_order {ooo}, "
          f"IP packets lost wc->ws {path_lost}/{sent} (NFQUEUE drops {qdrop}, CPU input-backlog drops {backlog}), "
          f"iperf3 lost {lost}/{pk} (of which {rbuf} at the receiving socket's buffer), "
          f"jitter {s['jitter_ms']:.3f} ms, delayq cpu {cpu:.1f}% of one core")
except Exception as ex:
    print(f"FAIL udp {b}: {ex}")
PY
  done | tee "$W/udp.res"
  fails=$((fails + $(grep -c '^FAIL' "$W/udp.res" || true)))

  # 5. live cap drop: rate -> rate/2 after half the test
  local half; half=$(python3 -c "print($rate / 2)")
  {
  ( sleep "$(python3 -c "print($secs / 2)")"; "$HERE/wan.sh" set-rate "$half" >/dev/null ) & local setter=$!
  ip netns exec $CNS timeout $((secs + 30)) iperf3 -c $SIP -p 5201 -t "$secs" -i 1 -J --get-server-output >"$W/setrate.json" 2>"$W/setrate.err" || true
  wait $setter || true
  "$HERE/wan.sh" set-rate "$rate" >/dev/null
  python3 - "$W/setrate.json" "$rate" "$half" "$secs" <<'PY'
import json, sys
rate, half, secs = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
try:
    import re   # receiver-side (server) per-second goodput, from the server's text output
    txt = json.load(open(sys.argv[1]))['server_output_text']
    mult = {'': 1e-6, 'K': 1e-3, 'M': 1, 'G': 1e3}
    iv = [float(m.group(3)) * mult[m.group(4)] for m in re.finditer(r'\]\s+([\d.]+)-([\d.]+)\s+sec\s+\S+\s+\S+\s+([\d.]+) ([KMG]?)bits/sec\s*$', txt, re.M)
          if float(m.group(2)) - float(m.group(1)) > 0.9]
except Exception as ex:
    print(f"FAIL set-rate: {ex}"); sys.exit()
n = len(iv); m = n // 2
before = iv[max(1, m - 3):m]          # skip second 0 (slow start)
after = iv[m + 2:]                     # skip 2 s for the flow to settle
b = sum(before) / len(before); a = sum(after) / len(after)
ok = b > 0.8 * rate * 1448 / 1500 and a <= half * 1448 / 1500 * 1.05 and a >= 0.5 * half
print(f"{'PASS' if ok else 'FAIL'} set-rate {rate:g} -> {half:g} Mbit/s at t={secs/2:g}s: {b:.2f} Mbit/s before, {a:.2f} after "
      f"(per-second: {' '.join(f'{x:.1f}' for x in iv)})")
PY
  } | tee "$W/setrate.res"
  fails=$((fails + $(grep -c '^FAIL' "$W/setrate.res" || true)))
  # 6. queue health
  {
  kill -USR1 "$pid"; sleep 0.2
  local q; q=$(ip netns exec $RNS cat /proc/net/netfilter/nfnetlink_queue)
  python3 - "$STATE_DIR/delayq.stats" "$q" <<'PY'
import sys
kv = dict(x.split('=', 1) for x in open(sys.argv[1]).readline().split() if '=' in x)
q = sys.argv[2].split()
qd, ud = (int(q[5]), int(q[6])) if len(q) >= 7 else (-1, -1)
ok = qd == 0 and ud == 0 and kv.get('verdict_err') == '0'
print(f"{'PASS' if ok else 'FAIL'} delay line: {kv['rx']} packets, {kv['police_drop']} policer drops, kernel queue_dropped={qd} "
      f"user_dropped={ud}, max held {kv['max_queued']}, hold beyond DELAY mean {kv['late_mean_us']} us / max {kv['late_max_us']} us, "
      f"rx->read lag mean {kv['rx_lag_mean_us']} us / max {kv['rx_lag_max_us']} us, kernel timestamps on {kv['kernel_ts']} packets")
PY
  } | tee "$W/queue.res"
  fails=$((fails + $(grep -c '^FAIL' "$W/queue.res" || true)))
  echo "RESULT wan verify: $([ $fails = 0 ] && echo PASS || echo "FAIL ($fails)")"
  [ $fails = 0 ]
}

cmd=${1:-}
case "$cmd" in
  up) do_up ;;
  down) do_down; echo "RESULT wan down" ;;
  set-rate) [ $# -ge 2 ] || die "usage: wan.sh set-rate MBIT [BURST_KB]"; do_set_rate "$2" "${3:-}" ;;
  stats) do_stats ;;
  status) [ -f "$STATE" ] || { echo "wan: not up"; exit 1; }; cat "$STATE"; p=$(dq_pid); echo "delayq: ${p:-NOT RUNNING}" ;;
  verify) do_verify ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
