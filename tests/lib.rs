//! Harness for the end-to-end tests: builds the real `invis` binary, starts
//! `invis serve` on 127.0.0.1 with a fresh data directory, and talks to it
//! over HTTP. Every server is killed when its handle is dropped.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The shared public data (`../shared/data`), read in place.
pub fn shared_data() -> PathBuf {
    workspace().join("../shared/data")
}

/// The `invis` binary, built once per test process with the same profile
/// and target directory as the tests.
pub fn invis() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/all-<hash> -> target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile directory")
            .to_path_buf();
        let target = profile_dir.parent().expect("target directory").to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace())
            .args(["build", "--quiet", "-p", "gateway", "--bin", "invis"]);
        cmd.env("CARGO_TARGET_DIR", &target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "building the invis binary failed");
        profile_dir.join("invis")
    })
}

/// Runs `invis` with `args` and returns (exit code, stdout, stderr).
pub fn run_invis(args: &[&str]) -> Result<(i32, String, String)> {
    run_invis_as(args, None)
}

/// Runs `invis` against the server of `api`, as its party (`INVIS_SERVER`
/// and `INVIS_TOKEN` set), when given.
pub fn run_invis_as(args: &[&str], api: Option<&Api>) -> Result<(i32, String, String)> {
    let mut cmd = Command::new(invis());
    cmd.args(args).env("RUST_BACKTRACE", "0");
    if let Some(a) = api {
        cmd.env("INVIS_SERVER", &a.base).env("INVIS_TOKEN", a.token());
    }
    let out = cmd.output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
    /// The `Retry-After` header, when there is one.
    pub retry_after: Option<String>,
}

impl Reply {
    /// The body as JSON (Null if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The `error.code` of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
    /// The `error.message` of an error body.
    pub fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or("").to_string()
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts a 2xx status and returns the JSON body.
    pub fn ok(&self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got HTTP {}: {}",
            self.status,
            self.text()
        );
        self.json()
    }
}

/// A client acting as one party.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Api {
    fn new(base: &str, token: Option<&str>) -> Api {
        // A fresh connection per request: the server closes a connection
        // whose request body it refused unread (a 400 or 413 upload), and
        // a pooled client that reused it raced that close ("peer
        // disconnected" on the next request, seen under load).
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .max_idle_connections(0)
            .build()
            .into();
        Api {
            base: base.to_string(),
            token: token.map(str::to_string),
            agent,
        }
    }

    /// The same server as another party.
    pub fn as_token(&self, token: &str) -> Api {
        Api::new(&self.base, Some(token))
    }

    /// The bearer token of this client (empty when anonymous).
    pub fn token(&self) -> &str {
        self.token.as_deref().unwrap_or("")
    }

    /// The same server without credentials.
    pub fn anonymous(&self) -> Api {
        Api::new(&self.base, None)
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut r = r.expect("HTTP request failed");
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .expect("reading body");
        Reply {
            status,
            body,
            retry_after,
        }
    }

    /// GET.
    pub fn get(&self, path: &str) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::finish(req.call())
    }

    /// POST JSON.
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(
            path,
            serde_json::to_vec(body).expect("json").as_slice(),
            "application/json",
        )
    }

    /// Announces a POST of `len` bytes with `Expect: 100-continue` and
    /// returns the status the server answers before any body is sent (how
    /// a careful client learns that an upload is too large).
    pub fn post_announced(&self, path: &str, len: usize) -> u16 {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/wasm\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// POST JSON, tolerating a server that dies mid-request: the status
    /// and body of a complete response, or `None`.
    pub fn try_post(&self, path: &str, body: &Value) -> Option<(u16, Value)> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut r = req.send(body.to_string().as_bytes()).ok()?;
        let status = r.status().as_u16();
        let bytes = r.body_mut().read_to_vec().ok()?;
        Some((status, serde_json::from_slice(&bytes).ok()?))
    }

    /// PUT raw bytes (a provider's upload), with their length declared.
    pub fn put_raw(&self, path: &str, body: &[u8]) -> Reply {
        let mut req = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Content-Type", "application/octet-stream");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::finish(req.send(body))
    }

    /// PUT the bytes of `reader` without declaring a length (chunked), as
    /// a client streaming a file of unknown size does.
    pub fn put_chunked(&self, path: &str, reader: impl std::io::Read + 'static) -> Reply {
        let mut req = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Content-Type", "application/octet-stream");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::finish(req.send(ureq::SendBody::from_owned_reader(reader)))
    }

    /// PUT JSON.
    pub fn put(&self, path: &str, body: &Value) -> Reply {
        let mut req = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::finish(req.send(serde_json::to_vec(body).expect("json").as_slice()))
    }

    /// POST raw bytes.
    pub fn post_raw(&self, path: &str, body: &[u8], content_type: &str) -> Reply {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::finish(req.send(body))
    }
}

/// A running `invis serve`.
pub struct Server {
    child: Child,
    /// Base URL.
    pub base: String,
    /// Data directory (kept until the server is dropped).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Operator client.
    pub operator: Api,
    /// Regulator client.
    pub regulator: Api,
    /// Where the server's log (its stderr) goes, when the test asked for it.
    pub log: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extra `serve` arguments (job limits).
pub type ServeArgs<'a> = &'a [&'a str];

/// The time quantum the harness serves with unless a test names its own:
/// every job's end is rounded up to it, and the suite runs many jobs.
pub const TEST_QUANTUM_MS: u64 = 50;
/// The checkpoint publication period the harness serves with unless a
/// test names its own (or a quantum, which it then defaults to).
pub const TEST_CHECKPOINT_MS: u64 = 200;

/// `extra` with the harness's time quantum and publication period added
/// where the test did not name them.
fn with_time_defaults(extra: ServeArgs<'_>) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    let given = |flag: &str| {
        extra
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| extra.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let quantum = given("--time-quantum-ms");
    if quantum.is_none() {
        args.extend(["--time-quantum-ms".into(), TEST_QUANTUM_MS.to_string()]);
    }
    if given("--checkpoint-every-ms").is_none() {
        let every = quantum.unwrap_or(TEST_QUANTUM_MS).max(TEST_CHECKPOINT_MS);
        args.extend(["--checkpoint-every-ms".into(), every.to_string()]);
    }
    args
}

impl Server {
    /// Bootstraps a fresh data directory and starts a server on it.
    pub fn start(extra: ServeArgs<'_>) -> Result<Server> {
        Server::start_with(extra, false)
    }

    /// The same, with the server's log (at debug level for the platform's
    /// crates) written to a file ([`Server::log_text`]) instead of the
    /// test's stderr.
    pub fn start_logged(extra: ServeArgs<'_>) -> Result<Server> {
        Server::start_with(extra, true)
    }

    /// What the server logged so far (empty unless started logged).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn start_with(extra: ServeArgs<'_>, logged: bool) -> Result<Server> {
        let tmp = tempfile::Builder::new().prefix("invis-e2e-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        // Bootstrapped under the server's key-encryption key, if it has one.
        let kek = extra
            .iter()
            .position(|a| *a == "--kek-file")
            .and_then(|i| extra.get(i + 1));
        let mut boot = Command::new(invis());
        boot.args([
            "admin",
            "bootstrap",
            "--data-dir",
            &dir.to_string_lossy(),
            "--json",
        ])
        .env("RUST_BACKTRACE", "0");
        if let Some(k) = kek {
            boot.env("INVIS_KEK_FILE", k);
        }
        let o = boot.output()?;
        let (code, out, err) = (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        if code != 0 {
            bail!("bootstrap failed: {err}");
        }
        let parties: Value = serde_json::from_str(&out).context("bootstrap output")?;
        let token = |role: &str| -> Result<String> {
            parties
                .as_array()
                .and_then(|a| a.iter().find(|p| p["role"] == role))
                .and_then(|p| p["token"].as_str())
                .map(str::to_string)
                .context("bootstrap token")
        };
        let (op, reg) = (token("operator")?, token("regulator")?);
        let log = logged.then(|| tmp.path().join("server.log"));
        let mut s = Server::spawn_logged(&dir, extra, &op, &reg, log)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Starts a server on an existing data directory.
    pub fn spawn(dir: &Path, extra: ServeArgs<'_>, operator: &str, regulator: &str) -> Result<Server> {
        Server::spawn_logged(dir, extra, operator, regulator, None)
    }

    fn spawn_logged(
        dir: &Path,
        extra: ServeArgs<'_>,
        operator: &str,
        regulator: &str,
        log: Option<PathBuf>,
    ) -> Result<Server> {
        let mut cmd = Command::new(invis());
        cmd.args([
            "serve",
            "--data-dir",
            &dir.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(with_time_defaults(extra))
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped());
        match &log {
            Some(path) => {
                cmd.stderr(std::fs::File::create(path)?)
                    .env("INVIS_LOG", "info,gateway=debug,sandbox=debug");
            }
            None => {
                cmd.stderr(Stdio::inherit());
            }
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let base = line
            .trim()
            .strip_prefix("invis listening on ")
            .context("unexpected first line")?
            .to_string();
        let api = Api::new(&base, None);
        Ok(Server {
            child,
            base,
            dir: dir.to_path_buf(),
            _tmp: None,
            operator: api.as_token(operator),
            regulator: api.as_token(regulator),
            log,
        })
    }

    /// Kills the server (SIGKILL) and starts it again on the same data
    /// directory with the same tokens (and the harness's default options).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let mut fresh = Server::spawn(&self.dir, &[], self.operator.token(), self.regulator.token())?;
        std::mem::swap(&mut self.child, &mut fresh.child);
        std::mem::swap(&mut self.base, &mut fresh.base);
        std::mem::swap(&mut self.operator, &mut fresh.operator);
        std::mem::swap(&mut self.regulator, &mut fresh.regulator);
        Ok(())
    }

    /// Kills the server process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Creates a party and returns its client.
    pub fn party(&self, name: &str, role: &str) -> Api {
        let r = self
            .operator
            .post("/v1/operator/parties", &json!({"name": name, "role": role}))
            .ok();
        self.operator.as_token(r["token"].as_str().expect("token"))
    }

    /// Number of ledger entries, from an export.
    pub fn ledger_size(&self) -> usize {
        let r = self.regulator.get("/v1/regulator/ledger");
        assert_eq!(r.status, 200);
        r.text().lines().filter(|l| l.starts_with("{\"hash\"")).count()
    }
}

/// A job module from WAT text.
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}

/// A job that runs one query and logs the error when it is refused.
pub fn probe(sql: &str) -> Vec<u8> {
    let escaped: String = sql
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => format!("\\{b:02x}"),
            0x20..=0x7e => (b as char).to_string(),
            _ => format!("\\{b:02x}"),
        })
        .collect();
    wat(&format!(
        r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (import "invis_v1" "error_read" (func $error_read (param i32 i32) (result i32)))
  (import "invis_v1" "log" (func $log (param i32 i32) (result i32)))
  (import "invis_v1" "result_read" (func $result_read (param i32 i32) (result i32)))
  (import "invis_v1" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 0) "{escaped}")
  (func (export "run") (result i32)
    (local $r i64) (local $n i32)
    (local.set $r (call $query (i32.const 0) (i32.const {len})))
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then
        (local.set $n (call $error_read (i32.const 65536) (i32.const 1024)))
        (drop (call $log (i32.const 65536) (select (local.get $n) (i32.const 1024) (i32.lt_s (local.get $n) (i32.const 1024)))))
        (return (i32.wrap_i64 (local.get $r)))))
    (local.set $n (call $result_read (i32.const 131072) (i32.wrap_i64 (local.get $r))))
    (drop (call $emit (i32.const 131072) (local.get $n)))
    (i32.const 0)))"#,
        len = sql.len()
    ))
}

/// Bytes as a WAT data string.
fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A job that registers two row functions and runs every query in
/// `queries`, emitting for each the `query` return value (8 bytes, little
/// endian) followed, when it is not negative, by the released Arrow IPC
/// bytes. Decode the output with [`batch_results`].
///
/// The row functions take `(target, value)`: `trap_if(t, v)` traps when
/// both are 1 and is 1 otherwise; `slow_if(t, v)` runs a long chain of
/// float operations when both are 1 and returns 0 either way.
pub fn batch_probe(queries: &[String]) -> Vec<u8> {
    let mut table = Vec::new();
    let mut text = Vec::new();
    const TEXT: usize = 8192;
    for q in queries {
        table.extend_from_slice(&((TEXT + text.len()) as u32).to_le_bytes());
        table.extend_from_slice(&(q.len() as u32).to_le_bytes());
        text.extend_from_slice(q.as_bytes());
    }
    assert!(
        table.len() <= TEXT && TEXT + text.len() < 400_000,
        "too many queries for one job"
    );
    // About 3,000 dependent square roots on the slow path (within the
    // runtime's per-row instruction bound).
    let slow: String = "(local.set $x (f64.sqrt (f64.add (local.get $x) (f64.const 1.5))))".repeat(1500);
    wat(&format!(
        r#"(module
  (import "invis_v1" "query" (func $query (param i32 i32) (result i64)))
  (import "invis_v1" "result_read" (func $result_read (param i32 i32) (result i32)))
  (import "invis_v1" "emit" (func $emit (param i32 i32) (result i32)))
  (import "invis_v1" "udf_register" (func $udf (param i32 i32 f64 f64) (result i32)))
  (memory (export "memory") 16)
  (data (i32.const 0) "{table}")
  (data (i32.const {TEXT}) "{text}")
  (data (i32.const 400100) "trap_ifslow_if")
  (func (export "trap_if") (param $t f64) (param $v f64) (result f64)
    (if (i32.and (f64.eq (local.get $t) (f64.const 1)) (f64.eq (local.get $v) (f64.const 1)))
      (then unreachable))
    (f64.const 1))
  (func (export "slow_if") (param $t f64) (param $v f64) (result f64)
    (local $x f64)
    (if (i32.and (f64.eq (local.get $t) (f64.const 1)) (f64.eq (local.get $v) (f64.const 1)))
      (then {slow}))
    (f64.mul (local.get $x) (f64.const 0)))
  (func (export "run") (result i32)
    (local $i i32) (local $r i64) (local $n i32)
    (drop (call $udf (i32.const 400100) (i32.const 7) (f64.const 0) (f64.const 1)))
    (drop (call $udf (i32.const 400107) (i32.const 7) (f64.const 0) (f64.const 1)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
        (local.set $r (call $query
          (i32.load (i32.shl (local.get $i) (i32.const 3)))
          (i32.load offset=4 (i32.shl (local.get $i) (i32.const 3)))))
        (i64.store (i32.const 400000) (local.get $r))
        (drop (call $emit (i32.const 400000) (i32.const 8)))
        (if (i64.ge_s (local.get $r) (i64.const 0))
          (then
            (local.set $n (call $result_read (i32.const 524288) (i32.wrap_i64 (local.get $r))))
            (drop (call $emit (i32.const 524288) (local.get $n)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0)))"#,
        table = wat_bytes(&table),
        text = wat_bytes(&text),
        n = queries.len(),
    ))
}

/// The results a [`batch_probe`] job emitted: per query, the `query`
/// return value and the released IPC bytes (empty when negative).
pub fn batch_results(out: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let mut rest = out;
    let mut v = Vec::new();
    while rest.len() >= 8 {
        let (code, tail) = rest.split_at(8);
        let r = i64::from_le_bytes(code.try_into().expect("8 bytes"));
        let len = usize::try_from(r).unwrap_or(0);
        let (ipc, tail) = tail.split_at(len.min(tail.len()));
        v.push((r, ipc.to_vec()));
        rest = tail;
    }
    v
}
