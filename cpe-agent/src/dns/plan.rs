//! The DNS policy as dnsmasq config text (`render`), pure and
//! snapshot-tested, and the marker that proves a dnsmasq answers with that
//! very text: a TXT record naming a digest of it (`with_marker`), asked for
//! with a query built by `lookup.rs` and checked here (`answers_with`).
//!
//! Nothing here touches a file, a socket or a process; `dnsmasq.rs` does,
//! with what this module writes.

use std::fmt::Write as _;
use std::net::SocketAddr;

use isdf_api::DnsPolicy;

use crate::sys::hex::lower_hex;
use crate::sys::settings::DnsMode;

/// The name whose TXT record is the digest of the config in force. Under
/// `.invalid`, which no real domain uses (RFC 6761).
pub(super) const MARKER_NAME: &str = "config.isdf.invalid";

/// What `render` needs besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct RenderOptions<'a> {
    pub mode: DnsMode,
    pub port: u16,
    /// Interfaces a managed dnsmasq answers on, besides lo.
    pub lan_interfaces: &'a [String],
    pub upstream: &'a [SocketAddr],
    /// Where a managed dnsmasq writes its process id (a path without a
    /// line break: `Dnsmasq` checks).
    pub pid_file: &'a str,
}

/// The dnsmasq config enforcing `policy`. Everything written comes from
/// parsed values (domain patterns, set names, addresses, interface names
/// checked when the settings were read), so no text can add an option.
pub fn render(policy: &DnsPolicy, options: &RenderOptions) -> String {
    let mut s = String::from("# Written by isdf-agent from its signed config; changes are lost.\n");
    if options.mode == DnsMode::Managed {
        // DNS only: without a dhcp-range this dnsmasq serves no DHCP.
        let _ = writeln!(s, "port={}", options.port);
        s.push_str("interface=lo\n");
        for name in options.lan_interfaces {
            let _ = writeln!(s, "interface={name}");
        }
        // Binds each address of those interfaces, as they come and go,
        // and leaves the others' port 53 alone.
        s.push_str("bind-dynamic\n");
        if !options.upstream.is_empty() {
            s.push_str("no-resolv\n");
            for server in options.upstream {
                let _ = writeln!(s, "server={}#{}", server.ip(), server.port());
            }
        }
        // A daemon of its own (its own session, logging to syslog), so the
        // LAN keeps its resolver whatever happens to the agent; the pid
        // file is how the next agent finds it.
        let _ = writeln!(s, "pid-file={}", options.pid_file);
    }
    if let Some(ttl) = policy.max_ttl_secs {
        // max-ttl caps what clients are told, forwarded answers included;
        // max-cache-ttl makes dnsmasq ask upstream again within the cap, and
        // only answers from upstream add addresses to the sets.
        let _ = writeln!(s, "max-ttl={ttl}\nmax-cache-ttl={ttl}");
    }
    for fill in &policy.fill_sets {
        s.push_str("nftset=/");
        for domain in &fill.domains {
            let _ = write!(s, "{}/", domain.domain());
        }
        let _ = writeln!(
            s,
            "4#inet#isdf#{},6#inet#isdf#{}",
            fill.ipv4_set, fill.ipv6_set
        );
    }
    for answer in &policy.local_answers {
        let domain = answer.domain.domain();
        if answer.addresses.is_empty() {
            let _ = writeln!(s, "address=/{domain}/");
            continue;
        }
        // Local only: other types (AAAA for a name with only IPv4
        // addresses) get an empty answer instead of going upstream.
        let _ = writeln!(s, "local=/{domain}/");
        for addr in &answer.addresses {
            let _ = writeln!(s, "address=/{domain}/{addr}");
        }
    }
    s
}

/// The config file's text: `rendered` plus the TXT record the agent asks for
/// to know this very config answers.
pub(super) fn with_marker(rendered: String) -> (String, String) {
    // SHA-256, the same in every agent version: a new agent adopts the
    // dnsmasq an older one started when it answers with the same config.
    let hash = ring::digest::digest(&ring::digest::SHA256, rendered.as_bytes());
    let digest = lower_hex(&hash.as_ref()[..8]);
    let text = format!("{rendered}txt-record={MARKER_NAME},{digest}\n");
    (text, digest)
}

/// The digest the marker of config text `text` (see `with_marker`) names.
pub(super) fn marker_digest(text: &str) -> Option<&str> {
    let marker = format!("txt-record={MARKER_NAME},");
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix(&marker))
}

/// Whether `answer` answers query `id` without error and holds `digest`.
pub(super) fn answers_with(answer: &[u8], id: u16, digest: &str) -> bool {
    answer.len() > 12
        && answer[..2] == id.to_be_bytes()
        && answer[2] & 0x80 != 0
        && answer[3] & 0x0f == 0
        && answer.windows(digest.len()).any(|w| w == digest.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::lookup::Record;
    use crate::dns::sample_policy as policy;

    #[test]
    fn a_managed_dnsmasq_config() {
        let lan = ["br-lan".to_owned(), "wlan0".to_owned()];
        let upstream = [
            "198.51.100.2:53".parse().unwrap(),
            "[2001:db8:2::2]:5353".parse().unwrap(),
        ];
        let options = RenderOptions {
            mode: DnsMode::Managed,
            port: 53,
            lan_interfaces: &lan,
            upstream: &upstream,
            pid_file: "/var/lib/isdf-agent/dnsmasq/dnsmasq.pid",
        };
        insta::assert_snapshot!(render(&policy(), &options));
    }

    #[test]
    fn a_conf_dir_file_holds_only_the_policy() {
        let options = RenderOptions {
            mode: DnsMode::ConfDir,
            port: 53,
            lan_interfaces: &[],
            upstream: &[],
            pid_file: "/run/dnsmasq.pid",
        };
        insta::assert_snapshot!(render(&policy(), &options));
    }

    #[test]
    fn without_upstream_servers_dnsmasq_reads_resolv_conf() {
        let options = RenderOptions {
            mode: DnsMode::Managed,
            port: 5353,
            lan_interfaces: &[],
            upstream: &[],
            pid_file: "/run/dnsmasq.pid",
        };
        let text = render(&DnsPolicy::default(), &options);
        assert!(text.contains("port=5353\n"));
        assert!(!text.contains("no-resolv"), "{text}");
        assert!(!text.contains("max-ttl"), "no cap asked: {text}");
    }

    #[test]
    fn the_marker_changes_with_the_config() {
        let (text, digest) = with_marker("port=53\n".into());
        assert_eq!(
            text,
            format!("port=53\ntxt-record=config.isdf.invalid,{digest}\n")
        );
        assert_ne!(with_marker("port=54\n".into()).1, digest);
        assert_eq!(marker_digest(&text), Some(digest.as_str()));
        assert_eq!(marker_digest("port=53\n"), None);
        // Fixed for good: agents of every version agree on it.
        assert_eq!(digest, "33abcf5e6e3b1d11");
    }

    #[test]
    fn queries_and_answers_are_matched() {
        let q = crate::dns::lookup::query(0xbeef, "config.isdf.invalid", Record::Txt).unwrap();
        assert_eq!(&q[..4], &[0xbe, 0xef, 0x01, 0x00]);
        assert_eq!(&q[12..19], b"\x06config");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 16, 0, 1]);
        // The question echoed, then an answer whose TXT holds the digest.
        let mut answer = q.clone();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer.extend_from_slice(b"\xc0\x0c\0\x10\0\x01\0\0\0\0\0\x09\x08abcd1234");
        assert!(answers_with(&answer, 0xbeef, "abcd1234"));
        assert!(!answers_with(&answer, 0xbeee, "abcd1234"), "another id");
        assert!(!answers_with(&answer, 0xbeef, "abcd1235"), "another config");
        answer[3] = 0x83;
        assert!(!answers_with(&answer, 0xbeef, "abcd1234"), "NXDOMAIN");
        assert!(!answers_with(&q, 0xbeef, "x"), "the query itself");
    }
}
