//! Authentication: the secrets clients log in against (SCRAM-SHA-256 verifiers and md5 hashes, as
//! PostgreSQL stores them), the server side of each exchange, and the keyed SCRAM client that
//! passes a client's proven keys through to the server.

mod md5_secret;
mod scram;

pub use md5_secret::Md5Secret;
pub use scram::{
    ChannelOffer, KeyedScramClient, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError, ScramKeys,
    ScramServer, ScramVerifier,
};

/// A stored client secret, in `pg_authid.rolpassword` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// `SCRAM-SHA-256$…`.
    Scram(ScramVerifier),
    /// `md5…`.
    Md5(Md5Secret),
}

impl Secret {
    /// Parses either stored form.
    ///
    /// # Errors
    /// A message describing both accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("md5") {
            Md5Secret::parse(text).map(Self::Md5)
        } else {
            ScramVerifier::parse(text).map(Self::Scram)
        }
    }
}
