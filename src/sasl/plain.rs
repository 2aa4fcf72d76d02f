//! PLAIN logins (`authzid NUL authcid NUL password`), checked against the SCRAM
//! entries of the credentials file.

use super::credentials::{check_candidates, Credentials, ScramEntry};
use super::{AuthError, Hash};

/// A PLAIN login read off the wire, with the entries to check it against.
/// Checking is the costly part (one PBKDF2 per entry), split off so that it can
/// run away from the async runtime.
pub struct PlainAttempt {
    user: String,
    password: String,
    /// False when the client asked to act as someone else, which is refused.
    authzid_ok: bool,
    known: bool,
    candidates: Vec<(Hash, ScramEntry)>,
}

impl std::fmt::Debug for PlainAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainAttempt")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PlainAttempt {
    /// The user the client claims to be (unchecked).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Derives and compares; the same work whatever the outcome.
    pub fn check(self) -> Result<String, AuthError> {
        let ok = check_candidates(self.known, &self.candidates, &self.password);
        if ok && self.authzid_ok {
            Ok(self.user)
        } else {
            Err(AuthError::BadCredentials { user: self.user })
        }
    }
}

/// Parses PLAIN: `authzid NUL authcid NUL password`. Cheap; `check` is not.
pub fn plain_attempt(creds: &Credentials, message: &[u8]) -> Result<PlainAttempt, AuthError> {
    let text = std::str::from_utf8(message).map_err(|_| AuthError::Malformed("PLAIN"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("PLAIN"));
    };
    let (known, candidates) = creds.plain_candidates(user);
    Ok(PlainAttempt {
        user: user.to_string(),
        password: password.to_string(),
        authzid_ok: authzid.is_empty() || authzid == user,
        known,
        candidates,
    })
}

/// PLAIN, parsed and checked in one go. Returns the user.
pub fn plain_login(creds: &Credentials, message: &[u8]) -> Result<String, AuthError> {
    plain_attempt(creds, message)?.check()
}
