//! What ships in `deploy/`: the Kubernetes manifests render with kustomize, validate against the
//! Kubernetes schemas, pass the restricted Pod Security level, and log the app in as shipped.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a program to completion; (success, stdout + stderr).
fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (bool, String) {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{} cannot run: {e}", program.to_string_lossy()));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn venv(program: &str) -> PathBuf {
    let path = root().join(".venv/bin").join(program);
    assert!(path.exists(), "run scripts/setup.sh to create .venv");
    path
}

/// `kubectl kustomize DIR`, written to a file of its own.
fn render(dir: &str) -> PathBuf {
    let (ok, yaml) = run("kubectl", &["kustomize", dir]);
    assert!(ok, "kubectl kustomize {dir}: {yaml}");
    let path = std::env::temp_dir().join(format!(
        "pgsidecar-it-{}-{}.yaml",
        std::process::id(),
        dir.replace('/', "_")
    ));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn schema_check(file: &Path, version: &str) -> (bool, String) {
    run(
        venv("kubernetes-validate"),
        &["--strict", "--quiet", "-k", version, file.to_str().unwrap()],
    )
}

fn policy_check(file: &Path) -> (bool, String) {
    run(
        venv("python"),
        &[
            "scripts/check-kubernetes.py",
            file.to_str().unwrap(),
            "deploy/prometheus/alerts.yaml",
        ],
    )
}

#[test]
fn kubernetes_manifests_render_validate_and_log_the_app_in() {
    let base = render("deploy/kubernetes/base");
    let example = render("deploy/kubernetes/overlays/example");
    // 1.29 is the first release with native sidecars on by default.
    for version in ["1.29.0", "1.37.0"] {
        for file in [&base, &example] {
            let (ok, out) = schema_check(file, version);
            assert!(ok && !out.contains("ERROR"), "{version}: {out}");
        }
    }
    let (ok, out) = policy_check(&example);
    assert!(ok, "{out}");

    // The checks can fail: a schema typo, an escalation, a verifier the password does not match.
    let text = std::fs::read_to_string(&example).unwrap();
    let broken = example.with_extension("broken.yaml");
    std::fs::write(
        &broken,
        text.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"),
    )
    .unwrap();
    let (ok, out) = schema_check(&broken, "1.37.0");
    assert!(!ok && out.contains("readOnlyRootFilesytem"), "{out}");
    std::fs::write(
        &broken,
        text.replacen(
            "allowPrivilegeEscalation: false",
            "allowPrivilegeEscalation: true",
            1,
        ),
    )
    .unwrap();
    let (ok, out) = policy_check(&broken);
    assert!(
        !ok && out.contains("allowPrivilegeEscalation is not false"),
        "{out}"
    );
    let ops_verifier = "SCRAM-SHA-256$4096:BUJ9G7Z1Gno4ImOFan971A==";
    let app_verifier = "SCRAM-SHA-256$4096:HwygHnvHcgAw1lSXl+/4vQ==";
    assert!(text.contains(app_verifier) && text.contains(ops_verifier));
    std::fs::write(&broken, text.replacen(app_verifier, ops_verifier, 1)).unwrap();
    let (ok, out) = policy_check(&broken);
    assert!(!ok && out.contains("the app would not log in"), "{out}");
    for file in [base, example, broken] {
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn the_compose_example_is_valid_and_keeps_the_password_out_of_the_file() {
    let compose = ["-f", "deploy/compose/compose.yaml", "config", "-q"];
    let with_password = Command::new("docker-compose")
        .args(compose)
        .env("APP_DB_PASSWORD", "app-password")
        .current_dir(root())
        .output()
        .expect("docker-compose runs");
    assert!(
        with_password.status.success(),
        "{}",
        String::from_utf8_lossy(&with_password.stderr)
    );
    let without = Command::new("docker-compose")
        .args(compose)
        .env_remove("APP_DB_PASSWORD")
        .current_dir(root())
        .output()
        .expect("docker-compose runs");
    let error = String::from_utf8_lossy(&without.stderr);
    assert!(
        !without.status.success() && error.contains("APP_DB_PASSWORD"),
        "{error}"
    );
}
