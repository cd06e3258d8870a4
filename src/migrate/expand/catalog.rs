//! What an expansion must know about a table before it writes SQL for it: its columns, its
//! integer key, what depends on each column, and who may use it.

use std::collections::BTreeMap;

use tokio_postgres::Client;

/// A column as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type, as `format_type` spells it.
    pub data_type: String,
    /// NOT NULL.
    pub not_null: bool,
    /// Its default expression.
    pub default: Option<String>,
}

/// An object that depends on a column: an index, a constraint, a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    /// As `pg_describe_object` names it.
    pub description: String,
    /// The constraint's name, when it is a CHECK constraint of this table.
    pub check: Option<String>,
    /// It goes away with the column (an index or constraint of this table), rather than
    /// stopping a DROP COLUMN (a view, another table's foreign key).
    pub dropped_with_column: bool,
    /// The index it is, or that backs it (a UNIQUE or PRIMARY KEY constraint): one an
    /// expansion can build again on the new column.
    pub index: Option<String>,
}

/// An index of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// `pg_get_indexdef`.
    pub definition: String,
    /// The UNIQUE (`u`) or PRIMARY KEY (`p`) constraint it backs: its name and kind.
    pub constraint: Option<(String, String)>,
}

/// One table, as an expansion sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFacts {
    /// Columns in order.
    pub columns: Vec<Column>,
    /// A single-column integer primary key, which backfills walk.
    pub key: Option<String>,
    /// Objects that depend on each column.
    pub dependents: BTreeMap<String, Vec<Dependent>>,
    /// `(role or PUBLIC, privilege)` granted on the table, the owner included.
    pub grants: Vec<(String, String)>,
    /// Its indexes, by name.
    pub indexes: BTreeMap<String, Index>,
}

impl TableFacts {
    /// The column called `name`.
    #[must_use]
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Reads `schema.table`; `None` when there is no such table.
///
/// # Errors
/// The database's error.
pub async fn table_facts(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableFacts>, tokio_postgres::Error> {
    let qualified = format!("\"{schema}\".\"{table}\"");
    let exists = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL AND (SELECT relkind FROM pg_class WHERE oid = to_regclass($1)) IN ('r', 'p')",
            &[&qualified],
        )
        .await?
        .get::<_, Option<bool>>(0)
        .unwrap_or(false);
    if !exists {
        return Ok(None);
    }
    Ok(Some(TableFacts {
        columns: columns(client, &qualified).await?,
        key: key(client, &qualified).await?,
        dependents: dependents(client, &qualified).await?,
        grants: grants(client, &qualified).await?,
        indexes: indexes(client, &qualified).await?,
    }))
}

async fn columns(client: &Client, qualified: &str) -> Result<Vec<Column>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid)
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|row| Column {
            name: row.get(0),
            data_type: row.get(1),
            not_null: row.get(2),
            default: row.get(3),
        })
        .collect())
}

async fn key(client: &Client, qualified: &str) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT a.attname::text
               FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = $1::text::regclass AND i.indisprimary AND i.indnatts = 1
                AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)",
            &[&qualified],
        )
        .await?
        .map(|row| row.get(0)))
}

async fn dependents(
    client: &Client,
    qualified: &str,
) -> Result<BTreeMap<String, Vec<Dependent>>, tokio_postgres::Error> {
    let mut dependents: BTreeMap<String, Vec<Dependent>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT a.attname::text,
                    pg_describe_object(d.classid, d.objid, d.objsubid),
                    c.conname::text,
                    c.contype::text,
                    (d.classid = 'pg_class'::regclass
                      OR (d.classid = 'pg_constraint'::regclass AND c.conrelid = d.refobjid)),
                    CASE WHEN d.classid = 'pg_class'::regclass
                         THEN (SELECT relname::text FROM pg_class WHERE oid = d.objid AND relkind = 'i')
                         WHEN c.contype IN ('u', 'p')
                         THEN (SELECT relname::text FROM pg_class WHERE oid = c.conindid) END
               FROM pg_depend d
               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
               LEFT JOIN pg_constraint c ON d.classid = 'pg_constraint'::regclass AND c.oid = d.objid
              WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1::text::regclass
                AND d.refobjsubid > 0 AND d.deptype IN ('n', 'a')
                AND d.classid <> 'pg_attrdef'::regclass
                AND NOT (d.classid = 'pg_class'::regclass
                         AND (SELECT relkind FROM pg_class WHERE oid = d.objid) = 'S')
              ORDER BY 1, 2",
            &[&qualified],
        )
        .await?
    {
        let contype: Option<String> = row.get(3);
        let own: Option<bool> = row.get(4);
        dependents
            .entry(row.get(0))
            .or_default()
            .push(Dependent {
                description: row.get(1),
                check: row
                    .get::<_, Option<String>>(2)
                    .filter(|_| contype.as_deref() == Some("c")),
                dropped_with_column: own.unwrap_or(false),
                index: row.get(5),
            });
    }
    Ok(dependents)
}

async fn grants(
    client: &Client,
    qualified: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                    g.privilege_type
               FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) g
              WHERE c.oid = $1::text::regclass
                AND g.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
              ORDER BY 1, 2",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

async fn indexes(
    client: &Client,
    qualified: &str,
) -> Result<BTreeMap<String, Index>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT ic.relname::text, pg_get_indexdef(i.indexrelid), con.conname::text, con.contype::text
               FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
               LEFT JOIN pg_constraint con
                      ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                     AND con.contype IN ('u', 'p')
              WHERE i.indrelid = $1::text::regclass",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|row| {
            let constraint = row
                .get::<_, Option<String>>(2)
                .zip(row.get::<_, Option<String>>(3));
            (
                row.get(0),
                Index {
                    definition: row.get(1),
                    constraint,
                },
            )
        })
        .collect())
}
