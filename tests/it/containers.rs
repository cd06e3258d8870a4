//! The deployment, run with Docker the way a Kubernetes namespace runs it: PostgreSQL (with
//! pgvector) in a container built here, two "pods" (a network namespace each, held by a pause
//! container, with a pgsidecar container and a writing app container inside), the fleet registered,
//! a fleet pause under load, the migration runner as a one-off container of the same image, a
//! rolling restart of the sidecars, and the database frozen for ten seconds. Every committed row
//! must be in the database and no transaction may fail outside the documented errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SUPERUSER_PASSWORD: &str = "it-postgres";
/// The password the SCRAM verifier below was made from (also `app`'s password upstream).
const APP_PASSWORD: &str = "app-password";
const APP_VERIFIER: &str = "SCRAM-SHA-256$4096:HwygHnvHcgAw1lSXl+/4vQ==$HRJk3hIuy6ZOjtB6o/mSBB0byQwZLxpTGkxykVOGIZQ=:vytYM+8FORw3VugrD2S+Kj3E1mFS5NJEReNgExQv07k=";
const PGSIDECAR_IMAGE: &str = "pgsidecar-it/pgsidecar:test";
const TESTBED_IMAGE: &str = "pgsidecar-it/testbed:test";
const PODS: [&str; 2] = ["pod1", "pod2"];
/// More writers than `pool_size`: while the database is frozen, some wait for the pool.
const WRITERS_PER_POD: usize = 6;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args`; (success, stdout, stderr).
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// `docker args`, which must succeed; its standard output.
fn docker(args: &[&str]) -> String {
    let (ok, out, err) = run("docker", args, &[]);
    assert!(ok, "docker {}: {err}{out}", args.join(" "));
    out
}

/// Polls `condition` every 200 ms until it holds; panics naming `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

/// The containers and network of one run, removed when it ends, passed or not.
struct Testbed {
    prefix: String,
    dir: PathBuf,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let (_, names, _) = run(
            "docker",
            &["ps", "-aq", "--filter", &format!("name=^{}-", self.prefix)],
            &[],
        );
        for id in names.lines() {
            let _ = run("docker", &["rm", "-f", id], &[]);
        }
        let _ = run("docker", &["network", "rm", &self.prefix], &[]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Testbed {
    fn name(&self, part: &str) -> String {
        format!("{}-{part}", self.prefix)
    }

    /// `psql` as the superuser in the database container; the single value it prints.
    fn sql(&self, database: &str, query: &str) -> String {
        docker(&[
            "exec",
            "-e",
            &format!("PGPASSWORD={SUPERUSER_PASSWORD}"),
            &self.name("db"),
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            query,
        ])
    }

    fn ledger_rows(&self, pod: Option<&str>) -> i64 {
        let filter = pod.map_or_else(String::new, |p| format!(" WHERE pod = '{p}'"));
        self.sql("app", &format!("SELECT count(*) FROM ledger{filter}"))
            .parse()
            .unwrap()
    }

    /// The sum of a metric family's samples on `pod`'s sidecar.
    fn metric(&self, pod: &str, family: &str) -> u64 {
        let script = format!(
            "import urllib.request\n\
             text = urllib.request.urlopen('http://127.0.0.1:9187/metrics', timeout=5).read().decode()\n\
             print(sum(int(float(l.split()[-1])) for l in text.splitlines()\n\
                       if l.split('{{')[0].split(' ')[0] == '{family}'))"
        );
        docker(&["exec", &self.name(pod), "python3", "-c", &script])
            .parse()
            .unwrap()
    }

    /// A one-off container of pgsidecar's image on the network, as a Kubernetes Job runs it.
    fn job(&self, env: &[(&str, String)], args: &[&str]) -> (bool, String) {
        let mut command = vec![
            "run".to_owned(),
            "--rm".to_owned(),
            "--network".to_owned(),
            self.prefix.clone(),
        ];
        for (key, value) in env {
            command.extend(["-e".to_owned(), format!("{key}={value}")]);
        }
        command.push(PGSIDECAR_IMAGE.to_owned());
        command.extend(args.iter().map(|&a| a.to_owned()));
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let (ok, out, err) = run("docker", &command, &[]);
        (ok, format!("{out}\n{err}"))
    }

    /// Starts (or restarts) the pgsidecar container of `pod` and waits until it is ready.
    fn start_sidecar(&self, pod: &str) {
        docker(&[
            "run",
            "-d",
            "--name",
            &self.name(&format!("{pod}-sidecar")),
            "--network",
            &format!("container:{}", self.name(pod)),
            "--read-only",
            "--cap-drop",
            "ALL",
            "-v",
            &format!("{}:/etc/pgsidecar:ro", self.dir.display()),
            "-e",
            &format!("PGSIDECAR_FLEET_URL={}", superuser_url("app")),
            "-e",
            &format!("PGSIDECAR_FLEET_ID={pod}"),
            PGSIDECAR_IMAGE,
            "proxy",
            "--config",
            "/etc/pgsidecar/pgsidecar.toml",
        ]);
        let probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/readyz', timeout=2)";
        wait_for(
            &format!("{pod}'s sidecar to be ready"),
            Duration::from_secs(60),
            || {
                run(
                    "docker",
                    &["exec", &self.name(pod), "python3", "-c", probe],
                    &[],
                )
                .0
            },
        );
    }
}

/// A direct superuser URL of `database` as seen from the containers' network.
fn superuser_url(database: &str) -> String {
    format!("postgres://postgres:{SUPERUSER_PASSWORD}@db:5432/{database}")
}

/// Builds the images: the Debian base (debootstrap), pgsidecar's from the Dockerfile around the
/// binary under test, and the testbed (PostgreSQL with the host's pgvector build, psycopg).
fn build_images(dir: &Path) {
    let (ok, base, err) = run("bash", &["scripts/docker-bases.sh"], &[]);
    assert!(ok, "scripts/docker-bases.sh: {err}");
    let (ok, out, err) = run(
        "bash",
        &["scripts/docker-image.sh", PGSIDECAR_IMAGE],
        &[("PGSIDECAR_BINARY", env!("CARGO_BIN_EXE_pgsidecar"))],
    );
    assert!(ok, "scripts/docker-image.sh: {err}{out}");
    eprintln!("image {out}");
    let context = dir.join("testbed");
    std::fs::create_dir_all(context.join("extension")).unwrap();
    for file in ["testbed.Dockerfile", "app.py"] {
        std::fs::copy(root().join("tests/docker").join(file), context.join(file)).unwrap();
    }
    let pg_lib = Path::new("/usr/lib/postgresql/15/lib/vector.so");
    assert!(
        pg_lib.exists(),
        "pgvector is not installed: run scripts/setup.sh"
    );
    std::fs::copy(pg_lib, context.join("vector.so")).unwrap();
    let extensions = Path::new("/usr/share/postgresql/15/extension");
    for entry in std::fs::read_dir(extensions).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("vector") {
            std::fs::copy(
                entry.path(),
                context.join("extension").join(entry.file_name()),
            )
            .unwrap();
        }
    }
    docker(&[
        "build",
        "-q",
        "--build-arg",
        &format!("BASE={base}"),
        "-f",
        context.join("testbed.Dockerfile").to_str().unwrap(),
        "-t",
        TESTBED_IMAGE,
        context.to_str().unwrap(),
    ]);
}

/// The sidecars' configuration and secrets, mounted read-only at /etc/pgsidecar.
fn write_config(dir: &Path) {
    std::fs::write(dir.join("admin-token"), "it-admin-token-0123456789abcdef").unwrap();
    std::fs::write(dir.join("app-server-password"), APP_PASSWORD).unwrap();
    std::fs::write(
        dir.join("pgsidecar.toml"),
        format!(
            r#"listen = "127.0.0.1:6432"
upstream = "postgres://db:5432"
auth = "scram-sha-256"
pool_mode = "transaction"
pool_size = 4
acquire_timeout = "5s"
drain_timeout = "10s"
admin_listen = "0.0.0.0:9187"
admin_token_file = "/etc/pgsidecar/admin-token"
fleet_heartbeat = "1s"

[users.app]
scram_verifier = "{APP_VERIFIER}"
server_password_file = "/etc/pgsidecar/app-server-password"
"#
        ),
    )
    .unwrap();
}

fn start_database(bed: &Testbed) {
    let script = format!(
        "printf %s '{SUPERUSER_PASSWORD}' > /tmp/pw && initdb -D /tmp/data -U postgres \
         --auth=scram-sha-256 --pwfile=/tmp/pw >/dev/null \
         && echo 'host all all 0.0.0.0/0 scram-sha-256' >> /tmp/data/pg_hba.conf \
         && exec postgres -D /tmp/data -c listen_addresses='*' -c max_connections=60 \
            -c unix_socket_directories=/tmp"
    );
    docker(&[
        "run",
        "-d",
        "--name",
        &bed.name("db"),
        "--network",
        &bed.prefix,
        "--network-alias",
        "db",
        "--user",
        "postgres",
        TESTBED_IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    wait_for(
        "the database to accept connections",
        Duration::from_secs(60),
        || {
            run(
                "docker",
                &[
                    "exec",
                    &bed.name("db"),
                    "pg_isready",
                    "-q",
                    "-h",
                    "127.0.0.1",
                ],
                &[],
            )
            .0
        },
    );
    bed.sql(
        "postgres",
        &format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"),
    );
    bed.sql("postgres", "CREATE DATABASE app OWNER app");
    bed.sql(
        "app",
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, pod text NOT NULL, writer int NOT NULL, \
         seq int NOT NULL); ALTER TABLE ledger OWNER TO app",
    );
}

fn start_pod(bed: &Testbed, pod: &str) {
    docker(&[
        "run",
        "-d",
        "--name",
        &bed.name(pod),
        "--network",
        &bed.prefix,
        TESTBED_IMAGE,
        "sleep",
        "infinity",
    ]);
    bed.start_sidecar(pod);
    docker(&[
        "run",
        "-d",
        "--name",
        &bed.name(&format!("{pod}-app")),
        "--network",
        &format!("container:{}", bed.name(pod)),
        "-e",
        &format!("DATABASE_URL=postgres://app:{APP_PASSWORD}@127.0.0.1:6432/app"),
        "-e",
        &format!("POD={pod}"),
        "-e",
        &format!("WRITERS={WRITERS_PER_POD}"),
        TESTBED_IMAGE,
        "python3",
        "/usr/local/bin/app.py",
    ]);
}

/// Waits until the ledger has grown by `rows` beyond what it held when called.
fn wait_for_writes(bed: &Testbed, what: &str, pod: Option<&str>, rows: i64) -> Duration {
    let from = bed.ledger_rows(pod);
    wait_for(what, Duration::from_secs(90), || {
        bed.ledger_rows(pod) >= from + rows
    })
}

/// A fleet pause with traffic running: nothing commits while it holds, then traffic resumes.
fn fleet_pause(bed: &Testbed) {
    let fleet_url = [("DATABASE_URL", superuser_url("app"))];
    let (ok, out) = bed.job(
        &fleet_url,
        &["gate", "pause", "--deadline", "5s", "--max-hold", "30s"],
    );
    assert!(ok, "gate pause: {out}");
    let paused_at = bed.ledger_rows(None);
    // A second of a held pause: the assertion is that nothing happens during it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        bed.ledger_rows(None),
        paused_at,
        "rows committed while paused"
    );
    let (ok, out) = bed.job(&fleet_url, &["gate", "resume"]);
    assert!(ok, "gate resume: {out}");
    wait_for_writes(bed, "writes after the resume", None, 50);
}

/// The migration runner as a Job: the shipped migrations, under the policy, with a proven backup
/// first.
fn migration_job(bed: &Testbed) {
    let (ok, out) = bed.job(
        &[
            ("DATABASE_URL", superuser_url("app")),
            ("PGSIDECAR_SCRATCH_URL", superuser_url("postgres")),
        ],
        &[
            "migrate",
            "apply",
            "--dir",
            "/usr/share/pgsidecar/migrations",
            "--backup",
            "--backup-output",
            "/tmp/pre-migrate.dump",
        ],
    );
    assert!(ok, "migrate apply: {out}");
    let shipped = std::fs::read_dir(root().join("migrations"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.ends_with(".sql") && !name.ends_with(".down.sql")
        })
        .count();
    assert_eq!(
        bed.sql("app", "SELECT count(*) FROM pgsidecar.schema_migrations"),
        shipped.to_string()
    );
    assert_eq!(
        bed.sql(
            "app",
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ),
        "0.8.0"
    );
}

/// A rolling restart: SIGTERM drains each sidecar, a new container takes its place in the pod.
fn rolling_restart(bed: &Testbed) {
    for pod in PODS {
        let started = Instant::now();
        docker(&["stop", "-t", "30", &bed.name(&format!("{pod}-sidecar"))]);
        let drained = started.elapsed();
        docker(&["rm", &bed.name(&format!("{pod}-sidecar"))]);
        bed.start_sidecar(pod);
        wait_for_writes(bed, &format!("{pod} writing again"), Some(pod), 20);
        eprintln!(
            "{pod}: drained in {drained:.1?}; 20 more rows {:.1?} after the stop began",
            started.elapsed()
        );
    }
}

/// The database frozen for ten seconds under load, then thawed; each pod's acquire timeouts
/// (its sidecar started after the last restart, so they are the freeze's).
fn frozen_database(bed: &Testbed) -> Vec<u64> {
    docker(&["pause", &bed.name("db")]);
    std::thread::sleep(Duration::from_secs(10));
    docker(&["unpause", &bed.name("db")]);
    let recovered = wait_for_writes(bed, "writes after the thaw", None, 1);
    eprintln!("first commit {recovered:.1?} after the database was thawed");
    let mut acquire_timeouts = Vec::new();
    for pod in PODS {
        let timeouts = bed.metric(pod, "pgsidecar_pool_acquire_timeouts_total");
        eprintln!(
            "{pod} while frozen: {timeouts} acquire timeouts, {} queue notices",
            bed.metric(pod, "pgsidecar_pool_wait_notices_total")
        );
        acquire_timeouts.push(timeouts);
    }
    wait_for_writes(bed, "steady writes after the thaw", None, 100);
    acquire_timeouts
}

/// Stops the apps and checks their reports against the ledger and the sidecars' counts: every
/// acquire timeout reached a client as 53300 before its transaction began.
fn stop_apps_and_check_every_commit(bed: &Testbed, acquire_timeouts: &[u64]) {
    let mut committed = 0;
    for (pod, timeouts) in PODS.iter().zip(acquire_timeouts) {
        let app = bed.name(&format!("{pod}-app"));
        docker(&["exec", &app, "touch", "/tmp/stop"]);
        assert_eq!(docker(&["wait", &app]), "0", "{}", docker(&["logs", &app]));
        let (_, logs, _) = run("docker", &["logs", &app], &[]);
        let report: serde_json::Value =
            serde_json::from_str(logs.lines().last().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{pod}'s report: {e}: {logs}"));
        eprintln!("{pod}: {report}");
        assert_eq!(
            report["failed"],
            serde_json::json!([]),
            "{pod}: failed transactions"
        );
        assert_eq!(
            report["dirty"], 0,
            "{pod}: a connection was handed on mid-transaction"
        );
        for code in report["before_begin"].as_object().unwrap().keys() {
            assert!(
                ["57P01", "53300", "connection_lost"].contains(&code.as_str()),
                "{pod}: an undocumented error before BEGIN: {code}"
            );
        }
        assert_eq!(
            report["before_begin"]["53300"].as_u64().unwrap_or(0),
            *timeouts,
            "{pod}: acquire timeouts counted by the sidecar and seen by clients"
        );
        assert!(
            *timeouts > 0,
            "{pod}: the frozen database made no client wait"
        );
        let pod_committed = report["committed"].as_i64().unwrap();
        let unknown = report["unknown"].as_i64().unwrap();
        let rows = bed.ledger_rows(Some(pod));
        assert!(
            (pod_committed..=pod_committed + unknown).contains(&rows),
            "{pod}: {rows} rows for {pod_committed} commits (+{unknown} unknown)"
        );
        committed += pod_committed;
    }
    assert!(committed > 0);
    // No server connection is left inside a transaction.
    wait_for(
        "no idle-in-transaction backend",
        Duration::from_secs(30),
        || {
            bed.sql(
                "app",
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            ) == "0"
        },
    );
}

#[test]
fn pods_pause_migrate_restart_and_outlive_a_frozen_database_without_losing_a_commit() {
    let prefix = format!("pgsidecar-it{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let bed = Testbed { prefix, dir };
    build_images(&bed.dir);
    write_config(&bed.dir);
    docker(&["network", "create", &bed.prefix]);
    start_database(&bed);
    for pod in PODS {
        start_pod(&bed, pod);
    }
    for pod in PODS {
        wait_for_writes(&bed, &format!("{pod}'s app to write"), Some(pod), 50);
    }
    // Both sidecars registered in the fleet, beating.
    wait_for(
        "both sidecars in the fleet registry",
        Duration::from_secs(30),
        || {
            bed.sql(
                "app",
                "SELECT count(*) FROM pgsidecar.sidecars \
             WHERE id IN ('pod1', 'pod2') AND last_heartbeat > now() - interval '5 seconds'",
            ) == "2"
        },
    );

    fleet_pause(&bed);
    migration_job(&bed);
    rolling_restart(&bed);
    let acquire_timeouts = frozen_database(&bed);
    stop_apps_and_check_every_commit(&bed, &acquire_timeouts);
}
