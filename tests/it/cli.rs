//! The binary's command line: configuration errors and the passwd helper.

use std::process::Command;

fn pgsidecar(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PGSIDECAR_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn bad_config_exits_2_naming_the_key() {
    let out = pgsidecar(&[
        "proxy",
        "--upstream",
        "postgres://h/db",
        "--auth",
        "trust",
        "--pool-size",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool_size"));

    let dir = std::env::temp_dir().join(format!("pgsidecar-cli-{}.toml", std::process::id()));
    std::fs::write(&dir, "upstream = \"postgres://h/db\"\nauth = \"trust\"\n[databases.app]\npool_mode = \"statement\"\n").unwrap();
    let out = pgsidecar(&["proxy", "--config", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("databases.app.pool_mode"));
    std::fs::remove_file(&dir).unwrap();

    let out = pgsidecar(&["proxy", "--auth", "trust"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`upstream`"));
}

#[test]
fn passwd_prints_a_verifier_the_config_accepts() {
    let out = pgsidecar(&["passwd", "hunter2"]);
    assert!(out.status.success());
    let verifier = String::from_utf8(out.stdout).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
    assert!(pgsidecar::auth::ScramVerifier::parse(verifier.trim()).is_ok());
}

#[test]
fn passwd_prints_whole_user_entries_from_standard_input() {
    use std::io::Write;
    for extra in [&[][..], &["--md5"][..]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
            .args(["passwd", "--user", "alice"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let entry = String::from_utf8(out.stdout).unwrap();
        assert!(entry.starts_with("[users.\"alice\"]"), "{entry}");
        assert!(!entry.contains("s3cret"), "{entry}");
        let path = std::env::temp_dir().join(format!(
            "pgsidecar-it-passwd-{}-{}.toml",
            std::process::id(),
            extra.len()
        ));
        std::fs::write(
            &path,
            format!("upstream = \"postgres://db\"\nauth = \"md5\"\n{entry}"),
        )
        .unwrap();
        let config =
            pgsidecar::config::Config::load(Some(&path), &pgsidecar::config::Overrides::default())
                .expect("the printed entry is accepted");
        assert!(config.users["alice"].secret.is_some());
        let _ = std::fs::remove_file(&path);
    }
    let refused = pgsidecar(&["passwd", "--md5", "x"]);
    assert!(!refused.status.success(), "--md5 needs --user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_profile_starts_postgres_with_pgvector_and_stops_cleanly() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = std::env::temp_dir().join(format!("pgsidecar-dev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = pgsidecar::dev::free_port().unwrap();
    let mut dev = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .args([
            "dev",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DATABASE_URL=") {
                return url.to_owned();
            }
        }
        panic!("dev exited without printing DATABASE_URL");
    })
    .await
    .expect("dev starts within a minute");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    let client = crate::support::connect(&url).await.unwrap();
    let version: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, "0.8.0");
    drop(client);
    let pid = dev.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), dev.wait())
        .await
        .expect("dev stops within 30 s")
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        rest.push_str(&line);
    }
    assert!(rest.contains("stopped"), "{rest}");
    assert!(
        !dir.join("data/postmaster.pid").exists(),
        "PostgreSQL is still running"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every flag a subcommand would ignore is refused (exit 2) before anything is contacted.
#[test]
fn flags_a_subcommand_would_ignore_are_refused() {
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "gate",
                "status",
                "--admin",
                "127.0.0.1:9",
                "--stale-after",
                "5s",
            ],
            "--stale-after",
        ),
        (
            &[
                "gate",
                "status",
                "--database-url",
                "postgres://127.0.0.1:9/x",
                "--database",
                "app",
            ],
            "--database",
        ),
        (
            &[
                "gate",
                "resume",
                "--database-url",
                "postgres://127.0.0.1:9/x",
                "--admin-token-file",
                "/t",
            ],
            "--admin",
        ),
        (
            &[
                "migrate",
                "rollback",
                "--database-url",
                "postgres://127.0.0.1:9/x",
                "--dry-run",
                "--staging-url",
                "postgres://127.0.0.1:9/y",
            ],
            "dry run",
        ),
        (
            &[
                "migrate",
                "apply",
                "--database-url",
                "postgres://127.0.0.1:9/x",
                "--no-backup",
                "--reason",
                "r",
                "--staging-url",
                "postgres://127.0.0.1:9/y",
            ],
            "--staging-url",
        ),
    ];
    for (args, says) in cases {
        let out = pgsidecar(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
