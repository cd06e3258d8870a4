//! The security keys of the configuration: TLS on both sides and where client secrets come
//! from. Certificates, keys and CA files are loaded here, during validation, so that a bad file
//! fails the start (or is refused by a reload) instead of the first client's login.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::values::Scalar;
use super::values::{field, optional_duration};
use super::{AuthMethod, ConfigError, UserSecret, UserTimeouts, invalid, parse_duration};
use crate::auth::{Md5Secret, ScramVerifier, Secret};
use crate::tls::{ClientTls, ClientTlsMode, ServerTlsMode, UpstreamTls};

/// TLS toward clients and toward the upstream.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Whether clients may, must or cannot use TLS.
    pub client_mode: ClientTlsMode,
    /// The listener's certificate, when TLS is offered.
    pub client: Option<Arc<ClientTls>>,
    /// Certificate and key files, for display.
    pub client_files: Option<(PathBuf, PathBuf)>,
    /// TLS toward the upstream.
    pub server: UpstreamTls,
    /// CA file for verify-ca / verify-full, for display.
    pub server_ca: Option<PathBuf>,
}

/// A client listener besides `listen`, with its own TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraListener {
    /// Where it listens.
    pub address: std::net::SocketAddr,
    /// Whether clients on it may, must or cannot use TLS.
    pub client_tls: ClientTlsMode,
}

/// One `[[listeners]]` table of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListenerFile {
    address: Scalar,
    client_tls: Option<Scalar>,
}

/// Looking users up in the upstream itself, so that they need not be listed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthQuery {
    /// A query taking the user name as `$1` and returning its name and stored secret.
    pub query: String,
    /// The server-side user the query runs as (its password must be configured).
    pub user: String,
}

/// The raw values of the security keys, from the file and overrides.
pub(super) struct SecurityFile<'a> {
    pub tls_cert: Option<&'a Scalar>,
    pub tls_key: Option<&'a Scalar>,
    pub client_tls: Option<&'a Scalar>,
    pub server_tls_mode: Option<&'a Scalar>,
    pub server_ca: Option<&'a Scalar>,
    pub auth_query: Option<&'a Scalar>,
    pub auth_user: Option<&'a Scalar>,
    pub auth_failure_delay: Option<&'a Scalar>,
    pub listeners: &'a [ListenerFile],
}

/// What the security keys validate to.
pub(super) struct Security {
    pub tls: TlsSettings,
    pub extra_listeners: Vec<ExtraListener>,
    pub auth_query: Option<AuthQuery>,
    pub auth_failure_delay: Duration,
}

fn path(value: Option<&Scalar>) -> Option<PathBuf> {
    value
        .map(Scalar::text)
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
}

impl SecurityFile<'_> {
    /// The `[[listeners]]` tables; each inherits `client_tls` unless it sets its own.
    fn extra_listeners(
        &self,
        client_mode: ClientTlsMode,
        has_certificate: bool,
    ) -> Result<Vec<ExtraListener>, ConfigError> {
        let mut extra_listeners = Vec::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            let address = super::values::socket_addr(&listener.address.text())
                .map_err(|m| invalid(format!("{key}.address"), m))?;
            let client_tls = field(
                &format!("{key}.client_tls"),
                listener.client_tls.as_ref(),
                client_mode,
                str::parse,
            )?;
            if client_tls != ClientTlsMode::Disable && !has_certificate {
                return Err(invalid(
                    format!("{key}.client_tls"),
                    format!("client_tls = {client_tls} needs tls_cert and tls_key"),
                ));
            }
            extra_listeners.push(ExtraListener {
                address,
                client_tls,
            });
        }
        Ok(extra_listeners)
    }

    /// `auth_query` and `auth_user`, which come together, with a server password for the user.
    fn auth_query(
        &self,
        users: &std::collections::BTreeMap<String, UserSecret>,
        upstream_password: bool,
    ) -> Result<Option<AuthQuery>, ConfigError> {
        Ok(
            match (
                self.auth_query.map(Scalar::text),
                self.auth_user.map(Scalar::text),
            ) {
                (None, None) => None,
                (Some(query), Some(user)) if !query.is_empty() && !user.is_empty() => {
                    if !query.contains("$1") {
                        return Err(invalid("auth_query", "must take the user name as $1"));
                    }
                    let has_password = upstream_password
                        || users
                            .get(&user)
                            .is_some_and(|u| u.server_password.is_some());
                    if !has_password {
                        return Err(invalid(
                            "auth_user",
                            format!(
                                "user \"{user}\" needs users.{user}.server_password (or a password in the upstream URL)"
                            ),
                        ));
                    }
                    Some(AuthQuery { query, user })
                }
                (Some(_), _) => return Err(invalid("auth_user", "auth_query needs auth_user")),
                (None, Some(_)) => return Err(invalid("auth_query", "auth_user needs auth_query")),
            },
        )
    }

    pub(super) fn validate(
        &self,
        auth: AuthMethod,
        users: &std::collections::BTreeMap<String, UserSecret>,
        upstream_password: bool,
    ) -> Result<Security, ConfigError> {
        let client_files = match (path(self.tls_cert), path(self.tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("tls_key", "tls_cert is set but tls_key is not"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls_cert", "tls_key is set but tls_cert is not"));
            }
        };
        let client = match &client_files {
            Some((cert, key)) => Some(Arc::new(
                ClientTls::load(cert, key).map_err(|e| invalid("tls_cert", e.to_string()))?,
            )),
            None => None,
        };
        let default_mode = if client.is_some() {
            ClientTlsMode::Allow
        } else {
            ClientTlsMode::Disable
        };
        let client_mode = field("client_tls", self.client_tls, default_mode, str::parse)?;
        if client_mode != ClientTlsMode::Disable && client.is_none() {
            return Err(invalid(
                "client_tls",
                format!("client_tls = {client_mode} needs tls_cert and tls_key"),
            ));
        }
        let extra_listeners = self.extra_listeners(client_mode, client.is_some())?;
        let server_mode = field(
            "server_tls_mode",
            self.server_tls_mode,
            ServerTlsMode::Prefer,
            str::parse,
        )?;
        let server_ca = path(self.server_ca);
        let server = UpstreamTls::new(server_mode, server_ca.as_deref())
            .map_err(|e| invalid("server_ca", e.to_string()))?;
        let auth_query = self.auth_query(users, upstream_password)?;
        if matches!(
            auth,
            AuthMethod::ScramSha256 | AuthMethod::Md5 | AuthMethod::Password
        ) && auth_query.is_none()
            && users.values().all(|u| u.secret.is_none())
        {
            return Err(invalid(
                "users",
                format!(
                    "auth is {auth} but no user has a scram_verifier or md5_secret, and no auth_query is set"
                ),
            ));
        }
        Ok(Security {
            extra_listeners,
            tls: TlsSettings {
                client_mode,
                client,
                client_files,
                server,
                server_ca,
            },
            auth_query,
            auth_failure_delay: field(
                "auth_failure_delay",
                self.auth_failure_delay,
                Duration::from_millis(500),
                parse_duration,
            )?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserFile {
    password: Option<String>,
    scram_verifier: Option<String>,
    md5_secret: Option<String>,
    server_password: Option<String>,
    server_password_file: Option<String>,
    client_idle_timeout: Option<Scalar>,
    idle_transaction_timeout: Option<Scalar>,
    query_timeout: Option<Scalar>,
    transaction_timeout: Option<Scalar>,
}

impl UserFile {
    /// The user's own timeouts, each one only where the file sets it.
    fn timeouts(&self, prefix: &str) -> Result<UserTimeouts, ConfigError> {
        let value = |name: &str, v: Option<&Scalar>| {
            v.map(|v| {
                optional_duration(&v.text()).map_err(|m| invalid(format!("{prefix}{name}"), m))
            })
            .transpose()
        };
        Ok(UserTimeouts {
            client_idle: value("client_idle_timeout", self.client_idle_timeout.as_ref())?,
            idle_transaction: value(
                "idle_transaction_timeout",
                self.idle_transaction_timeout.as_ref(),
            )?,
            query: value("query_timeout", self.query_timeout.as_ref())?,
            transaction: value("transaction_timeout", self.transaction_timeout.as_ref())?,
        })
    }

    pub(super) fn validate(self, prefix: &str) -> Result<UserSecret, ConfigError> {
        let given = [&self.password, &self.scram_verifier, &self.md5_secret]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if given > 1 {
            return Err(invalid(
                format!("{prefix}scram_verifier"),
                "give one of password, scram_verifier or md5_secret",
            ));
        }
        let secret = if let Some(password) = &self.password {
            Some(Secret::Scram(ScramVerifier::from_password(password)))
        } else if let Some(text) = &self.scram_verifier {
            Some(Secret::Scram(ScramVerifier::parse(text).map_err(|m| {
                invalid(format!("{prefix}scram_verifier"), m)
            })?))
        } else if let Some(text) = &self.md5_secret {
            Some(Secret::Md5(
                Md5Secret::parse(text).map_err(|m| invalid(format!("{prefix}md5_secret"), m))?,
            ))
        } else {
            None
        };
        let from_file = match &self.server_password_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
                    .map_err(|e| {
                        invalid(
                            format!("{prefix}server_password_file"),
                            format!("{path}: {e}"),
                        )
                    })?,
            ),
        };
        if from_file.is_some() && self.server_password.is_some() {
            return Err(invalid(
                format!("{prefix}server_password_file"),
                "give server_password or server_password_file, not both",
            ));
        }
        Ok(UserSecret {
            timeouts: self.timeouts(prefix)?,
            plaintext_in_file: self.password.is_some(),
            secret,
            server_password: self.server_password.or(from_file).or(self.password),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::file::FileConfig;
    use super::super::{Config, ConfigError};

    fn load(extra: &str) -> Result<Config, ConfigError> {
        let text = format!("upstream = \"postgres://u:p@db/app\"\nauth = \"trust\"\n{extra}");
        toml::from_str::<FileConfig>(&text).unwrap().validate()
    }

    fn refused(extra: &str, key: &str) {
        let err = load(extra).unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{extra} -> {err}");
    }

    #[test]
    fn tls_keys_are_checked_before_the_first_client() {
        refused("tls_cert = \"/nonexistent.crt\"\n", "tls_key");
        refused(
            "tls_cert = \"/nonexistent.crt\"\ntls_key = \"/nonexistent.key\"\n",
            "tls_cert",
        );
        refused("client_tls = \"require\"\n", "client_tls");
        refused("client_tls = \"sometimes\"\n", "client_tls");
        refused("server_tls_mode = \"verify-full\"\n", "server_ca");
        refused("server_tls_mode = \"allow\"\n", "server_tls_mode");
        refused(
            "[[listeners]]\naddress = \"127.0.0.1:6433\"\nclient_tls = \"require\"\n",
            "listeners[0].client_tls",
        );
        refused(
            "[[listeners]]\naddress = \"nowhere\"\n",
            "listeners[0].address",
        );
        let config = load("").unwrap();
        assert_eq!(config.tls.server.mode(), crate::tls::ServerTlsMode::Prefer);
        assert_eq!(config.tls.client_mode, crate::tls::ClientTlsMode::Disable);
    }

    #[test]
    fn plaintext_passwords_in_the_file_are_pointed_out() {
        let config = load(
            "[users.dev]\npassword = \"pw\"\n[users.prod]\nscram_verifier = \"SCRAM-SHA-256$4096:AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n",
        )
        .unwrap();
        assert_eq!(config.users_with_plaintext_passwords(), ["dev"]);
    }

    #[test]
    fn auth_query_needs_its_user_and_a_password_for_it() {
        refused("auth_query = \"SELECT 1\"\n", "auth_user");
        refused(
            "auth_query = \"SELECT usename, passwd FROM pg_shadow\"\nauth_user = \"a\"\n",
            "auth_query",
        );
        let ok = load(
            "auth_query = \"SELECT usename, passwd FROM pg_shadow WHERE usename = $1\"\nauth_user = \"a\"\n",
        )
        .unwrap();
        assert_eq!(ok.auth_query.unwrap().user, "a");
        let text = "upstream = \"postgres://db/app\"\nauth = \"scram-sha-256\"\n\
                    auth_query = \"SELECT usename, passwd FROM pg_shadow WHERE usename = $1\"\n\
                    auth_user = \"a\"\n";
        let err = toml::from_str::<FileConfig>(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`auth_user`"), "{err}");
    }
}
