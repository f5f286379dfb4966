//! Nothing personal in the ledger (issue 16): the whole demo is run, and
//! every line of its ledger export is scanned for the demo datasets' unit
//! values and raw cell values. None may appear, so keeping the ledger for
//! good (R22) never conflicts with a subject's objection (R13): the ledger
//! holds ids, hashes, SQL the developer wrote, mechanisms and budgets,
//! never data.
//!
//! Which values are looked for, and why:
//!
//! - every value of the privacy unit column (`enterprise_id`), whatever its
//!   length: a unit id is personal by definition;
//! - every other cell value held by fewer than [`CATEGORY_UNITS`] units: a
//!   value many units share (an industry, a district, a founding year, a
//!   grade) is a category that released aggregates name by design, not a
//!   fact about one unit;
//! - of those, strings of at least 4 characters and integers of at least 4
//!   digits: shorter ones (`12` employees, grade `A`) match ids, times and
//!   sizes by chance and say nothing. The demo tables have no booleans or
//!   fractions.
//!
//! Every line is parsed and walked: strings (including the entry text, a
//! JSON string itself walked as JSON) are searched for the strings as
//! substrings and for the integers as whole alphanumeric tokens, so a
//! number is not "found" inside a hex hash; JSON numbers are compared
//! whole. Not searched for integers: times and dates (their digits are a
//! clock), and the fields the platform fills with its own measurements
//! ([`MEASURED`]: byte sizes, row and unit counts, fuel, memory,
//! milliseconds), where a count like `3000` equals some firm's capital by
//! chance and is no cell. A planted id, phone number and amount are found,
//! so the scan is not blind.

use super::data::{tables, DemoTables};
use sandbox::arrow::array::{Array, Int64Array, StringArray};
use sandbox::arrow::record_batch::RecordBatch;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// A value shared by at least this many units is a category.
const CATEGORY_UNITS: usize = 10;

/// The privacy unit column of all three demo tables.
const UNIT: &str = "enterprise_id";

#[derive(Debug, Default)]
struct Personal {
    strings: BTreeSet<String>,
    numbers: BTreeSet<String>,
}

fn cells(batch: &RecordBatch, column: usize) -> Vec<(String, bool)> {
    let Some(col) = batch.columns().get(column) else {
        return vec![];
    };
    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
        (0..a.len()).map(|i| (a.value(i).to_string(), false)).collect()
    } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
        (0..a.len()).map(|i| (a.value(i).to_string(), true)).collect()
    } else {
        panic!("the demo tables hold strings and integers only")
    }
}

fn personal(t: &DemoTables) -> Personal {
    let mut out = Personal::default();
    for batch in [&t.register, &t.insurance, &t.tax] {
        let schema = batch.schema();
        let unit_col = schema.index_of(UNIT).unwrap();
        let units: Vec<String> = cells(batch, unit_col).into_iter().map(|(v, _)| v).collect();
        for i in 0..schema.fields().len() {
            if i == unit_col {
                out.strings.extend(units.iter().cloned());
                continue;
            }
            let mut holders: BTreeMap<(String, bool), BTreeSet<&str>> = BTreeMap::new();
            for ((value, numeric), unit) in cells(batch, i).into_iter().zip(&units) {
                holders.entry((value, numeric)).or_default().insert(unit);
            }
            for ((value, numeric), who) in holders {
                if who.len() >= CATEGORY_UNITS {
                    continue;
                }
                let digits = value.trim_start_matches('-').len();
                match numeric {
                    true if digits >= 4 => out.numbers.insert(value),
                    false if value.chars().count() >= 4 => out.strings.insert(value),
                    _ => false,
                };
            }
        }
    }
    out
}

/// Numeric fields the platform fills with its own measurements of files,
/// modules and runs (sizes in bytes, row and unit counts, fuel, memory,
/// milliseconds) and positions: their numbers are not cell values, and a
/// 4-digit count may equal some firm's capital by chance.
const MEASURED: [&str; 10] = [
    "seq",
    "size",
    "rows",
    "units",
    "module_size",
    "output_bytes",
    "fuel",
    "peak_memory_bytes",
    "wall_ms",
    "queries",
];

/// The personal values found in a text (a string of the ledger).
fn found(p: &Personal, text: &str) -> Vec<String> {
    // The digits of an RFC 3339 time or a date are not data.
    if chrono::DateTime::parse_from_rfc3339(text).is_ok()
        || chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok()
    {
        return vec![];
    }
    let tokens: HashSet<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    let mut hits: Vec<String> = p
        .strings
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .cloned()
        .collect();
    hits.extend(p.numbers.iter().filter(|n| tokens.contains(n.as_str())).cloned());
    hits
}

/// The personal values found anywhere in a JSON value: every key and
/// string, and every number outside [`MEASURED`] fields. Strings that are
/// themselves JSON (an entry's text) are walked too.
fn found_in(p: &Personal, key: &str, v: &serde_json::Value, hits: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(inner @ serde_json::Value::Object(_)) => found_in(p, key, &inner, hits),
            _ => hits.extend(found(p, s)),
        },
        serde_json::Value::Number(n) if !MEASURED.contains(&key) => {
            hits.extend(p.numbers.iter().filter(|x| **x == n.to_string()).cloned())
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| found_in(p, key, x, hits)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                hits.extend(found(p, k));
                found_in(p, k, x, hits);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ledger_holds_no_unit_value_and_no_raw_cell() {
    let dir = tempfile::tempdir().unwrap();
    let enterprises = 3000;
    super::run(super::DemoOptions {
        data_dir: Some(dir.path().to_path_buf()),
        enterprises,
    })
    .await
    .unwrap();
    let export = std::fs::read_to_string(dir.path().join("ledger-export.ndjson")).unwrap();
    let p = personal(&tables(enterprises).unwrap());
    // Ids and phones at least (most names are shared by many firms).
    assert!(p.strings.len() >= 2 * enterprises, "{}", p.strings.len());
    assert!(p.numbers.len() > 1000, "amounts and capital: {}", p.numbers.len());
    let lines: Vec<&str> = export.lines().collect();
    assert!(lines.len() > 40, "a full demo ledger");
    let mut entries = 0;
    for (n, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        entries += usize::from(v.get("body").is_some());
        let mut hits = Vec::new();
        found_in(&p, "", &v, &mut hits);
        assert!(
            hits.is_empty(),
            "line {} of the ledger holds data: {hits:?}\n{line}",
            n + 1
        );
    }
    assert!(entries > 40, "{entries} entries scanned");
    // The scan would see a value: the first enterprise's id, phone and
    // paid amount planted in a copy of an entry are all found.
    let t = tables(enterprises).unwrap();
    let id = cells(&t.register, 0)[0].0.clone();
    let phone = cells(&t.register, 7)[0].0.clone();
    let paid = cells(&t.insurance, 3)
        .into_iter()
        .map(|(v, _)| v)
        .find(|v| p.numbers.contains(v))
        .unwrap();
    let planted = serde_json::json!({"body": serde_json::json!({
        "details": {"sql": format!("SELECT 1 WHERE id = '{id}'"), "phone": phone, "amount": paid.parse::<i64>().unwrap()}
    }).to_string()});
    let mut hits = Vec::new();
    found_in(&p, "", &planted, &mut hits);
    assert_eq!(hits.len(), 3, "{planted}");
}
