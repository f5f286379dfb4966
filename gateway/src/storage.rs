//! Where providers' data lives (invariant I17, "data is confined to its
//! owner"). Every provider has exactly one storage location: a directory
//! under the data root, `providers/<party id>` unless the operator assigned
//! another, and no two providers' locations overlap. Files arrive there
//! through the upload route (streamed, size-limited, hashed) or are placed
//! by the operator; a dataset names its file relative to its owner's
//! location, and [`resolve`] is the only way from such a name to a path.
//!
//! Nothing here reads a file's content except to hash an upload, and no
//! error says anything about a path outside the caller's own location:
//! a name that is missing, points outside (a symlink), is a directory or
//! cannot be read gets the one answer of [`no_file`].

use crate::error::{ServiceError, ServiceResult};
use crate::store::{get_in, Record, Table};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default largest upload: 2 GiB.
pub const DEFAULT_MAX_UPLOAD: u64 = 2 << 30;

/// The directory under the data root that holds the default locations
/// (`providers/<party id>`); the operator assigns nothing inside it.
pub const DEFAULT_PARENT: &str = "providers";

/// Files and directories deeper than this are not listed.
const MAX_LIST_DEPTH: usize = 8;
/// At most this many files are listed.
const MAX_LIST_FILES: usize = 10_000;

/// The operator's assignment of a provider's storage location.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageAssignment {
    /// The provider (`pt_...`); the record's id.
    pub party: String,
    /// The directory, relative to the data root.
    pub dir: String,
    /// The provider's earlier assigned directories: still its own for the
    /// overlap check, so files it left there (registered or not) are never
    /// handed to another provider.
    #[serde(default)]
    pub previous: Vec<String>,
    /// The operator who assigned it.
    pub assigned_by: String,
    /// When.
    pub assigned_at: DateTime<Utc>,
}

impl Record for StorageAssignment {
    const TABLE: Table = Table::Storage;
    fn id(&self) -> &str {
        &self.party
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.dir.clone()]
    }
}

/// A file a provider uploaded: what the platform received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadedFile {
    /// `<owner>/<name>`.
    pub id: String,
    /// The provider.
    pub owner: String,
    /// Its name in the owner's storage location.
    pub name: String,
    /// Bytes received.
    pub size: u64,
    /// SHA-256 of the bytes received, hex.
    pub sha256: String,
    /// Modification time of the stored file, to tell whether it is still
    /// the file that was received.
    pub modified_ns: i64,
    /// When it was received.
    pub uploaded_at: DateTime<Utc>,
}

impl Record for UploadedFile {
    const TABLE: Table = Table::Files;
    fn id(&self) -> &str {
        &self.id
    }
    fn lookup(&self) -> Vec<String> {
        vec![self.owner.clone()]
    }
}

/// The default location of a provider, relative to the data root.
pub fn default_dir(party: &str) -> String {
    format!("{DEFAULT_PARENT}/{party}")
}

/// The storage location of `party`, relative to the data root.
pub fn dir_of(c: &dyn crate::store::StoreOps, party: &str) -> ServiceResult<String> {
    Ok(get_in::<StorageAssignment>(c, Table::Storage, party)?
        .map(|a| a.dir)
        .unwrap_or_else(|| default_dir(party)))
}

/// The one answer for a name that does not lead to a readable regular
/// file inside the caller's storage location, whatever the reason: it
/// must not tell whether some other path exists.
pub fn no_file(name: &str) -> ServiceError {
    ServiceError::BadRequest(format!(
        "no file `{}` in your storage location; upload it with PUT /v1/provider/files/{{name}} \
         (GET /v1/provider/files lists your files)",
        name.escape_debug()
    ))
}

/// Checks the syntax of a dataset's path: a relative path of plain names.
/// Says how data is brought when it is not.
pub fn check_name(name: &str) -> ServiceResult<()> {
    scenarios::catalog::validate_storage_path("dataset path", name).map_err(|e| {
        ServiceError::BadRequest(format!(
            "{e}. A dataset's path names a file in your storage location: one you uploaded with \
             PUT /v1/provider/files/{{name}}, or one the operator placed there; never a server path"
        ))
    })
}

/// Resolves `name` inside the storage location `dir` (relative to `root`)
/// to the canonical path of a readable regular file inside that location.
///
/// The name must be a relative path of plain names ([`check_name`]); the
/// result is canonical (no symlink left in it) and lies strictly inside
/// the location's canonical directory, so a symlink pointing out is
/// refused. Every failure after the syntax check is [`no_file`].
pub fn resolve(root: &Path, dir: &str, name: &str) -> ServiceResult<PathBuf> {
    check_name(name)?;
    scenarios::catalog::validate_storage_path("storage directory", dir)
        .map_err(|e| ServiceError::Internal(format!("stored storage directory: {e}")))?;
    let base = root.join(dir).canonicalize().map_err(|_| no_file(name))?;
    let file = base.join(name).canonicalize().map_err(|_| no_file(name))?;
    if file == base || !file.starts_with(&base) {
        return Err(no_file(name));
    }
    // `metadata` follows no link here: the path is canonical.
    let meta = std::fs::metadata(&file).map_err(|_| no_file(name))?;
    if !meta.is_file() {
        return Err(no_file(name));
    }
    std::fs::File::open(&file).map_err(|_| no_file(name))?;
    Ok(file)
}

/// Creates the data root if needed and refuses one that would expose the
/// platform's own state: the data directory (store, keys, developers'
/// tables) must not lie inside it, nor it inside developers' tables.
pub fn prepare_root(root: &Path, data_dir: &Path) -> anyhow::Result<()> {
    create_private_dir(root)
        .map_err(|e| anyhow::anyhow!("creating the data root {}: {e}", root.display()))?;
    let root = root.canonicalize()?;
    let data = data_dir.canonicalize()?;
    anyhow::ensure!(
        !data.starts_with(&root),
        "the data root {} holds the data directory {}: providers' storage must not reach the store and keys",
        root.display(),
        data.display()
    );
    anyhow::ensure!(
        !root.starts_with(data.join("private")),
        "the data root {} lies inside the developers' tables",
        root.display()
    );
    Ok(())
}

/// Creates `dir` and its parents, readable by the platform only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Checks a directory the operator assigns to `party`: a plain relative
/// path outside [`DEFAULT_PARENT`] that neither equals, contains nor lies
/// inside another provider's location (`others`: party name and location),
/// compared both as written and, where both exist, as canonical paths
/// (a symlink the operator made does not hide an overlap).
pub fn check_assignment(root: &Path, dir: &str, others: &[(String, String)]) -> ServiceResult<()> {
    scenarios::catalog::validate_storage_path("storage directory", dir)?;
    if dir.split('/').next() == Some(DEFAULT_PARENT) {
        return Err(ServiceError::BadRequest(format!(
            "`{DEFAULT_PARENT}/` holds the default storage locations; assign a directory outside it"
        )));
    }
    // Canonical paths as far as they exist: a directory not created yet
    // under a symlink is where the symlink leads.
    let canonical = canonical_prefix(&root.join(dir));
    let root_canonical = canonical_prefix(root);
    if let (Some(c), Some(r)) = (&canonical, &root_canonical) {
        if c == r || !c.starts_with(r) {
            return Err(ServiceError::BadRequest(format!(
                "`{}` leads outside the data root (a symlink); a storage location lies inside it",
                dir.escape_debug()
            )));
        }
        if let Some(d) = canonical_prefix(&root.join(DEFAULT_PARENT)) {
            if c.starts_with(&d) || d.starts_with(c) {
                return Err(ServiceError::BadRequest(format!(
                    "`{}` leads into `{DEFAULT_PARENT}/` (a symlink), which holds the default storage \
                     locations; assign a directory outside it",
                    dir.escape_debug()
                )));
            }
        }
    }
    for (name, other) in others {
        let overlap = scenarios::catalog::storage_paths_overlap(dir, other)
            || match (&canonical, canonical_prefix(&root.join(other))) {
                (Some(a), Some(b)) => a.starts_with(&b) || b.starts_with(a),
                _ => false,
            };
        if overlap {
            return Err(ServiceError::Conflict(format!(
                "`{}` overlaps the storage location of {name}; a provider's location may not equal, \
                 contain or lie inside another's",
                dir.escape_debug()
            )));
        }
    }
    Ok(())
}

/// The canonical form of `path` as far as it exists, with the components
/// that do not exist yet appended: where the path will lead once created.
/// `None` when not even the filesystem root resolves.
fn canonical_prefix(path: &Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut p = path;
    loop {
        if let Ok(c) = p.canonicalize() {
            return Some(rest.iter().rev().fold(c, |acc, n| acc.join(n)));
        }
        rest.push(p.file_name()?.to_os_string());
        p = p.parent()?;
    }
}

/// One file of a storage location, as listed to its owner.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Path relative to the location.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    #[serde(skip)]
    pub modified_ns: i64,
}

/// The regular files of a storage location whose paths a dataset could
/// name (plain names, no temporary file), at most 10,000,
/// sorted by name. Symlinks are not followed. A missing location has no
/// files.
pub fn list(base: &Path) -> Vec<Listed> {
    let mut out = Vec::new();
    walk(base, "", 0, &mut out);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<Listed>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if out.len() >= MAX_LIST_FILES {
            return;
        }
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if scenarios::catalog::validate_file_name(&name).is_err() {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() && depth + 1 < MAX_LIST_DEPTH {
            walk(&e.path(), &rel, depth + 1, out);
        } else if meta.is_file() {
            out.push(Listed {
                name: rel,
                size: meta.len(),
                modified_ns: modified_ns(&meta),
            });
        }
    }
}

/// Modification time in nanoseconds since the epoch (0 when unknown).
pub fn modified_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A temporary file that is removed when dropped, unless it was kept.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// Names a temporary file inside `dir`. Its name starts with a dot, so
    /// no dataset can name it and no listing shows it.
    pub fn in_dir(dir: &Path) -> TempFile {
        TempFile {
            path: dir.join(format!(".upload-{}", crate::keys::new_id("tmp"))),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        for d in ["providers/a", "providers/b", "census"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("providers/a/data.csv"), "x\n1\n").unwrap();
        std::fs::write(root.join("providers/b/theirs.csv"), "x\n1\n").unwrap();
        std::fs::write(t.path().join("outside.csv"), "secret\n1\n").unwrap();
        (t, root)
    }

    fn message(r: ServiceResult<PathBuf>) -> String {
        match r {
            Ok(p) => panic!("resolved to {}", p.display()),
            Err(e) => format!("{} {e}", e.code()),
        }
    }

    #[test]
    fn a_file_in_the_location_resolves_to_its_canonical_path() {
        let (_t, root) = setup();
        let p = resolve(&root, "providers/a", "data.csv").unwrap();
        assert_eq!(p, root.join("providers/a/data.csv").canonicalize().unwrap());
        std::fs::create_dir_all(root.join("providers/a/sub")).unwrap();
        std::fs::write(root.join("providers/a/sub/x.parquet"), "x").unwrap();
        assert!(resolve(&root, "providers/a", "sub/x.parquet").is_ok());
    }

    #[test]
    fn every_way_out_gets_the_answer_of_a_missing_file() {
        let (t, root) = setup();
        let a = root.join("providers/a");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(t.path().join("outside.csv"), a.join("out.csv")).unwrap();
            std::os::unix::fs::symlink(root.join("providers/b"), a.join("b")).unwrap();
            std::os::unix::fs::symlink(t.path().join("nothing.csv"), a.join("dangling.csv")).unwrap();
        }
        std::fs::create_dir_all(a.join("dir.csv")).unwrap();
        let missing = message(resolve(&root, "providers/a", "missing.csv"));
        assert!(
            missing.contains("no file `missing.csv` in your storage location"),
            "{missing}"
        );
        for name in ["out.csv", "b/theirs.csv", "dangling.csv", "dir.csv"] {
            let m = message(resolve(&root, "providers/a", name));
            assert_eq!(m, missing.replace("missing.csv", name), "{name}");
        }
        // A location that does not exist yet has no files.
        let m = message(resolve(&root, "providers/c", "data.csv"));
        assert_eq!(m, missing.replace("missing.csv", "data.csv"));
    }

    #[test]
    fn server_paths_and_escapes_are_refused_before_any_file_is_looked_at() {
        let (t, root) = setup();
        let outside = t.path().join("outside.csv");
        let existing = outside.to_string_lossy().to_string();
        let absent = t.path().join("absent.csv").to_string_lossy().to_string();
        let answer = |n: &str| message(resolve(&root, "providers/a", n)).replace(n, "<name>");
        assert_eq!(answer(&existing), answer(&absent));
        assert!(
            answer(&existing).contains("relative path"),
            "{}",
            answer(&existing)
        );
        assert!(answer(&existing).contains("PUT /v1/provider/files/{name}"));
        assert_eq!(answer("../b/theirs.csv"), answer("../b/nothing.csv"));
        assert_eq!(answer("../../../outside.csv"), answer("../../../absent.csv"));
        for n in ["./data.csv", "a//b.csv", ".upload-x", ""] {
            assert!(
                message(resolve(&root, "providers/a", n)).starts_with("bad_request "),
                "{n:?}"
            );
        }
    }

    #[test]
    fn assignments_do_not_overlap() {
        let (_t, root) = setup();
        let others = vec![
            ("A".to_string(), "census".to_string()),
            ("B".to_string(), "providers/b".to_string()),
        ];
        for bad in [
            "census",
            "census/2024",
            "providers",
            "providers/x",
            "/etc",
            "../x",
            "a/../census",
        ] {
            assert!(check_assignment(&root, bad, &others).is_err(), "{bad}");
        }
        assert!(matches!(
            check_assignment(&root, "census/2024", &others),
            Err(ServiceError::Conflict(_))
        ));
        check_assignment(&root, "census2", &others).unwrap();
        check_assignment(&root, "health/2024", &others).unwrap();
        // A symlink the operator made does not hide an overlap.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("census"), root.join("alias")).unwrap();
            assert!(check_assignment(&root, "alias", &others).is_err());
            // Nor does one above a directory not created yet (review of
            // issue 19), nor one into the default locations, whose
            // providers may not have a directory yet, nor one out of the
            // data root.
            assert!(check_assignment(&root, "alias/2025", &others).is_err());
            std::os::unix::fs::symlink(root.join("providers"), root.join("defaults")).unwrap();
            assert!(check_assignment(&root, "defaults", &others).is_err());
            assert!(check_assignment(&root, "defaults/c", &others).is_err());
            std::os::unix::fs::symlink(_t.path(), root.join("up")).unwrap();
            assert!(check_assignment(&root, "up", &others).is_err());
            assert!(check_assignment(&root, "up/new", &others).is_err());
            check_assignment(&root, "fresh/2025", &others).unwrap();
        }
    }

    #[test]
    fn listing_shows_plain_regular_files_only() {
        let (t, root) = setup();
        let a = root.join("providers/a");
        std::fs::write(a.join(".upload-tmp_1"), "partial").unwrap();
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("sub/x.csv"), "1").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(t.path().join("outside.csv"), a.join("link.csv")).unwrap();
        let names: Vec<String> = list(&a).into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["data.csv", "sub/x.csv"]);
        assert!(list(&root.join("providers/none")).is_empty());
    }

    #[test]
    fn the_data_root_never_holds_the_state() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        prepare_root(&data.join("files"), &data).unwrap();
        assert!(prepare_root(&data, &data).is_err());
        assert!(prepare_root(t.path(), &data).is_err());
        assert!(prepare_root(&data.join("private/x"), &data).is_err());
    }
}
