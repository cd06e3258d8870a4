//! The manifest written beside a dump: what the database held when the dump was taken.

use std::path::{Path, PathBuf};

use super::BackupError;

/// One table's contents in the dump's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableDigest {
    /// `schema.table`.
    pub table: String,
    /// Exact row count.
    pub rows: i64,
    /// MD5 over the sorted MD5s of its rows' text forms (empty for an empty table).
    pub hash: String,
}

/// What a backup holds, and how to check a copy of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The dump file's name.
    pub file: String,
    /// The source database's name.
    pub database: String,
    /// `server_version` of the source.
    pub server_version: String,
    /// Extensions and their versions.
    pub extensions: Vec<(String, String)>,
    /// Every table, in the dump's snapshot.
    pub tables: Vec<TableDigest>,
    /// The exported snapshot the dump and the digests share.
    pub snapshot: String,
    /// Size of the dump file.
    pub size_bytes: u64,
    /// SHA-256 of the dump file, hex.
    pub sha256: String,
    /// When the backup started (UTC, RFC 3339-like from the server's clock).
    pub started_at: String,
    /// Seconds it took.
    pub duration_seconds: f64,
}

/// `FILE.manifest.json`.
#[must_use]
pub fn manifest_path(dump: &Path) -> PathBuf {
    with_suffix(dump, ".manifest.json")
}

/// Where a file is written before it is renamed into place, so that a process killed while
/// writing never leaves a truncated file under the final name.
#[must_use]
pub fn partial_path(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Moves a finished `partial_path(path)` into place.
///
/// # Errors
/// [`BackupError::Io`].
pub fn finish_partial(path: &Path) -> Result<(), BackupError> {
    std::fs::rename(partial_path(path), path).map_err(|source| BackupError::Io {
        path: path.to_owned(),
        source,
    })
}

impl Manifest {
    /// Writes the manifest beside `dump`.
    ///
    /// # Errors
    /// [`BackupError::Io`].
    pub fn write(&self, dump: &Path) -> Result<PathBuf, BackupError> {
        let path = manifest_path(dump);
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(partial_path(&path), text).map_err(|source| BackupError::Io {
            path: path.clone(),
            source,
        })?;
        finish_partial(&path)?;
        Ok(path)
    }

    /// Reads the manifest beside `dump`.
    ///
    /// # Errors
    /// [`BackupError::Manifest`] when it is missing or not a manifest.
    pub fn read(dump: &Path) -> Result<Self, BackupError> {
        let path = manifest_path(dump);
        let text = std::fs::read_to_string(&path).map_err(|e| BackupError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| BackupError::Manifest {
            path,
            message: e.to_string(),
        })
    }
}

/// SHA-256 of a file, hex.
///
/// # Errors
/// [`BackupError::Io`].
pub fn sha256_file(path: &Path) -> Result<(String, u64), BackupError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let io = |source| BackupError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let hex = hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        });
    Ok((hex, size))
}
