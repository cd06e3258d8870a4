//! Migration files: `NNNN_slug.sql` with an optional `NNNN_slug.down.sql`, their checksums,
//! their statements (split by PostgreSQL's own parser) and the directives in their leading
//! comments:
//!
//! ```sql
//! -- pgsidecar:no-transaction
//! -- pgsidecar:blocking reason="rewrites a 20-row lookup table"
//! -- pgsidecar:lock-timeout 5s
//! -- pgsidecar:statement-timeout 30min
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::MigrateError;
use super::expand::ExpandSpec;
use crate::config::parse_duration;

/// A batched backfill: the migration's one statement runs once per key range, `$1` (inclusive)
/// to `$2` (exclusive), each batch committed on its own, progress recorded after each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfill {
    /// The table whose key ranges are walked.
    pub table: String,
    /// Its integer key column.
    pub key: String,
    /// Keys per batch.
    pub batch: i64,
    /// Rest between batches, so the backfill leaves room for the application.
    pub pause: Duration,
}

/// What a migration's leading comments declare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// Statements run one by one outside a transaction (e.g. `CREATE INDEX CONCURRENTLY`).
    pub no_transaction: bool,
    /// The migration takes a blocking lock on purpose; the reason given.
    pub blocking: Option<String>,
    /// `lock_timeout` for its statements, instead of the runner's.
    pub lock_timeout: Option<Duration>,
    /// `statement_timeout` for its statements, instead of the runner's.
    pub statement_timeout: Option<Duration>,
    /// The migration is a batched backfill.
    pub backfill: Option<Backfill>,
    /// Constraints it adds NOT VALID on purpose (validated by a later migration).
    pub leaves_not_valid: Vec<String>,
}

fn parse_backfill(args: &str) -> Result<Backfill, String> {
    let mut table = None;
    let mut key = None;
    let mut batch = 1000;
    let mut pause = Duration::from_millis(10);
    for pair in args.split_whitespace() {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected name=value, got `{pair}`"))?;
        match name {
            "table" => table = Some(value.to_owned()),
            "key" => key = Some(value.to_owned()),
            "batch" => {
                batch = value
                    .parse()
                    .ok()
                    .filter(|b: &i64| *b > 0)
                    .ok_or_else(|| format!("batch must be a positive number, got `{value}`"))?;
            }
            "pause" => pause = parse_duration(value)?,
            other => {
                return Err(format!(
                    "unknown backfill setting `{other}` (table, key, batch, pause)"
                ));
            }
        }
    }
    Ok(Backfill {
        table: table.ok_or("backfill needs table=")?,
        key: key.unwrap_or_else(|| "id".to_owned()),
        batch,
        pause,
    })
}

/// One migration as found on disk.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The number it is ordered by.
    pub version: i64,
    /// The slug after the number.
    pub name: String,
    /// The up file.
    pub path: PathBuf,
    /// Its text.
    pub sql: String,
    /// SHA-256 of the up file, hex.
    pub checksum: String,
    /// Its statements, in order.
    pub statements: Vec<String>,
    /// Its directives.
    pub directives: Directives,
    /// The down file's text, if there is one.
    pub down_sql: Option<String>,
    /// An expand/contract migration (`NNNN_slug.toml`): its operations instead of statements.
    pub expand: Option<ExpandSpec>,
}

impl Migration {
    /// `0003_add_index`.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

/// SHA-256 of `text`, hex.
#[must_use]
pub fn checksum(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// Splits SQL into statements with PostgreSQL's parser; comments-only pieces are dropped.
///
/// # Errors
/// [`MigrateError::Parse`] naming `label`.
pub fn split(label: &str, sql: &str) -> Result<Vec<String>, MigrateError> {
    let pieces = pg_query::split_with_parser(sql).map_err(|e| MigrateError::Parse {
        migration: label.to_owned(),
        message: e.to_string(),
    })?;
    Ok(pieces
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// The down SQL recorded when `version` was applied, as a migration of its own, so that a
/// rollback is linted and run under the same policy as an apply. Its directives are its own
/// leading comments; a down SQL with `CONCURRENTLY` runs outside a transaction even without
/// `no-transaction`, because a recorded down SQL cannot be edited any more.
///
/// # Errors
/// [`MigrateError`] for SQL that does not parse or a malformed directive.
pub fn down_migration(version: i64, name: &str, sql: &str) -> Result<Migration, MigrateError> {
    let label = format!("{version:04}_{name} (down)");
    let statements = split(&label, sql)?;
    let mut directives = parse_directives(&label, sql)?;
    if statements
        .iter()
        .any(|s| s.to_ascii_uppercase().contains("CONCURRENTLY"))
    {
        directives.no_transaction = true;
    }
    Ok(Migration {
        version,
        name: format!("{name} (down)"),
        path: PathBuf::new(),
        sql: sql.to_owned(),
        checksum: checksum(sql),
        statements,
        directives,
        down_sql: None,
        expand: None,
    })
}

fn parse_directives(label: &str, sql: &str) -> Result<Directives, MigrateError> {
    let mut directives = Directives::default();
    for (number, line) in sql.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some(comment) = line.strip_prefix("--") else {
            break;
        };
        let Some(directive) = comment.trim().strip_prefix("pgsidecar:") else {
            continue;
        };
        let bad = |message: String| MigrateError::Directive {
            migration: label.to_owned(),
            line: number + 1,
            message,
        };
        let (word, rest) = directive
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((directive.trim(), ""));
        let rest = rest.trim();
        match word {
            "no-transaction" => directives.no_transaction = true,
            "blocking" => {
                let reason = rest
                    .strip_prefix("reason=")
                    .map(|r| r.trim_matches('"').trim().to_owned())
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| {
                        bad("blocking needs reason=\"why this lock is acceptable\"".into())
                    })?;
                directives.blocking = Some(reason);
            }
            "lock-timeout" => directives.lock_timeout = Some(parse_duration(rest).map_err(bad)?),
            "statement-timeout" => {
                directives.statement_timeout = Some(parse_duration(rest).map_err(bad)?);
            }
            "leaves-not-valid" => directives.leaves_not_valid.extend(
                rest.split([',', ' '])
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            ),
            "backfill" => {
                directives.backfill = Some(parse_backfill(rest).map_err(bad)?);
                directives.no_transaction = true;
            }
            other => {
                return Err(bad(format!(
                    "unknown directive `{other}` (known: no-transaction, blocking, lock-timeout, statement-timeout, backfill, leaves-not-valid)"
                )));
            }
        }
    }
    Ok(directives)
}

/// `(version, slug, is_down)` of a migration file name (`.sql`, or `.toml` for an
/// expand/contract migration).
fn file_name_parts(name: &str) -> Option<(i64, String, bool)> {
    let stem = name.strip_suffix(".sql").or_else(|| {
        name.strip_suffix(".toml")
            .filter(|s| s.rsplit_once('.').is_none_or(|(_, last)| last != "down"))
    })?;
    let (stem, down) = match stem.strip_suffix(".down") {
        Some(s) => (s, true),
        None => (stem, false),
    };
    let (number, slug) = stem.split_once('_')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || slug.is_empty() {
        return None;
    }
    Some((number.parse().ok()?, slug.to_owned(), down))
}

/// Reads every migration in `dir`, ordered by version.
///
/// # Errors
/// [`MigrateError`] for an unreadable directory or file, a misnamed `.sql` file, two files with
/// one version, a down file without its up file, a bad directive or unparsable SQL.
pub fn load(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| MigrateError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let entries = std::fs::read_dir(dir).map_err(|source| MigrateError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut ups = std::collections::BTreeMap::new();
    let mut downs = std::collections::BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_sql = path.extension().is_some_and(|e| e == "sql" || e == "toml");
        if !is_sql || !path.is_file() {
            continue;
        }
        let Some((version, slug, down)) = file_name_parts(&name) else {
            return Err(MigrateError::FileName(path));
        };
        let target = if down { &mut downs } else { &mut ups };
        if let Some((other, _)) = target.insert(version, (path.clone(), slug)) {
            return Err(MigrateError::DuplicateVersion {
                version,
                first: other,
                second: path,
            });
        }
    }
    if let Some((&version, (path, _))) = downs.iter().find(|(v, _)| !ups.contains_key(v)) {
        return Err(MigrateError::OrphanDown {
            version,
            path: path.clone(),
        });
    }
    let mut migrations = Vec::with_capacity(ups.len());
    for (version, (path, name)) in ups {
        let sql = read(&path)?;
        let label = format!("{version:04}_{name}");
        let down_sql = match downs.get(&version) {
            Some((down, _)) => Some(read(down)?),
            None => None,
        };
        if path.extension().is_some_and(|e| e == "toml") {
            migrations.push(expand_migration(
                version,
                name,
                path,
                sql,
                down_sql.is_some(),
            )?);
            continue;
        }
        let statements = split(&label, &sql)?;
        let directives = parse_directives(&label, &sql)?;
        if directives.backfill.is_some()
            && (statements.len() != 1
                || !statements[0].contains("$1")
                || !statements[0].contains("$2"))
        {
            return Err(MigrateError::Directive {
                migration: label,
                line: 1,
                message: "a backfill is one statement using $1 (first key, inclusive) and $2 (last key, exclusive)".into(),
            });
        }
        migrations.push(Migration {
            checksum: checksum(&sql),
            statements,
            directives,
            version,
            name,
            path,
            sql,
            down_sql,
            expand: None,
        });
    }
    Ok(migrations)
}

/// An expand/contract migration read from its TOML file; it has no down file (`migrate abort`
/// undoes it).
fn expand_migration(
    version: i64,
    name: String,
    path: PathBuf,
    text: String,
    has_down: bool,
) -> Result<Migration, MigrateError> {
    let label = format!("{version:04}_{name}");
    if has_down {
        return Err(MigrateError::Directive {
            migration: label,
            line: 1,
            message: "an expand/contract migration has no down file: `migrate abort` undoes it"
                .into(),
        });
    }
    let spec = ExpandSpec::parse(&text).map_err(|message| MigrateError::Directive {
        migration: label,
        line: 1,
        message,
    })?;
    Ok(Migration {
        version,
        name,
        path,
        checksum: checksum(&text),
        sql: text,
        statements: Vec::new(),
        directives: Directives::default(),
        down_sql: None,
        expand: Some(spec),
    })
}

/// Creates `NNNN_slug.sql` and `NNNN_slug.down.sql` with the next free number; returns the up
/// file's path.
///
/// # Errors
/// [`MigrateError`] when the directory cannot be read or written, or `name` is not a slug.
pub fn create(dir: &Path, name: &str) -> Result<PathBuf, MigrateError> {
    let slug: String = name
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let slug = slug.trim_matches('_').to_owned();
    if slug.is_empty() {
        return Err(MigrateError::FileName(PathBuf::from(name)));
    }
    std::fs::create_dir_all(dir).map_err(|source| MigrateError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let next = load(dir)?.last().map_or(1, |m| m.version + 1);
    let up = dir.join(format!("{next:04}_{slug}.sql"));
    let down = dir.join(format!("{next:04}_{slug}.down.sql"));
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|source| MigrateError::Io {
            path: path.to_owned(),
            source,
        })
    };
    write(
        &up,
        "-- Directives (leading comments): pgsidecar:no-transaction, pgsidecar:blocking reason=\"...\",\n\
         -- pgsidecar:lock-timeout 2s, pgsidecar:statement-timeout 5min\n\n",
    )?;
    write(&down, "-- Undoes the migration of the same number.\n\n")?;
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_and_names() {
        let d = parse_directives(
            "t",
            "\n-- pgsidecar:no-transaction\n-- a note\n-- pgsidecar:blocking reason=\"tiny table\"\n-- pgsidecar:lock-timeout 5s\nSELECT 1;\n-- pgsidecar:statement-timeout 1s\n",
        )
        .unwrap();
        assert!(d.no_transaction);
        assert_eq!(d.blocking.as_deref(), Some("tiny table"));
        assert_eq!(d.lock_timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            d.statement_timeout, None,
            "directives after the first statement do not count"
        );
        let backfill = parse_directives(
            "t",
            "-- pgsidecar:backfill table=docs batch=500 pause=5ms\n",
        )
        .unwrap();
        assert!(backfill.no_transaction);
        assert_eq!(
            backfill.backfill,
            Some(Backfill {
                table: "docs".into(),
                key: "id".into(),
                batch: 500,
                pause: Duration::from_millis(5)
            })
        );
        assert!(parse_directives("t", "-- pgsidecar:backfill key=id\n").is_err());
        let err = parse_directives("0002_x", "-- pgsidecar:blocking\n").unwrap_err();
        assert!(err.to_string().contains("0002_x line 1"), "{err}");
        assert!(parse_directives("t", "-- pgsidecar:nope\n").is_err());
        assert_eq!(
            file_name_parts("0003_add_index.sql"),
            Some((3, "add_index".into(), false))
        );
        assert_eq!(
            file_name_parts("0003_add_index.down.sql"),
            Some((3, "add_index".into(), true))
        );
        assert_eq!(file_name_parts("add_index.sql"), None);
    }

    #[test]
    fn statements_are_split_by_the_real_parser() {
        let sql =
            "-- c\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\nSELECT ';';";
        let statements = split("t", sql).unwrap();
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert!(split("t", "SELEC 1").is_err());
    }
}
