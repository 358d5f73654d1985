#!/usr/bin/python3
"""Run one BitTorrent download between two existing network namespaces and
print ONE JSON line on stdout.

Run with Debian's /usr/bin/python3 (it has python3-libtorrent); standard
library + libtorrent only. Must run as root (ip netns exec).

    /usr/bin/python3 swarm.py --client aria2 --mode plain --transport tcp \
        --discovery http --lan-ns bth-lan --lan-addr 192.0.2.2 \
        --wan-ns bth-wan --wan-addr 198.51.100.2

WAN namespace: tracker (tracker.py: HTTP, HTTPS or UDP), or for --discovery
dht a closed DHT (dhtnode.py) whose first node is the only bootstrap node
anyone is given, and a libtorrent seeder (peer.py) honouring
--mode/--transport. LAN namespace: the leecher (aria2c, transmission-daemon
or peer.py).

Hidden discovery (nothing the router can read tells who the peers are):
--discovery manual: no tracker and no DHT at all; the torrent has no tracker
and the libtorrent leecher is handed the seeder's address by hand
(connect_peer), as peer exchange in another session or a friend would.
--discovery https: the only tracker is served over HTTPS (a self-signed
certificate for the WAN address, made per run, which the clients trust). In
both, DHT, PEX and LSD are off on both peers. With --mode encrypted the wire
then shows only MSE/PE (RC4) on the peer connection and TLS to the tracker.

Nothing here reaches beyond the two namespaces: every client is told to use
only the harness's tracker / DHT node, with LSD, UPnP, NAT-PMP, blocklist
downloads and port forwarding off, and the torrent carries no web seeds and,
for dht, no tracker. Every wait is bounded; every process is started by us
and stopped by its PID.

Ports are deliberately not BitTorrent's well-known ones (6881-6889, 6969,
51413), so a classifier that flags this traffic must do so from payload, not
port: HTTP tracker 7070/tcp, UDP tracker 7071/udp, seeder 40000, leecher
40001 (tcp+udp), DHT nodes 41000-41015/udp.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bencode  # noqa: E402

PY = "/usr/bin/python3"  # Debian's, which has python3-libtorrent (not a pyenv shim)

HTTP_TRACKER_PORT = 7070
UDP_TRACKER_PORT = 7071
HTTPS_TRACKER_PORT = 7443
SEED_PORT = 40000
LEECH_PORT = 40001
DHT_PORT = 41000
DHT_NODES = 32
PIECE = 256 * 1024
POLL = 0.2  # seconds between progress polls
SETUP_TIMEOUT = 30.0  # bound on each setup wait (tracker up, seeder announced)

CLIENTS = ("aria2", "transmission", "libtorrent")
# Built-in DHT routers / fallbacks of common clients; pinned to 127.0.0.1 for
# the leecher (see Harness.start).
PUBLIC_BOOTSTRAP_NAMES = ("router.bittorrent.com", "router.utorrent.com", "dht.transmissionbt.com",
                          "dht.libtorrent.org", "router.bitcomet.com", "dht.aelitis.com",
                          "router.silotis.us", "dht.anacrolix.link")
TRANSPORTS = ("tcp", "utp", "both")  # both: TCP and uTP enabled on both peers
DISCOVERIES = ("http", "udp", "dht", "https", "manual")
HIDDEN = ("https", "manual")  # discovery the router cannot read
UTP_CAPABLE = {"transmission", "libtorrent"}
# Only libtorrent can be handed a peer by hand (connect_peer); aria2c and
# transmission-daemon (RPC off) have no such option.
MANUAL_CAPABLE = {"libtorrent"}


class Harness:
    def __init__(self, a):
        self.a = a
        self.procs = []  # (name, Popen, logfile)
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.path.join(a.workdir, "home"),
            "LANG": "C.UTF-8",
        }  # no *_proxy: tracker requests must go straight to the WAN namespace
        os.makedirs(self.env["HOME"], exist_ok=True)

    def start(self, name, ns, argv, pin_dns=False):
        log = open(os.path.join(self.a.workdir, name + ".log"), "wb")
        if pin_dns:
            # Defence in depth for third-party clients, whatever namespace
            # they run in: `ip netns exec` gives the command a private mount
            # namespace, in which /etc/hosts and /etc/resolv.conf are
            # replaced (for this process only) by ones that send the public
            # DHT bootstrap / tracker names to 127.0.0.1 and DNS to the
            # namespace's own loopback. The shell execs the client, so the
            # PID stays the client's.
            hosts, resolv = self.dns_files()
            argv = ["/bin/sh", "-c",
                    'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"',
                    "bth-pin-dns", hosts, resolv] + argv
        p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=self.env, cwd=self.a.workdir)
        # `ip netns exec` execs the command, so p.pid is the client itself.
        self.procs.append((name, p, log))
        return p

    def dns_files(self):
        hosts = os.path.join(self.a.workdir, "etc-hosts")
        resolv = os.path.join(self.a.workdir, "etc-resolv.conf")
        with open(hosts, "w") as f:
            f.write("127.0.0.1\tlocalhost\n")
            for h in PUBLIC_BOOTSTRAP_NAMES:
                f.write("127.0.0.1\t%s\n" % h)
        with open(resolv, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        return hosts, resolv

    def stop_all(self):
        # leecher first, then seeder, then tracker/DHT (reverse start order)
        for name, p, log in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(timeout=3)
            log.close()
        self.procs = []

    def log_tail(self, name, n=8):
        try:
            with open(os.path.join(self.a.workdir, name + ".log"), "rb") as f:
                lines = f.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()
            return [l for l in lines if l.strip()][-n:]
        except OSError:
            return []


def wait_for(cond, timeout, procs=()):
    """Poll cond() every POLL s until true or timeout; fail early if a needed
    process died. Returns True/False."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        for p in procs:
            if p.poll() is not None:
                return False
        time.sleep(POLL)
    return bool(cond())


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def make_payload(path, size):
    # Random data: incompressible, and no piece of it matches a hole or zeros.
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


def make_torrent(lt, payload, torrent_path, trackers):
    fs = lt.file_storage()
    lt.add_files(fs, payload)
    # v1-only: aria2 1.36 and Transmission 3.00 do not speak BitTorrent v2
    t = lt.create_torrent(fs, PIECE, lt.create_torrent.v1_only)
    for tier, url in enumerate(trackers):
        t.add_tracker(url, tier)
    t.set_creator("isdf-bt-harness")
    lt.set_piece_hashes(t, os.path.dirname(payload))
    data = lt.bencode(t.generate())
    with open(torrent_path, "wb") as f:
        f.write(data)
    return lt.torrent_info(torrent_path)


def allocated_bytes(path):
    """Cheap progress probe: bytes the leecher has actually written (allocated
    blocks; every client here writes sparse files, preallocation is off)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def verified_bytes(path, payload, total):
    """received_bytes, measured honestly: the number of payload bytes on the
    leecher's disk that are identical to the original, compared piece by
    piece (a piece counts only if all of it matches). Independent of what
    the client claims."""
    good = 0
    try:
        with open(path, "rb") as got, open(payload, "rb") as want:
            off = 0
            while off < total:
                n = min(PIECE, total - off)
                w = want.read(n)
                g = got.read(n)
                if g == w:
                    good += n
                off += n
    except OSError:
        return 0
    return good


def make_tls_cert(a):
    """A self-signed certificate for the WAN address (subjectAltName IP), made
    per run; the clients are told to trust exactly it."""
    cert = os.path.join(a.workdir, "tracker-cert.pem")
    key = os.path.join(a.workdir, "tracker-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=%s" % a.wan_addr,
                    "-addext", "subjectAltName=IP:%s" % a.wan_addr,
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return cert, key


def leecher_argv(a, torrent, dl, dht_boot, cert):
    dht = a.discovery == "dht"
    enc = a.mode == "encrypted"
    if a.client == "libtorrent":
        argv = [PY, os.path.join(HERE, "peer.py"), "--role", "leech", "--torrent", torrent,
                "--save", dl, "--listen", "%s:%d" % (a.lan_addr, LEECH_PORT),
                "--mode", a.mode, "--transport", a.transport,
                "--dht-bootstrap", dht_boot if dht else "",
                "--status", os.path.join(a.workdir, "leech-status.json"),
                "--max-seconds", str(a.timeout + 30)]
        if a.discovery in HIDDEN:
            argv += ["--hidden"]
        if a.discovery == "manual":
            argv += ["--connect", "%s:%d" % (a.wan_addr, SEED_PORT)]
        return argv
    if a.client == "aria2":
        # aria2 speaks to UDP trackers only through its DHT UDP socket, so
        # udp discovery needs --enable-dht=true; with no --dht-entry-point,
        # no dht.dat and no "nodes" in the torrent its routing table stays
        # empty and it sends no DHT traffic at all (aria2 has no built-in
        # bootstrap routers).
        dht_on = dht or a.discovery == "udp"
        argv = ["aria2c", "--no-conf=true", "--dir=" + dl,
                "--listen-port=%d" % LEECH_PORT,
                "--enable-dht=%s" % ("true" if dht_on else "false"), "--enable-dht6=false",
                "--dht-file-path=" + os.path.join(a.workdir, "aria2-dht.dat"),
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=%s" % ("false" if a.discovery in HIDDEN else "true"),
                "--bt-require-crypto=%s" % ("true" if enc else "false"),
                "--bt-min-crypto-level=%s" % ("arc4" if enc else "plain"),
                "--disable-ipv6=true", "--async-dns=false",
                "--file-allocation=none", "--seed-time=0", "--bt-stop-timeout=0",
                "--bt-tracker-connect-timeout=5", "--bt-tracker-timeout=10",
                "--auto-file-renaming=false", "--allow-overwrite=true",
                "--summary-interval=0", "--enable-color=false", "--console-log-level=notice",
                "--log=" + os.path.join(a.workdir, "aria2-debug.log"), "--log-level=info"]
        if a.discovery == "https":
            argv += ["--check-certificate=true", "--ca-certificate=" + cert]
        else:
            argv += ["--check-certificate=false"]
        if dht_on:
            argv += ["--dht-listen-port=%d" % LEECH_PORT]
        if dht:
            argv += ["--dht-entry-point=" + dht_boot]
        return argv + [torrent]
    if a.client == "transmission":
        cfg = os.path.join(a.workdir, "transmission")
        os.makedirs(cfg, exist_ok=True)
        settings = {
            "bind-address-ipv4": a.lan_addr,
            "bind-address-ipv6": "::1",
            "peer-port": LEECH_PORT,
            "peer-port-random-on-start": False,
            "dht-enabled": dht,
            "lpd-enabled": False,
            "pex-enabled": a.discovery not in HIDDEN,
            # TCP is always on in Transmission; tcp = uTP off
            "utp-enabled": a.transport in ("utp", "both"),
            "port-forwarding-enabled": False,
            "blocklist-enabled": False,
            "blocklist-url": "http://127.0.0.1/",  # never fetched (blocklist off); not a public host
            "encryption": 2 if enc else 0,  # 2 = required, 0 = prefer plaintext
            "rename-partial-files": False,
            "preallocation": 0,
            "download-dir": dl,
            "incomplete-dir-enabled": False,
            "watch-dir-enabled": True,
            "watch-dir": os.path.join(a.workdir, "watch"),
            "trash-original-torrent-files": False,
            "start-added-torrents": True,
            "rpc-enabled": False,
            "umask": 18,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "speed-limit-down-enabled": False,
            "speed-limit-up-enabled": False,
            "alt-speed-enabled": False,
            "scrape-paused-torrents-enabled": False,
        }
        with open(os.path.join(cfg, "settings.json"), "w") as f:
            json.dump(settings, f, indent=1)
        if dht:
            # Transmission will not announce or search until its table holds
            # >= 4 nodes that answered it and > 8 in all. Its bootstrap from
            # <config>/dht.bootstrap pings one name per ~15 s, so it is also
            # handed the nodes of the harness's closed DHT (all in the WAN
            # namespace) the way it keeps them between runs, in dht.dat,
            # whose first 8 nodes it pings at once. Its built-in fallback,
            # dht.transmissionbt.com, resolves to 127.0.0.1 inside bth-*
            # namespaces (see topology.sh).
            host, port = dht_boot.rsplit(":", 1)
            with open(os.path.join(cfg, "dht.bootstrap"), "w") as f:
                f.write("%s %s\n" % (host, port))
            packed = socket.inet_aton(host)
            nodes = b"".join(packed + struct.pack(">H", int(port) + i) for i in range(DHT_NODES))
            with open(os.path.join(cfg, "dht.dat"), "wb") as f:
                f.write(bencode.encode({"id": os.urandom(20), "nodes": nodes}))
        # transmission-daemon in the foreground, fed through its watch dir
        # (RPC off). Not transmission-cli: that one quits when it happens to
        # poll its torrent in the brief "stopped" state between being added
        # and being verified (seen in about 1 run of 25).
        watch = os.path.join(a.workdir, "watch")
        os.makedirs(watch, exist_ok=True)
        shutil.copy(torrent, os.path.join(watch, "payload.torrent"))
        return ["transmission-daemon", "-f", "-g", cfg,
                "--log-debug" if os.environ.get("BTH_DEBUG") else "--log-info"]
    raise ValueError(a.client)


def run(a):
    import libtorrent as lt

    out = {"client": a.client, "mode": a.mode, "transport": a.transport, "discovery": a.discovery}
    if a.transport in ("utp", "both") and a.client not in UTP_CAPABLE:
        out.update(error="unsupported combination: %s has no uTP support" % a.client,
                   unsupported=True, complete=False)
        return out, 2
    if a.discovery == "manual" and a.client not in MANUAL_CAPABLE:
        out.update(error="unsupported combination: %s cannot be handed a peer by hand" % a.client,
                   unsupported=True, complete=False)
        return out, 2
    for ns in (a.lan_ns, a.wan_ns):
        if not os.path.exists("/run/netns/" + ns):
            out.update(error="network namespace %s does not exist" % ns, complete=False)
            return out, 2

    total = a.size_mb * 1024 * 1024
    seed_dir = os.path.join(a.workdir, "seed")
    dl = os.path.join(a.workdir, "download")
    os.makedirs(seed_dir, exist_ok=True)
    os.makedirs(dl, exist_ok=True)
    name = "bth-payload-%dMB.bin" % a.size_mb
    payload = os.path.join(seed_dir, name)
    make_payload(payload, total)
    trackers = {
        "http": ["http://%s:%d/announce" % (a.wan_addr, HTTP_TRACKER_PORT)],
        "udp": ["udp://%s:%d/announce" % (a.wan_addr, UDP_TRACKER_PORT)],
        "https": ["https://%s:%d/announce" % (a.wan_addr, HTTPS_TRACKER_PORT)],
        "dht": [],
        "manual": [],
    }[a.discovery]
    torrent = os.path.join(a.workdir, "payload.torrent")
    ti = make_torrent(lt, payload, torrent, trackers)
    ih = str(ti.info_hash())
    out.update(total_bytes=total, info_hash=ih)

    h = Harness(a)
    cert = None
    if a.discovery == "https":
        cert, key = make_tls_cert(a)
        # Trust the tracker's certificate: OpenSSL's default verify paths
        # (libtorrent) honour SSL_CERT_FILE; Transmission hands
        # CURL_CA_BUNDLE to libcurl; aria2 gets --ca-certificate.
        h.env["SSL_CERT_FILE"] = cert
        h.env["CURL_CA_BUNDLE"] = cert
    try:
        dht_boot = "%s:%d" % (a.wan_addr, DHT_PORT)
        life = str(a.timeout + 2 * SETUP_TIMEOUT + 30)  # helpers also stop by themselves
        seed_status = os.path.join(a.workdir, "seed-status.json")
        need = {"tcp": {"tcp"}, "utp": {"udp"}, "both": {"tcp", "udp"}}[a.transport]

        def start_helpers():
            """The tracker or DHT node and the seeder, up and the seeder known:
            None, or why not (with what exited and the logs' tails)."""
            for left_over in ("seed-status.json", "tracker.json", "dht.json"):
                if os.path.exists(os.path.join(a.workdir, left_over)):
                    os.remove(os.path.join(a.workdir, left_over))
            svc = None
            state = None
            if a.discovery == "manual":
                pass  # nothing to discover from: the leecher is handed the seeder's address
            elif a.discovery == "dht":
                state = os.path.join(a.workdir, "dht.json")
                svc = h.start("dht", a.wan_ns, [PY, os.path.join(HERE, "dhtnode.py"), "--bind", a.wan_addr,
                                                "--port", str(DHT_PORT), "--nodes", str(DHT_NODES),
                                                "--state", state, "--max-seconds", life])
            else:
                state = os.path.join(a.workdir, "tracker.json")
                argv = [PY, os.path.join(HERE, "tracker.py"), "--bind", a.wan_addr,
                        "--http-port", str(HTTP_TRACKER_PORT if a.discovery == "http" else 0),
                        "--udp-port", str(UDP_TRACKER_PORT if a.discovery == "udp" else 0),
                        "--state", state, "--max-seconds", life]
                if a.discovery == "https":
                    argv += ["--https-port", str(HTTPS_TRACKER_PORT), "--cert", cert, "--key", key]
                svc = h.start("tracker", a.wan_ns, argv)
            discovery_log = "dht" if a.discovery == "dht" else "tracker"
            if svc and not wait_for(lambda: os.path.exists(state), SETUP_TIMEOUT, [svc]):
                return dict(error="tracker/DHT did not start", exited={"discovery": svc.poll()},
                            log_tail=h.log_tail(discovery_log))
            seeder = h.start("seeder", a.wan_ns, [PY, os.path.join(HERE, "peer.py"), "--role", "seed",
                                                  "--torrent", torrent, "--save", seed_dir,
                                                  "--listen", "%s:%d" % (a.wan_addr, SEED_PORT),
                                                  "--mode", a.mode, "--transport", a.transport,
                                                  "--dht-bootstrap", dht_boot if a.discovery == "dht" else "",
                                                  "--status", seed_status, "--max-seconds", life]
                             + (["--hidden"] if a.discovery in HIDDEN else []))

            def seeder_known():
                if a.discovery == "manual":
                    # ready to be connected to: seeding, and listening on each transport
                    st = read_json(seed_status) or {}
                    return bool(st.get("is_seeding")) and need <= set(st.get("listening", []))
                st = read_json(state) or {}
                if a.discovery == "dht":
                    return bool(st.get("peers", {}).get(ih))
                return any(p.get("left") == 0 for p in st.get("swarms", {}).get(ih, []))

            if not wait_for(seeder_known, SETUP_TIMEOUT, [p for p in (svc, seeder) if p]):
                exited = {name: p.returncode for name, p in (("discovery", svc), ("seeder", seeder))
                          if p is not None and p.poll() is not None}
                return dict(error="seeder never announced (tracker/DHT) or, for manual, never listened",
                            exited=exited, log_tail=h.log_tail("seeder"),
                            discovery_log_tail=h.log_tail(discovery_log) if svc else [])
            return None

        # A helper of ours (tracker, DHT node, the libtorrent seeder) that
        # exits while the swarm is set up is started again once, and the
        # first failure is kept in the result (`setup_retried`). One exited
        # early once, in a CI run on a loaded machine (libtorrent seeder,
        # uTP, HTTPS tracker), and was not seen again in a dozen runs with
        # and without load. Waiting out SETUP_TIMEOUT with every helper
        # alive is not retried: that is a failure at once.
        failed = start_helpers()
        if failed and failed.get("exited"):
            out["setup_retried"] = failed
            h.stop_all()
            failed = start_helpers()
        if failed:
            out.update(failed, complete=False)
            return out, 1

        target = os.path.join(dl, name)
        t0 = time.monotonic()
        leecher = h.start("leecher", a.lan_ns, leecher_argv(a, torrent, dl, dht_boot, cert), pin_dns=True)
        complete = False
        err = None
        end = t0 + a.timeout
        last_verify = 0.0
        while time.monotonic() < end:
            # Verify (a full compare) only once the leecher has written every
            # block, and at most twice a second.
            if allocated_bytes(target) >= total and time.monotonic() - last_verify >= 0.5:
                last_verify = time.monotonic()
                if verified_bytes(target, payload, total) == total:
                    complete = True
                    break
            if leecher.poll() is not None:
                # aria2c exits by itself after completion (--seed-time=0)
                if verified_bytes(target, payload, total) == total:
                    complete = True
                else:
                    err = "leecher exited with code %s" % leecher.returncode
                break
            time.sleep(POLL)
        seconds = time.monotonic() - t0
        received = verified_bytes(target, payload, total)
        out.update(received_bytes=received, complete=complete and received == total,
                   seconds=round(seconds, 2))
        ls = read_json(os.path.join(a.workdir, "leech-status.json"))
        if ls:
            out["client_reported_bytes"] = ls.get("total_wanted_done")
        ss = read_json(seed_status)
        if ss:
            out["seeder_uploaded_bytes"] = ss.get("total_payload_upload")
        if not out["complete"]:
            out["error"] = err or "timeout after %ss" % a.timeout
            out["log_tail"] = h.log_tail("leecher")
        return out, 0 if out["complete"] else 1
    finally:
        h.stop_all()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=CLIENTS, required=True, help="leecher client (LAN side)")
    ap.add_argument("--mode", choices=["plain", "encrypted"], default="plain",
                    help="encrypted = MSE/PE (RC4) required on leecher and seeder")
    ap.add_argument("--transport", choices=TRANSPORTS, default="tcp",
                    help="both = TCP and uTP enabled on both peers")
    ap.add_argument("--discovery", choices=DISCOVERIES, default="http",
                    help="HTTP tracker, UDP tracker (BEP 15), DHT only (no tracker in the torrent), "
                         "HTTPS tracker (DHT, PEX, LSD off), or manual (no tracker, no DHT: the "
                         "seeder's address handed to the leecher)")
    ap.add_argument("--lan-ns", required=True)
    ap.add_argument("--lan-addr", required=True)
    ap.add_argument("--wan-ns", required=True)
    ap.add_argument("--wan-addr", required=True)
    ap.add_argument("--size-mb", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=60, help="seconds allowed for the download itself")
    ap.add_argument("--workdir", default="", help="kept afterwards; default: a temporary dir, removed")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    a = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("must run as root (ip netns exec)")
    if not 1 <= a.size_mb <= 1024 or not 1 <= a.timeout <= 3600:
        ap.error("size-mb must be 1..1024 and timeout 1..3600")

    temp = not a.workdir
    if temp:
        a.workdir = tempfile.mkdtemp(prefix="bth-swarm-")
    else:
        # A fresh run each time (old downloads would count as received
        # bytes, a saved DHT table would change the run); only a directory
        # that is empty or was made by this tool is wiped.
        if os.path.isdir(a.workdir) and os.listdir(a.workdir):
            if not os.path.exists(os.path.join(a.workdir, ".bth-swarm")):
                ap.error("--workdir %s is not empty and was not made by swarm.py" % a.workdir)
            shutil.rmtree(a.workdir)
        os.makedirs(a.workdir, exist_ok=True)
    open(os.path.join(a.workdir, ".bth-swarm"), "w").close()
    a.workdir = os.path.abspath(a.workdir)
    # SIGTERM/SIGINT: unwind through run()'s finally, which stops every child
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        out, rc = run(a)
    except SystemExit:
        out, rc = {"client": a.client, "mode": a.mode, "transport": a.transport,
                   "discovery": a.discovery, "complete": False, "error": "interrupted"}, 143
    finally:
        if temp and not a.keep:
            shutil.rmtree(a.workdir, ignore_errors=True)
    if not temp or a.keep:
        out["workdir"] = a.workdir
    print(json.dumps(out), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
