#!/usr/bin/python3
"""Small BitTorrent tracker for the harness: an HTTP tracker (BEP 3, compact
peer lists per BEP 23, `peers6` per BEP 7), the same over HTTPS (TLS with the
certificate given, as private trackers run) and a UDP tracker (BEP 15), all
in one process, sharing one swarm table.

Bound to the address given (inside the WAN namespace); it never connects
anywhere itself. The swarm table is mirrored to --state (JSON, atomically
replaced) so the harness can wait for the seeder's announce instead of
sleeping. It stops by itself after --max-seconds.

    tracker.py --bind 198.51.100.2 --http-port 7070 --udp-port 7071 \
               [--https-port 7443 --cert cert.pem --key key.pem] \
               --state /tmp/x/tracker.json --max-seconds 300
"""
import argparse
import http.server
import ipaddress
import json
import os
import secrets
import ssl
import socket
import struct
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bencode  # noqa: E402

INTERVAL = 10
MIN_INTERVAL = 2
PEER_TTL = 120
UDP_PROTOCOL_ID = 0x41727101980


class Swarms:
    def __init__(self, state_path):
        self.lock = threading.Lock()
        self.state_path = state_path
        # info_hash(bytes) -> {(ip, port): {"left": int, "seen": float, "via": str}}
        self.swarms = {}
        self.announces = 0

    def announce(self, ih, ip, port, left, event, via, num_want=50):
        now = time.monotonic()
        with self.lock:
            self.announces += 1
            sw = self.swarms.setdefault(ih, {})
            for k in [k for k, v in sw.items() if now - v["seen"] > PEER_TTL]:
                del sw[k]
            key = (ip, port)
            if event == "stopped":
                sw.pop(key, None)
            else:
                sw[key] = {"left": left, "seen": now, "via": via}
            others = [k for k in sw if k != key][:max(0, min(num_want, 200))]
            seeders = sum(1 for v in sw.values() if v["left"] == 0)
            leechers = len(sw) - seeders
            self.write_state_locked()
        return others, seeders, leechers

    def counts(self, ih):
        with self.lock:
            sw = self.swarms.get(ih, {})
            s = sum(1 for v in sw.values() if v["left"] == 0)
            return s, len(sw) - s

    def write_state(self):
        with self.lock:
            self.write_state_locked()

    def write_state_locked(self):
        if not self.state_path:
            return
        doc = {
            "announces": self.announces,
            "swarms": {
                ih.hex(): [{"ip": ip, "port": port, "left": v["left"], "via": v["via"]}
                           for (ip, port), v in sw.items()]
                for ih, sw in self.swarms.items()
            },
        }
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.state_path)


def compact(peers):
    v4, v6 = b"", b""
    for ip, port in peers:
        a = ipaddress.ip_address(ip)
        if a.version == 4:
            v4 += a.packed + struct.pack(">H", port)
        else:
            v6 += a.packed + struct.pack(">H", port)
    return v4, v6


def make_http_handler(swarms):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "isdf-bt-harness-tracker"
        protocol_version = "HTTP/1.0"
        timeout = 10  # bounds each read, including a stalled TLS handshake

        def log_message(self, fmt, *args):
            sys.stderr.write("tracker %s %s %s\n" % (self.server.scheme, self.client_address[0], fmt % args))

        def reply(self, obj, code=200):
            body = bencode.encode(obj)
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            # info_hash / peer_id are raw bytes, percent-encoded: decode as latin-1
            q = urllib.parse.parse_qs(url.query, encoding="latin-1", keep_blank_values=True)

            def one(k, default=None):
                return q[k][0] if k in q else default

            if url.path == "/scrape":
                files = {}
                for ih in q.get("info_hash", []):
                    ihb = ih.encode("latin-1")
                    s, l = swarms.counts(ihb)
                    files[ihb] = {"complete": s, "incomplete": l, "downloaded": 0}
                return self.reply({"files": files})
            if url.path != "/announce":
                return self.reply({"failure reason": "unknown path"}, 404)
            try:
                ih = one("info_hash").encode("latin-1")
                port = int(one("port"))
                left = int(one("left", "0"))
                assert len(ih) == 20 and 0 < port < 65536
            except Exception:
                return self.reply({"failure reason": "bad announce"})
            # The peer's address is the source address of the request (no NAT
            # on this topology); an `ip` parameter is ignored, like most
            # public trackers do.
            ip = self.client_address[0]
            if ip.startswith("::ffff:"):
                ip = ip[7:]
            others, seeders, leechers = swarms.announce(
                ih, ip, port, left, one("event", ""), "http", int(one("numwant", "50") or 50))
            resp = {"interval": INTERVAL, "min interval": MIN_INTERVAL,
                    "complete": seeders, "incomplete": leechers}
            if one("compact", "1") == "0":
                resp["peers"] = [{"ip": pip, "port": pport} for pip, pport in others]
            else:
                v4, v6 = compact(others)
                resp["peers"] = v4
                if v6:
                    resp["peers6"] = v6
            self.reply(resp)

    return Handler


def udp_tracker(sock, swarms, stop):
    """BEP 15. Connection ids are random and accepted for two minutes."""
    conn_ids = {}
    sock.settimeout(0.5)
    events = {0: "", 1: "completed", 2: "started", 3: "stopped"}
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(2048)
        except socket.timeout:
            continue
        except OSError:
            return
        now = time.monotonic()
        for k in [k for k, t in conn_ids.items() if now - t > 120]:
            del conn_ids[k]
        if len(data) < 16:
            continue
        cid, action, tid = struct.unpack(">QII", data[:16])
        ip = addr[0]
        v6 = ":" in ip and not ip.startswith("::ffff:")
        if ip.startswith("::ffff:"):
            ip = ip[7:]
        if action == 0:
            if cid != UDP_PROTOCOL_ID:
                continue
            new = secrets.randbits(64)
            conn_ids[new] = now
            sock.sendto(struct.pack(">IIQ", 0, tid, new), addr)
            sys.stderr.write("tracker udp %s connect\n" % ip)
            continue
        if cid not in conn_ids:
            sock.sendto(struct.pack(">II", 3, tid) + b"bad connection id", addr)
            continue
        if action == 1 and len(data) >= 98:
            ih = data[16:36]
            _down, left, _up, event, _ipf, _key, num_want, port = struct.unpack(
                ">QQQIIIiH", data[56:98])
            if num_want < 0:
                num_want = 50
            others, seeders, leechers = swarms.announce(
                ih, ip, port, left, events.get(event, ""), "udp", num_want)
            # BEP 15: an IPv4 socket answers with 6-byte peers, IPv6 with 18
            want6 = v6
            body = b"".join(
                ipaddress.ip_address(pip).packed + struct.pack(">H", pport)
                for pip, pport in others
                if (ipaddress.ip_address(pip).version == 6) == want6)
            sock.sendto(struct.pack(">IIIII", 1, tid, INTERVAL, leechers, seeders) + body, addr)
            sys.stderr.write("tracker udp %s announce port=%d left=%d event=%d -> %d peers\n"
                             % (ip, port, left, event, len(others)))
        elif action == 2:
            out = struct.pack(">II", 2, tid)
            for i in range(16, len(data) - 19, 20):
                s, l = swarms.counts(data[i:i + 20])
                out += struct.pack(">III", s, 0, l)
            sock.sendto(out, addr)
        else:
            sock.sendto(struct.pack(">II", 3, tid) + b"unsupported", addr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bind", required=True, help="IPv4 or IPv6 address to listen on")
    ap.add_argument("--http-port", type=int, default=0, help="0 = no HTTP tracker")
    ap.add_argument("--https-port", type=int, default=0, help="0 = no HTTPS tracker (needs --cert, --key)")
    ap.add_argument("--cert", default="", help="PEM certificate (chain) of the HTTPS tracker")
    ap.add_argument("--key", default="", help="PEM private key of the HTTPS tracker")
    ap.add_argument("--udp-port", type=int, default=0, help="0 = no UDP tracker")
    ap.add_argument("--state", default="")
    ap.add_argument("--max-seconds", type=float, default=600)
    a = ap.parse_args()

    swarms = Swarms(a.state)
    stop = threading.Event()
    fam = socket.AF_INET6 if ":" in a.bind else socket.AF_INET
    threads = []
    servers = []

    class Server(http.server.ThreadingHTTPServer):
        address_family = fam
        daemon_threads = True
        scheme = "http"

    if a.http_port:
        servers.append(Server((a.bind, a.http_port), make_http_handler(swarms)))
    if a.https_port:
        if not (a.cert and a.key):
            ap.error("--https-port needs --cert and --key")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        httpsd = Server((a.bind, a.https_port), make_http_handler(swarms))
        httpsd.scheme = "https"
        # The TLS handshake happens in the handler's thread, on its first read,
        # so a client that stalls it holds up no one else.
        httpsd.socket = ctx.wrap_socket(httpsd.socket, server_side=True, do_handshake_on_connect=False)
        servers.append(httpsd)
    for srv in servers:
        threads.append(threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True))
    if a.udp_port:
        us = socket.socket(fam, socket.SOCK_DGRAM)
        us.bind((a.bind, a.udp_port))
        threads.append(threading.Thread(target=udp_tracker, args=(us, swarms, stop), daemon=True))
    if not threads:
        ap.error("nothing to serve")
    for t in threads:
        t.start()
    # Sockets are bound: tell the harness we are ready.
    swarms.write_state()
    sys.stderr.write("tracker: ready on %s http=%d https=%d udp=%d\n"
                     % (a.bind, a.http_port, a.https_port, a.udp_port))
    stop.wait(a.max_seconds)
    stop.set()
    for srv in servers:
        srv.shutdown()


if __name__ == "__main__":
    main()
