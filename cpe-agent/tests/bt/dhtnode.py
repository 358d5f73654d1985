#!/usr/bin/python3
"""A tiny, closed Mainline DHT (BEP 5) for the harness: N virtual DHT nodes
on consecutive UDP ports of one address (inside the WAN namespace), each
with its own node id, all sharing one peer store. The first port is the
bootstrap node the clients are given.

It only answers queries (ping, find_node, get_peers, announce_peer); it never
sends a query of its own, so it cannot reach anything. find_node/get_peers
answers list the other virtual nodes, so a client's routing table fills up
with enough "good" nodes (Transmission will not even announce to a DHT with
fewer than 4 good / 9 known nodes). Announced peers are mirrored to --state
(JSON) so the harness can wait for the seeder's announce.

    dhtnode.py --bind 198.51.100.2 --port 41000 --nodes 16 --state dht.json
"""
import argparse
import hashlib
import ipaddress
import json
import random
import os
import secrets
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bencode  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bind", required=True, help="IPv4 address")
    ap.add_argument("--port", type=int, required=True, help="first UDP port (the bootstrap node)")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--state", default="")
    ap.add_argument("--max-seconds", type=float, default=600)
    a = ap.parse_args()

    sel = selectors.DefaultSelector()
    nodes = []  # (sock, node_id, port)
    for i in range(a.nodes):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((a.bind, a.port + i))
        s.setblocking(False)
        nid = secrets.token_bytes(20)
        nodes.append((s, nid, a.port + i))
        sel.register(s, selectors.EVENT_READ, i)
    bind_packed = ipaddress.ip_address(a.bind).packed
    secret = secrets.token_bytes(16)
    store = {}  # info_hash -> {(ip, port): last_seen}
    stats = {"queries": 0, "announces": 0, "by_source": {}}

    def write_state():
        if not a.state:
            return
        doc = {"stats": stats,
               "bootstrap": "%s:%d" % (a.bind, a.port),
               "peers": {ih.hex(): ["%s:%d" % k for k in d] for ih, d in store.items()}}
        with open(a.state + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(a.state + ".tmp", a.state)

    def some_nodes(target, exclude=None):
        """8 nodes for a find_node/get_peers answer: the 4 closest to the
        target plus 4 random others. Strict "closest" answers would keep
        handing a client the same few nodes; the random ones make a client
        whose table is thin (Transmission) learn, ping and confirm enough
        nodes within seconds. Every node holds every announced peer, so a
        lookup cannot miss."""
        t = int.from_bytes(target, "big") if len(target) == 20 else 0
        cands = sorted((int.from_bytes(nid, "big") ^ t, nid, port) for _s, nid, port in nodes if port != exclude)
        pick = cands[:4]
        rest = cands[4:]
        pick += random.sample(rest, min(4, len(rest)))
        return b"".join(nid + bind_packed + struct.pack(">H", port) for _d, nid, port in pick)

    def token_for(ip):
        return hashlib.sha1(secret + ip.encode()).digest()[:8]

    def handle(idx, data, addr):
        sock, nid, port = nodes[idx]
        try:
            msg = bencode.decode(data)
        except Exception:
            return
        if not isinstance(msg, dict) or msg.get(b"y") != b"q":
            return  # we never query, so responses/errors are not for us
        t = msg.get(b"t", b"")
        q = msg.get(b"q", b"")
        stats["queries"] += 1
        src = stats["by_source"].setdefault(addr[0], {})
        qn = q.decode("ascii", "replace") if isinstance(q, bytes) else "?"
        src[qn] = src.get(qn, 0) + 1
        if stats["queries"] % 20 == 0:
            write_state()
        args = msg.get(b"a", {}) if isinstance(msg.get(b"a"), dict) else {}
        ip, sport = addr[0], addr[1]
        ext = ipaddress.ip_address(ip).packed + struct.pack(">H", sport)
        r = {b"id": nid}
        if q == b"ping":
            pass
        elif q == b"find_node":
            r[b"nodes"] = some_nodes(args.get(b"target", b""), exclude=port)
        elif q == b"get_peers":
            ih = args.get(b"info_hash", b"")
            r[b"token"] = token_for(ip)
            r[b"nodes"] = some_nodes(ih, exclude=port)
            peers = store.get(ih, {})
            if peers:
                r[b"values"] = [ipaddress.ip_address(pi).packed + struct.pack(">H", pp)
                                for (pi, pp) in list(peers)[:50]]
        elif q == b"announce_peer":
            ih = args.get(b"info_hash", b"")
            if args.get(b"token") != token_for(ip) or len(ih) != 20:
                out = {b"t": t, b"y": b"e", b"e": [203, b"bad token"]}
                sock.sendto(bencode.encode(out), addr)
                return
            pport = sport if args.get(b"implied_port") == 1 else args.get(b"port", 0)
            if isinstance(pport, int) and 0 < pport < 65536:
                store.setdefault(ih, {})[(ip, pport)] = time.monotonic()
                stats["announces"] += 1
                sys.stderr.write("dht: announce %s from %s:%d\n" % (ih.hex(), ip, pport))
                write_state()
        else:
            out = {b"t": t, b"y": b"e", b"e": [204, b"Method Unknown"]}
            sock.sendto(bencode.encode(out), addr)
            return
        out = {b"t": t, b"y": b"r", b"r": r, b"ip": ext, b"v": b"IH01"}
        sock.sendto(bencode.encode(out), addr)

    write_state()
    sys.stderr.write("dht: %d nodes ready on %s:%d-%d\n" % (a.nodes, a.bind, a.port, a.port + a.nodes - 1))
    deadline = time.monotonic() + a.max_seconds
    while time.monotonic() < deadline:
        for key, _ev in sel.select(timeout=0.5):
            for _ in range(64):  # bounded drain per wakeup
                try:
                    data, addr = key.fileobj.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                handle(key.data, data, addr)


if __name__ == "__main__":
    main()
