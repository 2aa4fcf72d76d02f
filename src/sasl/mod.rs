//! SASL: PLAIN and SCRAM-SHA-256/512 (RFC 5802, RFC 7677), as Kafka uses them.
//!
//! Server side (clients of the proxy): users come from a credentials file in which
//! every entry is salted SCRAM material (salt, iterations, StoredKey, ServerKey),
//! never a password. PLAIN logins are checked against the same material.
//!
//! Client side (the proxy towards a cluster): PLAIN, or a SCRAM exchange with the
//! password read from an environment variable or a file when a connection opens.
//!
//! The credentials file and its entries are in `credentials.rs`, PLAIN logins in
//! `plain.rs`, the SCRAM exchanges (both sides) in `scram.rs`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

mod credentials;
mod plain;
mod scram;

pub use credentials::{Credentials, ScramEntry};
pub use plain::{plain_attempt, plain_login, PlainAttempt};
pub use scram::{ScramClient, ScramServer};

pub const PLAIN: &str = "PLAIN";
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_512: &str = "SCRAM-SHA-512";

/// Iterations below this are refused (RFC 7677 and Kafka both ask for 4096).
pub const MIN_ITERATIONS: u32 = 4096;
/// The most iterations the proxy derives for a cluster's server-first message.
/// Kafka brokers never ask for more than 16384; a broker asking for billions would
/// hold a thread for hours.
pub const MAX_CLIENT_ITERATIONS: u32 = 65_536;

/// The hash behind a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    pub fn of_mechanism(m: &str) -> Option<Hash> {
        match m {
            SCRAM_SHA_256 => Some(Hash::Sha256),
            SCRAM_SHA_512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => {
                let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Hash::Sha512 => {
                let mut m = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    /// Output length in bytes.
    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        #[cfg(test)]
        tests::count_derivation(self, iterations);
        match self {
            Hash::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations)
                    .to_vec()
            }
            Hash::Sha512 => {
                pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password.as_bytes(), salt, iterations)
                    .to_vec()
            }
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a login failed. The message goes to the client as the SaslAuthenticate
/// error message and into the log; it never says which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: invalid credentials")]
    BadCredentials { user: String },
    #[error("authentication failed: malformed {0} message")]
    Malformed(&'static str),
}

#[cfg(test)]
mod tests;
