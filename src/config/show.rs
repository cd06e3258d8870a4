//! The configuration as the admin console's `SHOW CONFIG` lists it: every key with its value in
//! the form the file accepts, and its default. Secrets never appear.

use std::time::Duration;

use super::file::FileConfig;
use super::{Config, RootSampling, SamplerSettings};

/// One line of `SHOW CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Dotted key, as in the file.
    pub key: &'static str,
    /// Current value.
    pub value: String,
    /// Value when nothing sets it.
    pub default: String,
}

fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn optional(d: Option<Duration>) -> String {
    d.map_or_else(|| "0".to_owned(), duration)
}

fn sampler(s: SamplerSettings) -> String {
    let prefix = if s.parent_based { "parentbased_" } else { "" };
    match s.root {
        RootSampling::Always => format!("{prefix}always_on"),
        RootSampling::Never => format!("{prefix}always_off"),
        RootSampling::Ratio(r) => format!("{prefix}traceidratio:{r}"),
    }
}

impl Config {
    fn values(&self) -> Vec<(&'static str, String)> {
        let mut values = vec![
            ("listen", self.listen.to_string()),
            (
                "listeners",
                self.extra_listeners
                    .iter()
                    .map(|l| format!("{} ({})", l.address, l.client_tls))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "admin_listen",
                self.admin_listen.map(|a| a.to_string()).unwrap_or_default(),
            ),
            ("upstream", self.upstream.addresses()),
        ];
        values.extend(self.security_values());
        values.extend(self.pool_and_limit_values());
        values.extend(self.telemetry_values());
        values
    }

    fn security_values(&self) -> Vec<(&'static str, String)> {
        let path = |p: Option<&std::path::PathBuf>| p.map(|p| p.display().to_string());
        vec![
            ("auth", self.auth.to_string()),
            (
                "auth_user",
                self.auth_query
                    .as_ref()
                    .map(|q| q.user.clone())
                    .unwrap_or_default(),
            ),
            ("auth_failure_delay", duration(self.auth_failure_delay)),
            ("client_tls", self.tls.client_mode.to_string()),
            (
                "tls_cert",
                path(self.tls.client_files.as_ref().map(|(cert, _)| cert)).unwrap_or_default(),
            ),
            ("server_tls_mode", self.tls.server.mode().to_string()),
            (
                "server_ca",
                path(self.tls.server_ca.as_ref()).unwrap_or_default(),
            ),
        ]
    }

    fn pool_and_limit_values(&self) -> Vec<(&'static str, String)> {
        let pool = &self.pool;
        vec![
            ("pool_mode", pool.mode.to_string()),
            ("pool_size", pool.size.to_string()),
            ("min_idle", pool.min_idle.to_string()),
            ("acquire_timeout", duration(pool.acquire_timeout)),
            ("query_wait_notify", optional(pool.query_wait_notify)),
            ("server_idle_timeout", duration(pool.server_idle_timeout)),
            ("server_lifetime", duration(pool.server_lifetime)),
            (
                "server_connect_timeout",
                duration(pool.server_connect_timeout),
            ),
            (
                "max_prepared_statements",
                pool.max_prepared_statements.to_string(),
            ),
            ("client_idle_timeout", optional(pool.timeouts.client_idle)),
            (
                "idle_transaction_timeout",
                optional(pool.timeouts.idle_transaction),
            ),
            ("query_timeout", optional(pool.timeouts.query)),
            ("transaction_timeout", optional(pool.timeouts.transaction)),
            ("client_login_timeout", duration(self.client_login_timeout)),
            ("max_client_conn", self.max_client_conn.to_string()),
            (
                "max_db_connections",
                pool.max_db_connections.unwrap_or(0).to_string(),
            ),
            (
                "max_user_connections",
                self.max_user_connections.unwrap_or(0).to_string(),
            ),
            ("max_message_size", self.max_message_size.to_string()),
            ("threads", self.threads.to_string()),
            ("drain_timeout", duration(self.drain_timeout)),
            (
                "schema_version",
                self.schema_version
                    .map(|v| format!("{v:04}"))
                    .unwrap_or_default(),
            ),
            (
                "fleet_id",
                self.fleet
                    .as_ref()
                    .map(|f| f.id.clone())
                    .unwrap_or_default(),
            ),
            (
                "fleet_heartbeat",
                self.fleet
                    .as_ref()
                    .map(|f| duration(f.heartbeat))
                    .unwrap_or_default(),
            ),
            (
                "fleet_control_role",
                self.fleet
                    .as_ref()
                    .and_then(|f| f.control_role.clone())
                    .unwrap_or_default(),
            ),
            ("admin_users", self.admin_users.join(",")),
            (
                "admin_token",
                if self.control.admin_token.is_some() {
                    "set"
                } else {
                    "unset"
                }
                .to_owned(),
            ),
            ("max_pause_hold", duration(self.control.max_pause_hold)),
            (
                "max_pause_deadline",
                duration(self.control.max_pause_deadline),
            ),
        ]
    }

    fn telemetry_values(&self) -> Vec<(&'static str, String)> {
        let telemetry = &self.telemetry;
        vec![
            (
                "telemetry.otlp_endpoint",
                telemetry.otlp_endpoint.clone().unwrap_or_default(),
            ),
            (
                "telemetry.otlp_protocol",
                match telemetry.otlp_protocol {
                    super::OtlpProtocol::Grpc => "grpc",
                    super::OtlpProtocol::HttpProtobuf => "http/protobuf",
                }
                .to_owned(),
            ),
            (
                "telemetry.otlp_tls",
                match &telemetry.collector_tls {
                    None => "system roots".to_owned(),
                    Some(tls) => format!(
                        "{}{}",
                        if tls.ca_pem().is_some() {
                            "own CA"
                        } else {
                            "system roots"
                        },
                        if tls.identity_pem().is_some() {
                            ", client certificate"
                        } else {
                            ""
                        }
                    ),
                },
            ),
            (
                "telemetry.service_name",
                telemetry.service_name.clone().unwrap_or_default(),
            ),
            ("telemetry.sampler", sampler(telemetry.sampler)),
            (
                "telemetry.slow_query_threshold",
                duration(telemetry.slow_query_threshold),
            ),
        ]
    }

    /// Every setting with its current and default value, for `SHOW CONFIG`.
    #[must_use]
    pub fn settings(&self) -> Vec<Setting> {
        let defaults = FileConfig::minimal()
            .validate()
            .map(|config| config.values())
            .unwrap_or_default();
        self.values()
            .into_iter()
            .map(|(key, value)| Setting {
                key,
                value,
                default: match key {
                    "upstream" | "auth" | "fleet_id" => String::new(),
                    _ => defaults
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_show_values_and_defaults_without_secrets() {
        let mut file: FileConfig = toml::from_str(
            "upstream = \"postgres://u:hunter2@db:5433/app\"\nauth = \"trust\"\npool_size = 7\n",
        )
        .unwrap();
        file.telemetry_sampler_for_test("traceidratio", "0.5");
        let settings = file.validate().unwrap().settings();
        let get = |key: &str| settings.iter().find(|s| s.key == key).unwrap().clone();
        assert_eq!(get("pool_size").value, "7");
        assert_eq!(get("pool_size").default, "20");
        assert_eq!(get("upstream").value, "db:5433");
        assert_eq!(get("acquire_timeout").value, "5s");
        assert_eq!(get("telemetry.sampler").value, "traceidratio:0.5");
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
