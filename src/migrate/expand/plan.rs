//! The SQL of one expansion, written once from the migration's operations and the catalog it
//! finds, and kept in `pgsidecar.expansions` so that a resumed expand, `complete` and `abort`
//! run exactly what was planned even after the files or the catalog changed.
//!
//! While expanded, each changed column that needs new values lives twice: the old column and a
//! shadow column `_pgs_<name>`. A trigger keeps them in step: a row written by the new version
//! (whose sessions have the new version's schema first in `search_path`) gets its old columns
//! from `down`; any other row gets its shadow columns from `up`. Each version reads and writes
//! the table through a view in its own schema.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::catalog::{Column, TableFacts};
use super::rewrite::bind;
use super::spec::{ExpandSpec, Operation, SHADOW_PREFIX};

/// The schema of views through which the application of `version` sees its tables.
#[must_use]
pub fn version_schema(version: i64) -> String {
    format!("app_v{version:04}")
}

/// A batched backfill of one table's shadow columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillStep {
    /// The table, qualified and quoted.
    pub table: String,
    /// Its integer key, quoted.
    pub key: String,
    /// The UPDATE of one key range, `$1` inclusive to `$2` exclusive.
    pub statement: String,
}

/// An index of a changed column built again on its shadow column, concurrently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexStep {
    /// The new index, qualified and quoted (dropped first when a build is resumed: an
    /// interrupted concurrent build leaves an INVALID index).
    pub name: String,
    /// `CREATE INDEX CONCURRENTLY …`.
    pub create: String,
}

/// Everything an expansion runs, in order, and what undoes or finishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpandPlan {
    /// The schema of the version before this migration.
    pub old_schema: String,
    /// The schema of this migration's version.
    pub new_schema: String,
    /// Shadow columns and sync triggers: one transaction.
    pub setup: Vec<String>,
    /// Batched backfills of the shadow columns.
    pub backfills: Vec<BackfillStep>,
    /// Indexes of changed columns, built again on their shadows after the backfill, each
    /// outside a transaction.
    pub indexes: Vec<IndexStep>,
    /// Constraints added NOT VALID, validated, then the version schemas: each its own
    /// transaction, so that no validation scan runs under a strong lock.
    pub finish: Vec<String>,
    /// Drops the old representation: one transaction.
    pub contract: Vec<String>,
    /// Undoes the expansion: one transaction.
    pub abort: Vec<String>,
}

/// A column that holds a changed column's new representation while expanded.
#[derive(Debug, Clone)]
struct Shadow {
    /// `_pgs_<final name>`.
    physical: String,
    /// Its name once complete.
    final_name: String,
    data_type: String,
    /// Its value from an old row, over the old names.
    up: Option<String>,
    not_null: bool,
    /// A CHECK over the new names.
    check: Option<String>,
    default: Option<String>,
}

/// One table's change, gathered from its operations.
#[derive(Debug, Default)]
struct TableChange {
    /// Old name → new name, same physical column.
    renames: BTreeMap<String, String>,
    /// Old column → its shadow's index.
    replaced: BTreeMap<String, usize>,
    shadows: Vec<Shadow>,
    /// Old columns the new version does not see, with their value from a new row.
    hidden: BTreeMap<String, Option<String>>,
    /// New defaults of columns that keep their physical column (new name → expression).
    defaults: BTreeMap<String, String>,
    /// CHECK constraints of old columns that the new version does without.
    dropped_checks: BTreeSet<String>,
    /// Indexes (and the UNIQUE / PRIMARY KEY constraints they back) of replaced columns,
    /// built again on the shadow columns.
    carried: BTreeSet<String>,
}

fn q(identifier: &str) -> String {
    format!("\"{identifier}\"")
}

impl TableChange {
    fn gather(table: &str, ops: &[&Operation], facts: &TableFacts) -> Result<Self, String> {
        let mut change = Self::default();
        let existing = |column: &str| {
            facts
                .column(column)
                .ok_or_else(|| format!("table {table} has no column `{column}`"))
        };
        for op in ops {
            match op {
                Operation::RenameColumn { from, to, .. } => {
                    existing(from)?;
                    change.renames.insert(from.clone(), to.clone());
                }
                Operation::AlterColumn { column, .. } => {
                    change.alter(table, op, existing(column)?, facts)?;
                }
                Operation::AddColumn {
                    column,
                    data_type,
                    not_null,
                    default,
                    up,
                    ..
                } => {
                    if facts.column(column).is_some() {
                        return Err(format!("table {table} already has a column `{column}`"));
                    }
                    change.shadows.push(Shadow {
                        physical: format!("{SHADOW_PREFIX}{column}"),
                        final_name: column.clone(),
                        data_type: data_type.clone(),
                        up: up.clone().or_else(|| default.clone()),
                        not_null: *not_null,
                        check: None,
                        default: default.clone(),
                    });
                }
                Operation::DropColumn { column, down, .. } => {
                    let old = existing(column)?;
                    if old.not_null && old.default.is_none() && down.is_none() {
                        return Err(format!(
                            "{table}.{column} is NOT NULL without a default: give down, its value when the new version writes a row"
                        ));
                    }
                    change.hidden.insert(column.clone(), down.clone());
                }
            }
        }
        change.check_dependents(table, facts)?;
        change.check_names(table, facts)?;
        Ok(change)
    }

    /// An `alter_column`: a rename and a view default when nothing else changes, a shadow
    /// column otherwise.
    fn alter(
        &mut self,
        table: &str,
        op: &Operation,
        old: &Column,
        facts: &TableFacts,
    ) -> Result<(), String> {
        let Operation::AlterColumn {
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
        } = op
        else {
            return Ok(());
        };
        let final_name = rename.clone().unwrap_or_else(|| column.clone());
        let not_null = not_null.unwrap_or(old.not_null);
        let needs_shadow = data_type.is_some()
            || check.is_some()
            || drop_check.is_some()
            || not_null != old.not_null;
        if !needs_shadow {
            if rename.is_some() {
                self.renames.insert(column.clone(), final_name.clone());
            }
            if let Some(default) = default {
                self.defaults.insert(final_name, default.clone());
            }
            return Ok(());
        }
        if let Some(name) = drop_check {
            let own = facts
                .dependents
                .get(column)
                .is_some_and(|d| d.iter().any(|d| d.check.as_ref() == Some(name)));
            if !own {
                return Err(format!(
                    "{table}.{column} has no CHECK constraint `{name}` to drop"
                ));
            }
            self.dropped_checks.insert(name.clone());
        }
        let same_type = data_type.as_ref().is_none_or(|t| *t == old.data_type);
        self.replaced.insert(column.clone(), self.shadows.len());
        self.hidden.insert(
            column.clone(),
            Some(down.clone().unwrap_or_else(|| q(&final_name))),
        );
        self.shadows.push(Shadow {
            physical: format!("{SHADOW_PREFIX}{final_name}"),
            final_name,
            data_type: data_type.clone().unwrap_or_else(|| old.data_type.clone()),
            up: Some(up.clone().unwrap_or_else(|| q(column))),
            not_null,
            check: check.clone(),
            default: default
                .clone()
                .or_else(|| old.default.clone().filter(|_| same_type)),
        });
        Ok(())
    }

    /// A replaced column must not take anything with it when `complete` drops it; a dropped
    /// one may take its own indexes and constraints, but nothing that would stop the drop.
    fn check_dependents(&mut self, table: &str, facts: &TableFacts) -> Result<(), String> {
        for column in self.hidden.keys() {
            let replaced = self.replaced.contains_key(column);
            for dependent in facts.dependents.get(column).into_iter().flatten() {
                let allowed = if replaced {
                    if let Some(index) = &dependent.index {
                        self.carried.insert(index.clone());
                        true
                    } else {
                        dependent
                            .check
                            .as_ref()
                            .is_some_and(|c| self.dropped_checks.contains(c))
                    }
                } else {
                    dependent.dropped_with_column
                };
                if !allowed {
                    return Err(format!(
                        "{table}.{column} is used by {}; `complete` would drop it with the column. Move it off the column first (or, for a CHECK of a changed column, name it in drop_check and give the new column its check; indexes, UNIQUE and PRIMARY KEY constraints are built again on the new column)",
                        dependent.description
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every new name is free in the new version, and no column is renamed twice.
    fn check_names(&self, table: &str, facts: &TableFacts) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for name in self.new_columns(facts).into_iter().map(|(_, n)| n) {
            if !names.insert(name.clone()) {
                return Err(format!(
                    "table {table} would have two columns named `{name}` in the new version"
                ));
            }
        }
        Ok(())
    }

    /// `(physical, name)` of each column the new version sees, in order.
    fn new_columns(&self, facts: &TableFacts) -> Vec<(String, String)> {
        let mut columns = Vec::new();
        for c in &facts.columns {
            if let Some(&i) = self.replaced.get(&c.name) {
                let s = &self.shadows[i];
                columns.push((s.physical.clone(), s.final_name.clone()));
            } else if self.hidden.contains_key(&c.name) {
            } else {
                let name = self.renames.get(&c.name).unwrap_or(&c.name);
                columns.push((c.name.clone(), name.clone()));
            }
        }
        let in_place: BTreeSet<usize> = self.replaced.values().copied().collect();
        for (i, s) in self.shadows.iter().enumerate() {
            if !in_place.contains(&i) {
                columns.push((s.physical.clone(), s.final_name.clone()));
            }
        }
        columns
    }
}

/// Names of one row's columns bound to a record variable of the trigger (`NEW`, `OLD`).
fn row(record: &str, columns: impl Iterator<Item = (String, String)>) -> BTreeMap<String, String> {
    columns
        .map(|(physical, name)| (name, format!("{record}.{}", q(&physical))))
        .collect()
}

/// `IF TG_OP = 'INSERT' … ELSIF the inputs changed …`: sets `target` from `expr`, over `names`.
fn sync_assignment(
    target: &str,
    expr: &str,
    names: &[(String, String)],
    always_when_null: bool,
) -> Result<String, String> {
    let new_row = bind(expr, &row("NEW", names.iter().cloned()))?;
    let old_row = bind(expr, &row("OLD", names.iter().cloned()))?;
    let target = format!("NEW.{}", q(target));
    let null = if always_when_null {
        format!("{target} IS NULL OR ")
    } else {
        String::new()
    };
    Ok(format!(
        "        IF TG_OP = 'INSERT' THEN\n            {target} := ({new_row});\n        ELSIF {null}({new_row}) IS DISTINCT FROM ({old_row}) THEN\n            {target} := ({new_row});\n        END IF;\n"
    ))
}

/// SQL gathered across tables before it goes into the plan.
#[derive(Default)]
struct Pieces {
    /// The version schemas' statement: schemas, views, grants.
    views: String,
    abort_views: Vec<String>,
    grantees: BTreeSet<String>,
    contract_columns: Vec<String>,
}

/// What an expansion needs to know besides the migration: its versions, the catalog of each
/// table it changes, and which old-version views exist already.
pub struct PlanInput<'a> {
    /// This migration's version.
    pub version: i64,
    /// The version before it.
    pub old_version: i64,
    /// The migration.
    pub spec: &'a ExpandSpec,
    /// Each changed table's catalog facts.
    pub facts: &'a BTreeMap<String, TableFacts>,
    /// Tables that already have a view in the old version's schema (an earlier expansion's).
    pub old_views: &'a BTreeSet<String>,
    /// The old version's schema exists already.
    pub old_schema_exists: bool,
}

impl ExpandPlan {
    /// Writes the SQL of the expansion `input` describes.
    ///
    /// # Errors
    /// A message naming the table or column that makes the operations impossible.
    pub fn build(input: &PlanInput<'_>) -> Result<Self, String> {
        let old_schema = version_schema(input.old_version);
        let new_schema = version_schema(input.version);
        let mut plan = Self {
            old_schema: old_schema.clone(),
            new_schema: new_schema.clone(),
            setup: Vec::new(),
            backfills: Vec::new(),
            indexes: Vec::new(),
            finish: Vec::new(),
            contract: Vec::new(),
            abort: Vec::new(),
        };
        let mut tables: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
        for op in &input.spec.operations {
            tables.entry(op.table()).or_default().push(op);
        }
        let mut pieces = Pieces {
            views: format!(
                "CREATE SCHEMA IF NOT EXISTS {}; CREATE SCHEMA {};",
                q(&old_schema),
                q(&new_schema)
            ),
            ..Pieces::default()
        };
        for (index, (table, ops)) in tables.into_iter().enumerate() {
            plan.table(input, index, table, &ops, &mut pieces)?;
        }
        let mut views = pieces.views;
        for grantee in &pieces.grantees {
            let _ = write!(
                views,
                " GRANT USAGE ON SCHEMA {} TO {grantee}; GRANT USAGE ON SCHEMA {} TO {grantee};",
                q(&old_schema),
                q(&new_schema)
            );
        }
        plan.finish.push(views);
        plan.contract
            .push(format!("DROP SCHEMA IF EXISTS {} CASCADE", q(&old_schema)));
        plan.contract.extend(pieces.contract_columns);
        let mut abort = vec![format!("DROP SCHEMA IF EXISTS {} CASCADE", q(&new_schema))];
        abort.extend(pieces.abort_views);
        if !input.old_schema_exists {
            abort.push(format!("DROP SCHEMA IF EXISTS {}", q(&old_schema)));
        }
        abort.append(&mut plan.abort);
        plan.abort = abort;
        Ok(plan)
    }

    /// The SQL for one table's operations.
    fn table(
        &mut self,
        input: &PlanInput<'_>,
        index: usize,
        table: &str,
        ops: &[&Operation],
        pieces: &mut Pieces,
    ) -> Result<(), String> {
        let spec = input.spec;
        let facts = input
            .facts
            .get(table)
            .ok_or_else(|| format!("there is no table {}.{table}", spec.schema))?;
        let change = TableChange::gather(table, ops, facts)?;
        let qualified = format!("{}.{}", q(&spec.schema), q(table));
        if !change.shadows.is_empty() || change.hidden.values().any(Option::is_some) {
            self.sync(input.version, index, &qualified, &change, facts)?;
        }
        self.backfill(&qualified, table, &change, facts)?;
        self.constraints(&qualified, table, &change)?;
        let carried = self.carry_indexes(&spec.schema, &qualified, &change, facts)?;
        if !input.old_views.contains(table) {
            let old_columns: Vec<String> = facts.columns.iter().map(|c| q(&c.name)).collect();
            let _ = write!(
                pieces.views,
                " CREATE VIEW {}.{} WITH (security_invoker = true) AS SELECT {} FROM {qualified};",
                q(&self.old_schema),
                q(table),
                old_columns.join(", ")
            );
            pieces.abort_views.push(format!(
                "DROP VIEW IF EXISTS {}.{}",
                q(&self.old_schema),
                q(table)
            ));
        }
        let new_columns: Vec<String> = change
            .new_columns(facts)
            .into_iter()
            .map(|(physical, name)| {
                if physical == name {
                    q(&name)
                } else {
                    format!("{} AS {}", q(&physical), q(&name))
                }
            })
            .collect();
        let _ = write!(
            pieces.views,
            " CREATE VIEW {}.{} WITH (security_invoker = true) AS SELECT {} FROM {qualified};",
            q(&self.new_schema),
            q(table),
            new_columns.join(", ")
        );
        for (name, default) in &change.defaults {
            let _ = write!(
                pieces.views,
                " ALTER VIEW {}.{} ALTER COLUMN {} SET DEFAULT {default};",
                q(&self.new_schema),
                q(table),
                q(name)
            );
        }
        for (grantee, privilege) in &facts.grants {
            for schema in [&self.old_schema, &self.new_schema] {
                let _ = write!(
                    pieces.views,
                    " GRANT {privilege} ON {}.{} TO {grantee};",
                    q(schema),
                    q(table)
                );
            }
            pieces.grantees.insert(grantee.clone());
        }
        pieces
            .contract_columns
            .extend(Self::contract_columns(&qualified, &change));
        pieces.contract_columns.extend(carried);
        Ok(())
    }

    /// Builds each carried index again on the shadow columns; returns what `complete` does to
    /// give it (or its constraint) the old name once the old column and its index are gone.
    fn carry_indexes(
        &mut self,
        schema: &str,
        qualified: &str,
        change: &TableChange,
        facts: &TableFacts,
    ) -> Result<Vec<String>, String> {
        let shadows: BTreeMap<String, String> = change
            .replaced
            .iter()
            .map(|(old, &i)| (old.clone(), q(&change.shadows[i].physical)))
            .collect();
        let mut contract = Vec::new();
        for name in &change.carried {
            let index = facts
                .indexes
                .get(name)
                .ok_or_else(|| format!("index {name} vanished from the catalog"))?;
            let using = index
                .definition
                .find(" USING ")
                .ok_or_else(|| format!("cannot read the definition of index {name}"))?;
            let unique = if index.definition.starts_with("CREATE UNIQUE") {
                "UNIQUE "
            } else {
                ""
            };
            let shadow: String = format!("{SHADOW_PREFIX}{name}").chars().take(63).collect();
            self.indexes.push(IndexStep {
                name: format!("{}.{}", q(schema), q(&shadow)),
                create: format!(
                    "CREATE {unique}INDEX CONCURRENTLY {} ON {qualified} {}",
                    q(&shadow),
                    bind(&index.definition[using + 1..], &shadows)?
                ),
            });
            contract.push(match &index.constraint {
                Some((constraint, kind)) => format!(
                    "ALTER TABLE {qualified} ADD CONSTRAINT {} {} USING INDEX {}",
                    q(constraint),
                    if kind == "p" { "PRIMARY KEY" } else { "UNIQUE" },
                    q(&shadow)
                ),
                None => format!(
                    "ALTER INDEX {}.{} RENAME TO {}",
                    q(schema),
                    q(&shadow),
                    q(name)
                ),
            });
        }
        Ok(contract)
    }

    /// Shadow columns, the sync trigger, and how `complete` and `abort` remove them.
    fn sync(
        &mut self,
        version: i64,
        index: usize,
        qualified: &str,
        change: &TableChange,
        facts: &TableFacts,
    ) -> Result<(), String> {
        let trigger = q(&format!("pgsidecar_expand_v{version:04}"));
        let function = format!("pgsidecar.{}", q(&format!("expand_v{version:04}_{index}")));
        for s in &change.shadows {
            let mut add = format!(
                "ALTER TABLE {qualified} ADD COLUMN {} {}",
                q(&s.physical),
                s.data_type
            );
            if let Some(default) = &s.default {
                let _ = write!(
                    add,
                    "; ALTER TABLE {qualified} ALTER COLUMN {} SET DEFAULT {default}",
                    q(&s.physical)
                );
            }
            self.setup.push(add);
        }
        self.setup.push(Self::sync_function(
            &function,
            &self.new_schema,
            change,
            facts,
        )?);
        self.setup.push(format!(
            "CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {qualified} FOR EACH ROW EXECUTE FUNCTION {function}()"
        ));
        let drop = format!(
            "DROP TRIGGER IF EXISTS {trigger} ON {qualified}; DROP FUNCTION IF EXISTS {function}()"
        );
        self.contract.push(drop.clone());
        let mut abort = drop;
        for s in &change.shadows {
            let _ = write!(
                abort,
                "; ALTER TABLE {qualified} DROP COLUMN IF EXISTS {}",
                q(&s.physical)
            );
        }
        self.abort.push(abort);
        Ok(())
    }

    /// The trigger function that keeps both representations of `change` in step.
    fn sync_function(
        function: &str,
        new_schema: &str,
        change: &TableChange,
        facts: &TableFacts,
    ) -> Result<String, String> {
        let new_names = change.new_columns(facts);
        let old_names: Vec<(String, String)> = facts
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.name.clone()))
            .collect();
        let mut from_new = String::new();
        for (column, down) in &change.hidden {
            if let Some(down) = down {
                from_new.push_str(&sync_assignment(column, down, &new_names, false)?);
            }
        }
        let mut from_old = String::new();
        for s in &change.shadows {
            if let Some(up) = &s.up {
                from_old.push_str(&sync_assignment(&s.physical, up, &old_names, true)?);
            }
        }
        Ok(format!(
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $pgsidecar$\nBEGIN\n    IF (current_schemas(false))[1] = '{new_schema}' THEN\n{from_new}        NULL;\n    ELSE\n{from_old}        NULL;\n    END IF;\n    RETURN NEW;\nEND\n$pgsidecar$"
        ))
    }

    /// The backfill of `change`'s shadow columns that have a value for existing rows.
    fn backfill(
        &mut self,
        qualified: &str,
        table: &str,
        change: &TableChange,
        facts: &TableFacts,
    ) -> Result<(), String> {
        let sets: Vec<String> = change
            .shadows
            .iter()
            .filter_map(|s| {
                s.up.as_ref()
                    .map(|up| format!("{} = ({up})", q(&s.physical)))
            })
            .collect();
        if sets.is_empty() {
            return Ok(());
        }
        let key = facts.key.as_ref().ok_or_else(|| {
            format!("table {table} needs a single-column integer primary key for the backfill")
        })?;
        self.backfills.push(BackfillStep {
            table: qualified.to_owned(),
            key: q(key),
            statement: format!(
                "UPDATE {qualified} SET {} WHERE {key} >= $1 AND {key} < $2",
                sets.join(", "),
                key = q(key)
            ),
        });
        Ok(())
    }

    /// NOT NULL (as a CHECK, so that `complete` needs no scan) and the new version's CHECKs,
    /// added NOT VALID and validated in separate transactions.
    fn constraints(
        &mut self,
        qualified: &str,
        table: &str,
        change: &TableChange,
    ) -> Result<(), String> {
        let physical: BTreeMap<String, String> = change
            .shadows
            .iter()
            .map(|s| (s.final_name.clone(), q(&s.physical)))
            .collect();
        let mut validate = Vec::new();
        for s in &change.shadows {
            if s.not_null {
                let name = q(&format!("{SHADOW_PREFIX}nn_{}", s.final_name));
                self.finish.push(format!(
                    "ALTER TABLE {qualified} ADD CONSTRAINT {name} CHECK ({} IS NOT NULL) NOT VALID",
                    q(&s.physical)
                ));
                validate.push(format!(
                    "ALTER TABLE {qualified} VALIDATE CONSTRAINT {name}"
                ));
            }
            if let Some(check) = &s.check {
                let name = q(&format!("{table}_{}_check", s.final_name));
                self.finish.push(format!(
                    "ALTER TABLE {qualified} ADD CONSTRAINT {name} CHECK ({}) NOT VALID",
                    bind(check, &physical)?
                ));
                validate.push(format!(
                    "ALTER TABLE {qualified} VALIDATE CONSTRAINT {name}"
                ));
            }
        }
        self.finish.append(&mut validate);
        Ok(())
    }

    /// What `complete` does to one table once the old version is gone.
    fn contract_columns(qualified: &str, change: &TableChange) -> Vec<String> {
        let mut sql = Vec::new();
        for column in change.hidden.keys() {
            sql.push(format!("ALTER TABLE {qualified} DROP COLUMN {}", q(column)));
        }
        for s in &change.shadows {
            sql.push(format!(
                "ALTER TABLE {qualified} RENAME COLUMN {} TO {}",
                q(&s.physical),
                q(&s.final_name)
            ));
        }
        for (from, to) in &change.renames {
            sql.push(format!(
                "ALTER TABLE {qualified} RENAME COLUMN {} TO {}",
                q(from),
                q(to)
            ));
        }
        for s in change.shadows.iter().filter(|s| s.not_null) {
            sql.push(format!(
                "ALTER TABLE {qualified} ALTER COLUMN {} SET NOT NULL; ALTER TABLE {qualified} DROP CONSTRAINT {}",
                q(&s.final_name),
                q(&format!("{SHADOW_PREFIX}nn_{}", s.final_name))
            ));
        }
        for (name, default) in &change.defaults {
            sql.push(format!(
                "ALTER TABLE {qualified} ALTER COLUMN {} SET DEFAULT {default}",
                q(name)
            ));
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{Dependent, Index};
    use super::*;

    fn column(name: &str, data_type: &str, not_null: bool) -> Column {
        Column {
            name: name.to_owned(),
            data_type: data_type.to_owned(),
            not_null,
            default: None,
        }
    }

    fn orders() -> TableFacts {
        TableFacts {
            columns: vec![
                column("id", "bigint", true),
                column("amount", "integer", true),
                column("note", "text", false),
            ],
            key: Some("id".into()),
            dependents: BTreeMap::new(),
            grants: vec![("app".into(), "SELECT".into())],
            indexes: BTreeMap::new(),
        }
    }

    fn plan_for(toml: &str, facts: TableFacts) -> Result<ExpandPlan, String> {
        let spec = ExpandSpec::parse(toml).unwrap();
        let facts = BTreeMap::from([("orders".to_owned(), facts)]);
        ExpandPlan::build(&PlanInput {
            version: 2,
            old_version: 1,
            spec: &spec,
            facts: &facts,
            old_views: &BTreeSet::new(),
            old_schema_exists: false,
        })
    }

    const RETYPE: &str = r#"
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
    fn a_retyped_column_gets_a_shadow_a_trigger_and_a_backfill() {
        let plan = plan_for(RETYPE, orders()).unwrap();
        assert_eq!(plan.old_schema, "app_v0001");
        assert_eq!(plan.new_schema, "app_v0002");
        assert_eq!(
            plan.setup[0],
            "ALTER TABLE \"public\".\"orders\" ADD COLUMN \"_pgs_amount_cents\" bigint"
        );
        let function = &plan.setup[1];
        assert!(
            function.contains("IF (current_schemas(false))[1] = 'app_v0002' THEN"),
            "{function}"
        );
        assert!(
            function.contains("NEW.\"amount\" := ((NEW.\"_pgs_amount_cents\" / 100)::integer)"),
            "the new version's writes give the old column its value: {function}"
        );
        assert!(
            function.contains("NEW.\"_pgs_amount_cents\" := (NEW.\"amount\"::bigint * 100)"),
            "the old version's writes give the shadow its value: {function}"
        );
        assert_eq!(
            plan.backfills[0].statement,
            "UPDATE \"public\".\"orders\" SET \"_pgs_amount_cents\" = (amount::bigint * 100) WHERE \"id\" >= $1 AND \"id\" < $2"
        );
    }

    #[test]
    fn each_version_sees_the_table_its_way() {
        let plan = plan_for(RETYPE, orders()).unwrap();
        let views = plan.finish.last().unwrap();
        assert!(views.contains(
            "CREATE VIEW \"app_v0001\".\"orders\" WITH (security_invoker = true) AS SELECT \"id\", \"amount\", \"note\" FROM \"public\".\"orders\""
        ), "{views}");
        assert!(views.contains(
            "CREATE VIEW \"app_v0002\".\"orders\" WITH (security_invoker = true) AS SELECT \"id\", \"_pgs_amount_cents\" AS \"amount_cents\", \"note\" AS \"memo\" FROM \"public\".\"orders\""
        ), "{views}");
        assert!(views.contains("GRANT SELECT ON \"app_v0002\".\"orders\" TO app"));
        assert!(views.contains("GRANT USAGE ON SCHEMA \"app_v0002\" TO app"));
    }

    #[test]
    fn a_not_null_column_is_checked_before_it_is_set_not_null() {
        let plan = plan_for(RETYPE, orders()).unwrap();
        assert_eq!(
            plan.finish[0],
            "ALTER TABLE \"public\".\"orders\" ADD CONSTRAINT \"_pgs_nn_amount_cents\" CHECK (\"_pgs_amount_cents\" IS NOT NULL) NOT VALID"
        );
        assert_eq!(
            plan.finish[1],
            "ALTER TABLE \"public\".\"orders\" VALIDATE CONSTRAINT \"_pgs_nn_amount_cents\""
        );
        assert!(plan.contract.iter().any(|s| s.contains(
            "ALTER COLUMN \"amount_cents\" SET NOT NULL; ALTER TABLE \"public\".\"orders\" DROP CONSTRAINT \"_pgs_nn_amount_cents\""
        )));
    }

    #[test]
    fn complete_drops_the_old_and_names_the_new() {
        let plan = plan_for(RETYPE, orders()).unwrap();
        let contract = plan.contract.join("\n");
        let drop_trigger = contract.find("DROP TRIGGER").unwrap();
        let drop_schema = contract
            .find("DROP SCHEMA IF EXISTS \"app_v0001\" CASCADE")
            .unwrap();
        let drop_column = contract.find("DROP COLUMN \"amount\"").unwrap();
        let rename = contract
            .find("RENAME COLUMN \"_pgs_amount_cents\" TO \"amount_cents\"")
            .unwrap();
        assert!(drop_trigger < drop_schema && drop_schema < drop_column && drop_column < rename);
        assert!(contract.contains("RENAME COLUMN \"note\" TO \"memo\""));
    }

    #[test]
    fn abort_removes_only_what_the_expansion_added() {
        let plan = plan_for(RETYPE, orders()).unwrap();
        assert_eq!(
            plan.abort,
            [
                "DROP SCHEMA IF EXISTS \"app_v0002\" CASCADE",
                "DROP VIEW IF EXISTS \"app_v0001\".\"orders\"",
                "DROP SCHEMA IF EXISTS \"app_v0001\"",
                "DROP TRIGGER IF EXISTS \"pgsidecar_expand_v0002\" ON \"public\".\"orders\"; DROP FUNCTION IF EXISTS pgsidecar.\"expand_v0002_0\"(); ALTER TABLE \"public\".\"orders\" DROP COLUMN IF EXISTS \"_pgs_amount_cents\"",
            ]
        );
    }

    #[test]
    fn a_rename_alone_needs_no_trigger_and_no_backfill() {
        let rename = "[[operation]]\nkind = \"rename_column\"\ntable = \"orders\"\nfrom = \"note\"\nto = \"memo\"\n";
        let plan = plan_for(rename, orders()).unwrap();
        assert!(plan.setup.is_empty() && plan.backfills.is_empty());
        assert_eq!(
            plan.contract.last().unwrap(),
            "ALTER TABLE \"public\".\"orders\" RENAME COLUMN \"note\" TO \"memo\""
        );
    }

    #[test]
    fn a_changed_column_that_a_view_uses_is_refused() {
        let mut facts = orders();
        facts.dependents.insert(
            "amount".into(),
            vec![Dependent {
                description: "rule _RETURN on view order_totals".into(),
                check: None,
                dropped_with_column: false,
                index: None,
            }],
        );
        let err = plan_for(RETYPE, facts).unwrap_err();
        assert!(err.contains("view order_totals"), "{err}");
    }

    #[test]
    fn indexes_of_a_changed_column_are_built_again_on_its_shadow() {
        let mut facts = orders();
        facts.dependents.insert(
            "amount".into(),
            vec![
                Dependent {
                    description: "index orders_amount_idx".into(),
                    check: None,
                    dropped_with_column: true,
                    index: Some("orders_amount_idx".into()),
                },
                Dependent {
                    description: "constraint orders_amount_key on table orders".into(),
                    check: None,
                    dropped_with_column: true,
                    index: Some("orders_amount_key".into()),
                },
            ],
        );
        facts.indexes.insert(
            "orders_amount_idx".into(),
            Index {
                definition: "CREATE INDEX orders_amount_idx ON public.orders USING btree (amount DESC) WHERE (amount > 0)".into(),
                constraint: None,
            },
        );
        facts.indexes.insert(
            "orders_amount_key".into(),
            Index {
                definition: "CREATE UNIQUE INDEX orders_amount_key ON public.orders USING btree (amount, note)".into(),
                constraint: Some(("orders_amount_key".into(), "u".into())),
            },
        );
        let plan = plan_for(RETYPE, facts).unwrap();
        assert_eq!(
            plan.indexes[0].create,
            "CREATE INDEX CONCURRENTLY \"_pgs_orders_amount_idx\" ON \"public\".\"orders\" USING btree (\"_pgs_amount_cents\" DESC) WHERE (\"_pgs_amount_cents\" > 0)"
        );
        assert_eq!(
            plan.indexes[1].create,
            "CREATE UNIQUE INDEX CONCURRENTLY \"_pgs_orders_amount_key\" ON \"public\".\"orders\" USING btree (\"_pgs_amount_cents\", note)"
        );
        let contract = plan.contract.join("\n");
        assert!(contract.contains(
            "ALTER INDEX \"public\".\"_pgs_orders_amount_idx\" RENAME TO \"orders_amount_idx\""
        ));
        assert!(contract.contains(
            "ADD CONSTRAINT \"orders_amount_key\" UNIQUE USING INDEX \"_pgs_orders_amount_key\""
        ));
        assert!(
            contract.find("DROP COLUMN \"amount\"").unwrap()
                < contract.find("USING INDEX").unwrap(),
            "the old index goes with the old column before the new one takes its name"
        );
    }

    #[test]
    fn a_backfill_needs_an_integer_key() {
        let mut facts = orders();
        facts.key = None;
        let err = plan_for(RETYPE, facts).unwrap_err();
        assert!(err.contains("integer primary key"), "{err}");
    }

    #[test]
    fn a_split_adds_columns_from_the_old_one_and_hides_it_from_the_new_version() {
        let split = r#"
[[operation]]
kind = "add_column"
table = "orders"
column = "note_head"
type = "text"
up = "split_part(note, ' ', 1)"

[[operation]]
kind = "add_column"
table = "orders"
column = "note_tail"
type = "text"
up = "split_part(note, ' ', 2)"

[[operation]]
kind = "drop_column"
table = "orders"
column = "note"
down = "note_head || ' ' || note_tail"
"#;
        let plan = plan_for(split, orders()).unwrap();
        let views = plan.finish.last().unwrap();
        assert!(views.contains("SELECT \"id\", \"amount\", \"_pgs_note_head\" AS \"note_head\", \"_pgs_note_tail\" AS \"note_tail\" FROM"), "{views}");
        assert!(
            plan.setup[2].contains(
                "NEW.\"note\" := (NEW.\"_pgs_note_head\" || ' ' || NEW.\"_pgs_note_tail\")"
            ),
            "{}",
            plan.setup[2]
        );
        assert!(
            plan.contract
                .iter()
                .any(|s| s.ends_with("DROP COLUMN \"note\""))
        );
    }
}
