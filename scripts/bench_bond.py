#!/usr/bin/env python3
"""bench_bond.py: the measuring half of scripts/bench-bond.sh's failover runs.

  sink ADDR PORT OUT     accept one connection, read it to EOF, write what
                         arrived when (CLOCK_MONOTONIC, shared by every
                         namespace of the host), its length and CRC32 to OUT
  send ADDR PORT SECS OUT [--at T CMD]...
                         write a seeded pseudo-random stream for SECS seconds,
                         running each shell CMD T seconds after the start;
                         the stream's length and CRC32 and the instants the
                         commands ran go to OUT
  report SINK SEND       the receiver's Mbit/s per second, and for each event
                         the gap: the longest time in which no byte arrived,
                         among the stretches that end after the event

The gap is measured at the receiver, read by read: a stall of the tunnel
shows as one long interval between two reads. The largest interval in the
seconds before the first event is printed too (the noise floor of reading
in Python on a busy machine). Exit code 1 when the bytes differ.
Standard library only.
"""
import json
import random
import select
import socket
import subprocess
import sys
import time
import zlib

BLOCK = random.Random(12).randbytes(1 << 20)


def sink(addr, port, out):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, int(port)))
    ls.listen(1)
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


def send(addr, port, secs, out, events):
    s = socket.create_connection((addr, int(port)), timeout=10)
    # Non-blocking: a stalled tunnel must not delay the events.
    s.setblocking(False)
    start = time.monotonic()
    end = start + float(secs)
    pending = sorted((float(t), cmd) for t, cmd in events)
    ran, crc, total, off = [], 0, 0, 0
    chunk = 1 << 16
    view = memoryview(BLOCK + BLOCK[:chunk])
    while True:
        now = time.monotonic()
        while pending and now >= start + pending[0][0]:
            t, cmd = pending.pop(0)
            ran.append((cmd, time.monotonic()))
            subprocess.run(cmd, shell=True, check=True, timeout=20)
        if now >= end:
            break
        due = min([end] + [start + t for t, _ in pending[:1]])
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
    s.setblocking(True)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(60)
    while s.recv(1 << 16):
        pass
    s.close()
    with open(out, "w") as f:
        json.dump({"bytes": total, "crc": crc, "start": start, "events": ran}, f)


def report(sink_file, send_file):
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
    events = tx["events"]
    for k, (cmd, at) in enumerate(events):
        until = events[k + 1][1] if k + 1 < len(events) else at + 20
        gaps = [(b - a, a) for a, b in zip(times, times[1:]) if b > at and a < until]
        if not gaps:
            print("%s at %.2f s: no byte arrived after it" % (cmd, at - t0))
            continue
        gap, since = max(gaps)
        print("%s at %.2f s: gap %.0f ms (no byte from %.2f s to %.2f s)" % (
            cmd, at - t0, gap * 1e3, since - t0, since + gap - t0))
    return 0 if ok else 1


def main(argv):
    if len(argv) >= 4 and argv[0] == "sink":
        sink(*argv[1:4])
        return 0
    if len(argv) >= 5 and argv[0] == "send":
        rest, events = argv[5:], []
        while len(rest) >= 3 and rest[0] == "--at":
            events.append((rest[1], rest[2]))
            rest = rest[3:]
        if rest:
            print("bench_bond.py send: unexpected %r" % rest, file=sys.stderr)
            return 2
        send(*argv[1:5], events)
        return 0
    if len(argv) == 3 and argv[0] == "report":
        return report(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
