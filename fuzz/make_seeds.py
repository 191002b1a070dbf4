#!/usr/bin/env python3
"""Writes hand-made seed inputs for the fuzz targets into DIR/<target>/.

    python3 fuzz/make_seeds.py DIR

The committed corpus (fuzz/corpus/) started from these seeds and was then
grown and minimized by `cargo fuzz run` / `cargo fuzz cmin`; this script
documents the input formats (see pipes/src/fuzzing.rs) and can rebuild
a starting point from scratch.
"""
import os
import struct
import sys
import zlib

FT = dict(DATA=1, ACK=2, FIN=3, RST=4, PING=5, PONG=6)


def frame(ty, value, payload=b"", flags=0, reserved=0):
    h = struct.pack(">BBHIQ", ty, flags, reserved, len(payload), value)
    return h + struct.pack(">I", zlib.crc32(h + payload) & 0xFFFFFFFF) + payload


def rst(code, msg):
    return struct.pack(">H", code) + msg.encode()


def client_hello(kind=1, index=0, count=2, session=b"\x11" * 16, nonce=b"\x22" * 16,
                 window=8 << 20, max_payload=256 << 10, version=1, reserved=b"\0" * 16):
    return (b"STRP" + bytes([version, kind, index, count]) + session + nonce
            + struct.pack(">II", window, max_payload) + reserved)


def server_hello(status=0, nonce=b"\x33" * 16, window=8 << 20, max_payload=256 << 10,
                 proof=b"\x44" * 32, version=1):
    return (b"STRS" + bytes([version, status, 0, 0]) + nonce
            + struct.pack(">II", window, max_payload) + proof)


def frame_seeds():
    d = frame(FT["DATA"], 0, b"hello")
    yield "data", d
    yield "every_type", (d + frame(FT["ACK"], 5, flags=1) + frame(FT["FIN"], 5)
                         + frame(FT["PING"], 7) + frame(FT["PONG"], 7)
                         + frame(FT["RST"], 0, rst(1, "protocol violation")))
    yield "truncated", d[:-1]
    yield "header_only", d[:20]
    big = bytearray(frame(FT["DATA"], 1 << 40, b"x" * 300))
    yield "data_300", bytes(big)
    big[4:8] = struct.pack(">I", 0xFFFFFFFF)
    yield "too_large", bytes(big)
    bad = bytearray(d)
    bad[-1] ^= 1
    yield "bad_crc", bytes(bad)
    yield "unknown_type", frame(9, 0)
    yield "reserved", frame(FT["ACK"], 0, reserved=1)
    yield "ack_with_payload", frame(FT["ACK"], 0, b"x")
    yield "short_rst", frame(FT["RST"], 0, b"x")
    yield "empty_data", frame(FT["DATA"], 0)
    yield "rst_utf8", frame(FT["RST"], 0, rst(3, "cible injoignable: \u00e9\u00e8"))


def handshake_seeds():
    yield "client_hello", client_hello()
    yield "client_join", client_hello(kind=2, index=63, count=64, window=1 << 18, max_payload=1 << 14)
    yield "client_bad_kind", client_hello(kind=3)
    yield "client_bad_index", client_hello(index=2, count=2)
    yield "client_bad_version", client_hello(version=2)
    yield "client_small_window", client_hello(window=1000)
    yield "client_reserved", client_hello(reserved=b"\0" * 15 + b"\1")
    yield "client_short", client_hello()[:40]
    yield "server_hello", server_hello()
    yield "server_refused", server_hello(status=5, window=0, max_payload=0, nonce=b"\0" * 16, proof=b"\0" * 32)
    yield "server_unknown_status", server_hello(status=200)
    yield "server_small_window", server_hello(window=100)
    yield "http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    yield "tls", bytes.fromhex("160301020001") + b"\0" * 60
    yield "key_file", b"# striper pre-shared key: keep it secret, give it to both ends\n" + b"0123456789abcdef" * 4 + b"\n"
    yield "key_file_short", b"abc\n"
    yield "key_file_utf8", "\u00e9".encode() + b"0" * 62
    yield "key_file_split_char", b"0" + "\u00e9".encode() + b"0" * 61
    yield "proofs", b"\x07" * 32 + client_hello() + server_hello()
    yield "proofs_guess", b"\x07" * 32 + client_hello() + server_hello() + b"\x55" * 32


# --- session programs (see Sim::step in pipes/src/fuzzing.rs) ---
def cfg(stripes=2, window=3, cap=2, frame=2, limits=3 | (2 << 2)):
    # stripes 2 + x%3; window index (4096,5000,64K,256K,1M); recv cap index
    # (512,1000,16K,64K); frame size index (512,1000,4K,32K); unsent limit
    # index (1K,16K,100K,256K) | piece limit index (2,8,16384) << 2.
    return bytes([stripes - 2, window, cap, frame, limits])


UP, DOWN, WRITABLE, UPDATE, WRITE, CONSUME, CONSUME_ALL, SHUTDOWN, POLL, ACK, BAD_ACK, \
    NEW, DELIVER, ODD, FIN, PINGPONG, TIME, RAW, PARAMS, FLUSH, MISC = range(21)


def op(code, *args):
    return bytes([code]) + b"".join(args)


def b(x):
    return bytes([x])


def u16(x):
    return struct.pack(">H", x)


def u32(x):
    return struct.pack(">I", x)


def u64(x):
    return struct.pack(">Q", x)


def session_seeds():
    both_up = op(UP, b(0)) + op(UP, b(1))
    yield "transfer", (cfg() + both_up + op(WRITE, b(99), b(4)) + op(POLL, u16(0), b(0))
                       + op(ACK, b(0)) + op(NEW, u16(1000)) + op(NEW, u16(500))
                       + op(DELIVER, b(1), b(1)) + op(DELIVER, b(0), b(0)) + op(CONSUME_ALL)
                       + op(POLL, u16(0), b(0)) + op(SHUTDOWN) + op(POLL, u16(0), b(0)) + op(ACK, b(1))
                       + op(FIN, b(0), b(0)) + op(CONSUME_ALL) + op(POLL, u16(0), b(0)))
    yield "lossy", (cfg(stripes=3) + both_up + op(UP, b(2)) + op(WRITE, b(255), b(6))
                    + op(POLL, u16(0x5555), b(0)) + op(DOWN, b(0)) + op(POLL, u16(0x8000 | 0x7FFF), b(0))
                    + op(TIME, b(120)) + op(TIME, b(210)) + op(POLL, u16(0), b(0)) + op(ACK, b(1)))
    yield "window_edge", (cfg(window=0, cap=2, frame=0) + both_up + op(PARAMS, u32(1 << 20), u32(1 << 16))
                          + op(NEW, u16(4000)) + op(NEW, u16(4000)) + op(DELIVER, b(1), b(0))
                          + op(ODD, b(3), b(0), u16(100), u16(3)) + op(DELIVER, b(0), b(1))
                          + op(CONSUME, u16(10)) + op(POLL, u16(0), b(0)) + op(NEW, u16(200))
                          + op(DELIVER, b(0), b(0)) + op(CONSUME_ALL))
    yield "fragments", (cfg(limits=0) + both_up + op(ODD, b(1), b(0), u16(10), u16(100))
                        + op(ODD, b(1), b(1), u16(10), u16(300)) + op(ODD, b(1), b(0), u16(10), u16(500))
                        + op(ODD, b(2), b(0), u16(10), u16(0)) + op(CONSUME_ALL))
    yield "hostile_acks", (cfg() + both_up + op(WRITE, b(10), b(0)) + op(POLL, u16(0), b(0))
                           + op(BAD_ACK, b(0), b(0), u16(1), b(0)) + op(BAD_ACK, b(3), b(1), u16(0), b(1))
                           + op(SHUTDOWN) + op(POLL, u16(0), b(0)) + op(BAD_ACK, b(3), b(0), u16(0), b(1))
                           + op(BAD_ACK, b(4), b(0), u16(0), u64(2**64 - 1), b(0)))
    yield "fin_mismatch", (cfg() + both_up + op(NEW, u16(100)) + op(DELIVER, b(0), b(0))
                           + op(FIN, b(2), b(0), b(0)) + op(FIN, b(0), b(1)) + op(FIN, b(3), b(0), u64(5))
                           + op(ODD, b(5), b(0), u16(3), u16(1)))
    yield "keepalive", (cfg(stripes=4) + both_up + op(UP, b(2)) + op(TIME, b(100)) + op(POLL, u16(0), b(0))
                        + op(PINGPONG, b(0), b(0), b(1)) + op(PINGPONG, b(1), b(200), u64(9), b(0))
                        + op(POLL, u16(0), b(0)) + op(TIME, b(203)) + op(TIME, b(205)) + op(UP, b(3)))
    yield "raw_frames", (cfg() + both_up + op(RAW, b(0), b(4), b(0), b(0), u64(0), u16(5), b"\0\1abc")
                         + op(RAW, b(1), b(1), b(0), b(0), u64(2**64 - 3), u16(10))
                         + op(RAW, b(0), b(2), b(1), b(250), u16(1), u64(0), u16(0))
                         + op(RAW, b(2), b(7), b(0), b(0), u64(0), u16(0)))
    yield "abort", (cfg() + both_up + op(WRITE, b(5), b(5)) + op(MISC, b(0), u16(3)) + op(POLL, u16(0), b(0))
                    + op(WRITE, b(1), b(1)) + op(POLL, u16(0), b(0)) + op(MISC, b(200)))
    yield "scheduler", (cfg(frame=3) + both_up + op(UPDATE, b(0), u16(1000), u16(100), b(20))
                        + op(TIME, b(20)) + op(UPDATE, b(0), u16(1000), u16(60000), b(20))
                        + op(UPDATE, b(1), u16(50), u16(10), b(200)) + op(TIME, b(20))
                        + op(UPDATE, b(1), u16(60000), u16(1), b(200)) + op(WRITABLE, b(0))
                        + op(WRITE, b(255), b(8)) + op(POLL, u16(0), b(0)) + op(WRITABLE, b(1)) + op(POLL, u16(0), b(0)))
    yield "half_written", (cfg(frame=0) + both_up + op(WRITE, b(255), b(4)) + op(POLL, u16(0), b(0x05))
                           + op(ACK, b(1)) + op(WRITE, b(255), b(2)) + op(POLL, u16(0), b(0))
                           + op(FLUSH, b(0)) + op(FLUSH, b(1)) + op(ACK, b(0)) + op(FLUSH, b(0x81)))
    yield "idle_release", (cfg() + both_up + op(WRITE, b(3), b(3)) + op(POLL, u16(0), b(0)) + op(ACK, b(0))
                           + op(MISC, b(100)) + op(WRITE, b(3), b(3)) + op(POLL, u16(0), b(0)))


def main():
    out = sys.argv[1]
    for target, seeds in (("frame", frame_seeds()), ("handshake", handshake_seeds()),
                          ("session", session_seeds())):
        os.makedirs(os.path.join(out, target), exist_ok=True)
        for name, data in seeds:
            with open(os.path.join(out, target, "seed-" + name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
