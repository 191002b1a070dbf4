#!/usr/bin/env python3
"""bench_scale.py: the measuring half of scripts/bench-scale.sh.

Subcommands (standard library only):

  echo    an echo server for many connections (the tunnel's target)
  idle    open N connections through an entrance, exchange 16 bytes on each,
          keep them open and idle; measure the CPU and RSS of the given
          processes over a window; print one JSON line
  burst   open N connections, B at a time, each sending 16 bytes and timing
          the first echoed byte; print one JSON line with p50/p99/max and the
          kernel's ListenOverflows/ListenDrops during the burst

Exit status: 0 fine, 1 a broken run (a connection failed, an echo was wrong).
"""
import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import time


def hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cmd_echo(a):
    raise_nofile()
    sel = selectors.DefaultSelector()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(hostport(a.listen))
    ls.listen(4096)
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
    deadline = time.monotonic() + a.secs
    print(f"echo: listening on {a.listen}", flush=True)
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            if s is ls:
                while True:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        break
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                continue
            try:
                s.sendall(data)
            except OSError:
                sel.unregister(s)
                s.close()
    return 0


PROBE = b"0123456789abcdef"


def connect_and_ping(addr, timeout):
    """Connects, sends 16 bytes, waits for them back; returns (socket, seconds)."""
    t0 = time.monotonic()
    s = socket.create_connection(addr, timeout=timeout)
    s.sendall(PROBE)
    got = b""
    while len(got) < len(PROBE):
        d = s.recv(len(PROBE) - len(got))
        if not d:
            raise OSError("closed before the echo")
        got += d
    if got != PROBE:
        raise OSError(f"wrong echo {got!r}")
    return s, time.monotonic() - t0


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def nstat(names):
    vals = {}
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for h, v in zip(lines[0::2], lines[1::2]):
        for k, x in zip(h.split()[1:], v.split()[1:]):
            if k in names:
                vals[k] = int(x)
    return vals


def open_many(addr, n, batch, timeout):
    """Opens n connections, `batch` in parallel (threads), pinging each."""
    import concurrent.futures as cf
    socks, times, errors = [], [], []
    with cf.ThreadPoolExecutor(max_workers=batch) as ex:
        for start in range(0, n, batch):
            futs = [ex.submit(connect_and_ping, addr, timeout) for _ in range(min(batch, n - start))]
            for f in futs:
                try:
                    s, t = f.result()
                    socks.append(s)
                    times.append(t)
                except Exception as e:  # noqa: BLE001 - report every kind of failure
                    errors.append(repr(e))
    return socks, times, errors


def cmd_idle(a):
    raise_nofile()
    pids = [int(p) for p in a.pids.split(",")]
    addr = hostport(a.connect)
    rss0 = [proc_rss_kib(p) for p in pids]
    t_open = time.monotonic()
    socks, _, errors = open_many(addr, a.sessions, a.batch, a.timeout)
    t_open = time.monotonic() - t_open
    # Let the sessions settle: buffers are given back after 2 s idle.
    time.sleep(a.settle)
    hz = os.sysconf("SC_CLK_TCK")
    c0 = [proc_ticks(p) for p in pids]
    w0 = time.monotonic()
    time.sleep(a.window)
    c1 = [proc_ticks(p) for p in pids]
    w = time.monotonic() - w0
    rss1 = [proc_rss_kib(p) for p in pids]
    # Still alive after the idle spell: every connection echoes at once.
    wake = []
    for s in socks[: a.wake]:
        t0 = time.monotonic()
        try:
            s.settimeout(a.timeout)
            s.sendall(PROBE)
            got = b""
            while len(got) < len(PROBE):
                d = s.recv(len(PROBE) - len(got))
                if not d:
                    raise OSError("closed")
                got += d
            wake.append(time.monotonic() - t0)
        except OSError as e:
            errors.append(f"wake: {e!r}")
    out = {
        "sessions": len(socks), "wanted": a.sessions, "open_s": round(t_open, 2),
        "window_s": round(w, 2),
        "cpu_pct": [round(100 * (y - x) / hz / w, 2) for x, y in zip(c0, c1)],
        "rss_kib_before": rss0, "rss_kib_idle": rss1,
        "rss_kib_per_session": [round((r1 - r0) / max(1, len(socks)), 1) for r0, r1 in zip(rss0, rss1)],
        "wake_ms_max": round(1000 * max(wake), 2) if wake else None,
        "errors": errors[:5], "error_count": len(errors),
    }
    for s in socks:
        s.close()
    print(json.dumps(out), flush=True)
    return 1 if errors else 0


def wait_quiet(pids, limit_s=30.0):
    """Until the processes use under 2% of a core over half a second (the
    sessions of a previous run closed), at most limit_s."""
    hz = os.sysconf("SC_CLK_TCK")
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        c0 = sum(proc_ticks(p) for p in pids)
        time.sleep(0.5)
        if (sum(proc_ticks(p) for p in pids) - c0) / hz < 0.01:
            return


def cmd_burst(a):
    raise_nofile()
    addr = hostport(a.connect)
    if a.pids:
        wait_quiet([int(p) for p in a.pids.split(",")])
    keys = {"ListenOverflows", "ListenDrops"}
    n0 = nstat(keys)
    socks, times, errors = open_many(addr, a.conns, a.batch, a.timeout)
    n1 = nstat(keys)
    for s in socks:
        s.close()
    times.sort()

    def pct(p):
        return round(1000 * times[min(len(times) - 1, int(p * len(times)))], 2) if times else None
    out = {
        "conns": len(times), "wanted": a.conns, "batch": a.batch,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(1000 * times[-1], 2) if times else None,
        "mean_ms": round(1000 * statistics.mean(times), 2) if times else None,
        "listen_overflows": n1.get("ListenOverflows", 0) - n0.get("ListenOverflows", 0),
        "listen_drops": n1.get("ListenDrops", 0) - n0.get("ListenDrops", 0),
        "errors": errors[:5], "error_count": len(errors),
    }
    print(json.dumps(out), flush=True)
    return 1 if errors else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--listen", required=True)
    e.add_argument("--secs", type=float, default=3600)
    i = sub.add_parser("idle")
    i.add_argument("--connect", required=True)
    i.add_argument("--pids", required=True, help="comma-separated PIDs to measure")
    i.add_argument("--sessions", type=int, default=1000)
    i.add_argument("--batch", type=int, default=100)
    i.add_argument("--settle", type=float, default=4.0)
    i.add_argument("--window", type=float, default=10.0)
    i.add_argument("--wake", type=int, default=50, help="connections pinged again after the window")
    i.add_argument("--timeout", type=float, default=10.0)
    b = sub.add_parser("burst")
    b.add_argument("--connect", required=True)
    b.add_argument("--conns", type=int, default=2000)
    b.add_argument("--batch", type=int, default=200)
    b.add_argument("--timeout", type=float, default=10.0)
    b.add_argument("--pids", default="", help="start once these processes are quiet")
    a = p.parse_args()
    return {"echo": cmd_echo, "idle": cmd_idle, "burst": cmd_burst}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
