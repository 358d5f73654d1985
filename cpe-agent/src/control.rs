//! The local control socket: detectors running on the router (Zeek,
//! Suricata, scripts) block flows through it, directly or with
//! `isdf-agent block ...`.
//!
//! One JSON request per connection, one JSON answer. The socket is created
//! with mode 0600 (root only). Requests are handed to the agent loop, which
//! owns the firewall; the answer comes back once the block is enforced.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use isdf_api::events::{BlockOrigin, RouterBlock};
use isdf_api::FlowPattern;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::router_blocks::{Refusal, RouterBlocks};

/// Longest request line.
pub const MAX_REQUEST_BYTES: u64 = 4096;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;
/// A client must send its request and take its answer within this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Block {
        flow: FlowPattern,
        duration_ms: u64,
        #[serde(default)]
        reason: String,
    },
    Unblock {
        id: u64,
    },
    List {},
}

impl Request {
    /// Reads one request line as the socket receives it.
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        serde_json::from_slice(line).map_err(|e| e.to_string())
    }

    /// Does what the request asks to the router's blocks (the agent loop
    /// then enforces them): no I/O, so the fuzz target runs it as is.
    pub fn apply(self, blocks: &mut RouterBlocks, now_ms: i64) -> Result<Applied, Refusal> {
        match self {
            Request::List {} => Ok(Applied::Listed(
                blocks.active(now_ms).into_iter().cloned().collect(),
            )),
            Request::Block {
                flow,
                duration_ms,
                reason,
            } => blocks
                .add(BlockOrigin::Local, flow, duration_ms, &reason, now_ms)
                .map(|block| Applied::Changed {
                    block,
                    forget: None,
                }),
            Request::Unblock { id } => blocks
                .remove_detection(id, now_ms)
                .map(|(block, forget)| Applied::Changed { block, forget }),
        }
    }
}

/// What a request did to the router's blocks.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// `list`: the blocks in force; nothing changed.
    Listed(Vec<RouterBlock>),
    /// A block made, extended or ended; `forget` is the endpoint of an
    /// ended detection, to remove from the kernel's endpoint sets and the
    /// classifier too.
    Changed {
        block: RouterBlock,
        forget: Option<isdf_api::Endpoint>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable: `invalid_request`, `invalid_flow`, `invalid_duration`,
    /// `rate_limited`, `too_many_blocks`, `not_found`, `apply_failed`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// The block made or ended, or every block in force (`list`).
    #[serde(default)]
    pub blocks: Vec<RouterBlock>,
    /// The router's clock (Unix ms), to show the time left.
    pub now_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    pub fn ok(blocks: Vec<RouterBlock>, now_ms: i64) -> Self {
        Response {
            ok: true,
            blocks,
            now_ms,
            error: None,
        }
    }

    pub fn error(code: &str, message: impl Into<String>, now_ms: i64) -> Self {
        Response {
            ok: false,
            blocks: Vec::new(),
            now_ms,
            error: Some(ErrorBody {
                code: code.to_owned(),
                message: message.into(),
            }),
        }
    }
}

/// A request on its way to the agent loop, with where to send the answer.
pub struct Command {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Binds the socket at `path` (replacing a stale one, refusing if another
/// agent answers there) and serves it on the current runtime. Requests come
/// out of the returned channel.
pub fn serve(path: &Path) -> anyhow::Result<mpsc::Receiver<Command>> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is listening on {} (set control_socket to another path)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(IO_TIMEOUT, serve_one(stream, tx)).await;
                drop(permit);
            });
        }
    });
    Ok(rx)
}

async fn serve_one(stream: tokio::net::UnixStream, tx: mpsc::Sender<Command>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader =
        tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
    let now_ms = crate::sys::time::unix_millis();
    let response = match reader.read_line(&mut line).await {
        Err(e) => Response::error("invalid_request", format!("reading: {e}"), now_ms),
        // From bytes, as everything else the agent parses: deserializers
        // for text too would add some kB to the small binary.
        Ok(_) => match Request::decode(line.as_bytes()) {
            Err(e) => Response::error("invalid_request", e, now_ms),
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                match tx.send(Command { request, reply }).await {
                    Ok(()) => answer.await.unwrap_or_else(|_| {
                        Response::error("unavailable", "the agent is stopping", now_ms)
                    }),
                    Err(_) => Response::error("unavailable", "the agent is stopping", now_ms),
                }
            }
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Sends one request to the agent at `path` and returns its answer.
pub fn call(path: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the agent at {} (is it running? are you root?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT * 2))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .context("reading the agent's answer")?;
    serde_json::from_slice(answer.as_bytes())
        .with_context(|| format!("the agent answered {answer:?}"))
}

/// Builds a flow pattern from command-line words: `any` or a value for each
/// field; the family comes from the addresses (at least one must be named).
pub fn parse_flow(
    protocol: &str,
    src: &str,
    sport: &str,
    dst: &str,
    dport: &str,
) -> Result<FlowPattern, String> {
    use isdf_api::{Family, PortRange, Prefix, Protocol};
    let protocol = match protocol {
        "any" => None,
        name => Some(
            serde_json::from_value::<Protocol>(serde_json::Value::String(name.to_owned()))
                .map_err(|_| format!("unknown protocol `{name}` (tcp, udp, icmp, icmpv6, any)"))?,
        ),
    };
    let prefix = |text: &str| -> Result<Option<Prefix>, String> {
        (text != "any").then(|| Prefix::parse(text)).transpose()
    };
    let port = |text: &str| -> Result<PortRange, String> {
        if text == "any" {
            Ok(PortRange::ANY)
        } else {
            PortRange::parse(text)
        }
    };
    let (src, dst) = (prefix(src)?, prefix(dst)?);
    let family = src
        .or(dst)
        .map(|p| p.family())
        .or_else(|| protocol.and_then(Protocol::family))
        .ok_or("name a source or destination address (0.0.0.0/0 or ::/0 for any of a family)")?;
    let any = |f: Family| f.any();
    let flow = FlowPattern {
        protocol,
        src: src.unwrap_or(any(family)),
        sport: port(sport)?,
        dst: dst.unwrap_or(any(family)),
        dport: port(dport)?,
    };
    flow.check()?;
    Ok(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_flows_parse_with_any() {
        let flow = parse_flow("tcp", "192.0.2.10", "any", "198.51.100.0/24", "80").unwrap();
        assert_eq!(flow.src.to_string(), "192.0.2.10");
        assert!(flow.sport.is_any());
        assert_eq!(flow.dst.to_string(), "198.51.100.0/24");
        let v6 = parse_flow("udp", "any", "any", "2001:db8::1", "5000-5010").unwrap();
        assert_eq!(v6.src.to_string(), "::/0");
        assert!(parse_flow("tcp", "any", "any", "any", "80").is_err());
        assert!(parse_flow("icmp", "any", "any", "any", "any").is_ok());
        assert!(parse_flow("gre", "192.0.2.1", "any", "any", "any").is_err());
        assert!(parse_flow("icmp", "192.0.2.1", "any", "any", "80").is_err());
        assert!(parse_flow("tcp", "192.0.2.1", "any", "2001:db8::1", "80").is_err());
    }

    /// Two agents on one host, each with its own state directory and the
    /// default socket, both serve; a second agent on the same socket is
    /// refused (it would take the first one's detectors away).
    #[tokio::test]
    async fn agents_with_their_own_state_directories_do_not_share_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |name: &str| {
            crate::sys::settings::Settings::parse(&format!(
                "state_dir = {:?}\n",
                dir.path().join(name)
            ))
            .unwrap()
        };
        let (a, b) = (settings("a"), settings("b"));
        let mut served = Vec::new();
        for agent in [&a, &b] {
            let path = agent.control_socket_path();
            let mut commands = serve(&path).unwrap();
            // The agent loop's part: answer with the blocks in force.
            tokio::spawn(async move {
                while let Some(command) = commands.recv().await {
                    let _ = command.reply.send(Response::ok(Vec::new(), 1));
                }
            });
            served.push(path);
        }
        assert_ne!(served[0], served[1]);
        for path in served.clone() {
            let answer = tokio::task::spawn_blocking(move || call(&path, &Request::List {}))
                .await
                .unwrap()
                .unwrap();
            assert!(answer.ok);
        }
        let err = serve(&a.control_socket_path()).unwrap_err();
        assert!(err.to_string().contains("another agent"), "{err:#}");
    }

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let request = Request::Block {
            flow: parse_flow("tcp", "192.0.2.10", "any", "198.51.100.1", "80").unwrap(),
            duration_ms: 30_000,
            reason: "zeek".into(),
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        assert!(serde_json::from_str::<Request>(r#"{"op":"list","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"flush"}"#).is_err());
    }
}
