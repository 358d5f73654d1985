#!/usr/bin/python3
"""Run N real sessions of one non-BitTorrent protocol from the LAN namespace
to the WAN namespace and print ONE JSON line on stdout: the "collateral"
corpus, protocols a BitTorrent classifier must leave alone (issue 18), some
of them built to look random.

Run with Debian's /usr/bin/python3, standard library only, as root.

    /usr/bin/python3 collateral.py --protocol obfs4 --sessions 300 \
        --lan-ns bth-lan --lan-addr 192.0.2.2 \
        --wan-ns bth-wan --wan-addr 198.51.100.2 [--variant iat0] [--workdir DIR]

Every server runs in the WAN namespace, every client in the LAN namespace,
all of them the real Debian programs (scripts/install-bt-deps installs
them); each session moves real data and checks it (a digest, an echoed
token, a DNS answer). Protocols and their variants (without --variant the
sessions cycle through all of them):

  tls12, tls13   openssl s_client -> openssl s_server -WWW (a file; every
                 other one resumes the previous session), gnutls-cli ->
                 gnutls-serv --echo (every other one with --resume), curl
                 https (two URLs: the second connection resumes)
  quic           ngtcp2's GnuTLS example client -> server (a file; every
                 other one resumes with 0-RTT from a saved session)
  ssh            OpenSSH ssh/scp -> sshd (own config, host key and client
                 key; ports 22 and 2222): a command, an upload, a download,
                 a digest of piped data
  wireguard      wireguard-go on both sides (its own /run/wireguard each);
                 every session a new client process: handshake, ping and a
                 TCP transfer through the tunnel
  openvpn        variants {tcp,udp}-{tls-auth,tls-crypt,tls-crypt-v2}: one
                 server each (a throwaway CA), a new client per session,
                 ping and a TCP transfer through the tunnel
  shadowsocks    variants aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305:
                 ss-server (WAN) + ss-local (LAN); curl --socks5-hostname to
                 HTTP and HTTPS servers on the WAN host, mostly small
                 responses (the hard case), some large
  obfs4          variants iat0, iat1: obfs4proxy server and client in
                 managed mode without tor (TOR_PT_* environment), SOCKS5
                 with cert=...;iat-mode=N, to a TCP server on the WAN host
  http           curl -> an HTTP server on the WAN host
  dns            dig (UDP, every fourth over TCP) -> dnsmasq on the WAN host

Output: {"protocol", "variants", "sessions", "ok", "failed", "errors": [...],
"seconds", "servers": ["198.51.100.2:443/tcp", ...]} ("servers": every
WAN endpoint the sessions' flows go to through the router). Exit code 0 =
every session worked.

Nothing reaches beyond the two namespaces: servers bind the WAN address (or
a tunnel's), clients are given IP addresses only, no client is configured
with anything public. Every wait is bounded; every process is started by
this script and stopped by its PID at the end, also after errors. Servers
of different protocols use different ports, so several runs may share the
namespaces at once (not two runs of the same protocol).
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

PY = "/usr/bin/python3"
SELF = os.path.abspath(__file__)
POLL = 0.05
SETUP_TIMEOUT = 15.0  # bound on each setup wait (a server listening, a tunnel up)
SESSION_TIMEOUT = 20.0  # bound on each client command
MAX_ERRORS = 20
SNI = "isdf-test.example"

# Response sizes (bytes): mostly small, as request/response pairs of the
# size of an MSE handshake are what a shape rule could mistake.
SMALL = (60, 150, 300, 480, 700, 1200)
LARGE = (60000, 400000)

VARIANTS = {
    "tls12": [""],
    "tls13": [""],
    "quic": [""],
    "ssh": [""],
    "wireguard": [""],
    "openvpn": ["tcp-tls-auth", "tcp-tls-crypt", "tcp-tls-crypt-v2",
                "udp-tls-auth", "udp-tls-crypt", "udp-tls-crypt-v2"],
    "shadowsocks": ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305"],
    "obfs4": ["iat0", "iat1"],
    "http": [""],
    "dns": [""],
}


def blob(seed, n):
    """n deterministic pseudo-random bytes: what servers send and clients check."""
    return hashlib.shake_256(b"isdf-collateral:" + seed.encode()).digest(n)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def file_sha(path):
    try:
        with open(path, "rb") as f:
            return sha(f.read())
    except OSError as e:
        return "unreadable: %s" % e


class Fail(Exception):
    """A session (or the setup) did not work; the message says why."""


def tail(data, n=300):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    text = " ".join(text.split())
    return text[-n:]


class Harness:
    def __init__(self, a):
        self.a = a
        self.procs = []  # (name, Popen, log file)
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.path.join(a.workdir, "home"),
            "LANG": "C.UTF-8",
        }  # no *_proxy, no inherited SSH agent
        os.makedirs(self.env["HOME"], exist_ok=True)
        self.servers = []

    def path(self, *parts):
        return os.path.join(self.a.workdir, *parts)

    def start(self, name, ns, argv, env=None, cwd=None, stdout=None):
        """Starts a long-running program in `ns`; `ip netns exec` execs it, so
        the PID is the program's own. Output goes to WORKDIR/name.log."""
        log = open(self.path(name + ".log"), "wb")
        e = dict(self.env)
        e.update(env or {})
        p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdin=subprocess.DEVNULL,
                             stdout=stdout or log, stderr=log, env=e, cwd=cwd or self.a.workdir)
        self.procs.append((name, p, log))
        return p

    def run(self, ns, argv, input=None, timeout=SESSION_TIMEOUT, env=None, check=True, cwd=None):
        """Runs a client command in `ns` to its end (killed by PID after
        `timeout`); returns (stdout, stderr)."""
        e = dict(self.env)
        e.update(env or {})
        p = subprocess.Popen(["ip", "netns", "exec", ns] + argv,
                             stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                             cwd=cwd or self.a.workdir)
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(p)
            out, err = p.communicate()
            raise Fail("%s timed out after %ss: %s" % (os.path.basename(argv[0]), timeout, tail(err)))
        if check and p.returncode != 0:
            raise Fail("%s exited %s: %s" % (os.path.basename(argv[0]), p.returncode, tail(err or out)))
        return out, err

    def stop(self, p):
        for i, (name, q, log) in enumerate(self.procs):
            if q is p:
                kill(q)
                log.close()
                del self.procs[i]
                return

    def stop_all(self):
        for name, p, log in reversed(self.procs):
            kill(p)
            log.close()
        self.procs = []

    def log_tail(self, name):
        try:
            with open(self.path(name + ".log"), "rb") as f:
                return tail(f.read())
        except OSError:
            return ""

    def wait(self, what, cond, procs=(), timeout=SETUP_TIMEOUT):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            for name, p in procs:
                if p.poll() is not None:
                    raise Fail("%s exited (%s) while waiting for %s: %s"
                               % (name, p.returncode, what, self.log_tail(name)))
            time.sleep(POLL)
        if not cond():
            raise Fail("timed out after %ss waiting for %s" % (timeout, what))

    def listening(self, ns, proto, port):
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hln" + proto[0], "sport = :%d" % port],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        return bool(out.strip())

    def serve(self, name, argv, proto, port, env=None, cwd=None, record=True):
        """Starts a server in the WAN namespace and waits until it listens."""
        p = self.start(name, self.a.wan_ns, argv, env=env, cwd=cwd)
        self.wait("%s on %s/%d" % (name, proto, port), lambda: self.listening(self.a.wan_ns, proto, port),
                  [(name, p)])
        if record:
            self.servers.append("%s:%d/%s" % (self.a.wan_addr, port, proto))
        return p

    def serve_blob(self, kind, port, bind=None, record=True):
        """This script's own data server (see `serve`) in the WAN namespace;
        `record`: whether LAN clients reach it through the router."""
        argv = [PY, SELF, "serve", "--kind", kind, "--addr", bind or self.a.wan_addr,
                "--port", str(port), "--max-seconds", str(self.a.max_seconds)]
        if kind == "https":
            argv += ["--cert", self.cert()[1], "--key", self.cert()[0]]
        return self.serve("serve-%s-%d" % (kind, port), argv, "tcp", port, record=record and bind is None)

    def blob_client(self, connect, n, seed, put=False, socks=None, socks_args=None):
        """One TCP session to a data server from the LAN namespace; checks it."""
        argv = [PY, SELF, "blob-client", "--connect", connect, "--n", str(n), "--seed", seed]
        if put:
            argv.append("--put")
        if socks:
            argv += ["--socks5", socks]
        if socks_args:
            argv += ["--socks-args", socks_args]
        out, _ = self.run(self.a.lan_ns, argv)
        got = out.decode().strip()
        if got != sha(blob(seed, n)):
            raise Fail("%s %d bytes via %s: digest mismatch (%s)" % ("PUT" if put else "GET", n, connect, got[:80]))

    def cert(self):
        """A self-signed RSA certificate for SNI (made once): (key, cert)."""
        key, crt = self.path("tls.key"), self.path("tls.crt")
        if not os.path.exists(crt):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=" + SNI, "-addext", "subjectAltName=DNS:" + SNI,
                            "-keyout", key, "-out", crt], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return key, crt

    def docroot(self):
        """Files s<N> of every size, as the TLS and QUIC servers serve them."""
        www = self.path("www")
        if not os.path.isdir(www):
            os.makedirs(www)
            for n in SMALL + LARGE:
                with open(os.path.join(www, "s%d" % n), "wb") as f:
                    f.write(blob("file-%d" % n, n))
        return www


def kill(p):
    """SIGTERM, then SIGKILL after 3 s, by PID."""
    if p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=3)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=3)


def size_for(i):
    """Response size of session i: large one time in six."""
    return LARGE[(i // 6) % len(LARGE)] if i % 6 == 5 else SMALL[i % len(SMALL)]


# ---------------------------------------------------------------- TLS
class Tls:
    def __init__(self, version):
        self.v = version  # "1.2" or "1.3"
        self.port_openssl, self.port_gnutls = (8443, 8444) if version == "1.2" else (443, 4443)
        self.ossl_flag = "-tls1_2" if version == "1.2" else "-tls1_3"
        self.prio = "NORMAL:-VERS-ALL:+VERS-TLS%s" % version

    def setup(self, h, variants):
        key, crt = h.cert()
        www = h.docroot()
        h.serve("openssl-s_server", ["openssl", "s_server", "-accept", "%s:%d" % (h.a.wan_addr, self.port_openssl),
                                     "-cert", crt, "-key", key, "-WWW", self.ossl_flag, "-quiet"],
                "tcp", self.port_openssl, cwd=www)
        h.serve("gnutls-serv", ["gnutls-serv", "--echo", "-q", "-p", str(self.port_gnutls), "--x509keyfile", key,
                                "--x509certfile", crt, "--priority", self.prio], "tcp", self.port_gnutls)
        self.sess = h.path("openssl-session.pem")

    def session(self, h, variant, i):
        n = size_for(i)
        kind, j = i % 3, i // 3
        if kind == 0:
            argv = ["openssl", "s_client", "-connect", "%s:%d" % (h.a.wan_addr, self.port_openssl),
                    "-servername", SNI, self.ossl_flag, "-quiet", "-ign_eof"]
            if j % 2 == 1 and os.path.exists(self.sess):
                argv += ["-sess_in", self.sess]
            else:
                argv += ["-sess_out", self.sess]
            out, _ = h.run(h.a.lan_ns, argv, input=b"GET /s%d HTTP/1.0\r\n\r\n" % n)
            body = out.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in out else b""
            if sha(body) != sha(blob("file-%d" % n, n)):
                raise Fail("openssl s_client: %d of %d bytes, digest mismatch: %s" % (len(body), n, tail(out[:200])))
        elif kind == 1:
            token = "collateral-%d-%s" % (i, os.urandom(6).hex())
            argv = ["gnutls-cli", "--insecure", "-p", str(self.port_gnutls), "--priority", self.prio,
                    "--sni-hostname", SNI, "--logfile", h.path("gnutls-cli.log"), h.a.wan_addr]
            if j % 2 == 1:
                argv.insert(1, "--resume")
            out, _ = h.run(h.a.lan_ns, argv, input=(token + "\n").encode())
            if token.encode() not in out:
                raise Fail("gnutls-cli: the echo server did not answer the token: %s" % tail(out))
        else:
            version = ["--tlsv1.2", "--tls-max", "1.2"] if self.v == "1.2" else ["--tlsv1.3"]
            url = "https://%s:%d/s%d" % (SNI, self.port_openssl, n)
            f1, f2 = h.path("curl-1"), h.path("curl-2")
            h.run(h.a.lan_ns, ["curl", "-sS", "-k", "-m", str(int(SESSION_TIMEOUT)), "--http1.1"] + version
                  + ["--resolve", "%s:%d:%s" % (SNI, self.port_openssl, h.a.wan_addr),
                     "-o", f1, "-o", f2, url, url])
            for f in (f1, f2):
                if file_sha(f) != sha(blob("file-%d" % n, n)):
                    raise Fail("curl https: %s digest mismatch" % url)


# ---------------------------------------------------------------- QUIC
class Quic:
    PORT = 443

    def setup(self, h, variants):
        key, crt = h.cert()
        www = h.docroot()
        h.serve("gtlsserver", ["gtlsserver", "-q", "-d", www, h.a.wan_addr, str(self.PORT), key, crt],
                "udp", self.PORT)

    def session(self, h, variant, i):
        n = size_for(i)
        dl = h.path("quic-dl")
        shutil.rmtree(dl, ignore_errors=True)
        os.makedirs(dl)
        argv = ["gtlsclient", "-q", "--exit-on-all-streams-close", "--timeout=10s", "--download", dl]
        if i % 2 == 1:  # resume (and 0-RTT) from the previous resumable session
            argv += ["--session-file", h.path("quic-session"), "--tp-file", h.path("quic-tp")]
        argv += [h.a.wan_addr, str(self.PORT), "https://%s:%d/s%d" % (h.a.wan_addr, self.PORT, n)]
        h.run(h.a.lan_ns, argv)
        got = file_sha(os.path.join(dl, "s%d" % n))
        if got != sha(blob("file-%d" % n, n)):
            raise Fail("gtlsclient: /s%d digest mismatch (%s)" % (n, got[:60]))


# ---------------------------------------------------------------- SSH
class Ssh:
    PORTS = (22, 2222)

    def setup(self, h, variants):
        d = h.path("ssh")
        os.makedirs(d, exist_ok=True)
        for name, kind in (("host_key", "ed25519"), ("client_key", "ed25519")):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "isdf-collateral",
                            "-f", os.path.join(d, name)], check=True, stdout=subprocess.DEVNULL)
        shutil.copy(os.path.join(d, "client_key.pub"), os.path.join(d, "authorized_keys"))
        self.recv = os.path.join(d, "recv")
        os.makedirs(self.recv, exist_ok=True)
        cfg = os.path.join(d, "sshd_config")
        with open(cfg, "w") as f:
            f.write("\n".join(["Port %d" % p for p in self.PORTS] + [
                "ListenAddress " + h.a.wan_addr,
                "HostKey " + os.path.join(d, "host_key"),
                "PidFile none",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "AuthorizedKeysFile " + os.path.join(d, "authorized_keys"),
                "StrictModes no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "AllowAgentForwarding no",
                "PermitTunnel no",
                "Subsystem sftp internal-sftp",
                "LogLevel ERROR",
            ]) + "\n")
        # sshd refuses to start without its privilege separation directory
        # (systemd makes it for the packaged service, which is not run).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        p = h.start("sshd", h.a.wan_ns, ["/usr/sbin/sshd", "-D", "-e", "-f", cfg])
        for port in self.PORTS:
            h.wait("sshd on tcp/%d" % port, lambda port=port: h.listening(h.a.wan_ns, "tcp", port), [("sshd", p)])
            h.servers.append("%s:%d/tcp" % (h.a.wan_addr, port))
        self.opts = ["-F", "/dev/null", "-i", os.path.join(d, "client_key"), "-o", "IdentitiesOnly=yes",
                     "-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                     "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
                     "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]

    def session(self, h, variant, i):
        port = str(self.PORTS[i % 2])
        kind = (i // 2) % 4
        target = "root@" + h.a.wan_addr
        if kind == 0:  # a command, its output checked
            token = "collateral-%d-%s" % (i, os.urandom(6).hex())
            out, _ = h.run(h.a.lan_ns, ["ssh", "-p", port] + self.opts + [target, "echo " + token])
            if out.decode().strip() != token:
                raise Fail("ssh: echoed %r" % tail(out))
        elif kind == 1:  # an upload (scp over the SFTP subsystem)
            n = (SMALL + LARGE)[i % (len(SMALL) + len(LARGE))]
            src = h.path("ssh-up")
            with open(src, "wb") as f:
                f.write(blob("up-%d" % i, n))
            dst = os.path.join(self.recv, "up-%d" % i)
            h.run(h.a.lan_ns, ["scp", "-q", "-P", port] + self.opts + [src, "%s:%s" % (target, dst)])
            if file_sha(dst) != sha(blob("up-%d" % i, n)):
                raise Fail("scp upload: digest mismatch")
        elif kind == 2:  # piped data, its digest computed by the server
            data = blob("pipe-%d" % i, size_for(i))
            out, _ = h.run(h.a.lan_ns, ["ssh", "-p", port] + self.opts + [target, "sha256sum"], input=data)
            if out.decode().split()[:1] != [sha(data)]:
                raise Fail("ssh sha256sum: %r" % tail(out))
        else:  # a download
            n = LARGE[i % len(LARGE)]
            src = os.path.join(self.recv, "down-%d" % i)
            with open(src, "wb") as f:
                f.write(blob("down-%d" % i, n))
            dst = h.path("ssh-down")
            h.run(h.a.lan_ns, ["scp", "-q", "-P", port] + self.opts + ["%s:%s" % (target, src), dst])
            if file_sha(dst) != sha(blob("down-%d" % i, n)):
                raise Fail("scp download: digest mismatch")


# ---------------------------------------------------------------- WireGuard
def wireguard_go(h, name, ns, iface):
    """wireguard-go in `ns` with a /run/wireguard of its own (a tmpfs in the
    private mount namespace `ip netns exec` gives it), so its control socket
    never meets another's; `wg` reaches it through nsenter."""
    p = h.start(name, ns, ["/bin/sh", "-c",
                           'mkdir -p /run/wireguard && mount -t tmpfs -o mode=0700 isdf-collateral /run/wireguard'
                           ' && exec wireguard-go -f "$0"', iface],
                env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
    sock = "/proc/%d/root/run/wireguard/%s.sock" % (p.pid, iface)
    h.wait("wireguard-go %s" % iface, lambda: os.path.exists(sock), [(name, p)])
    return p


def wg(h, p, *args):
    out = subprocess.run(["nsenter", "-t", str(p.pid), "-m", "-n", "wg"] + list(args),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    if out.returncode != 0:
        raise Fail("wg %s: %s" % (args[0], tail(out.stderr)))
    return out.stdout.decode().strip()


def ip_ns(ns, *args):
    out = subprocess.run(["ip", "-n", ns] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if out.returncode != 0:
        raise Fail("ip %s: %s" % (" ".join(args), tail(out.stderr)))


def link_exists(ns, iface):
    return subprocess.run(["ip", "-n", ns, "link", "show", iface], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


class WireGuard:
    PORT = 51820
    DATA_PORT = 9101
    SERVER_IF, CLIENT_IF = "colwg0", "colwg1"
    SERVER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"

    def setup(self, h, variants):
        d = h.path("wg")
        os.makedirs(d, exist_ok=True)
        self.keys = {}
        for side in ("server", "client"):
            priv = subprocess.run(["wg", "genkey"], stdout=subprocess.PIPE, check=True).stdout
            pub = subprocess.run(["wg", "pubkey"], input=priv, stdout=subprocess.PIPE, check=True).stdout
            path = os.path.join(d, side + ".key")
            with open(path, "wb") as f:
                f.write(priv)
            os.chmod(path, 0o600)
            self.keys[side] = (path, pub.decode().strip())
        self.server = wireguard_go(h, "wireguard-go-server", h.a.wan_ns, self.SERVER_IF)
        wg(h, self.server, "set", self.SERVER_IF, "private-key", self.keys["server"][0],
           "listen-port", str(self.PORT), "peer", self.keys["client"][1], "allowed-ips", self.CLIENT_IP + "/32")
        ip_ns(h.a.wan_ns, "addr", "add", self.SERVER_IP + "/24", "dev", self.SERVER_IF)
        ip_ns(h.a.wan_ns, "link", "set", self.SERVER_IF, "up")
        h.servers.append("%s:%d/udp" % (h.a.wan_addr, self.PORT))
        h.serve_blob("raw", self.DATA_PORT, bind=self.SERVER_IP)

    def session(self, h, variant, i):
        # A new client process each time: a new handshake from a new port.
        h.wait("the previous client's %s to go" % self.CLIENT_IF,
               lambda: not link_exists(h.a.lan_ns, self.CLIENT_IF))
        client = wireguard_go(h, "wireguard-go-client", h.a.lan_ns, self.CLIENT_IF)
        try:
            wg(h, client, "set", self.CLIENT_IF, "private-key", self.keys["client"][0],
               "peer", self.keys["server"][1], "endpoint", "%s:%d" % (h.a.wan_addr, self.PORT),
               "allowed-ips", self.SERVER_IP + "/32")
            ip_ns(h.a.lan_ns, "addr", "add", self.CLIENT_IP + "/24", "dev", self.CLIENT_IF)
            ip_ns(h.a.lan_ns, "link", "set", self.CLIENT_IF, "up")
            h.run(h.a.lan_ns, ["ping", "-c", "2", "-i", "0.2", "-W", "3", "-q", self.SERVER_IP])
            h.blob_client("%s:%d" % (self.SERVER_IP, self.DATA_PORT), size_for(i), "wg-%d" % i, put=i % 2 == 1)
        finally:
            h.stop(client)


# ---------------------------------------------------------------- OpenVPN
class OpenVpn:
    BASE_PORT = 1194
    DATA_PORT = 9102
    CLIENT_IF = "colovc0"

    def setup(self, h, variants):
        d = h.path("ovpn")
        os.makedirs(d, exist_ok=True)
        self.d = d
        self.pki(d)
        openvpn = "/usr/sbin/openvpn"
        for cmd in (["--genkey", "secret", "ta.key"],
                    ["--genkey", "tls-crypt-v2-server", "v2-server.key"],
                    ["--tls-crypt-v2", "v2-server.key", "--genkey", "tls-crypt-v2-client", "v2-client.key"]):
            subprocess.run([openvpn] + cmd, cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        h.serve_blob("raw", self.DATA_PORT, bind="0.0.0.0")
        self.index = {}
        for k, variant in enumerate(VARIANTS["openvpn"]):
            if variant not in variants:
                continue
            self.index[variant] = k
            proto = variant.split("-", 1)[0]
            port = self.BASE_PORT + k
            argv = [openvpn, "--mode", "server", "--tls-server", "--dev", "colovs%d" % k, "--dev-type", "tun",
                    "--proto", "tcp-server" if proto == "tcp" else "udp", "--local", h.a.wan_addr,
                    "--port", str(port), "--topology", "subnet",
                    "--server", "10.78.%d.0" % k, "255.255.255.0",
                    "--ca", "ca.crt", "--cert", "server.crt", "--key", "server.key", "--dh", "none",
                    "--duplicate-cn", "--disable-dco", "--verb", "3"] + self.tls_opts(variant, "server")
            h.serve("openvpn-server-%s" % variant, argv, proto, port, cwd=d)

    def pki(self, d):
        """A throwaway CA with one server and one client certificate."""
        def run(*argv):
            subprocess.run(list(argv), cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        run("openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=isdf-collateral-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
        for name, eku in (("server", "serverAuth"), ("client", "clientAuth")):
            with open(os.path.join(d, name + ".ext"), "w") as f:
                f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\n"
                        "extendedKeyUsage=%s\n" % eku)
            run("openssl", "req", *ec, "-subj", "/CN=isdf-collateral-%s" % name,
                "-keyout", name + ".key", "-out", name + ".csr")
            run("openssl", "x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-set_serial", "0x%s" % os.urandom(8).hex(), "-days", "2", "-extfile", name + ".ext",
                "-out", name + ".crt")

    @staticmethod
    def tls_opts(variant, side):
        mode = variant.split("-", 1)[1]
        if mode == "tls-auth":
            return ["--tls-auth", "ta.key", "0" if side == "server" else "1"]
        if mode == "tls-crypt":
            return ["--tls-crypt", "ta.key"]
        return ["--tls-crypt-v2", "v2-%s.key" % side]

    def session(self, h, variant, i):
        k = self.index[variant]
        proto = variant.split("-", 1)[0]
        h.wait("the previous client's %s to go" % self.CLIENT_IF,
               lambda: not link_exists(h.a.lan_ns, self.CLIENT_IF))
        name = "openvpn-client"
        argv = ["/usr/sbin/openvpn", "--client", "--dev", self.CLIENT_IF, "--dev-type", "tun",
                "--proto", "tcp-client" if proto == "tcp" else "udp", "--remote", h.a.wan_addr,
                str(self.BASE_PORT + k), "--nobind", "--ca", "ca.crt", "--cert", "client.crt",
                "--key", "client.key", "--remote-cert-tls", "server", "--disable-dco",
                "--connect-retry-max", "1", "--connect-timeout", "10", "--verb", "3"] + self.tls_opts(variant, "client")
        if proto == "udp":
            argv += ["--explicit-exit-notify", "1"]
        client = h.start(name, h.a.lan_ns, argv, cwd=self.d)
        try:
            log = h.path(name + ".log")
            h.wait("the %s tunnel" % variant,
                   lambda: b"Initialization Sequence Completed" in open(log, "rb").read(),
                   [(name, client)], timeout=SESSION_TIMEOUT)
            server = "10.78.%d.1" % k
            h.run(h.a.lan_ns, ["ping", "-c", "2", "-i", "0.2", "-W", "3", "-q", server])
            h.blob_client("%s:%d" % (server, self.DATA_PORT), size_for(i), "ovpn-%d" % i, put=i % 2 == 1)
        finally:
            h.stop(client)


# ---------------------------------------------------------------- shadowsocks
class Shadowsocks:
    BASE_PORT = 8388
    LOCAL_BASE = 1080
    HTTP_PORT, HTTPS_PORT = 9104, 9105

    def setup(self, h, variants):
        # The upstream servers are reached by ss-server inside the WAN
        # namespace, not through the router.
        h.serve_blob("http", self.HTTP_PORT, record=False)
        h.serve_blob("https", self.HTTPS_PORT, record=False)
        self.index = {}
        password = os.urandom(12).hex()
        for k, method in enumerate(VARIANTS["shadowsocks"]):
            if method not in variants:
                continue
            self.index[method] = k
            port, local = self.BASE_PORT + k, self.LOCAL_BASE + k
            # No -c: neither reads the packaged /etc/shadowsocks-libev config.
            h.serve("ss-server-" + method, ["ss-server", "-s", h.a.wan_addr, "-p", str(port), "-k", password,
                                            "-m", method, "-t", "60"], "tcp", port)
            p = h.start("ss-local-" + method, h.a.lan_ns, ["ss-local", "-s", h.a.wan_addr, "-p", str(port),
                                                           "-b", "127.0.0.1", "-l", str(local), "-k", password,
                                                           "-m", method, "-t", "60"])
            h.wait("ss-local on tcp/%d" % local, lambda local=local: h.listening(h.a.lan_ns, "tcp", local),
                   [("ss-local-" + method, p)])

    def session(self, h, variant, i):
        local = self.LOCAL_BASE + self.index[variant]
        n = size_for(i)
        https = (i // 2) % 2 == 1
        url = "%s://%s:%d/blob/%d/ss-%d" % ("https" if https else "http", h.a.wan_addr,
                                           self.HTTPS_PORT if https else self.HTTP_PORT, n, i)
        files = [h.path("ss-1")]
        urls = [url]
        if https and i % 3 == 0:  # two connections, the second resumes TLS
            files.append(h.path("ss-2"))
            urls.append(url)
        argv = ["curl", "-sS", "-k", "-m", str(int(SESSION_TIMEOUT)), "--socks5-hostname", "127.0.0.1:%d" % local]
        for f in files:
            argv += ["-o", f]
        h.run(h.a.lan_ns, argv + urls)
        for f in files:
            if file_sha(f) != sha(blob("ss-%d" % i, n)):
                raise Fail("curl via ss-local: %s digest mismatch" % url)


# ---------------------------------------------------------------- obfs4
class Obfs4:
    BASE_PORT = 9443
    UPSTREAM_PORT = 9103

    def setup(self, h, variants):
        h.serve_blob("raw", self.UPSTREAM_PORT, record=False)  # reached by the obfs4 server only
        self.args, self.socks = {}, {}
        for k, variant in enumerate(VARIANTS["obfs4"]):
            if variant not in variants:
                continue
            iat = variant[len("iat"):]
            port = self.BASE_PORT + k
            state = h.path("obfs4-server-" + variant)
            os.makedirs(state, exist_ok=True)
            env = {"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_STATE_LOCATION": state,
                   "TOR_PT_SERVER_TRANSPORTS": "obfs4",
                   "TOR_PT_SERVER_BINDADDR": "obfs4-%s:%d" % (h.a.wan_addr, port),
                   "TOR_PT_SERVER_TRANSPORT_OPTIONS": "obfs4:iat-mode=" + iat,
                   "TOR_PT_ORPORT": "%s:%d" % (h.a.wan_addr, self.UPSTREAM_PORT)}
            name = "obfs4-server-" + variant
            out = open(h.path(name + ".out"), "wb")
            p = h.start(name, h.a.wan_ns, ["obfs4proxy", "-enableLogging", "-logLevel", "WARN"], env=env, stdout=out)
            out.close()
            cert = {}

            def smethod(name=name, cert=cert):
                text = open(h.path(name + ".out"), "rb").read().decode("utf-8", "replace")
                for line in text.splitlines():
                    if line.startswith("SMETHOD obfs4 ") and "cert=" in line:
                        cert["v"] = line.split("cert=", 1)[1].split(",", 1)[0]
                return "v" in cert
            h.wait(name, smethod, [(name, p)])
            h.servers.append("%s:%d/tcp" % (h.a.wan_addr, port))
            self.args[variant] = "cert=%s;iat-mode=%s" % (cert["v"], iat)

            cstate = h.path("obfs4-client-" + variant)
            os.makedirs(cstate, exist_ok=True)
            cname = "obfs4-client-" + variant
            out = open(h.path(cname + ".out"), "wb")
            c = h.start(cname, h.a.lan_ns, ["obfs4proxy", "-enableLogging", "-logLevel", "WARN"],
                        env={"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_STATE_LOCATION": cstate,
                             "TOR_PT_CLIENT_TRANSPORTS": "obfs4"}, stdout=out)
            out.close()
            socks = {}

            def cmethod(cname=cname, socks=socks):
                text = open(h.path(cname + ".out"), "rb").read().decode("utf-8", "replace")
                for line in text.splitlines():
                    f = line.split()
                    if len(f) >= 4 and f[:3] == ["CMETHOD", "obfs4", "socks5"]:
                        socks["v"] = f[3]
                return "v" in socks
            h.wait(cname, cmethod, [(cname, c)])
            self.socks[variant] = socks["v"]

    def session(self, h, variant, i):
        # The SOCKS target is the bridge (the obfs4 server), which forwards
        # to its "ORPort", the data server.
        k = VARIANTS["obfs4"].index(variant)
        h.blob_client("%s:%d" % (h.a.wan_addr, self.BASE_PORT + k), size_for(i), "obfs4-%d" % i,
                      put=i % 4 == 3, socks=self.socks[variant], socks_args=self.args[variant])


# ---------------------------------------------------------------- HTTP, DNS
class Http:
    PORT = 8080

    def setup(self, h, variants):
        h.serve_blob("http", self.PORT)

    def session(self, h, variant, i):
        n = size_for(i)
        f = h.path("http-body")
        url = "http://%s:%d/blob/%d/http-%d" % (h.a.wan_addr, self.PORT, n, i)
        h.run(h.a.lan_ns, ["curl", "-sS", "-m", str(int(SESSION_TIMEOUT)), "-o", f, url])
        if file_sha(f) != sha(blob("http-%d" % i, n)):
            raise Fail("curl %s: digest mismatch" % url)


class Dns:
    PORT = 53
    ANSWER = "198.51.100.80"

    def setup(self, h, variants):
        p = h.start("dnsmasq", h.a.wan_ns, [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--no-poll", "--bind-interfaces", "--listen-address=" + h.a.wan_addr, "--port=%d" % self.PORT,
            "--user=root", "--pid-file=", "--log-facility=-", "--address=/collateral.test/" + self.ANSWER])
        for proto in ("udp", "tcp"):
            h.wait("dnsmasq on %s/53" % proto, lambda proto=proto: h.listening(h.a.wan_ns, proto, self.PORT),
                   [("dnsmasq", p)])
            h.servers.append("%s:%d/%s" % (h.a.wan_addr, self.PORT, proto))

    def session(self, h, variant, i):
        name = "h%d-%s.collateral.test" % (i, os.urandom(3).hex())
        argv = ["dig", "+short", "+tries=1", "+time=3", "-p", str(self.PORT), "@" + h.a.wan_addr, name, "A"]
        if i % 4 == 3:
            argv.insert(1, "+tcp")
        out, _ = h.run(h.a.lan_ns, argv)
        if out.decode().strip() != self.ANSWER:
            raise Fail("dig %s: %r" % (name, tail(out)))


PROTOCOLS = {
    "tls12": lambda: Tls("1.2"),
    "tls13": lambda: Tls("1.3"),
    "quic": Quic,
    "ssh": Ssh,
    "wireguard": WireGuard,
    "openvpn": OpenVpn,
    "shadowsocks": Shadowsocks,
    "obfs4": Obfs4,
    "http": Http,
    "dns": Dns,
}


def run(a):
    variants = [a.variant] if a.variant else VARIANTS[a.protocol]
    out = {"protocol": a.protocol, "variants": [v for v in variants if v], "sessions": a.sessions,
           "ok": 0, "failed": 0, "errors": []}
    h = Harness(a)
    t0 = time.monotonic()
    try:
        proto = PROTOCOLS[a.protocol]()
        try:
            proto.setup(h, variants)
        except (Fail, subprocess.CalledProcessError, OSError) as e:
            out["failed"] = a.sessions
            out["errors"].append("setup: %s" % (e if isinstance(e, Fail) else "%s: %s" % (
                e, tail(getattr(e, "stderr", b"") or b""))))
            return out
        for i in range(a.sessions):
            variant = variants[i % len(variants)]
            try:
                proto.session(h, variant, i)
                out["ok"] += 1
            except (Fail, OSError) as e:
                out["failed"] += 1
                if len(out["errors"]) < MAX_ERRORS:
                    out["errors"].append("session %d%s: %s" % (i, " (%s)" % variant if variant else "", e))
        return out
    finally:
        h.stop_all()
        out["seconds"] = round(time.monotonic() - t0, 2)
        out["servers"] = sorted(set(h.servers))


# ------------------------------------------------- helpers run in a namespace
def serve(a):
    """The WAN host's data server: raw TCP (`GET n seed` -> n bytes;
    `PUT n` + n bytes -> their sha256), or HTTP(S) GET /blob/<n>/<seed>."""
    import http.server
    import socketserver
    import ssl

    limit = 64 << 20

    if a.kind == "raw":
        class Raw(socketserver.StreamRequestHandler):
            timeout = 30

            def handle(self):
                words = self.rfile.readline(200).decode("ascii", "replace").split()
                if len(words) == 3 and words[0] == "GET" and 0 <= int(words[1]) <= limit:
                    self.wfile.write(blob(words[2], int(words[1])))
                elif len(words) == 2 and words[0] == "PUT" and 0 <= int(words[1]) <= limit:
                    self.wfile.write((sha(self.rfile.read(int(words[1]))) + "\n").encode())

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
        httpd = Server((a.addr, a.port), Raw)
    else:
        class Blob(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def do_GET(self):
                parts = self.path.split("/")
                if len(parts) == 4 and parts[1] == "blob" and parts[2].isdigit() and int(parts[2]) <= limit:
                    body = blob(parts[3], int(parts[2]))
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                else:
                    body = b"not found\n"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *x):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
        httpd = Server((a.addr, a.port), Blob)
        if a.kind == "https":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(a.cert, a.key)
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Timer(a.max_seconds, httpd.shutdown).start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    httpd.serve_forever(poll_interval=0.5)


def socks5_connect(proxy, target, args):
    """A SOCKS5 CONNECT (RFC 1928) to an IPv4 target; the pluggable
    transport's arguments travel as username/password (RFC 1929), as Tor's
    pt-spec says: all in the username and a NUL password when they fit."""
    host, port = proxy.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=SESSION_TIMEOUT)
    method = 2 if args else 0
    s.sendall(bytes([5, 1, method]))
    if s.recv(2) != bytes([5, method]):
        raise Fail("socks5: method refused")
    if args:
        user, pw = args.encode(), b"\x00"
        if len(user) > 255:
            user, pw = user[:255], user[255:]
        s.sendall(bytes([1, len(user)]) + user + bytes([len(pw)]) + pw)
        if s.recv(2) != b"\x01\x00":
            raise Fail("socks5: arguments refused")
    thost, tport = target.rsplit(":", 1)
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(thost) + struct.pack(">H", int(tport)))
    reply = b""
    while len(reply) < 10:
        more = s.recv(10 - len(reply))
        if not more:
            raise Fail("socks5: connection closed")
        reply += more
    if reply[1] != 0:
        raise Fail("socks5: connect failed, code %d" % reply[1])
    return s


def blob_client(a):
    """GET: prints the sha256 of what the server sent; PUT: sends n bytes and
    prints the server's sha256 of them."""
    if a.socks5:
        s = socks5_connect(a.socks5, a.connect, a.socks_args)
    else:
        host, port = a.connect.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=SESSION_TIMEOUT)
    s.settimeout(SESSION_TIMEOUT)
    if a.put:
        s.sendall(b"PUT %d\n" % a.n + blob(a.seed, a.n))
    else:
        s.sendall(b"GET %d %s\n" % (a.n, a.seed.encode()))
    data = bytearray()
    want = 65 if a.put else a.n
    while len(data) < want:
        more = s.recv(65536)
        if not more:
            break
        data += more
    s.close()
    print(data.decode().strip() if a.put else sha(bytes(data)))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        ap = argparse.ArgumentParser(prog="collateral.py serve")
        ap.add_argument("--kind", choices=["raw", "http", "https"], required=True)
        ap.add_argument("--addr", required=True)
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--cert")
        ap.add_argument("--key")
        ap.add_argument("--max-seconds", type=float, default=600)
        return serve(ap.parse_args(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "blob-client":
        ap = argparse.ArgumentParser(prog="collateral.py blob-client")
        ap.add_argument("--connect", required=True)
        ap.add_argument("--n", type=int, required=True)
        ap.add_argument("--seed", required=True)
        ap.add_argument("--put", action="store_true")
        ap.add_argument("--socks5")
        ap.add_argument("--socks-args")
        try:
            return blob_client(ap.parse_args(sys.argv[2:]))
        except (Fail, OSError) as e:
            sys.stderr.write("blob-client: %s\n" % e)
            return 1

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), required=True)
    ap.add_argument("--variant", default="", help="one variant of the protocol (default: cycle through all)")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--lan-ns", required=True)
    ap.add_argument("--lan-addr", required=True)
    ap.add_argument("--wan-ns", required=True)
    ap.add_argument("--wan-addr", required=True)
    ap.add_argument("--workdir", default="", help="kept afterwards; default: a temporary dir, removed")
    a = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("must run as root (ip netns exec)")
    if not 1 <= a.sessions <= 10000:
        ap.error("sessions must be 1..10000")
    if a.variant and a.variant not in VARIANTS[a.protocol]:
        ap.error("variants of %s: %s" % (a.protocol, ", ".join(v for v in VARIANTS[a.protocol] if v) or "none"))
    # Servers' own lifetime bound, should this script be killed outright.
    a.max_seconds = min(3600, 60 + a.sessions * SESSION_TIMEOUT)
    temp = not a.workdir
    if temp:
        a.workdir = tempfile.mkdtemp(prefix="bth-collateral-")
    else:
        os.makedirs(a.workdir, exist_ok=True)
    a.workdir = os.path.abspath(a.workdir)
    # SIGTERM/SIGINT: unwind through run()'s finally, which stops every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rc = 1
    try:
        out = run(a)
        rc = 0 if out["failed"] == 0 and out["ok"] == a.sessions else 1
    except (SystemExit, KeyboardInterrupt):
        out, rc = {"protocol": a.protocol, "sessions": a.sessions, "ok": 0, "failed": a.sessions,
                   "errors": ["interrupted"]}, 143
    finally:
        if temp:
            shutil.rmtree(a.workdir, ignore_errors=True)
    if not temp:
        out["workdir"] = a.workdir
    print(json.dumps(out), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
