//! The `[telemetry]` table: where spans go (endpoint, protocol, TLS toward the collector), the
//! service name, the sampler and the slow-query threshold.

use std::time::Duration;

use serde::Deserialize;

use super::file::Overrides;
use super::values::{Scalar, field};
use super::{
    ConfigError, OtlpProtocol, SamplerSettings, TelemetrySettings, invalid, parse_duration,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetryFile {
    otlp_endpoint: Option<Scalar>,
    otlp_protocol: Option<Scalar>,
    otlp_certificate: Option<Scalar>,
    otlp_client_certificate: Option<Scalar>,
    otlp_client_key: Option<Scalar>,
    service_name: Option<Scalar>,
    sampler: Option<Scalar>,
    sampler_arg: Option<Scalar>,
    slow_query_threshold: Option<Scalar>,
}

impl TelemetryFile {
    #[cfg(test)]
    pub(super) fn set_sampler_for_test(&mut self, name: &str, arg: &str) {
        self.sampler = Some(Scalar::Str(name.into()));
        self.sampler_arg = Some(Scalar::Str(arg.into()));
    }

    /// The `[telemetry]` table as settings; the certificate files are read here.
    pub(super) fn validate(&self) -> Result<TelemetrySettings, ConfigError> {
        let text = |v: &Option<Scalar>| {
            v.as_ref()
                .map(Scalar::text)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        };
        let sampler_name = text(&self.sampler).unwrap_or_else(|| "parentbased_always_on".into());
        let sampler = SamplerSettings::parse(&sampler_name, text(&self.sampler_arg).as_deref())
            .map_err(|m| invalid("telemetry.sampler", m))?;
        let path = |v: &Option<Scalar>| text(v).map(std::path::PathBuf::from);
        let collector_tls = crate::tls::CollectorTls::load(
            path(&self.otlp_certificate).as_deref(),
            path(&self.otlp_client_certificate).as_deref(),
            path(&self.otlp_client_key).as_deref(),
        )
        .map_err(|e| invalid("telemetry.otlp_certificate", e.to_string()))?;
        Ok(TelemetrySettings {
            otlp_endpoint: text(&self.otlp_endpoint),
            collector_tls,
            otlp_protocol: field(
                "telemetry.otlp_protocol",
                self.otlp_protocol.as_ref(),
                OtlpProtocol::Grpc,
                str::parse,
            )?,
            service_name: text(&self.service_name),
            sampler,
            slow_query_threshold: field(
                "telemetry.slow_query_threshold",
                self.slow_query_threshold.as_ref(),
                Duration::from_secs(1),
                parse_duration,
            )?,
        })
    }

    /// Puts the values of flags and environment over the file's.
    pub(super) fn apply(&mut self, overrides: &Overrides) {
        let telemetry = self;
        for (slot, value) in [
            (&mut telemetry.otlp_endpoint, &overrides.otlp_endpoint),
            (&mut telemetry.otlp_protocol, &overrides.otlp_protocol),
            (&mut telemetry.otlp_certificate, &overrides.otlp_certificate),
            (
                &mut telemetry.otlp_client_certificate,
                &overrides.otlp_client_certificate,
            ),
            (&mut telemetry.otlp_client_key, &overrides.otlp_client_key),
            (&mut telemetry.service_name, &overrides.service_name),
            (&mut telemetry.sampler, &overrides.traces_sampler),
            (&mut telemetry.sampler_arg, &overrides.traces_sampler_arg),
            (
                &mut telemetry.slow_query_threshold,
                &overrides.slow_query_threshold,
            ),
        ] {
            if let Some(value) = value {
                *slot = Some(Scalar::Str(value.clone()));
            }
        }
    }
}
