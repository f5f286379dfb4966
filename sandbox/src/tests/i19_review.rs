//! Issue 19 review: registration errors name nothing read from a file not
//! yet accepted, whatever the file's format hides its values in (Parquet
//! type parameters: a timestamp's time zone, a struct's field names, a
//! list's item name; CSV quirks).

use crate::profile::profile;
use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, ListArray, StructArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use scenarios::catalog::DatasetSpec;
use serde_json::json;
use std::sync::Arc;

const SECRET: &str = "SECRETxVALUEx42";

fn spec(path: &std::path::Path, columns: serde_json::Value) -> DatasetSpec {
    serde_json::from_value(json!({
        "name": "t", "path": path.to_string_lossy(), "privacy_unit": "pid", "columns": columns
    }))
    .unwrap()
}

fn parquet(dir: &std::path::Path, name: &str, field: Field, values: ArrayRef) -> std::path::PathBuf {
    let path = dir.join(name);
    let schema = Arc::new(Schema::new(vec![
        Field::new("pid", DataType::Int64, false),
        field,
    ]));
    let pid: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
    let b = RecordBatch::try_new(schema, vec![pid, values]).unwrap();
    crate::files::write_parquet(&path, &[b]).unwrap();
    path
}

async fn error_of(s: &DatasetSpec) -> String {
    match profile(s).await {
        Ok(_) => "accepted".into(),
        Err(e) => format!("{e} {e:?}"),
    }
}

#[tokio::test]
async fn parquet_type_parameters_are_not_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = json!({"generalize": {"bucket": {"width": 10.0}}});
    // A time zone is free text of the file.
    let ts = TimestampNanosecondArray::from(vec![1, 2]).with_timezone(SECRET);
    let ts_type = ts.data_type().clone();
    let p = parquet(
        dir.path(),
        "ts.parquet",
        Field::new("x", ts_type, false),
        Arc::new(ts),
    );
    // A struct's field names.
    let inner: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
    let st = StructArray::from(vec![(
        Arc::new(Field::new(SECRET, DataType::Int64, false)),
        inner,
    )]);
    let st_type = st.data_type().clone();
    let q = parquet(
        dir.path(),
        "st.parquet",
        Field::new("x", st_type, false),
        Arc::new(st),
    );
    // A list's item name.
    let li =
        ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(1)]), Some(vec![Some(2)])]);
    let item = Arc::new(Field::new(SECRET, DataType::Int64, true));
    let li = ListArray::new(item.clone(), li.offsets().clone(), li.values().clone(), None);
    let r = parquet(
        dir.path(),
        "li.parquet",
        Field::new("x", DataType::List(item), false),
        Arc::new(li),
    );
    for path in [&p, &q, &r] {
        for rule in [
            bucket.clone(),
            json!("keep"),
            json!("tokenize"),
            json!({"mask": {"keep_prefix": 1}}),
            json!({"generalize": {"prefix": {"len": 1}}}),
            json!({"generalize": {"date_trunc": {"unit": "month"}}}),
        ] {
            let s = spec(
                path,
                json!([{"name": "pid", "rule": "keep"}, {"name": "x", "rule": rule}]),
            );
            let e = error_of(&s).await;
            assert!(!e.contains(SECRET), "{} {rule}: {e}", path.display());
        }
        // The file's type, as the privacy unit.
        let s = spec(
            path,
            json!([{"name": "pid", "rule": "keep"}, {"name": "x", "rule": "keep"}]),
        );
        let mut s2 = s.clone();
        s2.privacy_unit = "x".into();
        let e = error_of(&s2).await;
        assert!(!e.contains(SECRET), "{} unit: {e}", path.display());
    }
}

#[tokio::test]
async fn csv_quirks_are_not_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    let keep2 = json!([{"name": "pid", "rule": "keep"}, {"name": "n", "rule": "keep"}]);
    for (what, text) in [
        ("ragged row", format!("pid,n\n1,2\n2,3,{SECRET}\n")),
        ("short row", format!("pid,n\n1,2\n{SECRET}\n")),
        ("quote", format!("pid,n\n1,\"{SECRET}\n")),
        ("bad utf-8", format!("pid,n\n1,{SECRET}\u{0}\n")),
        ("header only", "pid,n\n".to_string()),
        ("numeric then text", {
            let mut c = String::from("pid,n\n");
            for i in 0..1100 {
                c.push_str(&format!("{i},{i}.5\n"));
            }
            c.push_str(&format!("{SECRET},1\n"));
            c
        }),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = error_of(&spec(&path, keep2.clone())).await;
        assert!(!e.contains(SECRET), "{what}: {e}");
    }
    let mut bytes = b"pid,n\n1,".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(SECRET.as_bytes());
    bytes.push(b'\n');
    std::fs::write(&path, bytes).unwrap();
    let e = error_of(&spec(&path, keep2.clone())).await;
    assert!(!e.contains(SECRET), "invalid utf-8: {e}");
}
