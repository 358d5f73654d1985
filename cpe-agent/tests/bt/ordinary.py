#!/usr/bin/python3
"""Ordinary (non-BitTorrent) traffic for the capture baseline. Each kind has
a server role (run in the WAN namespace) and a client role (run in the LAN
namespace); every loop is bounded in count and time, servers exit by
themselves after --max-seconds, and nothing is sent anywhere but --addr.

  ordinary.py dns-server  --addr 198.51.100.2 [--port 53]
  ordinary.py dns-client  --addr 198.51.100.2 [--port 53]     (if dig is absent)
  ordinary.py tls-server  --addr 198.51.100.2 --cert C --key K [--port 443]
  ordinary.py ssh-server  --addr 198.51.100.2 [--port 22]
  ordinary.py ssh-client  --addr 198.51.100.2 [--port 22]
  ordinary.py udp-server  --addr 198.51.100.2 [--port 50500]
  ordinary.py udp-client  --addr 198.51.100.2 [--port 50500]
  ordinary.py quic-server --addr 198.51.100.2 [--port 443]
  ordinary.py quic-client --addr 198.51.100.2 [--port 443] [--sni NAME]

quic-client sends real QUIC v1 Initial packets (RFC 9000/9001: a TLS 1.3
ClientHello with SNI and ALPN h3 in a CRYPTO frame, AEAD-protected with the
Initial keys derived from the DCID, header protection applied), built with
Debian's python3-cryptography; without it, it falls back to QUIC-shaped
packets (long header 0xc3, version 1, random ~1200-byte body). The server
answers with QUIC-shaped long-header packets (it does not complete a
handshake).
"""
import argparse
import hashlib
import hmac
import os
import random
import socket
import struct
import sys
import threading
import time

ready_msg = lambda what: (sys.stderr.write("%s ready\n" % what), sys.stderr.flush())  # noqa: E731


# ---------------------------------------------------------------- DNS
def dns_answer(query):
    """Answer any A query with 198.51.100.80, AAAA/other with no data."""
    if len(query) < 12:
        return None
    tid, flags, qd = struct.unpack(">HHH", query[:6])
    if qd != 1 or flags & 0x8000:
        return None
    i = 12
    while i < len(query) and query[i] != 0:
        i += query[i] + 1
    qend = i + 5
    if qend > len(query):
        return None
    qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
    question = query[12:qend]
    rd = flags & 0x0100
    if qtype == 1:
        ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([198, 51, 100, 80])
        an = 1
    else:
        ans, an = b"", 0
    hdr = struct.pack(">HHHHHH", tid, 0x8180 | rd, 1, an, 0, 0)
    return hdr + question + ans


def dns_server(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.addr, a.port or 53))
    s.settimeout(0.5)
    ready_msg("dns-server")
    end = time.monotonic() + a.max_seconds
    while time.monotonic() < end:
        try:
            q, peer = s.recvfrom(1500)
        except socket.timeout:
            continue
        r = dns_answer(q)
        if r:
            s.sendto(r, peer)


def dns_client(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    for n, name in enumerate(["www.example.com", "mail.example.org", "isdf-test.example", "cdn.example.net"]):
        q = struct.pack(">HHHHHH", 0x1000 + n, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack(">HH", 1, 1)
        s.sendto(q, (a.addr, a.port or 53))
        try:
            s.recvfrom(1500)
        except socket.timeout:
            pass


# ---------------------------------------------------------------- HTTPS
def tls_server(a):
    import http.server
    import ssl

    os.chdir(a.docroot)

    class H(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *x):
            pass

    class S(http.server.ThreadingHTTPServer):
        daemon_threads = True

    httpd = S((a.addr, a.port or 443), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Timer(a.max_seconds, httpd.shutdown).start()
    ready_msg("tls-server")
    httpd.serve_forever(poll_interval=0.5)


# ---------------------------------------------------------------- SSH-like
SSH_SERVER_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
SSH_CLIENT_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"


def ssh_server(a):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.addr, a.port or 22))
    ls.listen(4)
    ls.settimeout(0.5)
    ready_msg("ssh-server")
    end = time.monotonic() + a.max_seconds
    while time.monotonic() < end:
        try:
            c, _ = ls.accept()
        except socket.timeout:
            continue
        c.settimeout(2)
        try:
            c.sendall(SSH_SERVER_BANNER)
            # Echo each "keystroke" record back as an encrypted-looking record
            # of similar size, like a shell echoing typed characters.
            for _ in range(2000):
                d = c.recv(4096)
                if not d:
                    break
                c.sendall(os.urandom(max(36, len(d) + random.choice((0, 0, 16, 32)))))
        except OSError:
            pass
        finally:
            c.close()


def ssh_client(a):
    c = socket.create_connection((a.addr, a.port or 22), timeout=3)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.recv(256)
    c.sendall(SSH_CLIENT_BANNER)
    # key exchange-sized records, then ~6 s of typing: small records both ways
    c.sendall(os.urandom(1500))
    c.recv(4096)
    end = time.monotonic() + a.seconds
    n = 0
    while time.monotonic() < end and n < 400:
        c.sendall(os.urandom(36))
        c.recv(4096)
        n += 1
        time.sleep(random.uniform(0.03, 0.12))
    c.close()


# ---------------------------------------------------------------- UDP
def udp_server(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.addr, a.port or 50500))
    s.settimeout(0.5)
    ready_msg("udp-server")
    end = time.monotonic() + a.max_seconds
    n = 0
    while time.monotonic() < end:
        try:
            d, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        n += 1
        if n % 3 == 0:  # answer some, like a game/voice server would
            s.sendto(os.urandom(random.randint(60, 400)), peer)


def udp_client(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 40500))
    for i in range(300):
        s.sendto(struct.pack(">I", i) + os.urandom(random.randint(80, 1100)), (a.addr, a.port or 50500))
        time.sleep(0.01)


# ---------------------------------------------------------------- QUIC
QUIC_V1_SALT = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret, label, length):
    full = b"tls13 " + label
    info = struct.pack(">H", length) + bytes([len(full)]) + full + b"\x00"
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(secret, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def varint(n):
    if n < 0x40:
        return bytes([n])
    if n < 0x4000:
        return struct.pack(">H", 0x4000 | n)
    return struct.pack(">I", 0x80000000 | n)


def client_hello(sni):
    def ext(t, body):
        return struct.pack(">HH", t, len(body)) + body

    name = sni.encode()
    exts = b"".join([
        ext(0, struct.pack(">HBH", len(name) + 3, 0, len(name)) + name),          # server_name
        ext(10, struct.pack(">HH", 2, 0x001d)),                                  # supported_groups x25519
        ext(13, struct.pack(">HHHH", 6, 0x0403, 0x0804, 0x0401)),                # signature_algorithms
        ext(16, struct.pack(">HB", 3, 2) + b"h3"),                               # ALPN h3
        ext(43, bytes([2]) + struct.pack(">H", 0x0304)),                         # supported_versions TLS1.3
        ext(51, struct.pack(">HHH", 36, 0x001d, 32) + os.urandom(32)),           # key_share
        ext(45, bytes([1, 1])),                                                   # psk_key_exchange_modes
        ext(0x39, b"\x01\x04\x80\x00\x75\x30" + b"\x04\x04\x80\x10\x00\x00"      # quic_transport_parameters
            + b"\x0f\x08" + os.urandom(8)),
    ])
    body = (struct.pack(">H", 0x0303) + os.urandom(32) + b"\x00"
            + struct.pack(">H", 6) + struct.pack(">HHH", 0x1301, 0x1302, 0x1303)
            + b"\x01\x00" + struct.pack(">H", len(exts)) + exts)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def quic_initial(sni, pn=0):
    """A real QUIC v1 client Initial datagram (1200 bytes), or None without
    python3-cryptography."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return None
    dcid, scid = os.urandom(8), os.urandom(8)
    secret = hkdf_expand_label(hkdf_extract(QUIC_V1_SALT, dcid), b"client in", 32)
    key = hkdf_expand_label(secret, b"quic key", 16)
    iv = hkdf_expand_label(secret, b"quic iv", 12)
    hp = hkdf_expand_label(secret, b"quic hp", 16)
    ch = client_hello(sni)
    frames = b"\x06" + varint(0) + varint(len(ch)) + ch
    pn_len = 4
    hdr_wo_len = bytes([0xc0 | (pn_len - 1)]) + struct.pack(">I", 1) + bytes([8]) + dcid + bytes([8]) + scid + varint(0)
    # pad the plaintext so the datagram is exactly 1200 bytes
    payload_len = 1200 - len(hdr_wo_len) - 2 - pn_len - 16
    frames += b"\x00" * (payload_len - len(frames))
    header = hdr_wo_len + struct.pack(">H", 0x4000 | (pn_len + len(frames) + 16)) + struct.pack(">I", pn)
    nonce = bytes(a ^ b for a, b in zip(iv, pn.to_bytes(12, "big")))
    ct = AESGCM(key).encrypt(nonce, frames, header)
    sample = ct[4 - pn_len:4 - pn_len + 16]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    h = bytearray(header)
    h[0] ^= mask[0] & 0x0f
    pn_off = len(header) - pn_len
    for i in range(pn_len):
        h[pn_off + i] ^= mask[1 + i]
    return bytes(h) + ct


def quic_shaped(first=0xc3, size=1200):
    dcid, scid = os.urandom(8), os.urandom(8)
    hdr = bytes([first]) + struct.pack(">I", 1) + bytes([8]) + dcid + bytes([8]) + scid
    if first & 0x30 == 0:  # Initial: token length
        hdr += b"\x00"
    rest = size - len(hdr) - 2
    return hdr + struct.pack(">H", 0x4000 | rest) + os.urandom(rest)


def quic_server(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.addr, a.port or 443))
    s.settimeout(0.5)
    ready_msg("quic-server")
    end = time.monotonic() + a.max_seconds
    while time.monotonic() < end:
        try:
            d, peer = s.recvfrom(2048)
        except socket.timeout:
            continue
        # a server Initial + Handshake-type long-header packets in reply
        s.sendto(quic_shaped(0xc1, random.randint(200, 1200)), peer)
        s.sendto(quic_shaped(0xe1, random.randint(200, 1200)), peer)


def quic_client(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    real = quic_initial(a.sni) is not None
    sys.stderr.write("quic-client: %s Initial packets\n" % ("real (encrypted ClientHello)" if real else "QUIC-shaped"))
    for flow in range(3):  # three connections, each its own source port
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        for pn in range(4):
            pkt = quic_initial(a.sni, pn) if real else quic_shaped()
            s.sendto(pkt, (a.addr, a.port or 443))
            for _ in range(2):
                try:
                    s.recvfrom(2048)
                except socket.timeout:
                    break
        # then some short-header (1-RTT-looking) packets
        for _ in range(20):
            s.sendto(bytes([0x40 | random.randint(0, 0x3f)]) + os.urandom(random.randint(40, 1100)),
                     (a.addr, a.port or 443))
            time.sleep(0.01)
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=["dns-server", "dns-client", "tls-server", "ssh-server", "ssh-client",
                                     "udp-server", "udp-client", "quic-server", "quic-client"])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=60)
    ap.add_argument("--seconds", type=float, default=6, help="ssh-client typing time")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--docroot", default=".")
    ap.add_argument("--sni", default="isdf-test.example")
    a = ap.parse_args()
    globals()[a.role.replace("-", "_")](a)


if __name__ == "__main__":
    main()
