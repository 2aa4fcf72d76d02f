//! The admin API's bearer token: read from its source, kept as a digest, compared
//! in constant time. The proxy holds it (re-read on every reload); the admin API
//! checks requests against it; the CLI reads the secret to send it.

use sha2::{Digest, Sha256};

use crate::config::TokenSource;

/// The token itself, for the CLI that sends it; the proxy keeps only
/// [`AdminToken`]. Errors never contain the secret.
pub fn read_secret(source: &TokenSource) -> Result<String, String> {
    let secret = match source {
        TokenSource::Env(name) => match std::env::var(name) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                return Err(format!(
                    "[admin] token_env: environment variable `{name}` is not set"
                ))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!(
                    "[admin] token_env: environment variable `{name}` is not UTF-8"
                ))
            }
        },
        TokenSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("[admin] token_file: {}: {e}", path.display()))?
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
    };
    // Surrounding whitespace is never part of a token: files end in newlines and
    // `export X="$(cat f)"` keeps them.
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(match source {
            TokenSource::Env(name) => {
                format!("[admin] token_env: environment variable `{name}` is empty")
            }
            TokenSource::File(path) => format!("[admin] token_file: {} is empty", path.display()),
        });
    }
    Ok(secret.to_string())
}

/// The admin bearer token, kept only as its SHA-256 digest. Comparing two digests
/// of equal length byte by byte without an early exit reveals neither the token's
/// content nor its length through timing, and the secret itself is never held
/// where a `Debug` or a log line could print it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn from_secret(secret: &str) -> AdminToken {
        AdminToken(Sha256::digest(secret.as_bytes()).into())
    }

    /// Reads the token from its source now (startup and every reload, so a rotated
    /// token file takes effect on reload). Errors never contain the secret.
    pub fn resolve(source: &TokenSource) -> Result<AdminToken, String> {
        read_secret(source).map(|s| AdminToken::from_secret(&s))
    }

    pub fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self
            .0
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}
