#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz_frame.c (TCP protocol version 2).

    python3 tools/frame_corpus.py [tests/corpus/frame]

Every seed is two bytes for the fuzz target (byte 0: the chunk size, 0 =
as much as the state machine wants; byte 1: bits 0-1 the length limit
{0, 64, 4096, 256 MiB}, bit 2 control limit 64 instead of 1024, bit 3 no
messages (before the handshake), bit 4 a client that reads a REFUSE of any
version, bit 5 the connection of peer 0 to peer 1) followed by the bytes a
peer sends: 32-byte DGTP frames whose message payloads are DGMS frames
(docs/protocol.md).  The old seeds are replaced (the directory is emptied
of files this script does not write only when --clean is given)."""
import os
import struct
import sys
import zlib

DGTP, VERSION = 0x50544744, 2
HELLO, CHALLENGE, AUTH, WELCOME, REFUSE, HEARTBEAT, BYE, PEERS = range(0xF0, 0xF8)
F32, I32, BYTES = 1, 2, 3
LIM_4096 = 2
LIM_BIG = 3


def crc(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def frame(ftype, payload=b"", sender=0, it=0, flags=0, version=VERSION, crc_=None, length=None):
    c = crc(payload) if crc_ is None else crc_
    n = len(payload) if length is None else length
    return struct.pack("<IHBBIIQQ", DGTP, version, ftype, flags, sender, c, it, n) + payload


def dgms(mtype, frm, to, it, parts, aux=0, stats=(0.0, 0.0), plen=None):
    """dg_msg_encode's frame: parts = [(kind, count, bytes)]."""
    table = b"".join(struct.pack("<IIQ", k, 0, c) for k, c, _ in parts)
    values = b"".join(v for _, _, v in parts)
    body = table + values
    head = b"DGMS" + struct.pack("<HHiiqqffIIQ", 1, mtype, frm, to, it, aux, stats[0], stats[1],
                                 len(parts), crc(body), len(values) if plen is None else plen)
    return head + body


def message(mtype, frm, to, it, parts, **kw):
    """A TCP message frame: its CRC covers the DGMS header (56 bytes)."""
    p = dgms(mtype, frm, to, it, parts, **kw)
    return frame(mtype, p, sender=frm, it=it, crc_=crc(p[:56]))


def f32(*v):
    return (F32, len(v), struct.pack("<%df" % len(v), *v))


def hello(role=1, wid=1, vmin=2, vmax=2, port=4000):
    return struct.pack("<BBHHHI", role, 0, vmin, vmax, port, wid) + bytes(range(32)) + bytes(32)


def refuse(code, text):
    return struct.pack("<IH", code, len(text)) + text


def seed(flags, data, chunk=0):
    return bytes([chunk, flags]) + data


def main():
    out = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "tests/corpus/frame"
    small = message(1, 0, 1, 7, [f32(1.0, 2.0, 3.0, 4.0), (I32, 2, struct.pack("<ii", -1, 5)),
                                 (BYTES, 3, b"abc")], aux=-5, stats=(0.5, 1.5))
    s = {}
    live = 0x20 | LIM_4096                       # peer 0 -> self 1, messages allowed
    s["app_small"] = seed(live, small)
    s["app_small_bytewise"] = seed(live, small, chunk=1)
    s["app_empty"] = seed(live, message(7, 0, 1, 0, []))
    s["app_bytes_part"] = seed(live, message(64, 0, 1, 3, [(BYTES, 5, b"hello")]))
    s["app_then_heartbeat"] = seed(live, small + frame(HEARTBEAT))
    s["app_two"] = seed(live, small + message(3, 0, 1, 9, [], aux=2), chunk=7)
    s["app_before_auth"] = seed(0x08 | LIM_4096, small)
    s["app_to_self"] = seed(live, message(2, 0, 0, 7, [f32(1.0)]))
    s["app_wrong_sender"] = seed(live, message(2, 2, 1, 7, [f32(1.0)]))
    p = dgms(2, 0, 1, 7, [f32(1.0)])
    s["app_iteration_differs"] = seed(live, frame(2, p, it=8, crc_=crc(p[:56])))
    s["app_type_differs"] = seed(live, frame(4, p, it=7, crc_=crc(p[:56])))
    s["app_unknown_type"] = seed(live, message(9, 0, 1, 7, [f32(1.0)]))
    s["app_head_crc"] = seed(live, frame(2, p, it=7, crc_=crc(p[:56]) ^ 1))
    q = bytearray(p)
    q[-1] ^= 0x40
    s["app_value_crc"] = seed(live, frame(2, bytes(q), it=7, crc_=crc(p[:56])))
    q = bytearray(p)
    q[56] = 9                                    # part kind (under the DGMS CRC)
    s["app_bad_kind"] = seed(live, frame(2, bytes(q), it=7, crc_=crc(p[:56])))
    q = bytearray(p)
    q[40] = 7                                    # 7 parts
    s["app_too_many_parts"] = seed(live, frame(2, bytes(q), it=7, crc_=crc(bytes(q[:56]))))
    big = dgms(2, 0, 1, 7, [(F32, 1 << 40, b"")])
    s["app_part_too_big"] = seed(live, frame(2, big + bytes(8), it=7, crc_=crc(big[:56])))
    s["app_trailing"] = seed(live, frame(2, p + b"x", it=7, crc_=crc(p[:56])))
    s["app_short_frame"] = seed(live, frame(2, p[:40], it=7))
    s["app_over_limit"] = seed(0x20 | 1, small)  # 64-byte limit
    big = dgms(2, 0, 1, 7, [(F32, 1 << 24, b"")], plen=4 << 24)
    s["app_big_declared"] = seed(0x20 | LIM_BIG, frame(2, big, it=7, crc_=crc(big[:56]),
                                                       length=56 + 16 + (4 << 24)))
    s["bad_magic"] = seed(live, b"XGTP" + frame(HEARTBEAT)[4:])
    s["bad_version"] = seed(live, frame(HELLO, hello(), version=3))
    s["bad_type"] = seed(live, frame(0x99))
    s["bad_flags"] = seed(live, frame(HEARTBEAT, flags=0x80))
    s["len_2_63"] = seed(live | LIM_BIG, frame(2, length=1 << 63))
    s["cut_header"] = seed(live, frame(HEARTBEAT)[:17])
    s["cut_payload"] = seed(live, small[:80])
    s["empty_bad_crc"] = seed(live, frame(HEARTBEAT, crc_=1))
    s["heartbeat_x3"] = seed(live, frame(HEARTBEAT) * 3, chunk=5)
    s["bye_last"] = seed(live, frame(BYE, refuse(7, b"done"), flags=1))
    s["hello"] = seed(0x08 | LIM_4096, frame(HELLO, hello(), sender=1))
    s["hello_bytewise"] = seed(0x08 | LIM_4096, frame(HELLO, hello(), sender=1), chunk=1)
    s["hello_bad_role"] = seed(0x08 | LIM_4096, frame(HELLO, hello(role=9), sender=1))
    s["hello_short"] = seed(0x08 | LIM_4096, frame(HELLO, hello()[:70], sender=1))
    s["refuse"] = seed(0x08 | LIM_4096, frame(REFUSE, refuse(2, b"authentication failed")))
    s["refuse_bad_text"] = seed(0x08 | LIM_4096, frame(REFUSE, refuse(2, b"a\x01")))
    s["refuse_v3_lenient"] = seed(0x18 | LIM_4096, frame(REFUSE, refuse(1, b"protocol version"), version=3))
    s["welcome"] = seed(0x08 | LIM_4096, frame(WELCOME, bytes(32) + struct.pack("<IQ", 4, 12)))
    s["welcome_zero_workers"] = seed(0x08 | LIM_4096, frame(WELCOME, bytes(32) + struct.pack("<IQ", 0, 12)))
    entry = struct.pack("<I", 2) + bytes(10) + b"\xff\xff\x7f\x00\x00\x01" + struct.pack("<H", 4001)
    s["peers"] = seed(live, frame(PEERS, struct.pack("<I", 2) + entry + entry))
    s["peers_count_lies"] = seed(live, frame(PEERS, struct.pack("<I", 3) + entry + entry))
    s["control_over_limit"] = seed(0x04 | live, frame(PEERS, bytes(100)))
    s["random_bytes"] = seed(live, bytes((i * 37 + 11) & 0xFF for i in range(96)))
    os.makedirs(out, exist_ok=True)
    if "--clean" in sys.argv:
        for f in os.listdir(out):
            if f not in s:
                os.remove(os.path.join(out, f))
    for name, data in s.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("%d seeds, %d bytes in %s" % (len(s), sum(len(v) for v in s.values()), out))


if __name__ == "__main__":
    main()
