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
