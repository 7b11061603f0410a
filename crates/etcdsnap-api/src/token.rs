//! The server token hash recorded with every snapshot.
//!
//! K3s encrypts its bootstrap data (certificates, keys) with the server token and stores it in
//! etcd under `/bootstrap/<hash>`, where `<hash>` is this same hash. A snapshot therefore can only
//! be brought back to life with the token that was current when it was taken; recording the hash
//! lets a restore say so before anything is touched. The token itself is never stored.

use sha2::{Digest, Sha256};
use std::fmt;

/// Why a token cannot be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the server token is empty")]
    Empty,
    #[error("the server token looks like a bootstrap (join) token; the server token is needed")]
    BootstrapToken,
    #[error("the server token is not in the K10<ca-hash>::<user>:<password> format")]
    Malformed,
    #[error("the CA hash in the server token is not 64 hexadecimal characters")]
    BadCaHash,
}

/// First 12 lowercase hex characters of sha256 of the token's password part.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TokenHash(String);

impl TokenHash {
    /// Hashes a server token given in K3s's full `K10<ca>::<user>:<password>` form or as a bare
    /// password. Surrounding whitespace (a trailing newline in a token file) is ignored.
    pub fn of_token(token: &str) -> Result<TokenHash, TokenError> {
        let password = token_password(token.trim())?;
        let digest = Sha256::digest(password.as_bytes());
        Ok(TokenHash(hex::encode(digest)[..12].to_string()))
    }

    /// Accepts a recorded hash (from an annotation, S3 metadata or a metadata document) if it has
    /// the right shape: 12 lowercase hex characters.
    pub fn parse_recorded(s: &str) -> Option<TokenHash> {
        let s = s.trim();
        (s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| TokenHash(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The password part of a server token, following K3s's normalisation.
fn token_password(token: &str) -> Result<&str, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if is_bootstrap_token(token) {
        return Err(TokenError::BootstrapToken);
    }
    let Some(rest) = token.strip_prefix("K10") else {
        // A bare value is the password itself (K3s treats it as `K10:::<value>`).
        return Ok(token);
    };
    let (ca_hash, creds) = rest.split_once("::").ok_or(TokenError::Malformed)?;
    let valid_ca_hash = ca_hash.len() == 64 && ca_hash.bytes().all(|b| b.is_ascii_hexdigit());
    if !ca_hash.is_empty() && !valid_ca_hash {
        return Err(TokenError::BadCaHash);
    }
    let (_user, password) = creds.split_once(':').ok_or(TokenError::Malformed)?;
    if password.is_empty() {
        return Err(TokenError::Empty);
    }
    Ok(password)
}

/// Kubernetes bootstrap tokens: `[a-z0-9]{6}.[a-z0-9]{16}`.
fn is_bootstrap_token(token: &str) -> bool {
    let Some((id, secret)) = token.split_once('.') else {
        return false;
    };
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok(id, 6) && ok(secret, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";

    fn hash(t: &str) -> Result<String, TokenError> {
        TokenHash::of_token(t).map(|h| h.as_str().to_string())
    }

    #[test]
    fn k3s_test_vectors() {
        assert_eq!(hash("mysecret").as_deref(), Ok("652c7dc687d9"));
        assert_eq!(hash(&format!("K10{CA}::server:mysecret")).as_deref(), Ok("652c7dc687d9"));
        assert_eq!(hash("mysecret\n").as_deref(), Ok("652c7dc687d9"));
        assert_eq!(hash("K10::server:mysecret").as_deref(), Ok("652c7dc687d9"));
    }

    #[test]
    fn passwords_may_contain_colons() {
        assert_eq!(hash(&format!("K10{CA}::server:a:b")), hash("a:b"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert_eq!(hash(""), Err(TokenError::Empty));
        assert_eq!(hash("   "), Err(TokenError::Empty));
        assert_eq!(hash("abcdef.0123456789abcdef"), Err(TokenError::BootstrapToken));
        assert_eq!(hash("K10nocolons"), Err(TokenError::Malformed));
        assert_eq!(hash("K10abc::server:x"), Err(TokenError::BadCaHash));
        assert_eq!(hash(&format!("K10{CA}::server")), Err(TokenError::Malformed));
        assert_eq!(hash(&format!("K10{CA}::server:")), Err(TokenError::Empty));
    }

    #[test]
    fn recorded_hashes_are_checked_for_shape() {
        assert!(TokenHash::parse_recorded("652c7dc687d9").is_some());
        assert!(TokenHash::parse_recorded("652C7DC687D9").is_none());
        assert!(TokenHash::parse_recorded("652c7dc687d").is_none());
        assert!(TokenHash::parse_recorded("").is_none());
        assert!(TokenHash::parse_recorded("zzzzzzzzzzzz").is_none());
    }
}
