//! Writing tables to files, for data providers' tooling and the demo.

use crate::{Error, Result};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use std::path::Path;

/// Writes `batches` (all of one schema) to a Parquet file at `path`.
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let first = batches
        .first()
        .ok_or_else(|| Error::InvalidDataset("no rows to write".into()))?;
    let file = std::fs::File::create(path)
        .map_err(|e| Error::InvalidDataset(format!("cannot create {}: {}", path.display(), e.kind())))?;
    let mut w =
        ArrowWriter::try_new(file, first.schema(), None).map_err(|e| Error::Internal(e.to_string()))?;
    for b in batches {
        w.write(b).map_err(|e| Error::Internal(e.to_string()))?;
    }
    w.close().map_err(|e| Error::Internal(e.to_string()))?;
    Ok(())
}

/// Reads a CSV file with a header into Arrow batches (for benchmarks and
/// tools that register a table in memory). The file is the operator's own;
/// errors name the path, never a value.
pub async fn read_csv(path: &Path) -> Result<Vec<RecordBatch>> {
    let ctx = datafusion::prelude::SessionContext::new();
    let text = path
        .to_str()
        .ok_or_else(|| Error::InvalidDataset(format!("{} is not a UTF-8 path", path.display())))?;
    let df = ctx
        .read_csv(text, datafusion::prelude::CsvReadOptions::new().has_header(true))
        .await
        .map_err(|_| Error::InvalidDataset(format!("{} could not be read as CSV", path.display())))?;
    df.collect()
        .await
        .map_err(|_| Error::InvalidDataset(format!("{} could not be read as CSV", path.display())))
}
