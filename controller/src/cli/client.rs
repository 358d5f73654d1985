//! The operator API client: one request helper every command goes through,
//! and one pagination walker for every list.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::blocking::Client as Http;
use reqwest::Method;
use serde_json::Value;

use super::CliError;

/// Most pages one list walks (500 items each at most: 5 million items).
pub const MAX_PAGES: usize = 10_000;
/// Longest one list walk may take, all pages together.
pub const MAX_WALK: Duration = Duration::from_secs(600);
/// Items per page when walking a whole list.
pub const WALK_PAGE: u32 = 500;
/// Longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An operator token and where it came from (for the hint when it is refused).
#[derive(Debug, Clone)]
pub struct Token {
    pub secret: String,
    /// `--token`, `ISDF_TOKEN` or `--token-file PATH`.
    pub source: String,
}

/// How to give isdfctl a token, for the hints.
pub const TOKEN_HELP: &str = "give one with --token TOKEN, the ISDF_TOKEN environment variable, \
     or --token-file FILE (ISDF_TOKEN_FILE)";

/// Where tokens come from, for the hints.
pub const NEW_TOKEN_HELP: &str = "an admin makes one with `isdfctl operator-tokens create NAME \
     --role operator`; the first admin token is printed once when the controller starts on \
     an empty database (`Operator token (shown once, keep it)`)";

/// Where the controller is and how to authenticate.
pub struct Client {
    base: String,
    token: Option<Token>,
    http: Http,
    /// Whole lists already walked (name lookups repeat them, `apply` most),
    /// forgotten at every mutating call so nothing stale is read.
    walked: RefCell<HashMap<String, Vec<Value>>>,
}

/// Which part of a list to fetch.
#[derive(Debug, Clone, Default)]
pub struct Paging {
    /// Every page (bounded by [`MAX_PAGES`] and [`MAX_WALK`]).
    pub all: bool,
    /// Items per page (the API's default when absent).
    pub limit: Option<u32>,
    /// Start after this cursor (a previous page's `next_cursor`).
    pub cursor: Option<String>,
}

impl Paging {
    pub fn all() -> Self {
        Paging {
            all: true,
            ..Paging::default()
        }
    }
}

/// The items of the fetched pages, and the cursor after the last one.
pub struct Listed {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

impl Client {
    pub fn new(
        server: &str,
        token: Option<Token>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, CliError> {
        // reqwest is built without a TLS provider; the controller's ring is it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = Http::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("isdfctl/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| CliError::Usage(format!("--ca-file: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Other(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            base: server.trim_end_matches('/').to_owned(),
            token,
            http,
            walked: RefCell::default(),
        })
    }

    /// The one request helper: sends `body` as JSON, returns the JSON answer
    /// (`None` for an empty one, e.g. 204), maps the API's error body to
    /// [`CliError::Api`] and transport failures to [`CliError::Network`]
    /// naming the URL.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, CliError> {
        self.perform(
            method,
            path,
            query,
            body.map_or(Payload::None, Payload::Json),
        )
    }

    /// Sends `bytes` as `application/octet-stream` (`PUT`), returns the JSON
    /// answer: an agent release's binary.
    pub fn upload(&self, path: &str, bytes: Vec<u8>) -> Result<Value, CliError> {
        Ok(self
            .perform(Method::PUT, path, &[], Payload::Octets(bytes))?
            .unwrap_or(Value::Null))
    }

    fn perform(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Payload<'_>,
    ) -> Result<Option<Value>, CliError> {
        // A dry run writes nothing: what was walked is still true.
        let dry_run = query.iter().any(|(k, v)| *k == "dry_run" && v == "true");
        if method != Method::GET && !dry_run {
            self.walked.borrow_mut().clear();
        }
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(&token.secret);
        }
        request = match body {
            Payload::None => request,
            Payload::Json(body) => request.json(body),
            Payload::Octets(bytes) => request
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        };
        let network = |e: reqwest::Error| CliError::Network {
            url: url.clone(),
            message: error_chain(&e),
        };
        let response = request.send().map_err(network)?;
        let status = response.status();
        let text = response.text().map_err(network)?;
        if !status.is_success() {
            return Err(self.with_token_hint(api_error(status, &text)));
        }
        if text.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| CliError::Network {
                url,
                message: format!("the answer is not JSON ({e})"),
            })
    }

    /// A 401 says why: no token given, or the one given was refused.
    fn with_token_hint(&self, error: CliError) -> CliError {
        if !matches!(error, CliError::Api { status: 401, .. }) {
            return error;
        }
        match &self.token {
            None => error.hint(format!(
                "no operator token was given: {TOKEN_HELP}.\n{NEW_TOKEN_HELP}."
            )),
            Some(token) => error.hint(format!(
                "the token from {} was refused by {}: it is revoked, expired, mistyped, or belongs to \
                 another controller (check --server / ISDF_SERVER).\nGet a new one: {NEW_TOKEN_HELP}.",
                token.source,
                self.base
            )),
        }
    }

    /// The same call with `?dry_run=true`: the server validates it as the
    /// real call and writes nothing; answers `{"dry_run", "status", "target"}`.
    pub fn dry_run(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        Ok(self
            .request(method, path, &[("dry_run", "true".to_owned())], body)?
            .unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        self.get_query(path, &[])
    }

    pub fn get_query(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        Ok(self
            .request(Method::GET, path, query, None)?
            .unwrap_or(Value::Null))
    }

    /// A mutating call; `Null` for an empty answer.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        Ok(self
            .request(method, path, &[], body)?
            .unwrap_or(Value::Null))
    }

    /// The pagination walker: one page, or every page with `paging.all`.
    pub fn list(
        &self,
        path: &str,
        query: &[(&str, String)],
        paging: &Paging,
    ) -> Result<Listed, CliError> {
        let started = Instant::now();
        let limit = paging.limit.or(paging.all.then_some(WALK_PAGE));
        let mut items = Vec::new();
        let mut cursor = paging.cursor.clone();
        for _ in 0..MAX_PAGES {
            let mut q: Vec<(&str, String)> = query.to_vec();
            if let Some(limit) = limit {
                q.push(("limit", limit.to_string()));
            }
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let page = self.get_query(path, &q)?;
            let Some(page_items) = page.get("items").and_then(Value::as_array) else {
                return Err(CliError::Other(format!(
                    "{path} did not answer a page of items"
                )));
            };
            items.extend(page_items.iter().cloned());
            cursor = page
                .get("next_cursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() || !paging.all {
                return Ok(Listed {
                    items,
                    next_cursor: cursor,
                });
            }
            if started.elapsed() > MAX_WALK {
                break;
            }
        }
        Err(CliError::Other(format!(
            "{path}: gave up after {} items ({} pages or {} s); narrow the list",
            items.len(),
            MAX_PAGES,
            MAX_WALK.as_secs()
        )))
    }

    /// Every item of a list (walked once until the next mutating call).
    pub fn list_all(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<Value>, CliError> {
        let key = format!("{path}?{query:?}");
        if let Some(items) = self.walked.borrow().get(&key) {
            return Ok(items.clone());
        }
        let items = self.list(path, query, &Paging::all())?.items;
        self.walked.borrow_mut().insert(key, items.clone());
        Ok(items)
    }
}

/// The API's stable error body, or the status and text when it is not one.
fn api_error(status: reqwest::StatusCode, text: &str) -> CliError {
    let body: Option<Value> = serde_json::from_str(text).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.pointer(&format!("/error/{name}")))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => CliError::Api {
            status: status.as_u16(),
            code,
            message,
        },
        _ => CliError::Api {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: if text.trim().is_empty() {
                status.to_string()
            } else {
                text.chars().take(500).collect()
            },
        },
    }
}

/// An error's causes on one line ("tcp connect error: Connection refused");
/// reqwest's own message only repeats the URL, which the caller names.
fn error_chain(e: &dyn std::error::Error) -> String {
    let Some(first) = e.source() else {
        return e.to_string();
    };
    let mut text = first.to_string();
    let mut source = first.source();
    // Bounded: error chains are short, but nothing promises it.
    for _ in 0..8 {
        let Some(s) = source else { break };
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What a request carries.
enum Payload<'a> {
    None,
    Json(&'a Value),
    Octets(Vec<u8>),
}
