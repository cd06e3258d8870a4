//! Certificates for the TLS tests, made with rcgen once per test run: a CA, a certificate for
//! `localhost`/`127.0.0.1` signed by it (used by PostgreSQL and by the proxies), one for another
//! name signed by the same CA, and an unrelated CA that must not be trusted.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Paths of the generated PEM files.
pub struct TestPki {
    /// The CA every good certificate chains to.
    pub ca: PathBuf,
    /// A CA that signed nothing the tests connect to.
    pub other_ca: PathBuf,
    /// Certificate and key for `localhost` and `127.0.0.1`.
    pub localhost: (PathBuf, PathBuf),
    /// Certificate and key for `db.example` only (valid chain, wrong name).
    pub wrong_name: (PathBuf, PathBuf),
    /// Certificate and key for `localhost` signed by the other CA.
    pub untrusted: (PathBuf, PathBuf),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn leaf(
    dir: &Path,
    stem: &str,
    names: &[&str],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let params = CertificateParams::new(names).expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("signed leaf");
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

impl TestPki {
    /// Generates every file under `dir`.
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = ca("pgsidecar test CA");
        let other = self::ca("unrelated test CA");
        let ca_path = dir.join("ca.crt");
        let other_path = dir.join("other-ca.crt");
        std::fs::write(&ca_path, ca.pem()).expect("write CA");
        std::fs::write(&other_path, other.pem()).expect("write other CA");
        Self {
            localhost: leaf(dir, "localhost", &["localhost", "127.0.0.1"], &ca),
            wrong_name: leaf(dir, "wrong-name", &["db.example"], &ca),
            untrusted: leaf(dir, "untrusted", &["localhost", "127.0.0.1"], &other),
            ca: ca_path,
            other_ca: other_path,
        }
    }
}
