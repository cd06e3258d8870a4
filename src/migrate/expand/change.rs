//! One table's share of an expansion: its operations gathered into renames, shadow columns,
//! hidden columns and carried indexes, checked against what the catalog says depends on the
//! columns they change.

use std::collections::{BTreeMap, BTreeSet};

use super::catalog::{Column, TableFacts};
use super::plan::q;
use super::spec::{Operation, SHADOW_PREFIX};

/// A column that holds a changed column's new representation while expanded.
#[derive(Debug, Clone)]
pub(super) struct Shadow {
    /// `_pgs_<final name>`.
    pub(super) physical: String,
    /// Its name once complete.
    pub(super) final_name: String,
    pub(super) data_type: String,
    /// Its value from an old row, over the old names.
    pub(super) up: Option<String>,
    pub(super) not_null: bool,
    /// A CHECK over the new names.
    pub(super) check: Option<String>,
    pub(super) default: Option<String>,
}

/// One table's change, gathered from its operations.
#[derive(Debug, Default)]
pub(super) struct TableChange {
    /// Old name → new name, same physical column.
    pub(super) renames: BTreeMap<String, String>,
    /// Old column → its shadow's index.
    pub(super) replaced: BTreeMap<String, usize>,
    pub(super) shadows: Vec<Shadow>,
    /// Old columns the new version does not see, with their value from a new row.
    pub(super) hidden: BTreeMap<String, Option<String>>,
    /// New defaults of columns that keep their physical column (new name → expression).
    pub(super) defaults: BTreeMap<String, String>,
    /// CHECK constraints of old columns that the new version does without.
    pub(super) dropped_checks: BTreeSet<String>,
    /// Indexes (and the UNIQUE / PRIMARY KEY constraints they back) of replaced columns,
    /// built again on the shadow columns.
    pub(super) carried: BTreeSet<String>,
}

impl TableChange {
    pub(super) fn gather(
        table: &str,
        ops: &[&Operation],
        facts: &TableFacts,
    ) -> Result<Self, String> {
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
    pub(super) fn new_columns(&self, facts: &TableFacts) -> Vec<(String, String)> {
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
