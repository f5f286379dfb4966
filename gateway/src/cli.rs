//! `invis call`: every API action from the command line. The route table
//! (`invis routes`) says what exists; `call` sends one request as the
//! holder of `INVIS_TOKEN` and prints the answer as readable tables, or as
//! JSON with `--json`.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

/// One `invis call`.
#[derive(Debug)]
pub struct Call {
    /// `GET`, `POST` or `PUT`.
    pub method: String,
    /// Path, with ids filled in (`/v1/operator/objections/ob_1/resolution`).
    pub path: String,
    /// `key=value` fields: the JSON body of a POST (values that parse as
    /// JSON are taken as JSON, others as text) or the query of a GET.
    pub fields: Vec<String>,
    /// A file whose bytes are the body (with POST, a `.wasm` module is
    /// sent as `application/wasm`, anything else as JSON; with PUT, the
    /// bytes are uploaded as they are).
    pub body: Option<PathBuf>,
    /// Server base URL.
    pub server: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Print JSON instead of tables.
    pub json: bool,
}

fn fields_object(fields: &[String]) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for f in fields {
        let Some((k, v)) = f.split_once('=') else {
            bail!("`{f}` is not a key=value field");
        };
        if k.is_empty() {
            bail!("`{f}` has an empty key");
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

fn query_string(fields: &[String]) -> Result<String> {
    let mut q = String::new();
    for f in fields {
        let Some((k, v)) = f.split_once('=') else {
            bail!("`{f}` is not a key=value field");
        };
        q.push(if q.is_empty() { '?' } else { '&' });
        q.push_str(&encode(k));
        q.push('=');
        q.push_str(&encode(v));
    }
    Ok(q)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends the request and prints the answer; returns the exit code (0 on
/// success, 1 when the server refused or failed).
pub fn call(c: &Call) -> Result<i32> {
    if !c.path.starts_with("/v1/") {
        bail!("the path must start with /v1/ (see `invis routes`)");
    }
    let mut client = Client::new(&c.server);
    if let Some(t) = &c.token {
        client = client.with_token(t);
    }
    let reply = match c.method.to_ascii_uppercase().as_str() {
        "GET" => {
            if c.body.is_some() {
                bail!("a GET has no body");
            }
            client.get(&format!("{}{}", c.path, query_string(&c.fields)?))?
        }
        "POST" => match &c.body {
            Some(file) => {
                if !c.fields.is_empty() {
                    bail!("give either key=value fields or --body, not both");
                }
                let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let wasm = file.extension().is_some_and(|e| e == "wasm");
                let ty = if wasm {
                    "application/wasm"
                } else {
                    "application/json"
                };
                client.post_bytes(&c.path, &bytes, ty)?
            }
            None => client.post(&c.path, &Value::Object(fields_object(&c.fields)?))?,
        },
        // A file's bytes as they are (a provider's upload), or JSON fields.
        "PUT" => match &c.body {
            Some(file) => {
                if !c.fields.is_empty() {
                    bail!("give either key=value fields or --body, not both");
                }
                client.put_file(&c.path, file)?
            }
            None => client.put(&c.path, &Value::Object(fields_object(&c.fields)?))?,
        },
        other => bail!("unsupported method {other}: use GET, POST or PUT"),
    };
    let body = reply.json();
    if !(200..300).contains(&reply.status) {
        let code = body["error"]["code"].as_str().unwrap_or("error");
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
        eprintln!("HTTP {} {code}: {message}", reply.status);
        return Ok(1);
    }
    if c.json || body.is_null() {
        if body.is_null() {
            println!("{}", String::from_utf8_lossy(&reply.body));
        } else {
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
    } else {
        print!("{}", render(&body));
    }
    Ok(0)
}

/// A value as text: lists of records become tables, records become
/// `key  value` lines; nested values are shown compactly.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) => {
            let (lists, fields): (Vec<_>, Vec<_>) = m.iter().partition(|(_, v)| is_records(v));
            if !fields.is_empty() {
                let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (k, v) in &fields {
                    let _ = writeln!(out, "{k:<width$}  {}", cell(v, 100));
                }
            }
            for (k, v) in lists {
                let _ = writeln!(out, "\n{k}:");
                out.push_str(&table(v.as_array().map(Vec::as_slice).unwrap_or(&[])));
            }
        }
        Value::Array(a) if is_records(v) => out.push_str(&table(a)),
        other => {
            let _ = writeln!(out, "{}", cell(other, 200));
        }
    }
    out
}

fn is_records(v: &Value) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(Value::is_object))
}

fn cell(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let s = s.replace('\n', " ");
    if s.chars().count() > max {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// A table of records: the id, then the other keys; cells of
/// nested values are shown compactly and cut to a readable width.
fn table(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "  (none)\n".into();
    }
    // The id first, then the other keys.
    let mut cols: Vec<String> = vec!["id".into()];
    for r in rows {
        for k in r.as_object().into_iter().flat_map(|m| m.keys()) {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    if !rows.iter().any(|r| r.get("id").is_some()) {
        cols.remove(0);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[c.as_str()], 40)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| -> String {
        let mut l = String::new();
        for (v, w) in vals.iter().zip(&widths) {
            let pad = w.saturating_sub(v.chars().count());
            let _ = write!(l, "  {v}{}", " ".repeat(pad));
        }
        format!("{}\n", l.trim_end())
    };
    let mut out = line(&cols);
    out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
    for r in &cells {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_become_tables_and_records_key_value_lines() {
        let v = json!({"as_of": "2026-12-01", "applications": [
            {"id": "ap_1", "due_on": "2026-11-30", "materials": {"a": 1}},
            {"id": "ap_2", "due_on": null}
        ]});
        let text = render(&v);
        assert!(text.starts_with("as_of  2026-12-01\n"), "{text}");
        assert!(
            text.contains("applications:\n  id    due_on      materials\n"),
            "{text}"
        );
        assert!(text.contains("  ap_1  2026-11-30  {\"a\":1}\n"), "{text}");
        assert!(text.contains("  ap_2  -           -\n"), "{text}");
        assert_eq!(render(&json!({"x": []})), "\nx:\n  (none)\n");
    }

    #[test]
    fn fields_are_json_when_they_parse() {
        let m = fields_object(&["approve=true".into(), "reason=too vague".into(), "n=3".into()]).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"approve": true, "reason": "too vague", "n": 3})
        );
        assert!(fields_object(&["novalue".into()]).is_err());
        assert_eq!(
            query_string(&["as_of=2026-12-01".into(), "q=a b".into()]).unwrap(),
            "?as_of=2026-12-01&q=a%20b"
        );
    }
}
