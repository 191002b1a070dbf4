#!/usr/bin/env python3
"""bench_bond.py: the measuring half of scripts/bench-bond.sh's failover runs.

  sink ADDR PORT OUT     accept one connection, read it to EOF, write what
                         arrived when (CLOCK_MONOTONIC, shared by every
                         namespace of the host), its length and CRC32 to OUT
  send ADDR PORT SECS OUT [--links DEV,DEV...] [--at T CMD [--label NAME]]...
                         write a seeded pseudo-random stream for SECS seconds,
                         running each shell CMD T seconds after the start
                         (NAME: what the plot calls it); the stream's length
                         and CRC32 and the instants the commands ran go to
                         OUT, and with --links each device's tx_bytes every
                         100 ms (from /sys/class/net: the namespace the
                         sender runs in)
  report SINK SEND [--summary FILE NAME]
                         the receiver's Mbit/s per second, and for each event
                         the gap: the longest time in which no byte arrived,
                         among the stretches that end after the event;
                         --summary appends the run's figures to FILE as a
                         JSON line named NAME (gaps after labelled events,
                         the floor before them, 100 ms bins under half the
                         mean before them, median Mbit/s per stretch)
  plot SINK SEND OUT.svg [--title T]
                         Mbit/s against time in 100 ms bins as an SVG: the
                         bytes delivered at the receiver, each link's bytes
                         sent (when send had --links), a dashed line at each
                         event (the labelled ones, or all when none is)
  selftest               report and plot on synthetic data, and a short
                         loopback send with --links lo (no root, < 1 s)

The gap is measured at the receiver, read by read: a stall of the tunnel
shows as one long interval between two reads. The largest interval in the
seconds before the first event is printed too (the noise floor of reading
in Python on a busy machine). Exit code 1 when the bytes differ.
Standard library only.
"""
import contextlib
import io
import json
import statistics
import os
import random
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
import zlib

# No scripts/__pycache__ (the benchmark runs as root in a source tree).
sys.dont_write_bytecode = True
import bench_plot  # noqa: E402

BLOCK = random.Random(12).randbytes(1 << 20)
PERIOD = 0.1  # link samples and plot bins, seconds


def listener(addr, port):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, int(port)))
    ls.listen(1)
    return ls


def sink(ls, out):
    ls.settimeout(120)
    c, _ = ls.accept()
    c.settimeout(60)
    times, sizes, crc, total = [], [], 0, 0
    buf = bytearray(1 << 18)
    while True:
        n = c.recv_into(buf)
        if n == 0:
            break
        times.append(time.monotonic())
        sizes.append(n)
        crc = zlib.crc32(memoryview(buf)[:n], crc)
        total += n
    c.close()
    with open(out, "w") as f:
        json.dump({"bytes": total, "crc": crc, "t": times, "n": sizes}, f)


class Links:
    """Each device's tx_bytes, read by the send loop when PERIOD has passed."""

    def __init__(self, devs):
        self.devs = devs
        self.samples = []  # [monotonic time, bytes per device...]
        self.due = 0.0
        for d in devs:
            try:
                self.read(d)
            except (OSError, ValueError) as e:
                raise SystemExit("bench_bond.py send: --links %s: no such device in this "
                                 "namespace (%s)" % (d, e))

    @staticmethod
    def read(dev):
        with open("/sys/class/net/%s/statistics/tx_bytes" % dev, "rb") as f:
            return int(f.read())

    def sample(self):
        row = [time.monotonic()]
        for d in self.devs:
            try:
                row.append(self.read(d))
            except (OSError, ValueError):
                row.append(None)  # a deleted device: a hole in its line
        self.samples.append(row)

    def poll(self, now):
        """Sample when due; the next due time (for the caller's select)."""
        if not self.devs:
            return float("inf")
        if now >= self.due:
            self.sample()
            # Steps fixed from the first sample, so one late sample does not
            # shift the later ones; a slow event command skips steps.
            late = 0 if not self.due else int((now - self.due) / PERIOD)
            self.due = (self.due or now) + PERIOD * (late + 1)
        return self.due


def send(addr, port, secs, out, events, links=()):
    links = Links(list(links))
    s = socket.create_connection((addr, int(port)), timeout=10)
    # Non-blocking: a stalled tunnel must not delay the events.
    s.setblocking(False)
    start = time.monotonic()
    end = start + float(secs)
    pending = sorted((float(t), cmd, label) for t, cmd, label in events)
    ran, labels, crc, total, off = [], [], 0, 0, 0
    chunk = 1 << 16
    view = memoryview(BLOCK + BLOCK[:chunk])
    while True:
        now = time.monotonic()
        sample_due = links.poll(now)
        while pending and now >= start + pending[0][0]:
            t, cmd, label = pending.pop(0)
            ran.append((cmd, time.monotonic()))
            labels.append(label)
            subprocess.run(cmd, shell=True, check=True, timeout=20)
        if now >= end:
            break
        due = min([end, sample_due] + [start + t for t, _, _ in pending[:1]])
        _, w, _ = select.select([], [s], [], max(0.0, min(due - now, 0.05)))
        if not w:
            continue
        try:
            n = s.send(view[off:off + chunk])
        except BlockingIOError:
            continue
        crc = zlib.crc32(view[off:off + n], crc)
        total += n
        off = (off + n) % len(BLOCK)
    s.shutdown(socket.SHUT_WR)
    # The links keep carrying what the tunnel holds until the server closes.
    deadline = time.monotonic() + 60
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise SystemExit("bench_bond.py send: no EOF from the tunnel within 60 s")
        r, _, _ = select.select([s], [], [], max(0.0, min(links.poll(now), deadline) - now))
        if r:
            try:
                if not s.recv(1 << 16):
                    break
            except BlockingIOError:
                pass
    if links.devs:
        links.sample()
    s.close()
    result = {"bytes": total, "crc": crc, "start": start, "events": ran, "labels": labels}
    if links.devs:
        result["links"] = links.devs
        result["samples"] = links.samples
    with open(out, "w") as f:
        json.dump(result, f)


def event_names(tx):
    """(name for report, instant, label or None) per event. The labels are a
    list of their own in the send file so that older readers still work."""
    labels = tx.get("labels") or [None] * len(tx["events"])
    return [("%s [%s]" % (cmd, lab) if lab else cmd, at, lab)
            for (cmd, at), lab in zip(tx["events"], labels)]


def report(sink_file, send_file, summary=None, name=None):
    rx = json.load(open(sink_file))
    tx = json.load(open(send_file))
    ok = rx["bytes"] == tx["bytes"] and rx["crc"] == tx["crc"]
    print("bytes sent %d, received %d, CRC32 %s" % (
        tx["bytes"], rx["bytes"], "equal" if ok else "DIFFERENT"))
    t0, times, sizes = tx["start"], rx["t"], rx["n"]
    per = {}
    for t, n in zip(times, sizes):
        per[int(t - t0)] = per.get(int(t - t0), 0) + n
    last = max(per) if per else -1
    print("| s | " + " | ".join(str(k) for k in range(last + 1)) + " |")
    print("|---" * (last + 2) + "|")
    print("| Mbit/s | " + " | ".join(
        "%.1f" % (per.get(k, 0) * 8 / 1e6) for k in range(last + 1)) + " |")
    first = min((t for _, t in tx["events"]), default=None)
    if first is not None:
        quiet = [b - a for a, b in zip(times, times[1:]) if first - 5 <= a and b <= first]
        if quiet:
            print("largest interval between reads in the 5 s before the first event: %.1f ms"
                  % (max(quiet) * 1e3))
    events = event_names(tx)
    for k, (cmd, at, _) in enumerate(events):
        until = events[k + 1][1] if k + 1 < len(events) else at + 20
        gaps = [(b - a, a) for a, b in zip(times, times[1:]) if b > at and a < until]
        if not gaps:
            print("%s at %.2f s: no byte arrived after it" % (cmd, at - t0))
            continue
        gap, since = max(gaps)
        print("%s at %.2f s: gap %.0f ms (no byte from %.2f s to %.2f s)" % (
            cmd, at - t0, gap * 1e3, since - t0, since + gap - t0))
    if summary:
        with open(summary, "a") as f:
            f.write(json.dumps(summarise(name, ok, tx, times, sizes)) + "\n")
    return 0 if ok else 1


def summarise(name, ok, tx, times, sizes):
    """One run in numbers for a table across runs: the gap after each
    labelled event, the largest interval between reads in the 5 s before
    the first one (the floor a gap is read against), and the median Mbit/s
    over the whole seconds before, between and after the labelled events."""
    t0 = tx["start"]
    marks = [(lab, at) for _, at, lab in event_names(tx) if lab]
    out = {"name": name, "ok": ok, "gaps": {}, "mbit": []}
    if not marks:
        return out
    quiet = [b - a for a, b in zip(times, times[1:])
             if marks[0][1] - 5 <= a and b <= marks[0][1]]
    out["quiet_ms"] = round(max(quiet, default=0) * 1e3, 1)
    # Lumps: 100 ms bins in those 5 s that got under half their mean (a
    # receiver waiting on a late frame, then given everything at once).
    first = marks[0][1]
    bins = [0] * 50
    for t, n in zip(times, sizes):
        k = int((t - (first - 5)) / 0.1)
        if 0 <= k < 50:
            bins[k] += n
    mean = sum(bins) / 50
    out["lumps"] = sum(1 for b in bins if b < mean / 2)
    for k, (lab, at) in enumerate(marks):
        until = marks[k + 1][1] if k + 1 < len(marks) else at + 20
        gaps = [b - a for a, b in zip(times, times[1:]) if b > at and a < until]
        out["gaps"][lab] = round(max(gaps, default=float("nan")) * 1e3, 1)
    per = {}
    for t, n in zip(times, sizes):
        per[int(t - t0)] = per.get(int(t - t0), 0) + n
    edges = [0] + [int(at - t0) for _, at in marks] + [max(per, default=0)]
    for a, b in zip(edges, edges[1:]):
        # Whole seconds only: the first after an edge is a transition.
        secs = [per.get(k, 0) * 8 / 1e6 for k in range(a + 1, b)]
        out["mbit"].append(round(statistics.median(secs), 1) if secs else None)
    return out


COLOURS = ["#000000", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def plot(sink_file, send_file, out, title=None):
    rx = json.load(open(sink_file))
    tx = json.load(open(send_file))
    t0 = tx["start"]
    bins = {}
    for t, n in zip(rx["t"], rx["n"]):
        k = max(0, int((t - t0) / PERIOD))
        bins[k] = bins.get(k, 0) + n
    series = [("delivered at the receiver", COLOURS[0], [
        ((k + 0.5) * PERIOD, bins.get(k, 0) * 8 / PERIOD / 1e6)
        for k in range(max(bins, default=-1) + 1)])]
    samples = tx.get("samples", [])
    for i, dev in enumerate(tx.get("links", [])):
        pts = []
        for a, b in zip(samples, samples[1:]):
            # A device deleted, or re-created with its counter at 0: a hole.
            if None not in (a[i + 1], b[i + 1]) and b[i + 1] >= a[i + 1] and b[0] > a[0]:
                pts.append(((a[0] + b[0]) / 2 - t0,
                            (b[i + 1] - a[i + 1]) * 8 / (b[0] - a[0]) / 1e6))
        series.append(("%s sent (headers included)" % dev,
                       COLOURS[1 + i % (len(COLOURS) - 1)], pts))
    named = event_names(tx)
    if any(lab for _, _, lab in named):
        events = [(at - t0, lab) for _, at, lab in named if lab]
    else:
        events = [(at - t0, cmd if len(cmd) <= 24 else cmd[:21] + "...") for cmd, at, _ in named]
    if title is None:
        title = "Mbit/s in %d ms bins" % (PERIOD * 1e3)
    with open(out, "w", encoding="utf-8") as f:
        f.write(bench_plot.render(title, series, events))


def selftest():
    """report and plot on synthetic data with a known gap, then a short real
    send over loopback with --links lo; raises AssertionError on a mismatch."""
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="bench_bond.")
    t0, gap = 1000.0, 0.3
    # 38 Mbit/s read every 10 ms; nothing from 6.05 s to 6.35 s after link
    # B fails at 6 s; B back at 14 s; a snapshot at 5 s that is not drawn.
    times = [t0 + k / 100 for k in range(1, 2000) if not 605 < k < 605 + gap * 100]
    rx = {"t": times, "n": [47500] * len(times), "bytes": 47500 * len(times), "crc": 7}
    samples = [[t0 + k / 10, 356250 * k, 118750 * min(k, 60) + 118750 * max(0, k - 140)]
               for k in range(201)]
    tx = {"bytes": rx["bytes"], "crc": 7, "start": t0,
          "events": [["ss -tin", t0 + 5], ["ip link set bcB down", t0 + 6],
                     ["ip link set bcB up", t0 + 14]],
          "labels": [None, "B fails", "B back"], "links": ["bcA", "bcB"], "samples": samples}
    paths = {n: os.path.join(tmp, n) for n in ("sink.json", "send.json", "old.json",
                                                 "bad.json", "a.svg", "b.svg")}
    for name, data in (("sink.json", rx), ("send.json", tx),
                       ("bad.json", dict(rx, crc=8)),
                       ("old.json", {k: tx[k] for k in ("bytes", "crc", "start", "events")})):
        with open(paths[name], "w") as f:
            json.dump(data, f)

    def run(*argv):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(list(argv))
        return code, buf.getvalue()

    code, out = run("report", paths["sink.json"], paths["send.json"])
    assert code == 0, out
    gaps = [int(g) for g in re.findall(r": gap (\d+) ms", out)]
    assert gaps == [10, round(gap * 1e3), 10], (gaps, out)
    assert "ip link set bcB down [B fails] at 6.00 s" in out, out
    summary = os.path.join(tmp, "summary.jsonl")
    code, out = run("report", paths["sink.json"], paths["send.json"], "--summary", summary, "x")
    assert code == 0, out
    line = json.loads(open(summary).read())
    assert line["gaps"] == {"B fails": gap * 1e3, "B back": 10.0}, line
    assert line["quiet_ms"] == 10.0 and line["mbit"] == [38.0, 38.0, 38.0], line
    assert line["lumps"] == 0, line
    code, out = run("report", paths["bad.json"], paths["send.json"])
    assert code == 1 and "CRC32 DIFFERENT" in out, out

    def svg_of(send_file, svg):
        code, out = run("plot", paths["sink.json"], send_file, svg, "--title", "self-test")
        assert code == 0, out
        root = ET.parse(svg).getroot()
        ns = "{http://www.w3.org/2000/svg}"
        lines = root.findall(ns + "polyline")
        dashed = [e for e in root.findall(ns + "line") if e.get("stroke-dasharray")]
        texts = [e.text for e in root.iter(ns + "text")]
        return lines, dashed, texts

    lines, dashed, texts = svg_of(paths["send.json"], paths["a.svg"])
    assert len(lines) == 3 and len(dashed) == 2, (len(lines), len(dashed))
    assert {"B fails", "B back", "self-test"} <= set(texts), texts
    # The gap shows: the bins 6.1-6.2 s and 6.2-6.3 s are on the x axis, and
    # link B's line is on it from 6 s to 14 s.
    x_axis = str(bench_plot.Y0)
    rx_pts = [p.split(",") for p in lines[-1].get("points").split()]  # drawn last
    assert len(rx_pts) == 200 and sum(y == x_axis for _, y in rx_pts) == 2, rx_pts
    b_pts = [p.split(",") for p in lines[0].get("points").split()]
    assert sum(y == x_axis for _, y in b_pts) == 80, b_pts
    lines, dashed, texts = svg_of(paths["old.json"], paths["b.svg"])
    assert len(lines) == 1 and len(dashed) == 3, (len(lines), len(dashed))
    assert "ip link set bcB down" in texts, texts

    # The real sender: a sink on an ephemeral loopback port, 0.3 s, lo sampled.
    ls = listener("127.0.0.1", 0)
    port = ls.getsockname()[1]
    th = threading.Thread(target=sink, args=(ls, paths["sink.json"]), daemon=True)
    th.start()
    send("127.0.0.1", port, 0.3, paths["send.json"], [("0.1", "true", "mark")], ["lo"])
    th.join(10)
    assert not th.is_alive(), "the sink did not finish"
    code, out = run("report", paths["sink.json"], paths["send.json"])
    assert code == 0 and "CRC32 equal" in out, out
    tx = json.load(open(paths["send.json"]))
    assert tx["labels"] == ["mark"] and tx["links"] == ["lo"], tx
    smp = tx["samples"]
    assert len(smp) >= 3 and all(b[0] > a[0] for a, b in zip(smp, smp[1:])), smp
    # Loopback carries the stream once plus headers (and whatever else ran).
    assert smp[-1][1] - smp[0][1] >= tx["bytes"] > 0, (smp, tx["bytes"])
    for name in list(paths.values()) + [summary]:
        if os.path.exists(name):
            os.remove(name)
    os.rmdir(tmp)
    print("bench_bond.py selftest: ok (%.2f s)" % (time.monotonic() - started))


def main(argv):
    if len(argv) >= 4 and argv[0] == "sink":
        sink(listener(argv[1], argv[2]), argv[3])
        return 0
    if len(argv) >= 5 and argv[0] == "send":
        rest, events, links = argv[5:], [], []
        while rest:
            if len(rest) >= 3 and rest[0] == "--at":
                events.append((rest[1], rest[2], None))
                rest = rest[3:]
            elif len(rest) >= 2 and rest[0] == "--label" and events:
                events[-1] = events[-1][:2] + (rest[1],)
                rest = rest[2:]
            elif len(rest) >= 2 and rest[0] == "--links":
                links += [d for d in rest[1].split(",") if d]
                rest = rest[2:]
            else:
                print("bench_bond.py send: unexpected %r (--label follows its --at)" % rest,
                      file=sys.stderr)
                return 2
        send(*argv[1:5], events, links)
        return 0
    if len(argv) == 3 and argv[0] == "report":
        return report(argv[1], argv[2])
    if len(argv) == 6 and argv[0] == "report" and argv[3] == "--summary":
        return report(argv[1], argv[2], argv[4], argv[5])
    if len(argv) in (4, 6) and argv[0] == "plot" and (len(argv) == 4 or argv[4] == "--title"):
        plot(*argv[1:4], title=argv[5] if len(argv) == 6 else None)
        return 0
    if argv == ["selftest"]:
        selftest()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
