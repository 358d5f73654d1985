//! Network namespaces for tests: create, run code inside, clean up.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect(
        "running `ip` (iproute2); these tests need root and iproute2: run them through scripts/test",
    );
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn create(name: String) -> Self {
        // A leftover from a killed run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // No duplicate address detection: IPv6 (link-local addresses too,
        // which neighbour discovery needs) works as soon as a link is up.
        // No reverse-path filter from the kernel, whatever the host's
        // default: the agent's own anti-spoofing is what tests look at.
        let out = Command::new("ip")
            .args(["netns", "exec", &name, "sysctl", "-qw"])
            .args([
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ])
            .output()
            .expect("sysctl (procps)");
        assert!(
            out.status.success(),
            "sysctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Runs a command inside the namespace and returns its stdout; panics on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.exec(program, args);
        assert!(
            out.status.success(),
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a new thread that has entered this namespace: every socket
    /// it (or threads it starts) opens lives in the namespace.
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace file");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in namespace")
    }

    /// Whether a TCP connection to `addr` from this namespace completes and
    /// the server greets within `timeout`.
    pub fn tcp_works(&self, addr: SocketAddr, timeout: Duration) -> bool {
        self.enter(move || {
            use std::io::Read;
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 3];
            stream.read_exact(&mut buf).is_ok() && &buf == b"ok\n"
        })
    }
}

impl Netns {
    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp_socket(&self, addr: &str) -> UdpSocket {
        let addr = addr.to_owned();
        self.enter(move || {
            let socket =
                UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("binding UDP {addr}: {e}"));
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            socket
        })
    }

    /// Sends `count` datagrams `payload` from `from` (an address of this
    /// namespace, as `addr:port`) to `to`.
    pub fn send_udp(&self, from: &str, to: &str, payload: &'static [u8], count: usize) {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.enter(move || {
            let socket =
                UdpSocket::bind(&from).unwrap_or_else(|e| panic!("binding UDP {from}: {e}"));
            for _ in 0..count {
                socket
                    .send_to(payload, &to)
                    .unwrap_or_else(|e| panic!("sending from {from} to {to}: {e}"));
            }
        });
    }
}

/// The payloads `socket` received up to and including the first `last`
/// (within 5 s; panics without it): `last` is sent after what the test
/// checks, once the kernel's counters showed where that went.
pub fn datagrams_until(socket: &UdpSocket, last: &str) -> Vec<String> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 1500];
    while started.elapsed() < Duration::from_secs(5) {
        let Ok((len, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        received.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        if received.last().is_some_and(|got| got == last) {
            return received;
        }
    }
    panic!("`{last}` never arrived (got {received:?})");
}

impl Drop for Netns {
    /// Ends what still runs in the namespace (a daemon the test's agent
    /// left, such as its dnsmasq, which outlives the agent by design), by
    /// process id, then deletes it: a deleted namespace lives on while a
    /// process is in it.
    fn drop(&mut self) {
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let own = std::process::id().to_string();
        let pids: Vec<&str> = pids.split_whitespace().filter(|p| *p != own).collect();
        for pid in &pids {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids
            .iter()
            .any(|pid| isdf_agent::sys::processes::process_runs(pid))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// LAN host — router — WAN host, with IPv4 and IPv6, routed without NAT.
pub struct Topology {
    pub lan: Netns,
    pub router: Netns,
    pub wan: Netns,
}

pub const WAN_HOST: &str = "198.51.100.2";

impl Topology {
    pub fn create(tag: &str) -> Self {
        let prefix = format!("isdf-{tag}-{}", std::process::id());
        let lan = Netns::create(format!("{prefix}-lan"));
        let router = Netns::create(format!("{prefix}-rtr"));
        let wan = Netns::create(format!("{prefix}-wan"));
        let (l, r, w) = (lan.name.as_str(), router.name.as_str(), wan.name.as_str());
        ip(&[
            "-n", r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", l,
        ]);
        ip(&[
            "-n", r, "link", "add", "wan", "type", "veth", "peer", "name", "eth0", "netns", w,
        ]);
        for (ns, dev, v4, v6) in [
            (l, "eth0", "192.0.2.2/24", "2001:db8:1::2/64"),
            (r, "lan", "192.0.2.1/24", "2001:db8:1::1/64"),
            (r, "wan", "198.51.100.1/24", "2001:db8:2::1/64"),
            (w, "eth0", "198.51.100.2/24", "2001:db8:2::2/64"),
        ] {
            ip(&["-n", ns, "addr", "add", v4, "dev", dev]);
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", l, "route", "add", "default", "via", "192.0.2.1"]);
        ip(&[
            "-n",
            l,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
        ]);
        ip(&[
            "-n",
            w,
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "198.51.100.1",
        ]);
        ip(&[
            "-n",
            w,
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            "2001:db8:2::1",
        ]);
        router.run(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        Topology { lan, router, wan }
    }
}
