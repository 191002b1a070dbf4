#!/usr/bin/env python3
"""bench_wan.py: the measuring and reporting half of scripts/bench-wan.sh.

bench-wan.sh builds the emulated path (scripts/wan/wan.sh) and starts the
processes; this helper does what is easier in Python. Subcommands:

  iperf     one iperf3 run (JSON) + the sender namespace's TcpRetransSegs delta
            + a mid-run `ss -tni` pair -> one JSON result line (kind "tput")
  sink      accept CONNS connections, read them to the end, sample the total
            received every --period s (wall clock) -> JSON
  blast     open CONNS connections (optional congestion control), write as
            fast as they take for --secs, close, wait for the far end -> JSON
  recovery  join a sink and a blast log with the time a flow was capped ->
            one JSON result line (kind "recovery"): goodput before, recovery
            time, worst 0.5 s, goodput over the last 5 s, the time series
  tag       merge context fields into a JSON result line (for lat-analyze's)
  estimate  the expected run time of a configuration, in seconds
  report    all result lines -> markdown tables (+ PNG plots if matplotlib)

The latency runs use scripts/bench_caps.py (lat-recv, lat-send, lat-analyze)
unchanged, as bench-caps.sh does; ss parsing is borrowed from it too.

Exit codes: 0 fine, 1 broken run (iperf3 error, zero goodput, bytes missing),
2 usage. Standard library only; matplotlib is optional.
"""
import argparse
import json
import os
import selectors
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
import bench_caps  # noqa: E402  (same directory: parse_ss, data_flows)

MSS = 1448  # payload bytes of a full segment (1500-byte IP packet, timestamps on)


def payload_ceiling(rate_mbit):
    """Goodput one flow can reach under the delayq policer, which counts IP bytes."""
    return rate_mbit * MSS / 1500


def htb_ceiling(rate_mbit):
    """Goodput one flow can reach through an HTB class, which counts Ethernet frames."""
    return rate_mbit * MSS / 1514


def emit(res, code=0):
    print(json.dumps(res))
    return code


# ---------------------------------------------------------------- iperf
def cmd_iperf(a):
    res = dict(json.loads(a.ctx))
    res["kind"] = "tput"
    res["retrans_segs"] = a.retrans
    broken = []
    try:
        j = json.load(open(a.json))
    except (OSError, ValueError) as e:
        j = {}
        broken.append(f"no iperf3 JSON ({e})")
    if j.get("error"):
        broken.append("iperf3: " + j["error"])
    end = j.get("end", {})
    sr = end.get("sum_received")
    if not broken and not sr:
        broken.append("iperf3: no end.sum_received")
    if sr:
        res["mbit"] = sr["bits_per_second"] / 1e6
        res["bytes"] = sr["bytes"]
        res["secs"] = sr.get("seconds")
        if res["bytes"] > 0:
            res["retrans_b_per_mb"] = a.retrans * MSS / (res["bytes"] / 1e6)
        res["iperf_cc"] = end.get("sender_tcp_congestion")
        if not broken and res["mbit"] <= 0:
            broken.append("zero goodput")
    if a.rc != 0 and not broken:
        broken.append(f"iperf3 exited {a.rc}")
    if a.ss and a.ss_prev and os.path.exists(a.ss) and os.path.exists(a.ss_prev):
        flows = bench_caps.data_flows(a.ss, 65536, a.ss_prev)
        res["flows_data"] = len(flows)
        res["cc_seen"] = sorted(set(f["cc"] for f in flows if f["cc"]))
    if broken:
        res["broken"] = "; ".join(broken)
    tag = f"{res.get('sys')} N={res.get('n')} {res.get('cc') or res.get('syscc') or ''} rep {res.get('rep')}"
    if broken:
        print(f"  {tag}: BROKEN: {res['broken']}", file=sys.stderr)
        return emit(res, 1)
    extra = ""
    if "flows_data" in res:
        extra = f", data flows {res['flows_data']}, cc seen {','.join(res['cc_seen']) or '?'}"
    print(f"  {tag}: {res['mbit']:6.1f} Mbit/s, retrans {res.get('retrans_b_per_mb', 0):.0f} B/MB{extra}",
          file=sys.stderr)
    return emit(res)


# ---------------------------------------------------------------- sink / blast
def hostport(s):
    h, _, p = s.rpartition(":")
    return h.strip("[]"), int(p)


def cmd_sink(a):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(hostport(a.listen))
    ls.listen(64)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    total, accepted, closed = 0, 0, 0
    per = []
    samples = []
    buf = bytearray(1 << 18)
    err = None
    t_first = None
    deadline = time.time() + a.timeout
    nxt = time.time()
    while closed < a.conns:
        now = time.time()
        if now >= nxt:
            samples.append((now, total))
            nxt += a.period
            if nxt < now:  # we were late: do not bunch up samples
                nxt = now + a.period
        if now > deadline:
            err = f"timeout after {a.timeout}s: {accepted} of {a.conns} connections, {closed} closed, {total} bytes"
            break
        for key, _ in sel.select(max(0.0, min(nxt, deadline) - now)):
            if key.data is None:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                per.append(0)
                sel.register(c, selectors.EVENT_READ, len(per) - 1)
                accepted += 1
                if accepted >= a.conns:
                    sel.unregister(ls)
                continue
            c, i = key.fileobj, key.data
            try:
                n = c.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError as e:
                err = f"connection {i}: {e}"
                n = 0
            if n == 0:
                sel.unregister(c)
                c.close()
                closed += 1
                continue
            if t_first is None:
                t_first = time.time()
            per[i] += n
            total += n
        if err:
            break
    samples.append((time.time(), total))
    ls.close()
    json.dump({"samples": samples, "bytes": total, "per_conn": per, "conns": accepted,
               "t_first": t_first, "error": err}, open(a.out, "w"))
    if err:
        print(f"sink: BROKEN: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_blast(a):
    socks = []
    try:
        for _ in range(a.conns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if a.cc:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, a.cc.encode())
            s.settimeout(a.stall)
            s.connect(hostport(a.connect))
            socks.append(s)
    except OSError as e:
        print(f"blast: cannot connect to {a.connect}: {e}", file=sys.stderr)
        return 1
    chunk = bytes(range(256)) * 256  # 64 KiB
    sent = [0] * a.conns
    last = [0.0] * a.conns
    errs = []
    t_start = time.time()
    deadline = t_start + a.secs

    def run(i):
        s = socks[i]
        try:
            while time.time() < deadline:
                s.sendall(chunk)
                sent[i] += len(chunk)
            last[i] = time.time()
            s.shutdown(socket.SHUT_WR)
            s.settimeout(a.drain)
            while s.recv(4096):
                pass
        except OSError as e:
            errs.append(f"connection {i}: {e!r} after {sent[i]} bytes")
        s.close()

    th = [threading.Thread(target=run, args=(i,)) for i in range(a.conns)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    json.dump({"t_start": t_start, "t_last_write": max(last) if all(last) else None, "t_end": time.time(),
               "bytes": sum(sent), "per_conn": sent, "error": "; ".join(errs) or None}, open(a.out, "w"))
    if errs:
        print(f"blast: BROKEN: {'; '.join(errs)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- recovery
def series_at(samples):
    ts = [s[0] for s in samples]
    bs = [s[1] for s in samples]

    def at(t):
        import bisect
        i = bisect.bisect_left(ts, t)
        if i <= 0:
            return bs[0]
        if i >= len(ts):
            return bs[-1]
        t0, t1, b0, b1 = ts[i - 1], ts[i], bs[i - 1], bs[i]
        return b0 if t1 == t0 else b0 + (b1 - b0) * (t - t0) / (t1 - t0)
    return at


def mbit(at, t0, t1):
    return (at(t1) - at(t0)) * 8 / (t1 - t0) / 1e6 if t1 > t0 else None


def cmd_recovery(a):
    res = dict(json.loads(a.ctx))
    res["kind"] = "recovery"
    broken = []
    try:
        snk = json.load(open(a.sink))
        bl = json.load(open(a.blast))
    except (OSError, ValueError) as e:
        res["broken"] = f"missing sink/blast log ({e})"
        print(f"  recovery {res.get('sys')}: BROKEN: {res['broken']}", file=sys.stderr)
        return emit(res, 1)
    if snk.get("error"):
        broken.append("sink: " + snk["error"])
    if bl.get("error"):
        broken.append("sender: " + bl["error"])
    if not broken and snk["bytes"] != bl["bytes"]:
        broken.append(f"sent {bl['bytes']} bytes, received {snk['bytes']}")
    if a.cap_at is None:
        broken.append("no data flow was found to cap")
    if not broken and snk["bytes"] == 0:
        broken.append("zero goodput")
    if broken:
        res["broken"] = "; ".join(broken)
        print(f"  recovery {res.get('sys')}: BROKEN: {res['broken']}", file=sys.stderr)
        return emit(res, 1)
    at = series_at(snk["samples"])
    t0, tl, tc = bl["t_start"], bl["t_last_write"], a.cap_at
    ideal_old = a.n * payload_ceiling(a.rate)
    ideal = (a.n - 1) * payload_ceiling(a.rate) + htb_ceiling(a.cap_to)
    thr = 0.9 * ideal
    w, step = 0.5, 0.1
    # 0.5 s averages ending every 0.1 s from the drop to the sender's last write
    ends = []
    e = tc
    while e <= tl + 1e-9:
        ends.append(e)
        e += step
    avg = [(e, mbit(at, e - w, e)) for e in ends]
    # recovered at the first time t after the cap from which the goodput averaged over [t, t'] is
    # >= 90% of the new ideal for every t' >= t + 0.5 s up to the last write: the first 0.5 s
    # average is, and the transfer never falls behind that pace later (as bench_caps.py drop
    # judges it: a dip that a burst right after makes up cost no bytes; the worst 0.5 s and the
    # time below the threshold show the dips). 0 = it never fell behind.
    rec = None
    for t in ends:
        if t + w > tl + 1e-9:
            break
        if all(mbit(at, t, t2) >= thr for t2 in ends if t2 >= t + w - 1e-9):
            rec = t - tc
            break
    after = [m for e, m in avg if e >= tc + w]
    res.update({
        "cap_at_s": tc - t0, "cap_port": a.cap_port, "cap_to": a.cap_to, "ideal_old": ideal_old, "ideal_new": ideal,
        "before": mbit(at, max(t0 + 2.0, tc - 3.0), tc),
        "recovery_s": rec,
        "worst_05s": min(after) if after else None,
        # share of the time after the cap (0.5 s windows every 0.1 s) below 90% of the new ideal
        "below_frac": sum(1 for m in after if m < thr) / len(after) if after else None,
        "last5": mbit(at, tl - 5.0, tl),
        "mbit_total": snk["bytes"] * 8 / (tl - t0) / 1e6,
        "bytes": snk["bytes"],
        # plot: 0.5 s averages every 0.1 s over the whole transfer, time from the cap
        "series": [(round(x - tc, 2), round(mbit(at, x - w, x), 2))
                   for x in [t0 + w + k * step for k in range(int((tl - t0 - w) / step) + 1)]],
    })
    res["last5_ratio"] = res["last5"] / ideal if res["last5"] is not None else None
    rs = f"{rec:.1f} s" if rec is not None else "not recovered"
    print(f"  recovery {res.get('sys')} rep {res.get('rep')}: before {f1(res['before'])} Mbit/s, new ideal {ideal:.1f}, "
          f"recovered after {rs}, worst 0.5 s {f1(res['worst_05s'])}, below 0.9 x ideal {f1(100 * res['below_frac'] if after else None, 0)}% of the time, last 5 s {f1(res['last5'])} "
          f"({f1(res['last5_ratio'], 2)} of ideal)", file=sys.stderr)
    return emit(res)


# ---------------------------------------------------------------- tag / estimate
def cmd_tag(a):
    ctx = json.loads(a.ctx)
    rc = 0
    for line in open(a.file):
        if line.strip():
            r = json.loads(line)
            r.update(ctx)
            if "broken" in r:
                rc = 1
            print(json.dumps(r))
    return rc


def cmd_estimate(a):
    rtts = [float(x) for x in a.rtts.split()]
    ns, ccs = a.ns.split(), a.syscc.split()
    tun = 2 + (1 if a.agg else 0)  # mptcp, striper (+ agg-tunnel)
    t = 0.0
    for rtt in rtts:
        run = a.secs + a.omit + 2.0 + 8 * rtt / 1000  # connect, parameter exchange, results, pauses
        runs = 2 * a.reps + 2 * len(ns) * a.reps + len(ccs) * len(ns) * a.reps * tun
        t += runs * run + 4 + len(ccs) * len(ns) * 1.0
        if str(int(rtt)) in a.lat_rtts.split():
            for cc in ccs:
                if cc in a.lat_syscc.split():
                    t += a.reps * 2 * (a.lat_secs + 2 + 6 * rtt / 1000)
        if int(rtt) == a.rec_rtt and a.rec_syscc in ccs:
            t += a.reps * 2 * (a.rec_secs + 3 + 4 * rtt / 1000)
    print(int(t))
    return 0


# ---------------------------------------------------------------- report
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f1(x, nd=1):
    return "—" if x is None else f"{x:.{nd}f}"


def pctx(x):
    return None if x is None else 100 * x


def ratio(a, b, nd=2):
    return "—" if a is None or not b else f"{a / b:.{nd}f}"


def cmd_report(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    meta = json.load(open(a.meta))
    ok = [r for r in rows if "broken" not in r]
    out = []
    p = out.append
    rtts = [int(x) for x in meta["rtts"].split()]
    ns = [int(x) for x in meta["ns"].split()]
    ccs = meta["syscc"].split()

    def tput(sys_, n, rtt, cc=None, syscc=None, field="mbit"):
        return med([r.get(field) for r in ok if r["kind"] == "tput" and r["sys"] == sys_ and r["n"] == n
                    and r["rtt"] == rtt and (cc is None or r.get("cc") == cc)
                    and (syscc is None or r.get("syscc") == syscc)])

    p(f"# striper on an emulated WAN path (`scripts/bench-wan.sh`)")
    p("")
    p(f"{meta['date']}, kernel {meta['kernel']}, {meta['nproc']} CPUs, striper {meta['commit']}, {meta['iperf']}, "
      f"load average at the start {meta['load']}, took {meta['elapsed']}.")
    p("")
    p(f"Settings: `{meta['command']}`: RTTS=\"{meta['rtts']}\" ms, NS=\"{meta['ns']}\", SYSCC=\"{meta['syscc']}\", "
      f"REPS={meta['reps']}, SECS={meta['secs']} (OMIT={meta['omit']}), STRIPER_ARGS=\"{meta['striper_args']}\". "
      f"Path ({meta['wan']}): upload wc → ws, policer {meta['rate']:g} Mbit/s of IP bytes per TCP 5-tuple and direction, "
      f"{meta['burst']} KB bucket, packets over it dropped; one flow's payload ceiling "
      f"{payload_ceiling(meta['rate']):.2f} Mbit/s. A full run with the defaults takes {meta['full_estimate']}.")
    p("")
    for n_ in meta.get("notes", []):
        p(f"- {n_}")
    if meta.get("notes"):
        p("")
    p("## Goodput (Mbit/s, receiver, median of REPS)")
    p("")
    p("\"system CC\" is the namespaces' default congestion control: MPTCP's subflows, agg-tunnel's links and the plain "
      "latency stream use it; striper's stripes use it only where striper does not choose its own (builds with "
      "`--congestion` use bbr unless given `--congestion system`: see the last column, read from `ss -tni` mid-run). "
      "The one-flow and `-P N` columns set theirs with `iperf3 -C` and are measured once per RTT (repeated on each "
      f"system-CC row). Retransmissions: TcpRetransSegs of the sending namespace × {MSS} B per MB delivered.")
    p("")
    p("| RTT (ms) | system CC | N | 1 flow cubic | 1 flow bbr | -P N cubic | -P N bbr | MPTCP | agg-tunnel | striper "
      "| striper / (-P N bbr) | striper / (-P N cubic) | retrans B/MB -P N bbr | retrans B/MB striper | striper / -P N bbr retrans "
      "| stripes' CC (seen) |")
    p("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for rtt in rtts:
        for cc in ccs:
            for n in ns:
                s_c, s_b = tput("single", 1, rtt, "cubic"), tput("single", 1, rtt, "bbr")
                p_c, p_b = tput("par", n, rtt, "cubic"), tput("par", n, rtt, "bbr")
                m = tput("mptcp", n, rtt, syscc=cc)
                g = tput("agg", n, rtt, syscc=cc)
                st = tput("striper", n, rtt, syscc=cc)
                rp = tput("par", n, rtt, "bbr", field="retrans_b_per_mb")
                rs = tput("striper", n, rtt, syscc=cc, field="retrans_b_per_mb")
                gs = f1(g) if meta["agg"] else "not installed"
                sc = sorted(set(c for r in ok if r["kind"] == "tput" and r["sys"] == "striper" and r["n"] == n
                                and r["rtt"] == rtt and r.get("syscc") == cc for c in r.get("cc_seen", [])))
                p(f"| {rtt} | {cc} | {n} | {f1(s_c)} | {f1(s_b)} | {f1(p_c)} | {f1(p_b)} | {f1(m)} | {gs} | {f1(st)} "
                  f"| {ratio(st, p_b)} | {ratio(st, p_c)} | {f1(rp, 0)} | {f1(rs, 0)} | {ratio(rs, rp)} "
                  f"| {','.join(sc) or '?'} |")
    p("")
    seen = {}
    for r in ok:
        if r["kind"] == "tput" and r["sys"] in ("mptcp", "striper", "agg") and r.get("cc_seen"):
            seen.setdefault((r["sys"], r["syscc"]), set()).update(r["cc_seen"])
    if seen:
        p("Congestion control seen on the data flows mid-run (`ss -tni`): " + "; ".join(
            f"{s} under system {c}: {','.join(sorted(v))}" for (s, c), v in sorted(seen.items())) + ".")
        p("")

    lat = [r for r in ok if r["kind"] == "lat"]
    if lat or meta.get("lat_note"):
        p("## Latency under load (one record stream)")
        p("")
        p(f"{meta['lat_desc']}")
        p("")
        if lat:
            p("| RTT (ms) | system CC | path | goodput | delay median (ms) | delay p95 (ms) | inside the tunnel median "
              "| striper median − plain median (ms) | goal: ≤ 1 RTT |")
            p("|---:|---|---|---:|---:|---:|---:|---:|---|")
            for rtt in sorted(set(r["rtt"] for r in lat)):
                for cc in [c for c in ccs if any(r["rtt"] == rtt and r["syscc"] == c for r in lat)]:
                    def lm(sys_, k):
                        return med([r.get(k) for r in lat if r["rtt"] == rtt and r["syscc"] == cc and r["sys"] == sys_])
                    pm, sm = lm("plain", "delay_ms_med"), lm("striper", "delay_ms_med")
                    for sys_, label in (("plain", "plain TCP, 1 flow (system CC)"), ("striper", f"striper, {meta['lat_n']} stripes")):
                        if not any(r["rtt"] == rtt and r["syscc"] == cc and r["sys"] == sys_ for r in lat):
                            continue
                        inside = lm(sys_, "inside_med") if sys_ == "striper" else None
                        diff = goal = ""
                        if sys_ == "striper" and pm is not None and sm is not None:
                            diff = f"{sm - pm:+.0f}"
                            goal = "met" if sm <= pm + rtt else "not met"
                        p(f"| {rtt} | {cc} | {label} | {f1(lm(sys_, 'mbit'))} | {f1(lm(sys_, 'delay_ms_med'), 0)} "
                          f"| {f1(lm(sys_, 'delay_ms_p95'), 0)} | {bench_caps.fmt_bytes(inside) if inside is not None else '—'} "
                          f"| {diff} | {goal} |")
            p("")
        if meta.get("lat_note"):
            p(meta["lat_note"])
            p("")

    rec = [r for r in ok if r["kind"] == "recovery"]
    if rec or meta.get("rec_note"):
        p("## Recovery from a capped stripe")
        p("")
        p(f"{meta['rec_desc']}")
        p("")
        if rec:
            p("| system | goodput before | new ideal | recovery time (s) | recovered in | worst 0.5 s after the drop "
              "| time below 0.9 × new ideal after the drop | last 5 s | last 5 s / new ideal |")
            p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for sys_, label in (("par", f"{meta['rec_n']} plain TCP flows (bbr)"), ("striper", f"striper, {meta['rec_n']} stripes")):
                rr = [r for r in rec if r["sys"] == sys_]
                if not rr:
                    continue
                got = [r["recovery_s"] for r in rr if r["recovery_s"] is not None]
                p(f"| {label} | {f1(med([r['before'] for r in rr]))} | {f1(rr[0]['ideal_new'])} "
                  f"| {f1(med(got)) if got else 'not recovered'} | {len(got)} of {len(rr)} "
                  f"| {f1(med([r['worst_05s'] for r in rr]))} | {f1(pctx(med([r['below_frac'] for r in rr])), 0)}% "
                  f"| {f1(med([r['last5'] for r in rr]))} "
                  f"| {ratio(med([r['last5'] for r in rr]), rr[0]['ideal_new'])} |")
            p("")
        if meta.get("rec_note"):
            p(meta["rec_note"])
            p("")

    broken = [r for r in rows if "broken" in r]
    if broken:
        p("## Broken runs")
        p("")
        for r in broken:
            p(f"- {r.get('kind')} {r.get('sys')} RTT {r.get('rtt')} N={r.get('n')} "
              f"{r.get('cc') or r.get('syscc') or ''} rep {r.get('rep')}: {r['broken']}")
        p("")
    p(f"Raw results: `{os.path.basename(a.raw_name)}` (one JSON line per run).")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.md:
        open(a.md, "w").write(text)
    if a.plots:
        plot(a.plots, ok, meta, rtts, ns, ccs, tput)
    return 0


def plot(d, ok, meta, rtts, ns, ccs, tput):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not importable", file=sys.stderr)
        return
    made = []
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = [(cc, n) for cc in ccs for n in ns]
    width = 0.8 / max(1, len(groups))
    for gi, (cc, n) in enumerate(groups):
        xs, ys = [], []
        for ri, rtt in enumerate(rtts):
            st, pb = tput("striper", n, rtt, syscc=cc), tput("par", n, rtt, "bbr")
            if st is not None and pb:
                xs.append(ri + (gi - (len(groups) - 1) / 2) * width)
                ys.append(st / pb)
        ax.bar(xs, ys, width, label=f"N={n}, system CC {cc}")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(rtts)))
    ax.set_xticklabels([f"RTT {r} ms" for r in rtts])
    ax.set_ylabel("striper / iperf3 -P N (bbr)")
    ax.set_title(f"striper against N plain bbr flows, {meta['rate']:g} Mbit/s policer per flow")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fn = os.path.join(d, "wan-goodput.png")
    fig.savefig(fn, dpi=110)
    plt.close(fig)
    made.append(fn)
    rec = [r for r in ok if r["kind"] == "recovery"]
    if rec:
        fig, ax = plt.subplots(figsize=(8, 4))
        for sys_, label in (("par", f"{meta['rec_n']} plain TCP flows (bbr)"), ("striper", f"striper, {meta['rec_n']} stripes")):
            rr = [r for r in rec if r["sys"] == sys_]
            if rr:
                xs, ys = zip(*rr[0]["series"])
                ax.plot(xs, ys, label=f"{label} (rep {rr[0]['rep']})")
        ideal = rec[0]["ideal_new"]
        ax.axhline(ideal, color="gray", lw=0.8, ls="--", label=f"new ideal {ideal:.1f}")
        ax.axhline(0.9 * ideal, color="gray", lw=0.8, ls=":", label="0.9 × new ideal")
        ax.axvline(0, color="red", lw=0.8)
        ax.set_xlabel("s from the cap (one flow to %g Mbit/s)" % rec[0]["cap_to"])
        ax.set_ylabel("goodput, 0.5 s average (Mbit/s)")
        ax.set_title(f"recovery, RTT {rec[0]['rtt']} ms")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fn = os.path.join(d, "wan-recovery.png")
        fig.savefig(fn, dpi=110)
        plt.close(fig)
        made.append(fn)
    for fn in made:
        print(f"plot: {fn}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("iperf")
    i.add_argument("--json", required=True)
    i.add_argument("--rc", type=int, default=0)
    i.add_argument("--retrans", type=int, required=True)
    i.add_argument("--ss")
    i.add_argument("--ss-prev")
    i.add_argument("--ctx", required=True)
    s = sub.add_parser("sink")
    s.add_argument("--listen", required=True)
    s.add_argument("--conns", type=int, default=1)
    s.add_argument("--out", required=True)
    s.add_argument("--period", type=float, default=0.1)
    s.add_argument("--timeout", type=float, default=120)
    b = sub.add_parser("blast")
    b.add_argument("--connect", required=True)
    b.add_argument("--conns", type=int, default=1)
    b.add_argument("--secs", type=float, required=True)
    b.add_argument("--cc")
    b.add_argument("--out", required=True)
    b.add_argument("--stall", type=float, default=30)
    b.add_argument("--drain", type=float, default=60)
    r = sub.add_parser("recovery")
    r.add_argument("--sink", required=True)
    r.add_argument("--blast", required=True)
    r.add_argument("--cap-at", type=float)
    r.add_argument("--cap-port", type=int)
    r.add_argument("--cap-to", type=float, required=True)
    r.add_argument("--rate", type=float, required=True)
    r.add_argument("--n", type=int, required=True)
    r.add_argument("--ctx", required=True)
    t = sub.add_parser("tag")
    t.add_argument("--ctx", required=True)
    t.add_argument("file")
    e = sub.add_parser("estimate")
    for k in ("rtts", "ns", "syscc", "lat_rtts", "lat_syscc", "rec_syscc"):
        e.add_argument("--" + k.replace("_", "-"), required=True)
    for k in ("reps", "rec_rtt"):
        e.add_argument("--" + k.replace("_", "-"), type=int, required=True)
    for k in ("secs", "omit", "lat_secs", "rec_secs"):
        e.add_argument("--" + k.replace("_", "-"), type=float, required=True)
    e.add_argument("--agg", type=int, default=0)
    rp = sub.add_parser("report")
    rp.add_argument("--results", required=True)
    rp.add_argument("--meta", required=True)
    rp.add_argument("--md")
    rp.add_argument("--plots")
    rp.add_argument("--raw-name", default="wan-raw.jsonl")
    a = ap.parse_args()
    fn = {"iperf": cmd_iperf, "sink": cmd_sink, "blast": cmd_blast, "recovery": cmd_recovery, "tag": cmd_tag,
          "estimate": cmd_estimate, "report": cmd_report}[a.cmd]
    sys.exit(fn(a))


if __name__ == "__main__":
    main()
