//! The declarative file of an expand/contract migration, `NNNN_slug.toml`: the column changes
//! it makes, which the runner turns into SQL against the catalog it finds (see
//! `docs/expand-contract.md`).
//!
//! ```toml
//! [[operation]]
//! kind = "alter_column"
//! table = "orders"
//! column = "amount"
//! rename = "amount_cents"
//! type = "bigint"
//! up = "amount::bigint * 100"
//! down = "(amount_cents / 100)::integer"
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::parse_duration;

/// The longest identifier PostgreSQL keeps, in bytes.
const MAX_IDENTIFIER: usize = 63;
/// Prefix of the physical column that holds a changed column's new representation.
pub const SHADOW_PREFIX: &str = "_pgs_";

/// An expand/contract migration as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpandSpec {
    /// The schema of the tables it changes.
    #[serde(default = "public")]
    pub schema: String,
    /// Keys per backfill batch.
    #[serde(default = "default_batch")]
    pub batch: i64,
    /// Rest between backfill batches, e.g. `"20ms"`.
    #[serde(default = "default_pause", deserialize_with = "duration")]
    pub pause: Duration,
    /// The changes, in order.
    #[serde(rename = "operation")]
    pub operations: Vec<Operation>,
}

fn public() -> String {
    "public".to_owned()
}

fn default_batch() -> i64 {
    1000
}

fn default_pause() -> Duration {
    Duration::from_millis(10)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// One change to one table. Expressions are SQL over the columns of one row: `up` over the
/// names the old version uses, `down` over the names the new version uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// The new version calls a column by another name.
    RenameColumn {
        /// The table.
        table: String,
        /// The name the old version uses.
        from: String,
        /// The name the new version uses.
        to: String,
    },
    /// The new version sees a column with another type, nullability or check constraint (and
    /// possibly another name), held in a new physical column until `complete`.
    AlterColumn {
        /// The table.
        table: String,
        /// The column as the old version knows it.
        column: String,
        /// Its name in the new version.
        rename: Option<String>,
        /// Its type in the new version.
        #[serde(rename = "type")]
        data_type: Option<String>,
        /// `true` makes it NOT NULL in the new version, `false` nullable.
        not_null: Option<bool>,
        /// A CHECK the new version's values satisfy (over the new name).
        check: Option<String>,
        /// A CHECK constraint of the old column that the new version does without.
        drop_check: Option<String>,
        /// Its default in the new version.
        default: Option<String>,
        /// The new value from an old row (default: the old column).
        up: Option<String>,
        /// The old value from a new row (default: the new column).
        down: Option<String>,
    },
    /// A column only the new version sees.
    AddColumn {
        /// The table.
        table: String,
        /// Its name.
        column: String,
        /// Its type.
        #[serde(rename = "type")]
        data_type: String,
        /// NOT NULL once complete (needs `default` or `up`).
        #[serde(default)]
        not_null: bool,
        /// Its default.
        default: Option<String>,
        /// Its value for existing rows and rows the old version writes.
        up: Option<String>,
    },
    /// A column only the old version sees; dropped by `complete`.
    DropColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its value when the new version writes a row (default: its default).
        down: Option<String>,
    },
}

impl Operation {
    /// The table it changes.
    #[must_use]
    pub fn table(&self) -> &str {
        match self {
            Self::RenameColumn { table, .. }
            | Self::AlterColumn { table, .. }
            | Self::AddColumn { table, .. }
            | Self::DropColumn { table, .. } => table,
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RenameColumn { table, from, to } => {
                write!(f, "rename_column {table}.{from} → {to}")
            }
            Self::AlterColumn {
                table,
                column,
                rename,
                data_type,
                ..
            } => {
                write!(f, "alter_column {table}.{column}")?;
                if let Some(rename) = rename {
                    write!(f, " → {rename}")?;
                }
                if let Some(data_type) = data_type {
                    write!(f, " as {data_type}")?;
                }
                Ok(())
            }
            Self::AddColumn {
                table,
                column,
                data_type,
                ..
            } => write!(f, "add_column {table}.{column} {data_type}"),
            Self::DropColumn { table, column, .. } => write!(f, "drop_column {table}.{column}"),
        }
    }
}

/// A plain lower-case identifier that never needs quoting and leaves room for the shadow
/// prefix; anything else is refused rather than quoted, so that the generated SQL is what the
/// file says.
fn identifier(what: &str, name: &str) -> Result<(), String> {
    let plain = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(format!(
            "{what} `{name}` must be a lower-case identifier (a-z, 0-9, _)"
        ));
    }
    if name.len() + SHADOW_PREFIX.len() > MAX_IDENTIFIER {
        return Err(format!(
            "{what} `{name}` is too long (at most {} bytes)",
            MAX_IDENTIFIER - SHADOW_PREFIX.len()
        ));
    }
    if name.starts_with(SHADOW_PREFIX) {
        return Err(format!(
            "{what} `{name}`: names starting with {SHADOW_PREFIX} are pgsidecar's"
        ));
    }
    Ok(())
}

/// An SQL expression PostgreSQL's parser accepts on its own: `SELECT (expr)` must parse as
/// one SELECT of one value from nothing, so that an expression cannot smuggle in a clause or a
/// statement of its own.
fn expression(what: &str, sql: &str) -> Result<(), String> {
    use pg_query::NodeEnum;
    let parsed = pg_query::parse(
        &format!("SELECT ({sql})"),
        pg_query::ParserOptions::default(),
    )
    .map_err(|e| format!("{what} `{sql}` does not parse: {e}"))?;
    let alone = match parsed.protobuf.stmts.as_slice() {
        [only] => matches!(
            only.stmt.as_ref().and_then(|s| s.node.as_ref()),
            Some(NodeEnum::SelectStmt(select))
                if select.from_clause.is_empty()
                    && select.target_list.len() == 1
                    && select.where_clause.is_none()
                    && select.group_clause.is_empty()
                    && select.having_clause.is_none()
        ),
        _ => false,
    };
    if alone {
        Ok(())
    } else {
        Err(format!("{what} `{sql}` is not a single expression"))
    }
}

/// A type name PostgreSQL's parser accepts.
fn type_name(sql: &str) -> Result<(), String> {
    pg_query::parse(
        &format!("SELECT NULL::{sql}"),
        pg_query::ParserOptions::default(),
    )
    .map(|_| ())
    .map_err(|e| format!("type `{sql}` does not parse: {e}"))
}

impl ExpandSpec {
    /// Reads and checks a migration file's text.
    ///
    /// # Errors
    /// A message naming what is wrong: bad TOML, an unknown key, an identifier that is not
    /// plain, an expression or type that does not parse, or an operation that cannot work.
    pub fn parse(text: &str) -> Result<Self, String> {
        let spec: Self = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        identifier("schema", &self.schema)?;
        if self.batch <= 0 {
            return Err(format!("batch must be positive, got {}", self.batch));
        }
        if self.operations.is_empty() {
            return Err("no [[operation]]".into());
        }
        let mut touched = std::collections::BTreeSet::new();
        for (index, op) in self.operations.iter().enumerate() {
            let at = |e: String| format!("operation {}: {e}", index + 1);
            identifier("table", op.table()).map_err(at)?;
            let column = match op {
                Operation::RenameColumn { from, to, .. } => {
                    identifier("column", to).map_err(at)?;
                    from
                }
                Operation::AlterColumn {
                    column,
                    rename,
                    data_type,
                    not_null,
                    check,
                    drop_check,
                    default,
                    up,
                    down,
                    ..
                } => {
                    if let Some(rename) = rename {
                        identifier("rename", rename).map_err(at)?;
                    }
                    if data_type.is_none()
                        && not_null.is_none()
                        && check.is_none()
                        && drop_check.is_none()
                        && default.is_none()
                    {
                        return Err(at(format!(
                            "alter_column of `{column}` changes nothing a rename_column could not; give type, not_null, check, drop_check or default"
                        )));
                    }
                    if let Some(t) = data_type {
                        type_name(t).map_err(at)?;
                    }
                    for (what, e) in [
                        ("check", check),
                        ("default", default),
                        ("up", up),
                        ("down", down),
                    ] {
                        if let Some(e) = e {
                            expression(what, e).map_err(at)?;
                        }
                    }
                    if data_type.is_some() && (up.is_none() || down.is_none()) {
                        return Err(at(format!(
                            "changing the type of `{column}` needs both up (old row → new value) and down (new row → old value)"
                        )));
                    }
                    column
                }
                Operation::AddColumn {
                    column,
                    data_type,
                    not_null,
                    default,
                    up,
                    ..
                } => {
                    type_name(data_type).map_err(at)?;
                    for (what, e) in [("default", default), ("up", up)] {
                        if let Some(e) = e {
                            expression(what, e).map_err(at)?;
                        }
                    }
                    if *not_null && default.is_none() && up.is_none() {
                        return Err(at(format!(
                            "a NOT NULL column `{column}` needs default or up for the rows the old version writes"
                        )));
                    }
                    column
                }
                Operation::DropColumn { column, down, .. } => {
                    if let Some(down) = down {
                        expression("down", down).map_err(at)?;
                    }
                    column
                }
            };
            identifier("column", column).map_err(at)?;
            if !touched.insert((op.table().to_owned(), column.clone())) {
                return Err(at(format!(
                    "`{}.{column}` is changed by an earlier operation; describe one column's change in one operation",
                    op.table()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENAME_AND_RETYPE: &str = r#"
batch = 500
pause = "5ms"

[[operation]]
kind = "alter_column"
table = "orders"
column = "amount"
rename = "amount_cents"
type = "bigint"
up = "amount::bigint * 100"
down = "(amount_cents / 100)::integer"

[[operation]]
kind = "rename_column"
table = "orders"
from = "note"
to = "memo"
"#;

    #[test]
    fn a_rename_and_retype_reads_as_written() {
        let spec = ExpandSpec::parse(RENAME_AND_RETYPE).unwrap();
        assert_eq!(spec.schema, "public");
        assert_eq!(spec.batch, 500);
        assert_eq!(spec.pause, Duration::from_millis(5));
        assert_eq!(spec.operations.len(), 2);
        assert_eq!(
            spec.operations[1],
            Operation::RenameColumn {
                table: "orders".into(),
                from: "note".into(),
                to: "memo".into()
            }
        );
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let typo = RENAME_AND_RETYPE.replace("rename =", "renam =");
        assert!(ExpandSpec::parse(&typo).is_err());
        let kind = RENAME_AND_RETYPE.replace("rename_column", "rename_table");
        assert!(ExpandSpec::parse(&kind).is_err());
    }

    #[test]
    fn a_type_change_needs_both_directions() {
        let no_down = RENAME_AND_RETYPE.replace("down = \"(amount_cents / 100)::integer\"", "");
        let err = ExpandSpec::parse(&no_down).unwrap_err();
        assert!(err.contains("needs both up"), "{err}");
    }

    #[test]
    fn identifiers_are_plain_and_expressions_parse() {
        let quoted = RENAME_AND_RETYPE.replace("to = \"memo\"", "to = \"Memo; DROP\"");
        assert!(
            ExpandSpec::parse(&quoted)
                .unwrap_err()
                .contains("lower-case")
        );
        let bad = RENAME_AND_RETYPE.replace("amount::bigint * 100", "amount * * 100");
        assert!(
            ExpandSpec::parse(&bad)
                .unwrap_err()
                .contains("does not parse")
        );
        let smuggled = RENAME_AND_RETYPE.replace(
            "amount::bigint * 100",
            "amount) FROM orders; DROP TABLE orders; SELECT (1",
        );
        assert!(
            ExpandSpec::parse(&smuggled)
                .unwrap_err()
                .contains("not a single expression")
        );
        let shadow = RENAME_AND_RETYPE.replace("\"memo\"", "\"_pgs_memo\"");
        assert!(ExpandSpec::parse(&shadow).is_err());
    }

    #[test]
    fn one_column_is_changed_once() {
        let twice = format!(
            "{RENAME_AND_RETYPE}\n[[operation]]\nkind = \"drop_column\"\ntable = \"orders\"\ncolumn = \"note\"\n"
        );
        assert!(
            ExpandSpec::parse(&twice)
                .unwrap_err()
                .contains("earlier operation")
        );
    }

    #[test]
    fn a_not_null_column_needs_a_value_for_old_rows() {
        let add = "[[operation]]\nkind = \"add_column\"\ntable = \"t\"\ncolumn = \"c\"\ntype = \"int\"\nnot_null = true\n";
        assert!(
            ExpandSpec::parse(add)
                .unwrap_err()
                .contains("needs default or up")
        );
        assert!(ExpandSpec::parse(&format!("{add}up = \"0\"\n")).is_ok());
    }
}
