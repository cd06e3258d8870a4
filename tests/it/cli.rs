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
