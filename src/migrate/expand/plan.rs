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

use super::catalog::TableFacts;
use super::change::TableChange;
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

pub(super) fn q(identifier: &str) -> String {
    format!("\"{identifier}\"")
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
#[path = "plan_tests.rs"]
mod tests;
