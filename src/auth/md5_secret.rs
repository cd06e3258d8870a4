//! md5 authentication for old clients: the stored `md5<hex(md5(password || user))>` secret of
//! `pg_authid`, checked against the salted challenge response or a cleartext password.

use std::fmt::Write;

use md5::{Digest, Md5};

/// A user's md5 secret, bound to the user name it was made for.
#[derive(Clone, PartialEq, Eq)]
pub struct Md5Secret {
    hex: String,
}

impl std::fmt::Debug for Md5Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5Secret(..)")
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(32), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

impl Md5Secret {
    /// Parses `md5` followed by 32 hex digits.
    ///
    /// # Errors
    /// A message describing the expected form.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.strip_prefix("md5")
            .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|h| Self {
                hex: h.to_ascii_lowercase(),
            })
            .ok_or_else(|| "expected md5 followed by 32 hex digits".to_owned())
    }

    /// Whether the PasswordMessage answer to an md5 challenge with `salt` is right.
    #[must_use]
    pub fn check_response(&self, salt: [u8; 4], response: &str) -> bool {
        let expected = format!("md5{}", md5_hex(&[self.hex.as_bytes(), &salt]));
        expected.len() == response.len()
            && expected
                .bytes()
                .zip(response.bytes())
                .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Whether a cleartext password is the one this secret was made from for `user`.
    #[must_use]
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        md5_hex(&[password.as_bytes(), user.as_bytes()]) == self.hex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_response_matches_libpq() {
        let stored = postgres_protocol::password::md5(b"pw", "alice");
        let secret = Md5Secret::parse(&stored).unwrap();
        let salt = [1, 2, 3, 4];
        let response = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        assert!(secret.check_response(salt, &response));
        assert!(!secret.check_response([4, 3, 2, 1], &response));
        assert!(secret.check_password("alice", "pw"));
        assert!(!secret.check_password("bob", "pw"));
        assert!(Md5Secret::parse("md5xyz").is_err());
    }
}
