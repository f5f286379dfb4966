//! A small blocking HTTP client for the API, used by the demo and the
//! command line.

use anyhow::{Context, Result};
use serde_json::Value;
use std::time::Duration;

/// A client bound to a server and, optionally, a party's token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.base)
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The error message of an error body.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or("").to_string()
    }
    /// Fails unless the status is 2xx.
    pub fn ok(self) -> Result<Reply> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            anyhow::bail!("HTTP {}: {}", self.status, String::from_utf8_lossy(&self.body))
        }
    }
}

impl Client {
    /// A client for `base` (for example `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: None,
            agent,
        }
    }

    /// The same client acting as the holder of `token`.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply> {
        let mut r = r.context("request failed")?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .context("reading the response")?;
        Ok(Reply { status, body })
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> Result<Reply> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        Self::finish(req.call())
    }

    /// POST a JSON body to `path`.
    pub fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        Self::finish(req.send_json(body))
    }

    /// PUT the content of a local file to `path`, streamed (a provider's
    /// upload); the length is declared so an oversized file is refused
    /// before it is sent.
    pub fn put_file(&self, path: &str, file: &std::path::Path) -> Result<Reply> {
        let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        let mut req = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len.to_string());
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        Self::finish(req.send(ureq::SendBody::from_reader(&mut f)))
    }

    /// PUT a JSON body to `path`.
    pub fn put(&self, path: &str, body: &Value) -> Result<Reply> {
        let mut req = self.agent.put(format!("{}{path}", self.base));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        Self::finish(req.send_json(body))
    }

    /// POST raw bytes to `path`.
    pub fn post_bytes(&self, path: &str, body: &[u8], content_type: &str) -> Result<Reply> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type);
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        Self::finish(req.send(body))
    }
}
