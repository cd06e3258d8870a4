//! The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, checked against
//! a stored verifier so that no plaintext password needs to be kept.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a SCRAM exchange failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    /// The client's message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which needs TLS.
    #[error("channel binding is not supported on this connection")]
    ChannelBinding,
    /// The proof does not match the verifier.
    #[error("password authentication failed")]
    WrongPassword,
}

/// A stored SCRAM-SHA-256 secret: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, the
/// format of `pg_authid.rolpassword` and of `pgsidecar passwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

fn key32(text: &str) -> Option<[u8; 32]> {
    B64.decode(text).ok()?.try_into().ok()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl ScramVerifier {
    /// Parses the stored form.
    ///
    /// # Errors
    /// A message saying which part is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shape = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>";
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or(shape)?;
        let (params, keys) = rest.split_once('$').ok_or(shape)?;
        let (iterations, salt) = params.split_once(':').ok_or(shape)?;
        let (stored, server) = keys.split_once(':').ok_or(shape)?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or("iteration count must be a positive number")?;
        Ok(Self {
            iterations,
            salt: B64.decode(salt).map_err(|_| "salt is not base64")?,
            stored_key: key32(stored).ok_or("StoredKey is not 32 bytes of base64")?,
            server_key: key32(server).ok_or("ServerKey is not 32 bytes of base64")?,
        })
    }

    /// Derives a verifier from a plaintext password with a fresh salt, as PostgreSQL does.
    ///
    /// # Panics
    /// Never: postgres-protocol's output always parses.
    #[must_use]
    pub fn from_password(password: &str) -> Self {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        Self::parse(&text).expect("postgres-protocol produces well-formed verifiers")
    }

    /// A verifier no password matches, so that unknown users go through the same exchange and
    /// fail at the same step as a wrong password.
    #[must_use]
    pub fn impossible() -> Self {
        let mut rng = rand::rng();
        Self {
            iterations: 4096,
            salt: rng.random::<[u8; 16]>().to_vec(),
            stored_key: rng.random(),
            server_key: rng.random(),
        }
    }
}

/// One server-side SCRAM exchange, driven by the client's two messages.
pub struct ScramServer {
    verifier: ScramVerifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

impl ScramServer {
    /// Takes the client-first-message and returns the exchange with its server-first-message.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] or [`ScramError::ChannelBinding`].
    pub fn start(
        verifier: ScramVerifier,
        client_first: &str,
    ) -> Result<(Self, String), ScramError> {
        let mut parts = client_first.splitn(3, ',');
        let flag = parts
            .next()
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let authzid = parts
            .next()
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("missing client-first-message-bare"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel-binding flag")),
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("missing or invalid client nonce"))?;
        let server_nonce = B64.encode(rand::rng().random::<[u8; 18]>());
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let exchange = Self {
            verifier,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            gs2_header: format!("{flag},{authzid},"),
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final-message and returns the server-final-message.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] or [`ScramError::WrongPassword`].
    pub fn finish(self, client_final: &str) -> Result<String, ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let binding = binding.ok_or(ScramError::Malformed("missing channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let difference = computed
            .iter()
            .zip(self.verifier.stored_key)
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    use super::*;

    fn exchange(stored_for: &str, client_password: &str) -> Result<(), ScramError> {
        let verifier = ScramVerifier::from_password(stored_for);
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let (server, server_first) = ScramServer::start(verifier, &first)?;
        client.update(server_first.as_bytes()).unwrap();
        let client_final = String::from_utf8(client.message().to_vec()).unwrap();
        let server_final = server.finish(&client_final)?;
        client
            .finish(server_final.as_bytes())
            .expect("client accepts the server signature");
        Ok(())
    }

    #[test]
    fn right_password_passes_both_ways() {
        exchange("s3cret", "s3cret").unwrap();
    }

    #[test]
    fn wrong_password_fails() {
        assert_eq!(exchange("s3cret", "guess"), Err(ScramError::WrongPassword));
    }

    #[test]
    fn verifier_text_round_trips() {
        let text = postgres_protocol::password::scram_sha_256(b"pw");
        let verifier = ScramVerifier::parse(&text).unwrap();
        assert_eq!(verifier.iterations, 4096);
        assert!(ScramVerifier::parse("md5abc").is_err());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:AA==$AA==:AA==").is_err());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let verifier = ScramVerifier::impossible();
        assert!(ScramServer::start(verifier.clone(), "").is_err());
        assert!(ScramServer::start(verifier.clone(), "x,,n=,r=abc").is_err());
        assert_eq!(
            ScramServer::start(verifier.clone(), "p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
        let (server, _) = ScramServer::start(verifier, "n,,n=,r=abc").unwrap();
        assert!(server.finish("c=biws,r=wrong,p=AAAA").is_err());
    }
}
