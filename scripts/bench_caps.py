#!/usr/bin/env python3
"""bench_caps.py: the measuring and reporting half of scripts/bench-caps.sh.

bench-caps.sh sets up the namespaces, the per-flow caps and the processes;
this helper does what is easier in Python. Subcommands:

  lat-recv     receive timestamped records (the target of a latency run), verify
               every byte, log per-record delays and the socket's read progress
  lat-send     send timestamped records as fast as the path takes them through a
               small SO_SNDBUF, log the write progress and the socket's own queue
  lat-analyze  join a lat-send and a lat-recv log: delay and queued-bytes figures
  tput         one iperf3 run (+ mid-run `ss -tni` sample + tc class counters
               before/after) -> one JSON result line (kinds tput, het)
  drop         one iperf3 run with a cap drop mid-way -> time series + recovery
  flows        print the data-carrying flows of an `ss -tni` sample (ports, buckets)
  report       all result lines -> markdown tables (+ PNG plots if matplotlib)

Exit codes: 0 fine, 1 broken run (iperf3 error, bytes corrupted or missing),
2 usage, 3 (tput) the data flows' client ports collided in the HTB buckets.
Standard library only; matplotlib is optional (plots are skipped without it).
"""
import argparse
import bisect
import fcntl
import json
import os
import re
import socket
import statistics
import struct
import sys
import termios
import threading
import time

# ---------------------------------------------------------------------------
# latency records: [magic u32][record length u32][seq u64][send time ns u64]
# followed by a payload that depends on seq (so a lost, duplicated, reordered
# or altered byte shows up as a bad magic/seq/payload).
MAGIC = 0x53545250
HDR = struct.Struct("!IIQQ")
_PAYLOADS = {}
IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)


def payload(seq, rec):
    off = (seq * 131) % 256
    key = (off, rec)
    p = _PAYLOADS.get(key)
    if p is None:
        n = rec - HDR.size
        base = bytes(range(256)) * (n // 256 + 2)
        p = _PAYLOADS[key] = base[off:off + n]
    return p


def now_ns():
    # CLOCK_MONOTONIC is shared by all network namespaces of one host
    return time.monotonic_ns()


def hostport(s):
    h, _, p = s.rpartition(":")
    return h.strip("[]"), int(p)


class Sampler(threading.Thread):
    """Every `period` s append (t_ns, counter(), ioctl(fd, req)) to samples."""

    def __init__(self, sock, req, counter, period=0.01):
        super().__init__(daemon=True)
        self.sock, self.req, self.counter, self.period = sock, req, counter, period
        self.samples = []
        self.stop = threading.Event()
        self.ioctl_ok = True

    def q(self):
        if not self.ioctl_ok:
            return -1
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), self.req, b"\0\0\0\0"))[0]
        except OSError:
            self.ioctl_ok = False  # e.g. an MPTCP socket on an older kernel
            return -1

    def run(self):
        while not self.stop.is_set():
            self.samples.append((now_ns(), self.counter(), self.q()))
            self.stop.wait(self.period)

    def finish(self):
        self.samples.append((now_ns(), self.counter(), self.q()))
        self.stop.set()
        self.join(1)


def cmd_lat_recv(a):
    host, port = hostport(a.listen)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if a.mptcp else 0)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a.rcvbuf > 0:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)  # inherited by accept()
    ls.bind((host, port))
    ls.listen(4)
    ls.settimeout(a.timeout)
    try:
        conn, peer = ls.accept()
    except socket.timeout:
        print(f"lat-recv: no connection within {a.timeout}s", file=sys.stderr)
        return 1
    # keep listening until the end: MPTCP's extra subflows (MP_JOIN) connect to this port too
    conn.settimeout(a.stall)
    rec = a.record
    buf = bytearray(rec)
    mv = memoryview(buf)
    state = {"total": 0}
    smp = Sampler(conn, termios.FIONREAD, lambda: state["total"])
    smp.start()
    t_send, t_recv = [], []
    filled, seq, err = 0, 0, None
    deadline = time.monotonic() + a.timeout
    try:
        while True:
            n = conn.recv_into(mv[filled:])
            if n == 0:
                break
            filled += n
            state["total"] += n
            if filled < rec:
                continue
            t = now_ns()
            magic, rlen, s, ts = HDR.unpack_from(buf, 0)
            if magic != MAGIC or rlen != rec:
                err = f"record {seq}: bad header (magic {magic:#x}, length {rlen}) at byte {state['total'] - rec}"
                break
            if s != seq:
                err = f"record {seq}: got sequence number {s} (lost, duplicated or reordered data)"
                break
            if buf[HDR.size:] != payload(seq, rec):
                err = f"record {seq}: payload differs from what was sent"
                break
            t_send.append(ts)
            t_recv.append(t)
            seq += 1
            filled = 0
            if time.monotonic() > deadline:
                err = f"still receiving after {a.timeout}s"
                break
    except socket.timeout:
        err = f"nothing received for {a.stall}s (stalled) after {state['total']} bytes"
    except OSError as e:
        err = f"receive error after {state['total']} bytes: {e}"
    smp.finish()
    if err is None and filled:
        err = f"stream ended inside a record ({filled} of {rec} bytes)"
    conn.close()
    ls.close()
    out = {"peer": f"{peer[0]}:{peer[1]}", "record": rec, "records": seq, "bytes": state["total"],
           "error": err, "t_send": t_send, "t_recv": t_recv, "samples": smp.samples,
           "ioctl_ok": smp.ioctl_ok}
    with open(a.out, "w") as f:
        json.dump(out, f)
    if err:
        print(f"lat-recv: BROKEN: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_lat_send(a):
    host, port = hostport(a.connect)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if a.mptcp else 0)
    if a.sndbuf > 0:  # 0: leave it to the kernel's autotuning
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, a.sndbuf)
    eff_sndbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    s.settimeout(a.stall)
    try:
        s.connect((host, port))
    except OSError as e:
        print(f"lat-send: cannot connect to {a.connect}: {e}", file=sys.stderr)
        return 1
    rec = a.record
    state = {"w": 0}
    smp = Sampler(s, termios.TIOCOUTQ, lambda: state["w"])
    t0 = now_ns()
    smp.start()
    deadline = t0 + int(a.duration * 1e9)
    seq, err = 0, None
    try:
        while now_ns() < deadline:
            s.sendall(HDR.pack(MAGIC, rec, seq, now_ns()) + payload(seq, rec))
            seq += 1
            state["w"] += rec
    except OSError as e:  # socket.timeout is an OSError
        err = f"send error after {state['w']} bytes: {e!r}"
    t_last = now_ns()
    if err is None:
        # wait for the receiver to have everything (it closes on our EOF)
        try:
            s.shutdown(socket.SHUT_WR)
            s.settimeout(a.drain)
            while s.recv(4096):
                pass
        except OSError as e:
            err = f"no close from the far end within {a.drain}s after the last write: {e!r}"
    t_end = now_ns()
    smp.finish()
    s.close()
    out = {"t0": t0, "t_last_write": t_last, "t_end": t_end, "records": seq, "bytes": state["w"],
           "record": rec, "sndbuf": eff_sndbuf,
           "samples": smp.samples, "error": err, "ioctl_ok": smp.ioctl_ok}
    with open(a.out, "w") as f:
        json.dump(out, f)
    if err:
        print(f"lat-send: BROKEN: {err}", file=sys.stderr)
        return 1
    return 0


_TS = {}


def interp(samples, idx, t):
    """Linear interpolation of column idx of (t, ...) samples at time t."""
    ts = _TS.get(id(samples))
    if ts is None:
        ts = _TS[id(samples)] = [x[0] for x in samples]
    i = bisect.bisect_left(ts, t)
    if i <= 0:
        return samples[0][idx]
    if i >= len(samples):
        return samples[-1][idx]
    (ta, *ra), (tb, *rb) = samples[i - 1], samples[i]
    va, vb = ra[idx - 1], rb[idx - 1]
    return va if tb == ta else va + (vb - va) * (t - ta) / (tb - ta)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


BACKLOG_RE = re.compile(r"backlog (\d+(?:\.\d+)?)([KMG]?)b ")


def tc_backlog(path):
    """Total backlog (bytes) of the root HTB qdisc in a `tc -s qdisc show` dump."""
    root = False
    for line in open(path):
        if line.startswith("qdisc "):
            root = line.startswith("qdisc htb") and " root " in line
        elif root:
            m = BACKLOG_RE.search(line)
            if m:
                return float(m.group(1)) * {"": 1, "K": 1024, "M": 1 << 20, "G": 1 << 30}[m.group(2)]
    return 0


def where_stats(prefix, count, ep, lp, tp):
    """Medians over the 1-s samples of where the bytes between the two apps sit.
    ep: the tunnel entrance's port (0 = no tunnel), lp: the server port of the capped
    flows, tp: the receiving app's port."""
    comp = {k: [] for k in ("w_send_sq", "w_entr_rq", "w_links_sq", "w_htb", "w_links_rq", "w_exit_sq", "w_recv_rq")}
    for i in range(count):
        try:
            c, sv = parse_ss(f"{prefix}.{i}.c"), parse_ss(f"{prefix}.{i}.s")
            htb = tc_backlog(f"{prefix}.{i}.q")
        except OSError:
            continue
        if ep:
            comp["w_send_sq"].append(sum(f["send_q"] for f in c if f["pport"] == ep))
            comp["w_entr_rq"].append(sum(f["recv_q"] for f in c if f["lport"] == ep))
            comp["w_links_sq"].append(sum(f["send_q"] for f in c if f["pport"] == lp))
            comp["w_links_rq"].append(sum(f["recv_q"] for f in sv if f["lport"] == lp))
            comp["w_exit_sq"].append(sum(f["send_q"] for f in sv if f["pport"] == tp))
        else:
            comp["w_send_sq"].append(sum(f["send_q"] for f in c if f["pport"] == tp))
        comp["w_recv_rq"].append(sum(f["recv_q"] for f in sv if f["lport"] == tp))
        comp["w_htb"].append(htb)
    out = {k: pct(v, 50) for k, v in comp.items() if v}
    out["w_samples"] = count
    return out


def cmd_lat_analyze(a):
    snd = json.load(open(a.send))
    rcv = json.load(open(a.recv))
    res = {"kind": a.kind, "sys": a.sys, "n": a.n, "rep": a.rep, "label": a.label or a.sys}
    broken = []
    if snd.get("error"):
        broken.append("sender: " + snd["error"])
    if rcv.get("error"):
        broken.append("receiver: " + rcv["error"])
    if not broken and (rcv["records"] != snd["records"] or rcv["bytes"] != snd["bytes"]):
        broken.append(f"sent {snd['records']} records / {snd['bytes']} bytes, "
                      f"received {rcv['records']} / {rcv['bytes']}")
    res["records"], res["bytes"] = rcv.get("records"), rcv.get("bytes")
    if broken:
        res["broken"] = "; ".join(broken)
        print(json.dumps(res))
        print(f"lat-analyze {a.sys}: BROKEN: {res['broken']}", file=sys.stderr)
        return 1
    t0 = snd["t0"] + int(a.skip * 1e9)
    t1 = snd["t_last_write"] - int(a.tail * 1e9)
    if t1 - t0 < 1e9:
        t0 = snd["t0"] + (snd["t_last_write"] - snd["t0"]) // 3
        t1 = snd["t_last_write"]
    ss, rs = snd["samples"], rcv["samples"]
    dur = (t1 - t0) / 1e9
    got = interp(rs, 1, t1) - interp(rs, 1, t0)
    mbit = got * 8 / dur / 1e6
    delays = [(tr - ts) / 1e6 for ts, tr in zip(rcv["t_send"], rcv["t_recv"]) if t0 <= ts <= t1]
    between, inside, outq, inq = [], [], [], []
    for (t, r, iq) in rs:
        if not (t0 <= t <= t1):
            continue
        w = interp(ss, 1, t)
        between.append(w - r)
        if snd["ioctl_ok"] and rcv["ioctl_ok"]:
            oq = interp(ss, 2, t)
            outq.append(oq)
            inq.append(iq)
            inside.append((w - oq) - (r + iq))
    res.update({
        "mbit": mbit, "window_s": dur, "record": rcv["record"],
        "delay_ms_med": pct(delays, 50), "delay_ms_p95": pct(delays, 95), "delay_ms_max": max(delays) if delays else None,
        "delay_ms_pcts": [pct(delays, p) for p in range(0, 101)] if delays else [],
        "between_med": pct(between, 50), "between_p95": pct(between, 95),
        "inside_med": pct(inside, 50), "inside_p95": pct(inside, 95),
        "sender_outq_med": pct(outq, 50), "receiver_inq_med": pct(inq, 50),
    })
    if a.where and a.where_count:
        res.update(where_stats(a.where, a.where_count, *[int(x) for x in a.ports.split(",")]))
    if res["inside_med"] is not None and mbit > 0:
        res["inside_delay_ms_med"] = res["inside_med"] * 8 / (mbit * 1e6) * 1e3
    print(json.dumps(res))
    print(f"  lat {a.label or a.sys}: {mbit:6.1f} Mbit/s, delay median {res['delay_ms_med']:.0f} ms "
          f"p95 {res['delay_ms_p95']:.0f} ms; between the apps median {fmt_bytes(res['between_med'])} "
          f"p95 {fmt_bytes(res['between_p95'])}; inside the tunnel median {fmt_bytes(res['inside_med'])} "
          f"p95 {fmt_bytes(res['inside_p95'])}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# iperf3 + ss + tc
def bucket(port, key, nb):
    return ((port & 0xFF) if key == "low8" else ((port >> 1) & 0xFF)) & (nb - 1)


def parse_ss(path):
    """`ss -tniH` output -> list of dicts (lport, raddr, bytes_acked, cc)."""
    flows = []
    cur = None
    for line in open(path):
        if not line.strip():
            continue
        if not line[0].isspace():
            f = line.split()
            # Recv-Q Send-Q Local Peer (state filter drops the State column)
            loc = [x for x in f if re.search(r":\d+$", x)]
            if len(loc) < 2:
                cur = None
                continue
            nums = [x for x in f if x.isdigit()]
            cur = {"lport": int(loc[0].rsplit(":", 1)[1]), "pport": int(loc[1].rsplit(":", 1)[1]),
                   "local": loc[0], "peer": loc[1], "recv_q": int(nums[0]) if len(nums) > 1 else 0,
                   "send_q": int(nums[1]) if len(nums) > 1 else 0, "bytes_acked": 0, "cc": None, "mptcp": False}
            flows.append(cur)
        elif cur is not None:
            m = re.search(r"bytes_acked:(\d+)", line)
            if m:
                cur["bytes_acked"] = int(m.group(1))
            toks = line.split()
            if toks and re.fullmatch(r"[a-z0-9_]+", toks[0]) and ":" not in toks[0]:
                cur["cc"] = toks[0]
            if "tcp-ulp-mptcp" in line:
                cur["mptcp"] = True
    return flows


def data_flows(path, min_bytes, prev=None):
    """Flows carrying the bulk data. With `prev` (an earlier sample of the same
    flows), judged on the bytes acked in between: at least min_bytes/8 and 2%
    of the busiest flow's (control connections and stale idle connections
    drop out); without it, on bytes acked so far."""
    flows = parse_ss(path)
    if prev is None:
        return [f for f in flows if f["bytes_acked"] >= min_bytes]
    before = {(f["local"], f["peer"]): f["bytes_acked"] for f in parse_ss(prev)}
    for f in flows:
        f["delta"] = f["bytes_acked"] - before.get((f["local"], f["peer"]), 0)
    top = max((f["delta"] for f in flows), default=0)
    return [f for f in flows if f["delta"] >= max(min_bytes / 8, 0.02 * top)]


def load_tc(path):
    d = {}
    for line in open(path):
        p = line.split()
        if len(p) == 3:
            d[(p[0], p[1])] = int(p[2])
    return d


def busy_classes(before, after, secs, rate):
    a, b = load_tc(before), load_tc(after)
    out = {"c": {}, "s": {}}
    for (side, c), v in b.items():
        if not (c.startswith("1:1") and len(c) == 5):
            continue
        mbit = (v - a.get((side, c), 0)) * 8 / secs / 1e6
        if mbit >= 0.5 * rate:
            out[side][c] = round(mbit, 2)
    return out


def iperf_load(path):
    try:
        j = json.load(open(path))
    except (OSError, ValueError) as e:
        return None, f"no iperf3 JSON ({e})"
    if j.get("error"):
        return j, "iperf3: " + j["error"]
    if "sum_received" not in j.get("end", {}):
        return j, "iperf3: no end.sum_received in its JSON"
    return j, None


def flow_info(a):
    flows = data_flows(a.ss, a.min_bytes, a.ss_prev) if a.ss else []
    ports = sorted(f["lport"] for f in flows)
    bks = [bucket(p, a.key, a.nb) for p in ports]
    ccs = sorted(set(f["cc"] for f in flows if f["cc"]))
    return {"flows_total": len(parse_ss(a.ss)) if a.ss else None, "flows_data": len(flows),
            "ports": ports, "buckets": bks, "distinct": len(set(bks)),
            "collision": len(set(bks)) < len(bks), "cc_seen": ccs}


def cmd_tput(a):
    j, err = iperf_load(a.iperf)
    res = {"kind": a.kind, "sys": a.sys, "n": a.n, "rep": a.rep, "try": a.attempt}
    if err:
        res["broken"] = err
        print(json.dumps(res))
        print(f"tput {a.sys} N={a.n}: BROKEN: {err}", file=sys.stderr)
        return 1
    end = j["end"]
    res["mbit"] = end["sum_received"]["bits_per_second"] / 1e6
    res["mbit_sender"] = end.get("sum_sent", {}).get("bits_per_second", 0) / 1e6
    res["iperf_cc"] = end.get("sender_tcp_congestion")
    res.update(flow_info(a))
    if a.tc_before and a.tc_after:
        b = busy_classes(a.tc_before, a.tc_after, a.secs, a.rate)
        res["busy_classes"] = len(b["c"])
        res["busy_mbit"] = b["c"]
    if a.slow_rate is not None:
        res["slow_rate"] = a.slow_rate
        res["slow_port"] = a.slow_port
        res["caps_sum"] = (a.n - 1) * a.rate + a.slow_rate
        res["ratio_caps"] = res["mbit"] / res["caps_sum"]
    print(json.dumps(res))
    note = ""
    if res["flows_data"] != a.n:
        note += f" [{res['flows_data']} data flows seen, expected {a.n}]"
    if res["collision"]:
        note += f" [bucket collision: ports {res['ports']} -> buckets {res['buckets']}]"
    print(f"  {a.kind} {a.sys:8s} N={a.n} rep {a.rep}: {res['mbit']:7.2f} Mbit/s; data flows {res['flows_data']} "
          f"(of {res['flows_total']} conns), busy classes {res.get('busy_classes')}, cc {','.join(res['cc_seen']) or '?'}{note}",
          file=sys.stderr)
    return 3 if res["collision"] else 0


def cmd_flows(a):
    for f in data_flows(a.ss, a.min_bytes, a.ss_prev):
        print(f["lport"], bucket(f["lport"], a.key, a.nb), f.get("delta", f["bytes_acked"]))
    return 0


UNIT = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
IV_RE = re.compile(r"^\[\s*(\d+|SUM)\]\s+([\d.]+)-([\d.]+)\s+sec\s+[\d.]+\s+\w?Bytes\s+([\d.]+)\s+([KMG]?)bits/sec(.*)$")


def server_series(j):
    so = j.get("server_output_json") or {}
    ser = []
    if not so and j.get("server_output_text"):
        # the server's text report: per-stream lines, plus [SUM] lines when there are several
        per = {}
        sums = {}
        for line in j["server_output_text"].splitlines():
            m = IV_RE.match(line.strip())
            if not m or "receiver" in m.group(6) or "sender" in m.group(6):
                continue
            key = (float(m.group(2)), float(m.group(3)))
            mbit = float(m.group(4)) * UNIT[m.group(5)] / 1e6
            if m.group(1) == "SUM":
                sums[key] = mbit
            else:
                per[key] = per.get(key, 0) + mbit
        src = sums or per
        # drop the final summary line (0.00-T) that would span the whole test
        for (st, en), mbit in sorted(src.items()):
            if st == 0 and en > 1.0 and len(src) > 2:
                continue
            if en - st < 0.2:
                continue
            ser.append((st, en, mbit))
        return ser
    for iv in so.get("intervals", []):
        s = iv["sum"]
        if s.get("omitted"):
            continue
        if s["end"] - s["start"] < 0.2:
            continue
        ser.append((s["start"], s["end"], s["bits_per_second"] / 1e6))
    return ser


def cmd_drop(a):
    j, err = iperf_load(a.iperf)
    res = {"kind": "drop", "sys": a.sys, "n": a.n, "rep": a.rep, "try": a.attempt}
    if err:
        res["broken"] = err
        print(json.dumps(res))
        print(f"drop {a.sys}: BROKEN: {err}", file=sys.stderr)
        return 1
    ser = server_series(j)
    if not ser:
        res["broken"] = "no receiver-side intervals in the iperf3 JSON (--get-server-output)"
        print(json.dumps(res))
        return 1
    old_ideal = a.n * a.rate
    new_ideal = (a.n - 1) * a.rate + a.slow_rate
    d = a.drop_at
    before = [m for s, e, m in ser if e <= d and s >= max(1.0, d - 3)]
    tail_from = ser[-1][1] - min(5.0, (ser[-1][1] - d) / 2)
    after = [m for s, e, m in ser if s >= tail_from - 1e-6]
    # 1-second moving average (over the intervals ending in (t-1, t])
    ma = []
    for i, (s, e, m) in enumerate(ser):
        win = [(e2 - s2, m2) for s2, e2, m2 in ser[: i + 1] if e2 > e - 1.0 + 1e-6]
        tot = sum(w for w, _ in win)
        ma.append((e, sum(w * m2 for w, m2 in win) / tot))
    thr = 0.9 * new_ideal
    # recovery: the first interval boundary t after the drop from which the goodput averaged
    # over every later window [t, t'] (t' >= t + 1 s) stays >= 90% of the new ideal. (Averages
    # from t on, not single intervals: on a busy machine the iperf3 server sometimes reads
    # late and one interval shows a dip that the next one makes up; those bytes were not lost.)
    cum = [(ser[0][0], 0.0)]
    for s_, e, m in ser:
        cum.append((e, cum[-1][1] + m * (e - s_)))
    rec_t = None
    for i, (t, c) in enumerate(cum):
        if t < d - 1e-6:
            continue
        later = [(t2, c2) for t2, c2 in cum[i + 1:] if t2 >= t + 1.0 - 1e-6]
        if cum[-1][0] - t < 2.0 - 1e-6:
            break  # too close to the end of the run to call it settled
        if later and all((c2 - c) / (t2 - t) >= thr for t2, c2 in later):
            rec_t = t - d
            break
    dip = min((m for e, m in ma if e > d + 0.5), default=None)
    fi = flow_info(a)
    res.update({"series": ser, "drop_at": d, "old_ideal": old_ideal, "new_ideal": new_ideal,
                "before": statistics.mean(before) if before else None,
                "after": statistics.mean(after) if after else None,
                "after_ratio": (statistics.mean(after) / new_ideal) if after else None,
                "recovery_s": rec_t, "dip_1s": dip, "slow_port": a.slow_port, **fi})
    print(json.dumps(res))
    rs = f"{rec_t:.1f} s" if rec_t is not None else "not recovered"
    bf = f"{res['before']:.1f}" if res["before"] is not None else "?"
    af = f"{res['after']:.1f}" if res["after"] is not None else "?"
    print(f"  drop {a.sys:8s} N={a.n} rep {a.rep}: before {bf} Mbit/s, after {af} Mbit/s "
          f"(new ideal {new_ideal:g}), recovery {rs}, worst 1 s {dip if dip is None else round(dip, 1)}"
          f"{' [bucket collision]' if fi['collision'] else ''}", file=sys.stderr)
    return 3 if fi["collision"] else 0


# ---------------------------------------------------------------------------
# report
SYS_LABEL = {"single": "1 TCP stream", "ideal": "iperf3 -P N", "mptcp": "MPTCP", "agg": "agg-tunnel",
             "striper": "striper", "plain": "plain TCP (1 flow)"}


def fmt_bytes(b):
    if b is None:
        return "n/a"
    if abs(b) >= 1 << 20:
        return f"{b / (1 << 20):.2f} MiB"
    return f"{b / 1024:.0f} KiB"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f1(x, nd=1):
    return "—" if x is None else f"{x:.{nd}f}"


def cmd_report(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    meta = json.load(open(a.meta)) if a.meta else {}
    rate = float(meta.get("rate", 20))
    out = []
    P = out.append
    P(f"Per-flow cap {rate:g} Mbit/s (HTB class per TCP flow, both veth ends); goodput in Mbit/s "
      f"at the receiver, median of {meta.get('reps', '?')} runs of {meta.get('duration', '?')} s "
      f"(+{meta.get('omit', '?')} s omitted warm-up) each.")
    if meta.get("cc_note"):
        P("")
        P(meta["cc_note"])
    P("")
    tp = [r for r in rows if r["kind"] == "tput" and "broken" not in r]
    ns = sorted(set(r["n"] for r in tp if r["sys"] != "single"))
    systems = ["single", "ideal", "mptcp", "agg", "striper"]
    M = {}
    MC = set()  # (sys, n) whose median had to use runs with bucket collisions
    for s in systems:
        for n in ns + [1]:
            sel = [r for r in tp if r["sys"] == s and r["n"] == n]
            clean = [r for r in sel if not r.get("collision")]
            if sel and not clean:
                MC.add((s, n))
            v = med(r["mbit"] for r in (clean or sel))
            if v is not None:
                M[(s, n)] = v
    base = M.get(("single", 1))
    skipped = set(meta.get("skipped", []))
    P("### Throughput against the number of flows")
    P("")
    P("| N | caps (N × cap) | 1 stream | iperf3 -P N (ideal) | MPTCP | agg-tunnel | striper | striper/ideal | striper/MPTCP |")
    P("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(s, n):
        if s in skipped:
            return "skipped"
        return f1(M.get((s, n))) + (" †" if (s, n) in MC else "")
    for n in ns:
        ideal = M.get(("ideal", n)) if n > 1 else base
        st, mp = M.get(("striper", n)), M.get(("mptcp", n))
        P(f"| {n} | {n * rate:g} | {f1(base)} | {cell('ideal', n) if n > 1 else f1(base)} | "
          f"{cell('mptcp', n)} | {cell('agg', n)} | {cell('striper', n)} | "
          f"{f1(st / ideal if st and ideal else None, 2)} | {f1(st / mp if st and mp else None, 2)} |")
    P("")
    P("Medians over the runs whose data flows each had their own HTB class; † = every run of that cell had a "
      "bucket collision even after the re-runs, so the figure is low for a reason outside the system tested.")
    P("")
    # flow checks
    P("Flow checks (from `ss -tni` mid-run and the HTB class byte counters; per system: data-carrying TCP "
      "flows seen / busy capped classes (≥ 50% of the cap over the run), median over the runs; "
      "`coll K` = K runs whose flows shared an HTB bucket and were re-run, `kept` = collided runs that had to be kept):")
    P("")
    P("| N | iperf3 -P N | MPTCP subflows | agg-tunnel links | striper stripes | CC seen |")
    P("|---:|---|---|---|---|---|")
    for n in ns:
        cells = []
        ccs = set()
        for s in ["ideal", "mptcp", "agg", "striper"]:
            sel = [r for r in tp if r["sys"] == s and r["n"] == n]
            allr = [r for r in rows if r["kind"] in ("tput", "tput-collided") and r["sys"] == s and r["n"] == n]
            if s == "ideal" and n == 1:
                sel = [r for r in tp if r["sys"] == "single"]
                allr = [r for r in rows if r["kind"] in ("tput", "tput-collided") and r["sys"] == "single"]
            if not sel:
                cells.append("—")
                continue
            for r in sel:
                ccs.update(r.get("cc_seen", []))
            fd = med(r["flows_data"] for r in sel)
            bc = med(r.get("busy_classes") for r in sel)
            coll = sum(1 for r in allr if r.get("collision"))
            kept_coll = sum(1 for r in sel if r.get("collision"))
            c = f"{fd:g} / {bc:g}" if bc is not None else f"{fd:g}"
            if coll:
                c += f" (coll {coll}{', ' + str(kept_coll) + ' kept' if kept_coll else ''})"
            cells.append(c)
        P(f"| {n} | " + " | ".join(cells) + f" | {','.join(sorted(ccs)) or '?'} |")
    P("")
    # heterogeneous caps
    het = [r for r in rows if r["kind"] == "het" and "broken" not in r]
    if het:
        hn = het[0]["n"]
        slow = het[0]["slow_rate"]
        caps = het[0]["caps_sum"]
        P(f"### Heterogeneous caps ({hn} flows: {hn - 1} at {rate:g} Mbit/s, one at {slow:g} Mbit/s; sum of caps {caps:g})")
        P("")
        P("| system | goodput | / sum of caps | data flows / busy classes |")
        P("|---|---:|---:|---|")
        for s in ["ideal", "mptcp", "agg", "striper"]:
            sel = [r for r in het if r["sys"] == s]
            if not sel:
                continue
            m = med(r["mbit"] for r in sel)
            coll = sum(1 for r in sel if r.get("collision"))
            P(f"| {SYS_LABEL[s].replace('N', str(hn))} | {f1(m)} | {f1(m / caps, 2)} | "
              f"{med(r['flows_data'] for r in sel):g} / {med(r.get('busy_classes') for r in sel):g}"
              f"{f' (coll {coll})' if coll else ''} |")
        P("")
        P(f"The slow flow (the data flow with the lowest client port) is re-capped on both veth ends about 1 s into "
          f"the run; goodput is counted from t = {meta.get('het_omit', '?')} s for {meta.get('het_secs', '?')} s. "
          "Data flows = flows that carried ≥ 2% of the busiest flow's bytes in a 0.5 s `ss` sample mid-run, so a "
          f"system that leaves the slow flow idle shows {hn - 1}; the slow class is never 'busy' (≥ 50% of the full cap), "
          f"so {hn - 1} busy classes is expected. A tunnel that holds megabytes can release bytes held back during the "
          "warm-up inside the counted window and so exceed the sum of the caps for a short run.")
        P("")
        P(f"Target for striper: ≥ 0.85 of the sum of caps ({0.85 * caps:.1f} Mbit/s).")
        P("")
    # cap drop
    drop = [r for r in rows if r["kind"] == "drop" and "broken" not in r]
    if drop:
        dn = drop[0]["n"]
        P(f"### Cap drop mid-transfer ({dn} flows at {rate:g}; one drops to "
          f"{drop[0]['new_ideal'] - (dn - 1) * rate:g} Mbit/s at t≈{drop[0]['drop_at']:.1f} s)")
        P("")
        P(f"Receiver-side goodput per 0.5 s (iperf3 server intervals). New ideal = {drop[0]['new_ideal']:g} Mbit/s; "
          "recovery = time from the drop until the goodput, averaged from then over any window of ≥ 1 s, stays ≥ 90% of the new ideal "
          "to the end of the run; worst 1 s = lowest 1 s moving average after the drop.")
        P("")
        P("| system | before | after (last part) | after / new ideal | recovery time | worst 1 s after drop | runs recovered |")
        P("|---|---:|---:|---:|---:|---:|---:|")
        for s in ["ideal", "mptcp", "agg", "striper"]:
            sel = [r for r in drop if r["sys"] == s]
            if not sel:
                continue
            recs = [r["recovery_s"] for r in sel]
            okr = [x for x in recs if x is not None]
            # a run that never recovered counts as +inf for the median
            rmed = statistics.median([x if x is not None else float("inf") for x in recs])
            rtxt = "not recovered" if rmed == float("inf") else f"{rmed:.1f} s"
            P(f"| {SYS_LABEL[s].replace('N', str(dn))} | {f1(med(r['before'] for r in sel))} | "
              f"{f1(med(r['after'] for r in sel))} | {f1(med(r['after_ratio'] for r in sel), 2)} | {rtxt} | "
              f"{f1(med(r['dip_1s'] for r in sel))} | {len(okr)}/{len(sel)} |")
        P("")
    # latency
    lat = [r for r in rows if r["kind"] == "lat" and "broken" not in r]
    if lat:
        ln = max(r["n"] for r in lat)
        P(f"### Latency under load ({ln} flows for the tunnels, 1 plain TCP flow as the baseline)")
        P("")
        P(f"A sender writes {lat[0]['record'] // 1024} KiB timestamped records as fast as the path takes them "
          f"(SO_SNDBUF {meta.get('lat_sndbuf', '?')}), the receiver (the tunnel's target) reads at once "
          f"(SO_RCVBUF {meta.get('lat_rcvbuf', '?')}) and checks every byte. delay = receive time − send time of each "
          "record (shared clock); between apps = bytes written − bytes read; inside = bytes acked by the "
          "tunnel entrance (written − sender SIOCOUTQ) − bytes reaching the receiver's socket (read + SIOCINQ), "
          "i.e. what the tunnel itself holds; ≈ delay = inside ÷ goodput. Steady state only (first "
          f"{meta.get('lat_skip', '?')} s skipped).")
        P("")
        P("| system | goodput | delay median | delay p95 | between apps median / p95 | inside the tunnel median / p95 | ≈ delay of that queue |")
        P("|---|---:|---:|---:|---:|---:|---:|")
        for s in ["plain", "mptcp", "agg", "striper"]:
            sel = [r for r in lat if r["sys"] == s]
            if not sel:
                continue
            lab = SYS_LABEL[s] if s == "plain" else f"{SYS_LABEL[s]} ({ln})"
            tun = s in ("agg", "striper")
            inside = "—" if not tun else f"{fmt_bytes(med(r['inside_med'] for r in sel))} / {fmt_bytes(med(r['inside_p95'] for r in sel))}"
            idl = med(r.get("inside_delay_ms_med") for r in sel)
            P(f"| {lab} | {f1(med(r['mbit'] for r in sel))} | {f1(med(r['delay_ms_med'] for r in sel), 0)} ms | "
              f"{f1(med(r['delay_ms_p95'] for r in sel), 0)} ms | {fmt_bytes(med(r['between_med'] for r in sel))} / "
              f"{fmt_bytes(med(r['between_p95'] for r in sel))} | {inside} | "
              f"{'—' if not tun or idl is None else f'{idl:.0f} ms'} |")
        P("")
        P("Where the bytes sit (medians of 1 s `ss -tn` / `tc -s qdisc` samples during the same runs; "
          "Send-Q = not yet acked, so a capped flow's Send-Q includes its packets waiting in the HTB queue):")
        P("")
        P("| system | sender socket Send-Q | entrance socket Recv-Q | capped flows Send-Q (of which HTB queue) | "
          "capped flows Recv-Q at the far end | exit socket Send-Q | receiver socket Recv-Q | inside the tunnel, not in any socket (process buffers) |")
        P("|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in ["plain", "mptcp", "agg", "striper"]:
            sel = [r for r in lat if r["sys"] == s and r.get("w_samples")]
            if not sel:
                continue
            tun = s in ("agg", "striper")
            g = lambda k: med(r.get(k) for r in sel)
            rest = None
            if tun and g("inside_med") is not None:
                rest = g("inside_med") - sum(g(k) or 0 for k in ("w_entr_rq", "w_links_sq", "w_links_rq", "w_exit_sq"))
            lab = SYS_LABEL[s] if s == "plain" else f"{SYS_LABEL[s]} ({ln})"
            P(f"| {lab} | {fmt_bytes(g('w_send_sq'))} | {fmt_bytes(g('w_entr_rq')) if tun else '—'} | "
              f"{fmt_bytes(g('w_links_sq') if tun else g('w_send_sq'))} ({fmt_bytes(g('w_htb'))}) | "
              f"{fmt_bytes(g('w_links_rq')) if tun else '—'} | {fmt_bytes(g('w_exit_sq')) if tun else '—'} | "
              f"{fmt_bytes(g('w_recv_rq'))} | {fmt_bytes(rest) if tun else '—'} |")
        P("")
        if any(r["sys"] == "mptcp" for r in lat):
            P(f"MPTCP's receiver keeps the kernel's autotuned receive buffer (LAT_MPTCP_RCVBUF={meta.get('lat_mptcp_rcvbuf', '?')}, "
              "0 = autotuned): MPTCP reassembles in the receiving app's socket, where a small buffer is a small window "
              "for all subflows together. MPTCP has no tunnel: its queue is the sender's socket and the network.")
            P("")
        st = [r for r in lat if r["sys"] == "striper"]
        if st:
            p95 = med(r["inside_p95"] for r in st)
            P(f"Target for striper ({ln} stripes under caps): at most 2 MiB inside the tunnel; measured p95 "
              f"{fmt_bytes(p95)} → {'within' if p95 is not None and p95 <= 2 << 20 else 'OVER'} the target.")
            P("")
    integ = [r for r in rows if r["kind"] == "integrity"]
    okinteg = [r for r in integ if "broken" not in r]
    if okinteg:
        P(f"Striper's queue against N (from the byte-check runs below: one short {meta.get('integ_secs', '?')} s run per N, "
          "the same record stream as the latency test; indicative only):")
        P("")
        P("| stripes | goodput | delay median | delay p95 | inside the tunnel median / p95 | ≈ delay of that queue |")
        P("|---:|---:|---:|---:|---:|---:|")
        for r in sorted(okinteg, key=lambda r: r["n"]):
            idl = r.get("inside_delay_ms_med")
            P(f"| {r['n']} | {f1(r['mbit'])} | {f1(r['delay_ms_med'], 0)} ms | {f1(r['delay_ms_p95'], 0)} ms | "
              f"{fmt_bytes(r['inside_med'])} / {fmt_bytes(r['inside_p95'])} | {'—' if idl is None else f'{idl:.0f} ms'} |")
        P("")
    if integ:
        bad = [r for r in integ if "broken" in r]
        P(f"Byte-for-byte checks through striper (one {meta.get('integ_secs', '?')} s record stream per N, every byte "
          f"verified at the target): {len(integ) - len(bad)}/{len(integ)} passed"
          + (f"; BROKEN: {'; '.join(r['broken'] for r in bad)}" if bad else "") + ".")
        P("")
    broken = [r for r in rows if "broken" in r]
    if broken:
        P("Broken runs: " + "; ".join(f"{r['kind']} {r['sys']} N={r['n']}: {r['broken']}" for r in broken))
        P("")
    if meta:
        P(f"Run: `{meta.get('command', '')}` on {meta.get('date', '?')}; kernel {meta.get('kernel', '?')}, "
          f"{meta.get('nproc', '?')} CPUs, load average at start {meta.get('load', '?')}; "
          f"striper {meta.get('striper_rev', '?')}, {meta.get('agg_version', 'agg-tunnel absent')}, "
          f"{meta.get('iperf_version', '')}; total time {meta.get('elapsed', '?')}.")
        if meta.get("notes"):
            P("")
            for n_ in meta["notes"]:
                P(f"- {n_}")
    text = "\n".join(out) + "\n"
    if a.md:
        with open(a.md, "w") as f:
            f.write("# striper under per-flow caps: benchmark results\n\n")
            f.write("Generated by `scripts/bench-caps.sh` (overwritten on every run).\n\n")
            f.write(text)
    sys.stdout.write(text)
    if a.plots:
        plot(a, rows, meta, M, ns, rate)
    return 0


def plot(a, rows, meta, M, ns, rate):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping the PNG plots (pip install matplotlib)", file=sys.stderr)
        return
    os.makedirs(a.plots, exist_ok=True)
    made = []
    if ns:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot(ns, [n * rate for n in ns], "k:", label=f"N × cap ({rate:g} Mbit/s)")
        styles = {"ideal": "o-", "mptcp": "s-", "agg": "^-", "striper": "D-"}
        for s in ["ideal", "mptcp", "agg", "striper"]:
            xs = [n for n in ns if (s, n) in M or (s == "ideal" and n == 1 and ("single", 1) in M)]
            ys = [M.get((s, n), M.get(("single", 1)) if s == "ideal" and n == 1 else None) for n in xs]
            if xs:
                ax.plot(xs, ys, styles[s], label=SYS_LABEL[s])
        if ("single", 1) in M:
            ax.axhline(M[("single", 1)], color="grey", lw=0.8, ls="--", label="1 TCP stream")
        ax.set_xlabel("flows / subflows / links / stripes (N)")
        ax.set_ylabel("goodput (Mbit/s)")
        ax.set_xticks(ns)
        ax.set_title(f"Throughput under a {rate:g} Mbit/s per-flow cap")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(a.plots, "caps-throughput.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    drop = [r for r in rows if r["kind"] == "drop" and "broken" not in r]
    if drop:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for s in ["ideal", "mptcp", "agg", "striper"]:
            sel = [r for r in drop if r["sys"] == s]
            if not sel:
                continue
            # the run with the median recovery time
            sel.sort(key=lambda r: r["recovery_s"] if r["recovery_s"] is not None else 1e9)
            r = sel[(len(sel) - 1) // 2]
            xs = [st for st, _, _ in r["series"]] + [r["series"][-1][1]]
            ys = [m for _, _, m in r["series"]] + [r["series"][-1][2]]
            ax.step(xs, ys, where="post", label=SYS_LABEL[s].replace("N", str(r["n"])))
        r0 = drop[0]
        ax.axvline(r0["drop_at"], color="k", lw=0.8, ls=":")
        ax.axhline(r0["old_ideal"], color="grey", lw=0.6, ls="--", label="sum of caps before / after")
        ax.axhline(r0["new_ideal"], color="grey", lw=0.6, ls="--")
        ax.axhline(0.9 * r0["new_ideal"], color="red", lw=0.6, ls=":", label="90% of the new sum")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("goodput per 0.5 s (Mbit/s)")
        ax.set_title("One flow's cap drops mid-transfer (receiver-side goodput)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        p = os.path.join(a.plots, "caps-drop.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    lat = [r for r in rows if r["kind"] == "lat" and "broken" not in r and r.get("delay_ms_pcts")]
    if lat:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for s in ["plain", "mptcp", "agg", "striper"]:
            sel = [r for r in lat if r["sys"] == s]
            if not sel:
                continue
            sel.sort(key=lambda r: r["delay_ms_med"])
            r = sel[(len(sel) - 1) // 2]
            ax.plot(r["delay_ms_pcts"], [p / 100 for p in range(101)], label=SYS_LABEL[s] if s == "plain" else f"{SYS_LABEL[s]} ({r['n']})")
        ax.set_xscale("log")
        ax.set_xlabel("record delay, send → receive (ms, log)")
        ax.set_ylabel("fraction of records")
        ax.set_title("Latency under load (bulk transfer through the capped path)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = os.path.join(a.plots, "caps-latency.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    for p in made:
        print(f"plot: {p}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("lat-recv")
    r.add_argument("--listen", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--record", type=int, default=16384)
    r.add_argument("--rcvbuf", type=int, default=65536)
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--stall", type=float, default=30)
    r.add_argument("--mptcp", action="store_true")
    s = sub.add_parser("lat-send")
    s.add_argument("--connect", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--duration", type=float, default=10)
    s.add_argument("--record", type=int, default=16384)
    s.add_argument("--sndbuf", type=int, default=65536)
    s.add_argument("--stall", type=float, default=30)
    s.add_argument("--drain", type=float, default=60)
    s.add_argument("--mptcp", action="store_true")
    la = sub.add_parser("lat-analyze")
    la.add_argument("--send", required=True)
    la.add_argument("--recv", required=True)
    la.add_argument("--sys", required=True)
    la.add_argument("--label")
    la.add_argument("--n", type=int, default=1)
    la.add_argument("--rep", type=int, default=1)
    la.add_argument("--skip", type=float, default=3)
    la.add_argument("--tail", type=float, default=0.5)
    la.add_argument("--kind", default="lat")
    la.add_argument("--where")
    la.add_argument("--where-count", type=int, default=0)
    la.add_argument("--ports", default="0,0,0")
    for name in ("tput", "drop", "flows"):
        t = sub.add_parser(name)
        t.add_argument("--ss")
        t.add_argument("--ss-prev")
        t.add_argument("--key", default="low8")
        t.add_argument("--nb", type=int, default=256)
        t.add_argument("--min-bytes", type=int, default=65536)
        if name == "flows":
            continue
        t.add_argument("--iperf", required=True)
        t.add_argument("--sys", required=True)
        t.add_argument("--n", type=int, required=True)
        t.add_argument("--rep", type=int, default=1)
        t.add_argument("--attempt", type=int, default=0)
        t.add_argument("--rate", type=float, required=True)
        t.add_argument("--slow-port", type=int)
        if name == "tput":
            t.add_argument("--kind", default="tput")
            t.add_argument("--tc-before")
            t.add_argument("--tc-after")
            t.add_argument("--secs", type=float, default=1)
            t.add_argument("--slow-rate", type=float)
        else:
            t.add_argument("--slow-rate", type=float, required=True)
            t.add_argument("--drop-at", type=float, required=True)
    rp = sub.add_parser("report")
    rp.add_argument("--results", required=True)
    rp.add_argument("--meta")
    rp.add_argument("--md")
    rp.add_argument("--plots")
    a = ap.parse_args()
    fn = {"lat-recv": cmd_lat_recv, "lat-send": cmd_lat_send, "lat-analyze": cmd_lat_analyze,
          "tput": cmd_tput, "drop": cmd_drop, "flows": cmd_flows, "report": cmd_report}[a.cmd]
    sys.exit(fn(a))


if __name__ == "__main__":
    main()
