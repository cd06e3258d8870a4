//! The linter: each statement parsed by PostgreSQL's own parser (pg_query), and every form of
//! DDL that blocks reads or writes of a live table flagged with the lock it takes and the safe
//! way to get the same result.

use pg_query::protobuf::{AlterTableType, ConstrType, ObjectType};
use pg_query::{NodeEnum, NodeRef};

use super::source::Migration;

/// What is wrong with one statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The migration, e.g. `0003_add_index`.
    pub migration: String,
    /// Index of the statement in the migration (0-based).
    pub statement: usize,
    /// The statement's text (shortened).
    pub sql: String,
    /// What it does.
    pub problem: &'static str,
    /// The lock it takes and what that blocks.
    pub lock: &'static str,
    /// How to get the same result without blocking.
    pub advice: &'static str,
    /// It cannot run at all as written (not a question of locks).
    pub error: bool,
}

/// Functions a column default may not call without rewriting the table on `ADD COLUMN`.
/// Column types whose implicit default is `nextval()`: volatile, so adding one rewrites.
const SERIAL_TYPES: [&str; 6] = [
    "serial",
    "bigserial",
    "smallserial",
    "serial4",
    "serial8",
    "serial2",
];

const VOLATILE: [&str; 9] = [
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
    "statement_timestamp",
];

struct Rule {
    problem: &'static str,
    lock: &'static str,
    advice: &'static str,
    error: bool,
}

const fn rule(problem: &'static str, lock: &'static str, advice: &'static str) -> Rule {
    Rule {
        problem,
        lock,
        advice,
        error: false,
    }
}

const CONCURRENT_IN_TRANSACTION: Rule = Rule {
    problem: "CONCURRENTLY cannot run inside a transaction block",
    lock: "none: PostgreSQL refuses the statement",
    advice: "mark the migration `-- pgsidecar:no-transaction` and keep the statement on its own",
    error: true,
};

fn has_option(options: &[pg_query::Node], name: &str) -> bool {
    options.iter().any(
        |o| matches!(&o.node, Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case(name)),
    )
}

fn calls_volatile(expr: &pg_query::Node) -> bool {
    let Some(node) = &expr.node else { return false };
    node.nodes().iter().any(|(n, ..)| match n {
        NodeRef::FuncCall(call) => call.funcname.last().is_some_and(|name| {
            matches!(&name.node, Some(NodeEnum::String(s)) if VOLATILE.contains(&s.sval.to_ascii_lowercase().as_str()))
        }),
        _ => false,
    })
}

fn add_column(def: &pg_query::Node) -> Option<Rule> {
    let Some(NodeEnum::ColumnDef(column)) = &def.node else {
        return None;
    };
    let volatile_default = column.raw_default.as_deref().is_some_and(calls_volatile)
        || column.constraints.iter().any(|c| {
            matches!(&c.node, Some(NodeEnum::Constraint(k))
                if k.contype == ConstrType::ConstrDefault as i32
                    && k.raw_expr.as_deref().is_some_and(calls_volatile))
        });
    if volatile_default {
        return Some(rule(
            "ADD COLUMN with a volatile default rewrites the whole table",
            "ACCESS EXCLUSIVE for the rewrite: blocks reads and writes",
            "add the column without a default (or with a constant one), then backfill in batches and set the default for new rows",
        ));
    }
    let type_name = column
        .type_name
        .as_ref()
        .and_then(|t| t.names.last())
        .and_then(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.to_ascii_lowercase()),
            _ => None,
        })
        .unwrap_or_default();
    let identity = column.constraints.iter().any(|c| {
        matches!(&c.node, Some(NodeEnum::Constraint(k)) if k.contype == ConstrType::ConstrIdentity as i32)
    }) || !column.identity.is_empty();
    if SERIAL_TYPES.contains(&type_name.as_str()) || identity {
        return Some(rule(
            "ADD COLUMN of a serial or identity column fills every row from a sequence: the whole table is rewritten",
            "ACCESS EXCLUSIVE for the rewrite: blocks reads and writes",
            "add a plain column, set its default to nextval() of a new sequence for new rows, backfill old rows in batches, then add the identity or NOT NULL",
        ));
    }
    let checked = column.constraints.iter().any(|c| {
        matches!(&c.node, Some(NodeEnum::Constraint(k))
            if (k.contype == ConstrType::ConstrCheck as i32 || k.contype == ConstrType::ConstrForeign as i32)
                && !k.skip_validation)
    });
    if checked {
        return Some(rule(
            "ADD COLUMN with a CHECK or REFERENCES constraint validates every row while holding the lock",
            "ACCESS EXCLUSIVE during the scan: blocks reads and writes",
            "add the column, then ADD CONSTRAINT ... NOT VALID and VALIDATE CONSTRAINT in a later step",
        ));
    }
    let stored_generated = column.constraints.iter().any(|c| {
        matches!(&c.node, Some(NodeEnum::Constraint(k)) if k.contype == ConstrType::ConstrGenerated as i32)
    });
    if stored_generated {
        return Some(rule(
            "ADD COLUMN ... GENERATED ALWAYS AS ... STORED rewrites the whole table",
            "ACCESS EXCLUSIVE for the rewrite: blocks reads and writes",
            "add a plain column, backfill it in batches, and keep it current with a trigger",
        ));
    }
    let builds_index = column.constraints.iter().any(|c| {
        matches!(&c.node, Some(NodeEnum::Constraint(k))
            if k.contype == ConstrType::ConstrUnique as i32 || k.contype == ConstrType::ConstrPrimary as i32)
    });
    builds_index.then(|| {
        rule(
            "ADD COLUMN with UNIQUE / PRIMARY KEY builds an index under an exclusive lock",
            "ACCESS EXCLUSIVE while the index builds: blocks reads and writes",
            "add the column, CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX",
        )
    })
}

fn add_constraint(def: &pg_query::Node) -> Option<Rule> {
    let Some(NodeEnum::Constraint(c)) = &def.node else {
        return None;
    };
    let kind = ConstrType::try_from(c.contype).ok()?;
    match kind {
        ConstrType::ConstrCheck if !c.skip_validation => Some(rule(
            "ADD CHECK validates every row while holding the lock",
            "ACCESS EXCLUSIVE during the scan: blocks reads and writes",
            "ADD CONSTRAINT ... CHECK (...) NOT VALID, then VALIDATE CONSTRAINT in a later step (it takes only SHARE UPDATE EXCLUSIVE)",
        )),
        ConstrType::ConstrForeign if !c.skip_validation => Some(rule(
            "ADD FOREIGN KEY validates every row while holding the lock",
            "SHARE ROW EXCLUSIVE on both tables during the scan: blocks writes",
            "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later step",
        )),
        ConstrType::ConstrUnique | ConstrType::ConstrPrimary if c.indexname.is_empty() => {
            Some(rule(
                "ADD UNIQUE / PRIMARY KEY builds its index under an exclusive lock",
                "ACCESS EXCLUSIVE while the index builds: blocks reads and writes",
                "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT ... UNIQUE / PRIMARY KEY USING INDEX",
            ))
        }
        _ => None,
    }
}

fn alter_table(cmd: &pg_query::protobuf::AlterTableCmd, validated_before: bool) -> Option<Rule> {
    let subtype = AlterTableType::try_from(cmd.subtype).ok()?;
    match subtype {
        AlterTableType::AtAddColumn => cmd.def.as_deref().and_then(add_column),
        AlterTableType::AtAddConstraint => cmd.def.as_deref().and_then(add_constraint),
        AlterTableType::AtSetNotNull if !validated_before => Some(rule(
            "SET NOT NULL scans the whole table while holding the lock",
            "ACCESS EXCLUSIVE during the scan: blocks reads and writes",
            "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c; then SET NOT NULL (PostgreSQL 12+ uses the validated check and skips the scan)",
        )),
        AlterTableType::AtAlterColumnType => Some(rule(
            "ALTER COLUMN TYPE rewrites the table (unless the change is binary-coercible, e.g. widening a varchar)",
            "ACCESS EXCLUSIVE for the rewrite: blocks reads and writes",
            "an expand/contract migration (NNNN_slug.toml, kind = \"alter_column\" with type, up and down): both application versions keep working, and `migrate complete` drops the old column once no sidecar serves the old version",
        )),
        AlterTableType::AtDropColumn => Some(rule(
            "DROP COLUMN breaks every running query and prepared statement that still uses the column",
            "ACCESS EXCLUSIVE (brief, but queued behind every running query)",
            "an expand/contract migration (NNNN_slug.toml, kind = \"drop_column\"): the new version stops seeing it at once, `migrate complete` drops it once no sidecar serves the old version",
        )),
        AlterTableType::AtSetLogged
        | AlterTableType::AtSetUnLogged
        | AlterTableType::AtSetTableSpace
        | AlterTableType::AtSetAccessMethod => Some(rule(
            "this ALTER TABLE rewrites the whole table",
            "ACCESS EXCLUSIVE for the rewrite: blocks reads and writes",
            "do it in a maintenance window (declare the step blocking), or copy into a new table online",
        )),
        _ => None,
    }
}

/// The rules one statement breaks. `in_transaction` is whether it runs inside the migration's
/// transaction; `validated_before` whether an earlier statement (of this migration or an
/// earlier one) validated a CHECK on the same table (which lets `SET NOT NULL` skip its scan).
fn check(stmt: &NodeEnum, in_transaction: bool, validated_before: bool) -> Vec<Rule> {
    match stmt {
        NodeEnum::IndexStmt(index) if !index.concurrent => vec![rule(
            "CREATE INDEX without CONCURRENTLY",
            "SHARE on the table while the index builds: blocks writes",
            "CREATE INDEX CONCURRENTLY in a migration marked `-- pgsidecar:no-transaction`",
        )],
        NodeEnum::IndexStmt(_) if in_transaction => vec![CONCURRENT_IN_TRANSACTION],
        NodeEnum::DropStmt(drop) if drop.remove_type == ObjectType::ObjectIndex as i32 => {
            if !drop.concurrent {
                vec![rule(
                    "DROP INDEX without CONCURRENTLY",
                    "ACCESS EXCLUSIVE on the table: blocks reads and writes",
                    "DROP INDEX CONCURRENTLY in a migration marked `-- pgsidecar:no-transaction`",
                )]
            } else if in_transaction {
                vec![CONCURRENT_IN_TRANSACTION]
            } else {
                Vec::new()
            }
        }
        NodeEnum::DropStmt(drop) if drop.remove_type == ObjectType::ObjectTable as i32 => {
            vec![rule(
                "DROP TABLE of a table the running application may still use",
                "ACCESS EXCLUSIVE: blocks reads and writes, and breaks every query on it",
                "first deploy code that no longer uses the table, then drop it in a step declared blocking",
            )]
        }
        NodeEnum::ReindexStmt(reindex) => {
            if !has_option(&reindex.params, "concurrently") {
                vec![rule(
                    "REINDEX without CONCURRENTLY",
                    "ACCESS EXCLUSIVE on the index and SHARE on the table: blocks writes and the reads that use the index",
                    "REINDEX ... CONCURRENTLY in a migration marked `-- pgsidecar:no-transaction`",
                )]
            } else if in_transaction {
                vec![CONCURRENT_IN_TRANSACTION]
            } else {
                Vec::new()
            }
        }
        NodeEnum::AlterTableStmt(alter) => alter
            .cmds
            .iter()
            .filter_map(|c| match &c.node {
                Some(NodeEnum::AlterTableCmd(cmd)) => alter_table(cmd, validated_before),
                _ => None,
            })
            .collect(),
        NodeEnum::RenameStmt(rename) if rename.rename_type == ObjectType::ObjectColumn as i32 => {
            vec![rule(
                "RENAME of a column the running application uses",
                "ACCESS EXCLUSIVE (brief), and every running query that names the old name breaks",
                "an expand/contract migration (NNNN_slug.toml, kind = \"rename_column\"): each application version sees its own name through its version's schema until `migrate complete`",
            )]
        }
        NodeEnum::RenameStmt(rename) if rename.rename_type == ObjectType::ObjectTable as i32 => {
            vec![rule(
                "RENAME of a table the running application uses",
                "ACCESS EXCLUSIVE (brief), and every running query that names the old name breaks",
                "expand and contract: add the new name as a view, switch the application, drop the old name later",
            )]
        }
        NodeEnum::VacuumStmt(vacuum) if has_option(&vacuum.options, "full") => vec![rule(
            "VACUUM FULL rewrites the table",
            "ACCESS EXCLUSIVE for the rewrite: blocks reads and writes",
            "plain VACUUM, or an online repack (pg_repack) outside the migration",
        )],
        NodeEnum::ClusterStmt(_) => vec![rule(
            "CLUSTER rewrites the table",
            "ACCESS EXCLUSIVE for the rewrite: blocks reads and writes",
            "an online repack (pg_repack) outside the migration",
        )],
        NodeEnum::TruncateStmt(_) => vec![rule(
            "TRUNCATE",
            "ACCESS EXCLUSIVE: blocks reads and writes",
            "DELETE in batches, or declare the step blocking",
        )],
        NodeEnum::LockStmt(_) => vec![rule(
            "an explicit LOCK TABLE",
            "the lock it names, held to the end of the transaction",
            "declare the step blocking so it runs in a maintenance window behind a fleet pause",
        )],
        _ => Vec::new(),
    }
}

fn shorten(sql: &str) -> String {
    let flat: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 120 {
        let cut: String = flat.chars().take(117).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

/// The table a statement acts on, when it names one (`schema.table` or `table`).
fn target_table(stmt: &NodeEnum) -> Option<String> {
    let relation = match stmt {
        NodeEnum::IndexStmt(s) => s.relation.as_ref(),
        NodeEnum::AlterTableStmt(s) => s.relation.as_ref(),
        NodeEnum::CreateStmt(s) => s.relation.as_ref(),
        _ => None,
    }?;
    Some(if relation.schemaname.is_empty() {
        relation.relname.clone()
    } else {
        format!("{}.{}", relation.schemaname, relation.relname)
    })
}

/// What earlier statements (of this migration or earlier ones) established that makes a later
/// statement safe: the tables on which a CHECK constraint was validated, so that `SET NOT NULL`
/// can use it instead of scanning.
#[derive(Debug, Clone, Default)]
pub struct LintHistory {
    validated: std::collections::BTreeSet<String>,
}

impl LintHistory {
    /// Records what `stmt` (on `target`) establishes.
    fn learn(&mut self, stmt: &NodeEnum, target: Option<&String>) {
        let NodeEnum::AlterTableStmt(alter) = stmt else {
            return;
        };
        let validates = alter.cmds.iter().any(|c| match &c.node {
            Some(NodeEnum::AlterTableCmd(cmd)) => {
                cmd.subtype == AlterTableType::AtValidateConstraint as i32
                    || (cmd.subtype == AlterTableType::AtAddConstraint as i32
                        && matches!(cmd.def.as_deref().and_then(|d| d.node.as_ref()),
                            Some(NodeEnum::Constraint(k))
                                if k.contype == ConstrType::ConstrCheck as i32 && !k.skip_validation))
            }
            _ => false,
        });
        if validates && let Some(table) = target {
            self.validated.insert(table.clone());
        }
    }
}

/// Lints every migration in order, each in the light of the ones before it (a `SET NOT NULL`
/// whose CHECK an earlier migration validated is safe).
#[must_use]
pub fn lint_all(migrations: &[Migration]) -> Vec<Vec<Finding>> {
    let mut history = LintHistory::default();
    migrations
        .iter()
        .map(|m| lint_after(m, &mut history))
        .collect()
}

/// Lints one migration on its own.
#[must_use]
pub fn lint(migration: &Migration) -> Vec<Finding> {
    lint_after(migration, &mut LintHistory::default())
}

/// Lints every statement of `migration` after what `history` holds, and adds what it
/// establishes. Statements on a table the same migration created (and, in a transaction,
/// nobody else can see yet) block nobody and are not flagged.
#[must_use]
pub fn lint_after(migration: &Migration, history: &mut LintHistory) -> Vec<Finding> {
    let in_transaction = !migration.directives.no_transaction;
    let mut findings = Vec::new();
    let mut created: Vec<String> = Vec::new();
    for (index, sql) in migration.statements.iter().enumerate() {
        let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::default()) else {
            continue;
        };
        for raw in &parsed.protobuf.stmts {
            let Some(stmt) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
                continue;
            };
            let target = target_table(stmt);
            if let NodeEnum::CreateStmt(_) = stmt {
                created.extend(target.clone());
            }
            let fresh = in_transaction && target.as_ref().is_some_and(|t| created.contains(t));
            let validated = target
                .as_ref()
                .is_some_and(|t| history.validated.contains(t));
            let rules = if fresh && !matches!(stmt, NodeEnum::CreateStmt(_)) {
                Vec::new()
            } else {
                check(stmt, in_transaction, validated)
            };
            for r in rules {
                findings.push(Finding {
                    migration: migration.label(),
                    statement: index,
                    sql: shorten(sql),
                    problem: r.problem,
                    lock: r.lock,
                    advice: r.advice,
                    error: r.error,
                });
            }
            history.learn(stmt, target.as_ref());
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::source::{Directives, split};

    fn migration(sql: &str, no_transaction: bool) -> Migration {
        Migration {
            version: 1,
            name: "t".into(),
            path: "t.sql".into(),
            sql: sql.into(),
            checksum: String::new(),
            statements: split("t", sql).unwrap(),
            directives: Directives {
                no_transaction,
                ..Directives::default()
            },
            down_sql: None,
            expand: None,
        }
    }

    #[test]
    fn a_column_rename_or_retype_written_as_ddl_points_to_the_expand_contract_form() {
        for sql in [
            "ALTER TABLE t RENAME COLUMN a TO b",
            "ALTER TABLE t ALTER COLUMN a TYPE bigint",
            "ALTER TABLE t DROP COLUMN a",
        ] {
            let findings = lint(&migration(sql, false));
            assert_eq!(findings.len(), 1, "{sql}");
            assert!(
                findings[0]
                    .advice
                    .contains("expand/contract migration (NNNN_slug.toml"),
                "{sql}: {}",
                findings[0].advice
            );
        }
    }

    fn problems(sql: &str, no_transaction: bool) -> Vec<&'static str> {
        lint(&migration(sql, no_transaction))
            .into_iter()
            .map(|f| f.problem)
            .collect()
    }

    #[test]
    fn indexes_on_a_table_created_in_the_same_transaction_block_nobody() {
        let sql = "CREATE TABLE fresh (id int, a text);
            CREATE INDEX fresh_a ON fresh (a);
            ALTER TABLE fresh ADD CONSTRAINT fresh_a_key UNIQUE (a);
            CREATE INDEX old_a ON old (a);";
        assert_eq!(problems(sql, false), ["CREATE INDEX without CONCURRENTLY"]);
    }

    #[test]
    fn set_not_null_is_safe_after_a_check_validated_by_an_earlier_migration() {
        let earlier = migration(
            "ALTER TABLE t ADD CONSTRAINT a_present CHECK (a IS NOT NULL) NOT VALID;
             ALTER TABLE t VALIDATE CONSTRAINT a_present;",
            false,
        );
        let later = migration("ALTER TABLE t ALTER COLUMN a SET NOT NULL", false);
        let elsewhere = migration("ALTER TABLE other ALTER COLUMN a SET NOT NULL", false);
        let findings = lint_all(&[earlier, later, elsewhere]);
        assert!(
            findings[0].is_empty() && findings[1].is_empty(),
            "{findings:?}"
        );
        assert_eq!(findings[2].len(), 1, "another table's CHECK proves nothing");
    }

    #[test]
    fn safe_ddl_passes() {
        let safe = "CREATE TABLE t (id bigint PRIMARY KEY, a text);
            ALTER TABLE t ADD COLUMN b int DEFAULT 0;
            ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now();
            ALTER TABLE t ADD CONSTRAINT a_present CHECK (a IS NOT NULL) NOT VALID;
            ALTER TABLE t VALIDATE CONSTRAINT a_present;
            ALTER TABLE t ALTER COLUMN a SET NOT NULL;
            ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE USING INDEX t_a_idx;
            VACUUM t;";
        assert_eq!(problems(safe, false), Vec::<&str>::new());
        assert_eq!(
            problems(
                "CREATE INDEX CONCURRENTLY i ON t (a); DROP INDEX CONCURRENTLY j;",
                true
            ),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn each_blocking_form_is_caught() {
        let cases = [
            (
                "CREATE INDEX i ON t (a)",
                "CREATE INDEX without CONCURRENTLY",
            ),
            ("DROP INDEX i", "DROP INDEX without CONCURRENTLY"),
            ("REINDEX TABLE t", "REINDEX without CONCURRENTLY"),
            (
                "ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid()",
                "volatile default",
            ),
            ("ALTER TABLE t ALTER COLUMN a SET NOT NULL", "SET NOT NULL"),
            (
                "ALTER TABLE t ADD CONSTRAINT c CHECK (a <> '')",
                "ADD CHECK",
            ),
            (
                "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (a)",
                "FOREIGN KEY",
            ),
            ("ALTER TABLE t ADD PRIMARY KEY (id)", "PRIMARY KEY builds"),
            (
                "ALTER TABLE t ALTER COLUMN a TYPE bigint",
                "ALTER COLUMN TYPE",
            ),
            ("ALTER TABLE t DROP COLUMN a", "DROP COLUMN"),
            ("ALTER TABLE t RENAME COLUMN a TO b", "RENAME"),
            ("ALTER TABLE t RENAME TO u", "RENAME"),
            ("DROP TABLE t", "DROP TABLE"),
            ("VACUUM FULL t", "VACUUM FULL"),
            ("CLUSTER t USING i", "CLUSTER"),
            ("ALTER TABLE t SET LOGGED", "rewrites the whole table"),
            ("ALTER TABLE t ADD COLUMN n bigserial", "serial or identity"),
            ("ALTER TABLE t ADD COLUMN n serial4", "serial or identity"),
            (
                "ALTER TABLE t ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY",
                "serial or identity",
            ),
            (
                "ALTER TABLE t ADD COLUMN n int CHECK (n > 0)",
                "CHECK or REFERENCES",
            ),
            (
                "ALTER TABLE t ADD COLUMN n int REFERENCES u (id)",
                "CHECK or REFERENCES",
            ),
            (
                "ALTER TABLE t ADD COLUMN at timestamptz DEFAULT clock_timestamp()",
                "volatile default",
            ),
        ];
        for (sql, expected) in cases {
            let found = problems(sql, false);
            assert!(
                found.len() == 1 && found[0].contains(expected),
                "{sql}: {found:?}"
            );
        }
        assert!(problems("ALTER TABLE t ADD COLUMN n int DEFAULT 5 NOT NULL", false).is_empty());
        let concurrently = lint(&migration("CREATE INDEX CONCURRENTLY i ON t (a)", false));
        assert!(concurrently[0].error);
        assert!(concurrently[0].advice.contains("no-transaction"));
    }
}
