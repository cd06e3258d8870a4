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
    /// The channel-binding flag, type or data does not fit this connection (no TLS, a
    /// downgrade, or another certificate than the proxy's).
    #[error("SCRAM channel binding check failed")]
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

    /// Whether a cleartext password matches this verifier.
    #[must_use]
    pub fn check_password(&self, password: &str) -> bool {
        let salted = salted_password(&prepared_password(password), &self.salt, self.iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        same(&Sha256::digest(client_key).into(), &self.stored_key)
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

/// What the connection offers for channel binding: over TLS, the certificate's
/// `tls-server-end-point` hash, and SCRAM-SHA-256-PLUS is advertised.
#[derive(Debug, Clone, Copy)]
pub enum ChannelOffer<'a> {
    /// Plaintext: only SCRAM-SHA-256.
    None,
    /// TLS: both mechanisms, with this binding data.
    Tls(&'a [u8]),
}

/// The keys a successful SCRAM exchange proves the client holds. With the verifier's ServerKey
/// they let the proxy log in to a server that stores the same verifier, without the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// HMAC(SaltedPassword, "Client Key"), recovered from the client's proof.
    pub client_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key"), from the verifier.
    pub server_key: [u8; 32],
    /// The verifier's salt, which the server must echo for the keys to fit.
    pub salt: Vec<u8>,
    /// The verifier's iteration count.
    pub iterations: u32,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

/// One server-side SCRAM exchange, driven by the client's two messages.
pub struct ScramServer {
    verifier: ScramVerifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// The `c=` attribute the client-final-message must carry: gs2 header and binding data.
    expected_binding: Vec<u8>,
}

/// The mechanism name for a channel-bound exchange.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The mechanism name without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const END_POINT: &str = "tls-server-end-point";

/// A printable SCRAM nonce: ASCII 0x21..0x7e except `,`.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

impl ScramServer {
    /// Takes the client-first-message sent with `mechanism` and returns the exchange with its
    /// server-first-message. The channel-binding flag must agree with the mechanism and with
    /// what was offered: a client that says "I could bind but you cannot" (`y`) on a connection
    /// that offered SCRAM-SHA-256-PLUS is being downgraded by someone in the middle.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] or [`ScramError::ChannelBinding`].
    pub fn start(
        verifier: ScramVerifier,
        mechanism: &str,
        offer: ChannelOffer<'_>,
        client_first: &str,
    ) -> Result<(Self, String), ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS => true,
            _ => return Err(ScramError::Malformed("unknown SCRAM mechanism")),
        };
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
        let binding_data: &[u8] = match (flag, plus, offer) {
            ("n", false, _) | ("y", false, ChannelOffer::None) => &[],
            ("y", false, ChannelOffer::Tls(_)) => return Err(ScramError::ChannelBinding),
            (f, true, ChannelOffer::Tls(data)) if f.strip_prefix("p=") == Some(END_POINT) => data,
            (f, _, _) if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            (_, true, _) => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel-binding flag")),
        };
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| valid_nonce(n))
            .ok_or(ScramError::Malformed("missing or invalid client nonce"))?;
        let server_nonce = B64.encode(rand::rng().random::<[u8; 18]>());
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let mut expected_binding = format!("{flag},{authzid},").into_bytes();
        expected_binding.extend_from_slice(binding_data);
        let exchange = Self {
            verifier,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            expected_binding,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final-message; returns the server-final-message and the keys the
    /// client proved it holds.
    ///
    /// # Errors
    /// [`ScramError::Malformed`], [`ScramError::ChannelBinding`] for binding data that does not
    /// match this connection's certificate, or [`ScramError::WrongPassword`].
    pub fn finish(self, client_final: &str) -> Result<(String, ScramKeys), ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("missing channel binding"))?;
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing nonce"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.expected_binding.as_slice()) {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != self.nonce {
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
        let client_key = xor(proof, client_signature);
        if !same(
            &Sha256::digest(client_key).into(),
            &self.verifier.stored_key,
        ) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        let keys = ScramKeys {
            client_key,
            server_key: self.verifier.server_key,
            salt: self.verifier.salt,
            iterations: self.verifier.iterations,
        };
        Ok((format!("v={}", B64.encode(server_signature)), keys))
    }
}

fn xor(mut a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
    a
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's `Hi()`.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = hmac(password, &[salt, &1_u32.to_be_bytes()]);
    let mut out = block;
    for _ in 1..iterations {
        block = hmac(password, &[&block]);
        out = xor(out, block);
    }
    out
}

/// A password as SCRAM hashes it: SASLprep-normalised where that succeeds, raw otherwise (as
/// PostgreSQL does).
fn prepared_password(password: &str) -> Vec<u8> {
    stringprep::saslprep(password)
        .map_or_else(|_| password.as_bytes().to_vec(), |p| p.as_bytes().to_vec())
}

/// The client side of a SCRAM exchange that logs in with recovered [`ScramKeys`] instead of a
/// password: pass-through authentication for users whose password the proxy never sees.
pub struct KeyedScramClient {
    keys: ScramKeys,
    gs2_header: String,
    binding_data: Vec<u8>,
    client_first_bare: String,
    auth_message: Option<String>,
}

impl KeyedScramClient {
    /// Starts an exchange. `binding` is the server certificate's channel-binding data when the
    /// connection is TLS; `plus` says the server offered SCRAM-SHA-256-PLUS.
    #[must_use]
    pub fn new(keys: ScramKeys, binding: Option<Vec<u8>>, plus: bool) -> Self {
        let (gs2_header, binding_data) = match binding {
            Some(data) if plus => (format!("p={END_POINT},,"), data),
            Some(_) => ("y,,".to_owned(), Vec::new()),
            None => ("n,,".to_owned(), Vec::new()),
        };
        let nonce = B64.encode(rand::rng().random::<[u8; 18]>());
        Self {
            keys,
            gs2_header,
            binding_data,
            client_first_bare: format!("n=,r={nonce}"),
            auth_message: None,
        }
    }

    /// The mechanism to name in SASLInitialResponse.
    #[must_use]
    pub fn mechanism(&self) -> &'static str {
        if self.gs2_header.starts_with("p=") {
            SCRAM_SHA_256_PLUS
        } else {
            SCRAM_SHA_256
        }
    }

    /// The client-first-message.
    #[must_use]
    pub fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    /// Answers the server-first-message with the client-final-message.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] for a broken message, a nonce the server did not extend, or a
    /// salt or iteration count different from the verifier the keys came from (the server's
    /// password was changed since).
    pub fn client_final(&mut self, server_first: &str) -> Result<String, ScramError> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let nonce = nonce
            .filter(|n| valid_nonce(n))
            .ok_or(ScramError::Malformed("server nonce missing"))?;
        let ours = &self.client_first_bare["n=,r=".len()..];
        if !nonce.starts_with(ours) || nonce.len() == ours.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        if salt.as_deref() != Some(self.keys.salt.as_slice())
            || iterations != Some(self.keys.iterations)
        {
            return Err(ScramError::Malformed(
                "the server's verifier differs from the one the client proved (password changed?)",
            ));
        }
        let mut binding = self.gs2_header.clone().into_bytes();
        binding.extend_from_slice(&self.binding_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(binding));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.keys.client_key).into();
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof = xor(self.keys.client_key, signature);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message: the server proves it knows the verifier.
    ///
    /// # Errors
    /// [`ScramError::Malformed`] for a wrong or missing signature.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), ScramError> {
        let auth_message = self
            .auth_message
            .as_ref()
            .ok_or(ScramError::Malformed("server-final before client-final"))?;
        let expected = hmac(&self.keys.server_key, &[auth_message.as_bytes()]);
        let given: [u8; 32] = server_final
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Malformed("server signature missing"))?;
        if same(&expected, &given) {
            Ok(())
        } else {
            Err(ScramError::Malformed("server signature does not match"))
        }
    }
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    use super::*;

    fn exchange_with(
        stored_for: &str,
        client_password: &str,
        client_binding: ChannelBinding,
        mechanism: &str,
        offer: ChannelOffer<'_>,
    ) -> Result<ScramKeys, ScramError> {
        let verifier = ScramVerifier::from_password(stored_for);
        let mut client = ScramSha256::new(client_password.as_bytes(), client_binding);
        let first = String::from_utf8(client.message().to_vec()).unwrap();
        let (server, server_first) = ScramServer::start(verifier, mechanism, offer, &first)?;
        client.update(server_first.as_bytes()).unwrap();
        let client_final = String::from_utf8(client.message().to_vec()).unwrap();
        let (server_final, keys) = server.finish(&client_final)?;
        client
            .finish(server_final.as_bytes())
            .expect("client accepts the server signature");
        Ok(keys)
    }

    fn exchange(stored_for: &str, client_password: &str) -> Result<(), ScramError> {
        exchange_with(
            stored_for,
            client_password,
            ChannelBinding::unsupported(),
            SCRAM_SHA_256,
            ChannelOffer::None,
        )
        .map(|_| ())
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
    fn channel_binding_must_match_the_certificate() {
        let cert_hash = [7_u8; 32];
        exchange_with(
            "pw",
            "pw",
            ChannelBinding::tls_server_end_point(cert_hash.to_vec()),
            SCRAM_SHA_256_PLUS,
            ChannelOffer::Tls(&cert_hash),
        )
        .unwrap();
        assert_eq!(
            exchange_with(
                "pw",
                "pw",
                ChannelBinding::tls_server_end_point(vec![8; 32]),
                SCRAM_SHA_256_PLUS,
                ChannelOffer::Tls(&cert_hash),
            ),
            Err(ScramError::ChannelBinding)
        );
    }

    #[test]
    fn downgrade_and_binding_without_tls_are_refused() {
        let cert_hash = [7_u8; 32];
        // The client could bind but believes the server cannot: someone stripped -PLUS.
        assert_eq!(
            exchange_with(
                "pw",
                "pw",
                ChannelBinding::unrequested(),
                SCRAM_SHA_256,
                ChannelOffer::Tls(&cert_hash),
            ),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(
            exchange_with(
                "pw",
                "pw",
                ChannelBinding::tls_server_end_point(vec![7; 32]),
                SCRAM_SHA_256_PLUS,
                ChannelOffer::None,
            ),
            Err(ScramError::ChannelBinding)
        );
        // Without TLS, "y" is the honest answer.
        exchange_with(
            "pw",
            "pw",
            ChannelBinding::unrequested(),
            SCRAM_SHA_256,
            ChannelOffer::None,
        )
        .unwrap();
    }

    #[test]
    fn recovered_keys_log_in_to_a_server_with_the_same_verifier() {
        let keys = exchange_with(
            "pw",
            "pw",
            ChannelBinding::unsupported(),
            SCRAM_SHA_256,
            ChannelOffer::None,
        )
        .unwrap();
        let verifier = ScramVerifier {
            iterations: keys.iterations,
            salt: keys.salt.clone(),
            stored_key: Sha256::digest(keys.client_key).into(),
            server_key: keys.server_key,
        };
        for (binding, plus, offer) in [
            (None, false, ChannelOffer::None),
            (Some(vec![3_u8; 32]), true, ChannelOffer::Tls(&[3_u8; 32])),
        ] {
            let mut client = KeyedScramClient::new(keys.clone(), binding, plus);
            let (server, server_first) = ScramServer::start(
                verifier.clone(),
                client.mechanism(),
                offer,
                &client.client_first(),
            )
            .unwrap();
            let client_final = client.client_final(&server_first).unwrap();
            let (server_final, _) = server.finish(&client_final).unwrap();
            client.verify_server_final(&server_final).unwrap();
        }
        let other = ScramVerifier::from_password("pw");
        let mut client = KeyedScramClient::new(keys, None, false);
        let (_, server_first) = ScramServer::start(
            other,
            SCRAM_SHA_256,
            ChannelOffer::None,
            &client.client_first(),
        )
        .unwrap();
        assert!(client.client_final(&server_first).is_err(), "salt differs");
    }

    #[test]
    fn cleartext_password_is_checked_against_the_verifier() {
        let verifier = ScramVerifier::from_password("s3cret");
        assert!(verifier.check_password("s3cret"));
        assert!(!verifier.check_password("s3cret "));
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
        let start = |text: &str| {
            ScramServer::start(verifier.clone(), SCRAM_SHA_256, ChannelOffer::None, text)
        };
        assert!(start("").is_err());
        assert!(start("x,,n=,r=abc").is_err());
        assert_eq!(
            start("p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
        let (server, _) = start("n,,n=,r=abc").unwrap();
        assert!(server.finish("c=biws,r=wrong,p=AAAA").is_err());
    }
}
