//! Expand/contract migrations: two sidecars serving the old and the new schema version, each
//! under write load, while a column is renamed and retyped; `complete` waiting for the old
//! version's sidecar; `abort` restoring the catalog; a backfill yielding to a paused replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgsidecar::migrate::expand::{self, CompleteOptions, Phase};
use pgsidecar::migrate::{ApplyOptions, MigrateError, Migrator};
use tokio::io::AsyncBufReadExt;
use tokio_postgres::Client;

use crate::gate::send_signal;
use crate::migrate::Dir;
use crate::support::clusters::OwnedCluster;
use crate::support::{
    ProxyProcess, cluster, connect, direct, fresh_database, http_get, overrides, pg_program,
    start_proxy_with, wait_until,
};

const ROWS: i64 = 100_000;

const TABLE: &str =
    "CREATE TABLE orders (id bigserial PRIMARY KEY, amount integer NOT NULL, note text);";

/// `amount` (integer, in currency units) becomes `amount_cents` (bigint), `note` becomes
/// `memo`.
const EXPAND: &str = r#"
batch = 5000
pause = "1ms"

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

const STALE: Duration = Duration::from_millis(1500);

fn options() -> ApplyOptions {
    ApplyOptions {
        no_backup_reason: Some("test".into()),
        stale_after: STALE,
        ..ApplyOptions::default()
    }
}

fn sidecar(url: &str, id: &str, version: &str) -> ProxyProcess {
    ProxyProcess::spawn(&[
        "--pool-size",
        "6",
        "--schema-version",
        version,
        "--fleet-url",
        url,
        "--fleet-id",
        id,
        "--fleet-heartbeat",
        "200ms",
    ])
}

/// The statements one application version runs.
#[derive(Clone, Copy)]
struct AppVersion {
    insert: &'static str,
    update: &'static str,
    select: &'static str,
    /// The amount it writes, in its own unit, for the n-th insert.
    amount: fn(i64) -> i64,
}

const OLD_APP: AppVersion = AppVersion {
    insert: "INSERT INTO orders (amount, note) VALUES ($1::bigint::integer, $2) RETURNING id",
    update: "UPDATE orders SET amount = amount + 1 WHERE id = $1",
    select: "SELECT amount::bigint, note FROM orders WHERE id = $1",
    amount: |n| n % 1000,
};

const NEW_APP: AppVersion = AppVersion {
    insert: "INSERT INTO orders (amount_cents, memo) VALUES ($1, $2) RETURNING id",
    update: "UPDATE orders SET amount_cents = amount_cents + 100 WHERE id = $1",
    select: "SELECT amount_cents, memo FROM orders WHERE id = $1",
    amount: |n| (n % 1000) * 100,
};

/// What one client of the load saw.
#[derive(Default)]
struct Tally {
    transactions: u64,
    failures: Vec<String>,
    /// When each transaction ended and how long it took.
    latencies: Vec<(Instant, Duration)>,
    inserted: Vec<i64>,
}

async fn drive(
    client: Client,
    app: AppVersion,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let result = match (n % 3, tally.inserted.last().copied()) {
            (1, Some(id)) => client.execute(app.update, &[&id]).await.map(|_| ()),
            (2, Some(id)) => client.query_one(app.select, &[&id]).await.map(|_| ()),
            _ => client
                .query_one(app.insert, &[&(app.amount)(n), &format!("w{n}")])
                .await
                .map(|row| tally.inserted.push(row.get(0))),
        };
        match result {
            Ok(()) => {
                tally.transactions += 1;
                done.fetch_add(1, Ordering::Relaxed);
                tally.latencies.push((Instant::now(), started.elapsed()));
            }
            Err(e) => tally.failures.push(format!("{e:?}")),
        }
    }
    tally
}

struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

async fn start_load(sidecar: &ProxyProcess, db: &str, app: AppVersion) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = sidecar.connect(db).await;
        tasks.push(tokio::spawn(drive(
            client,
            app,
            Arc::clone(&stop),
            Arc::clone(&done),
        )));
    }
    Load { stop, done, tasks }
}

impl Load {
    /// Returns once `more` transactions than now have committed.
    async fn run_for(&self, more: u64) {
        let target = self.done.load(Ordering::Relaxed) + more;
        while self.done.load(Ordering::Relaxed) < target {
            assert!(
                !self.tasks.iter().all(tokio::task::JoinHandle::is_finished),
                "the load stopped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for task in self.tasks {
            let t = task.await.unwrap();
            all.transactions += t.transactions;
            all.failures.extend(t.failures);
            all.latencies.extend(t.latencies);
            all.inserted.extend(t.inserted);
        }
        all
    }
}

/// The 99th percentile of the latencies of transactions that ended within `window`.
fn p99(tally: &Tally, window: (Instant, Instant)) -> Option<Duration> {
    let mut inside: Vec<Duration> = tally
        .latencies
        .iter()
        .filter(|(at, _)| *at >= window.0 && *at <= window.1)
        .map(|(_, d)| *d)
        .collect();
    inside.sort();
    let index = (inside.len() * 99 / 100).min(inside.len().checked_sub(1)?);
    Some(inside[index])
}

/// Waits until `n` sidecars are registered and live.
async fn wait_for_sidecars(db: &str, n: i64) {
    let client = direct(db).await;
    wait_until("the sidecars register", async || {
        client
            .query_one(
                "SELECT count(*) FROM pgsidecar.sidecars WHERE last_heartbeat > now() - interval '1 second'",
                &[],
            )
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) == n)
    })
    .await;
}

async fn setup(db: &str) -> Dir {
    let dir = Dir::new(&[("0001_orders.sql", TABLE)]);
    let migrator = Migrator::open(&cluster().url(db), &dir.0).await.unwrap();
    migrator.apply(&options()).await.unwrap();
    direct(db)
        .await
        .batch_execute(&format!(
            "INSERT INTO orders (amount, note) SELECT i % 997, CASE WHEN i % 10 = 0 THEN NULL ELSE 'n' || i END FROM generate_series(1, {ROWS}) i; ANALYZE orders"
        ))
        .await
        .unwrap();
    dir.write("0002_amount_in_cents.toml", EXPAND);
    dir
}

const ORIGINAL_ROWS_OLD: &str = "SELECT md5(string_agg(id || ':' || amount || ':' || coalesce(note, '~'), ',' ORDER BY id)) FROM orders WHERE id <= 100000";
const ORIGINAL_ROWS_NEW: &str = "SELECT md5(string_agg(id || ':' || (amount_cents / 100) || ':' || coalesce(memo, '~'), ',' ORDER BY id)) FROM orders WHERE id <= 100000";

async fn text(db: &str, sql: &str) -> String {
    direct(db).await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn number(db: &str, sql: &str) -> i64 {
    direct(db).await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Everything either version wrote is there, in the final shape, and the original rows are
/// unchanged.
async fn assert_final_shape(db: &str, written: i64, hash_before: &str) {
    let total = number(db, "SELECT count(*) FROM orders").await;
    assert_eq!(total, ROWS + written);
    assert_eq!(text(db, ORIGINAL_ROWS_NEW).await, hash_before);
    let columns: Vec<String> = direct(db)
        .await
        .query(
            "SELECT column_name || ' ' || data_type || ' ' || is_nullable FROM information_schema.columns
              WHERE table_schema = 'public' AND table_name = 'orders' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        columns,
        ["id bigint NO", "memo text YES", "amount_cents bigint NO"]
    );
    let old_schema_left = number(
        db,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'app_v0001'",
    )
    .await;
    assert_eq!(old_schema_left, 0);
}

/// Rows of either version read the same through both versions' views.
async fn assert_both_versions_agree(db: &str) {
    let mismatched: i64 = direct(db)
        .await
        .query_one(
            "SELECT count(*) FROM app_v0001.orders o FULL JOIN app_v0002.orders n USING (id)
              WHERE o.id IS NULL OR n.id IS NULL
                 OR n.amount_cents IS DISTINCT FROM o.amount::bigint * 100
                 OR n.memo IS DISTINCT FROM o.note",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0, "both versions see the same rows");
}

/// SIGTERM, then the process ends once drained, having left the registry.
async fn drain(sidecar: &mut ProxyProcess, db: &str, id: &str) {
    let pid = i32::try_from(sidecar.child.id().unwrap()).unwrap();
    assert_eq!(send_signal(pid, "TERM"), 0);
    let _ = tokio::time::timeout(Duration::from_secs(30), sidecar.child.wait())
        .await
        .expect("the sidecar drains");
    let registered = number(
        db,
        &format!("SELECT count(*) FROM pgsidecar.sidecars WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(
        registered, 0,
        "a drained sidecar has left the registry before its process ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_app_versions_write_through_a_rename_and_retype_without_a_failed_transaction() {
    let db = fresh_database().await;
    let url = cluster().url(&db);
    let dir = setup(&db).await;
    let hash_before = text(&db, ORIGINAL_ROWS_OLD).await;

    let mut old_sidecar = sidecar(&url, "app-v1", "0001");
    wait_for_sidecars(&db, 1).await;
    let old_load = start_load(&old_sidecar, &db, OLD_APP).await;
    old_load.run_for(300).await;
    let old_load_started = Instant::now();
    old_load.run_for(1000).await;

    let migrator = Migrator::open(&url, &dir.0).await.unwrap();
    let expand_started = Instant::now();
    let report = migrator.apply(&options()).await.unwrap();
    let expand_ended = Instant::now();
    let step = &report.applied[0];
    let expanded = step.expand.as_ref().expect("an expand report");
    assert!(
        expanded.backfill_rows >= u64::try_from(ROWS).unwrap(),
        "{expanded:?}"
    );

    // The new version's sidecar starts once the expansion is in place, beside the old one.
    let new_sidecar = sidecar(&url, "app-v2", "v0002");
    wait_for_sidecars(&db, 2).await;
    let new_load = start_load(&new_sidecar, &db, NEW_APP).await;
    new_load.run_for(300).await;
    let new_load_started = Instant::now();
    new_load.run_for(1000).await;
    let new_baseline_ended = Instant::now();

    assert_both_versions_agree(&db).await;

    let refused = migrator
        .complete(&options(), &CompleteOptions::default())
        .await
        .unwrap_err();
    let MigrateError::Refused(message) = &refused else {
        panic!("{refused:?}")
    };
    assert!(
        message.contains("app-v1") && !message.contains("app-v2"),
        "{message}"
    );

    let old_tally = old_load.finish().await;
    drain(&mut old_sidecar, &db, "app-v1").await;
    let complete_started = Instant::now();
    let done = migrator
        .complete(
            &options(),
            &CompleteOptions {
                wait: Some(Duration::from_secs(30)),
            },
        )
        .await
        .unwrap();
    let complete_ended = Instant::now();
    new_load.run_for(200).await;
    let new_tally = new_load.finish().await;

    assert!(
        old_tally.failures.is_empty(),
        "old version failures: {:?}",
        &old_tally.failures[..old_tally.failures.len().min(5)]
    );
    assert!(
        new_tally.failures.is_empty(),
        "new version failures: {:?}",
        &new_tally.failures[..new_tally.failures.len().min(5)]
    );
    assert!(old_tally.transactions > 100 && new_tally.transactions > 100);

    let written = i64::try_from(old_tally.inserted.len() + new_tally.inserted.len()).unwrap();
    assert_final_shape(&db, written, &hash_before).await;

    eprintln!(
        "expand: {:?}; complete: {done}; old p99 before {:?} during expand {:?}; new p99 before complete {:?} during complete {:?}",
        expanded,
        p99(&old_tally, (old_load_started, expand_started)),
        p99(&old_tally, (expand_started, expand_ended)),
        p99(&new_tally, (new_load_started, new_baseline_ended)),
        p99(
            &new_tally,
            (
                complete_started,
                complete_ended + Duration::from_millis(200)
            )
        ),
    );
}

/// An index and a UNIQUE constraint on the column the expansion retypes.
async fn index_amount(db: &str) {
    direct(db)
        .await
        .batch_execute(
            "CREATE INDEX orders_amount_idx ON orders (amount) WHERE amount > 10;
             ALTER TABLE orders ADD CONSTRAINT orders_note_amount_key UNIQUE (note, amount);",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_and_unique_constraints_of_a_retyped_column_follow_it() {
    let db = fresh_database().await;
    let url = cluster().url(&db);
    let dir = setup(&db).await;
    index_amount(&db).await;
    let migrator = Migrator::open(&url, &dir.0).await.unwrap();
    let report = migrator.apply(&options()).await.unwrap();
    assert!(
        report.applied[0]
            .expand
            .as_ref()
            .unwrap()
            .phase_seconds
            .contains_key("indexes"),
        "{report:?}"
    );
    migrator
        .complete(&options(), &CompleteOptions::default())
        .await
        .unwrap();
    let client = direct(&db).await;
    let indexes: Vec<String> = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'orders' ORDER BY indexname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "CREATE INDEX orders_amount_idx ON public.orders USING btree (amount_cents) WHERE (amount_cents > 10)",
            "CREATE UNIQUE INDEX orders_note_amount_key ON public.orders USING btree (memo, amount_cents)",
            "CREATE UNIQUE INDEX orders_pkey ON public.orders USING btree (id)",
        ]
    );
    let constraint: String = client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'orders_note_amount_key'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(constraint, "UNIQUE (memo, amount_cents)");
    let duplicate = client
        .execute(
            "INSERT INTO orders (amount_cents, memo) VALUES (500, 'n5')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(crate::support::sqlstate(&duplicate), "23505");
}

/// The schema as `pg_dump --schema-only` prints it, without pgsidecar's own tables.
fn catalog(db: &str) -> String {
    let output = std::process::Command::new(pg_program("pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            "--exclude-schema",
            "pgsidecar",
            "--dbname",
            &cluster().url(db),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // `\restrict` lines carry a random key per dump.
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_leaves_the_catalog_exactly_as_before_and_the_expansion_can_run_again() {
    let db = fresh_database().await;
    let url = cluster().url(&db);
    let dir = setup(&db).await;
    index_amount(&db).await;
    let before = catalog(&db);
    let migrator = Migrator::open(&url, &dir.0).await.unwrap();
    migrator.apply(&options()).await.unwrap();
    assert_ne!(catalog(&db), before, "the expansion changed the catalog");
    assert_eq!(
        number(
            &db,
            "SELECT count(*) FROM app_v0002.orders WHERE amount_cents IS NULL"
        )
        .await,
        0
    );

    // A live sidecar of the new version stops the abort: its application would lose its schema.
    let new_sidecar = sidecar(&url, "app-v2", "2");
    wait_for_sidecars(&db, 1).await;
    let refused = migrator.abort(&options()).await.unwrap_err();
    assert!(refused.to_string().contains("app-v2"), "{refused}");
    drop(new_sidecar);

    let mut after_sidecar = options();
    after_sidecar.stale_after = Duration::from_millis(300);
    wait_until(
        "the abort goes through once the sidecar is stale",
        async || migrator.abort(&after_sidecar).await.is_ok(),
    )
    .await;
    assert_eq!(catalog(&db), before, "abort restores the catalog");
    assert!(
        expand::open_expansion(migrator.client())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        number(
            &db,
            "SELECT count(*) FROM pgsidecar.schema_migrations WHERE version = 2"
        )
        .await,
        0
    );
    let report = migrator.apply(&options()).await.unwrap();
    assert_eq!(
        report.applied.len(),
        1,
        "the aborted expansion applies again"
    );
    let open = expand::open_expansion(migrator.client())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open.phase, Phase::Expanded);
}

async fn primary_lag_bytes() -> f64 {
    let client = direct("postgres").await;
    client
        .query_one(
            "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::float8, 0) FROM pg_stat_replication",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_waits_while_a_replica_does_not_replay() {
    let db = fresh_database().await;
    let dir = setup(&db).await;
    let replica = OwnedCluster::replica_of(cluster().port());
    let (standby, connection) =
        tokio_postgres::connect(&replica.cluster().url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    // Write WAL until the paused replica is well over the limit.
    let primary = direct(&db).await;
    primary
        .batch_execute("CREATE TABLE ballast AS SELECT i, repeat('x', 200) AS pad FROM generate_series(1, 60000) i")
        .await
        .unwrap();
    wait_until("the paused replica is 8 MiB behind", async || {
        primary_lag_bytes().await > 8.0 * 1024.0 * 1024.0
    })
    .await;

    let mut runner = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["migrate", "apply", "--dir", dir.0.to_str().unwrap()])
        .args(["--database-url", &cluster().url(&db)])
        .args(["--no-backup", "--reason", "test"])
        .args(["--max-replica-lag", "4MiB", "--ignore-health"])
        .env("PGSIDECAR_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = tokio::io::BufReader::new(runner.stderr.take().unwrap()).lines();
    let paused = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("backfill paused") {
                return line;
            }
        }
        panic!("the runner ended without pausing");
    })
    .await
    .expect("the backfill pauses");
    assert!(paused.contains("WAL to replay"), "{paused}");
    let done: i64 = primary
        .query_one(
            "SELECT backfill_rows FROM pgsidecar.expansions WHERE version = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, 0, "no batch ran while the replica was behind");

    standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let output = tokio::time::timeout(Duration::from_secs(120), runner.wait_with_output())
        .await
        .expect("the backfill resumes and finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("the backfill waited"), "{stdout}");
    assert_eq!(
        number(&db, "SELECT count(*) FROM orders WHERE _pgs_amount_cents IS DISTINCT FROM amount::bigint * 100").await,
        0
    );
    drop(replica);
}

async fn search_path(client: &Client) -> String {
    client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_its_schema_version_in_both_pool_modes_unless_the_client_sets_its_own() {
    let db = fresh_database().await;
    for mode in ["transaction", "session"] {
        let mut o = overrides(mode, 2);
        o.schema_version = Some("v0007".into());
        o.admin_users = Some("postgres".into());
        let proxy = start_proxy_with(&o, None).await;
        let served = proxy.connect(&db).await.unwrap();
        assert_eq!(
            search_path(&served).await,
            "app_v0007, \"$user\", public",
            "{mode}"
        );
        served
            .batch_execute("SET search_path = mine")
            .await
            .unwrap();
        assert_eq!(
            search_path(&served).await,
            "mine",
            "{mode}: the client's SET wins"
        );
        // In both modes RESET returns to the session's start, the version's path, not to
        // the server connection's default.
        served.batch_execute("RESET search_path").await.unwrap();
        assert_eq!(
            search_path(&served).await,
            "app_v0007, \"$user\", public",
            "{mode}: RESET goes back to the version's path"
        );
        let own = connect(&format!("{}?options=-csearch_path%3Down", proxy.url(&db)))
            .await
            .unwrap();
        assert_eq!(
            search_path(&own).await,
            "own",
            "{mode}: a startup setting wins"
        );

        let admin = proxy.connect("pgsidecar").await.unwrap();
        let config = admin.simple_query("SHOW CONFIG").await.unwrap();
        let shown = config.iter().any(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(row)
                if row.get(0) == Some("schema_version") && row.get(1) == Some("0007"))
        });
        assert!(shown, "SHOW CONFIG names the served version");
        let admin_http = proxy.admin().await;
        let metrics = http_get(admin_http.addr, "/metrics").await.body;
        assert!(
            metrics.lines().any(|l| l == "pgsidecar_schema_version 7"),
            "{metrics}"
        );
    }
}

fn cli(dir: &Dir, db: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .arg("migrate")
        .args(args)
        .args(["--dir", dir.0.to_str().unwrap()])
        .args(["--database-url", &cluster().url(db)])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_linter_passes_the_expand_form_and_flags_the_same_change_as_ddl() {
    let db = fresh_database().await;
    let dir = setup(&db).await;
    let lint = cli(&dir, &db, &["lint"]);
    let text = String::from_utf8_lossy(&lint.stdout);
    assert!(lint.status.success(), "{text}");
    assert!(text.contains("2 migration(s), 0 finding(s)"), "{text}");

    let plan = String::from_utf8_lossy(&cli(&dir, &db, &["plan"]).stdout).into_owned();
    assert!(
        plan.contains("0002_amount_in_cents: expand/contract, 2 operation(s)")
            && plan.contains("alter_column orders.amount → amount_cents as bigint")
            && plan.contains("rename_column orders.note → memo"),
        "{plan}"
    );
    let applied = cli(&dir, &db, &["apply", "--no-backup", "--reason", "test"]);
    assert!(applied.status.success(), "{applied:?}");
    let status = String::from_utf8_lossy(&cli(&dir, &db, &["status"]).stdout).into_owned();
    assert!(
        status.contains("EXPANDED: app_v0001 and app_v0002 both work"),
        "{status}"
    );

    dir.write(
        "0003_rename_as_ddl.sql",
        "ALTER TABLE orders RENAME COLUMN note TO memo;",
    );
    let lint = cli(&dir, &db, &["lint"]);
    let text = String::from_utf8_lossy(&lint.stdout);
    assert_eq!(lint.status.code(), Some(1), "{text}");
    assert!(text.contains("kind = \"rename_column\""), "{text}");
    std::fs::remove_file(dir.0.join("0003_rename_as_ddl.sql")).unwrap();

    // Nothing else applies while an expansion is open.
    dir.write(
        "0003_index.sql",
        "-- pgsidecar:no-transaction\nCREATE INDEX CONCURRENTLY orders_note ON orders (note);",
    );
    let refused = cli(&dir, &db, &["apply", "--no-backup", "--reason", "test"]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("0002_amount_in_cents is expanded and not completed"),
        "{text}"
    );
    let rollback = cli(&dir, &db, &["rollback", "--no-backup", "--reason", "test"]);
    let text = String::from_utf8_lossy(&rollback.stderr);
    assert!(text.contains("`migrate abort` undoes it"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expansion_killed_during_its_backfill_resumes_where_it_stopped() {
    let db = fresh_database().await;
    let dir = setup(&db).await;
    // Small batches with a rest: the runner is still backfilling when it is killed.
    dir.write(
        "0002_amount_in_cents.toml",
        &EXPAND
            .replace("batch = 5000", "batch = 500")
            .replace("pause = \"1ms\"", "pause = \"20ms\""),
    );
    let mut runner = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(["migrate", "apply", "--dir", dir.0.to_str().unwrap()])
        .args(["--database-url", &cluster().url(&db)])
        .args(["--no-backup", "--reason", "test", "--ignore-health"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = direct(&db).await;
    wait_until("the backfill gets going", async || {
        client
            .query_opt(
                "SELECT backfill_rows FROM pgsidecar.expansions WHERE version = 2",
                &[],
            )
            .await
            .ok()
            .flatten()
            .is_some_and(|row| row.get::<_, i64>(0) >= 5000)
    })
    .await;
    runner.kill().await.unwrap();
    runner.wait().await.unwrap();
    let expansion = expand::open_expansion(&client).await.unwrap().unwrap();
    assert_eq!(expansion.phase, Phase::Backfilling);
    assert!(expansion.backfill_position.is_some());

    let output = cli(&dir, &db, &["apply", "--no-backup", "--reason", "test"]);
    assert!(output.status.success(), "{output:?}");
    let expansion = expand::open_expansion(&client).await.unwrap().unwrap();
    assert_eq!(expansion.phase, Phase::Expanded);
    assert_eq!(
        expansion.backfill_rows, ROWS,
        "every row backfilled exactly once across the two runs"
    );
    assert_eq!(
        number(&db, "SELECT count(*) FROM app_v0002.orders o JOIN app_v0001.orders p USING (id) WHERE o.amount_cents IS DISTINCT FROM p.amount::bigint * 100").await,
        0
    );
}
