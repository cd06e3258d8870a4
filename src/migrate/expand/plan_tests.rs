//! The plan's rules, each shown on the SQL it writes.

use super::super::catalog::{Column, Dependent, Index};
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
            definition:
                "CREATE UNIQUE INDEX orders_amount_key ON public.orders USING btree (amount, note)"
                    .into(),
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
        contract.find("DROP COLUMN \"amount\"").unwrap() < contract.find("USING INDEX").unwrap(),
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
        plan.setup[2]
            .contains("NEW.\"note\" := (NEW.\"_pgs_note_head\" || ' ' || NEW.\"_pgs_note_tail\")"),
        "{}",
        plan.setup[2]
    );
    assert!(
        plan.contract
            .iter()
            .any(|s| s.ends_with("DROP COLUMN \"note\""))
    );
}
