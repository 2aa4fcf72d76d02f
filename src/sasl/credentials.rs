//! The credentials file: salted SCRAM material per user and mechanism, never a
//! password, and the made-up material that makes unknown users cost the same.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{constant_eq, Hash, MIN_ITERATIONS, SCRAM_SHA_512};

/// Stored SCRAM material for one user and mechanism (base64 in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramEntry {
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

impl ScramEntry {
    /// Derives the entry for `password` with a fresh random salt.
    pub fn new(hash: Hash, password: &str, iterations: u32) -> ScramEntry {
        let salt: [u8; 24] = rand::rng().random();
        let salted = hash.salted_password(password, &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let server_key = hash.hmac(&salted, b"Server Key");
        ScramEntry {
            salt: B64.encode(salt),
            iterations,
            stored_key: B64.encode(hash.digest(&client_key)),
            server_key: B64.encode(server_key),
        }
    }

    pub(super) fn decoded(&self) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        Some((
            B64.decode(&self.salt).ok()?,
            B64.decode(&self.stored_key).ok()?,
            B64.decode(&self.server_key).ok()?,
        ))
    }

    /// Whether `password` is this entry's password (for PLAIN logins).
    pub fn verify_password(&self, hash: Hash, password: &str) -> bool {
        let Some((salt, stored, _)) = self.decoded() else {
            return false;
        };
        let salted = hash.salted_password(password, &salt, self.iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        constant_eq(&hash.digest(&client_key), &stored)
    }
}

/// The credentials file: `[users.<name>]` tables with one entry per mechanism.
///
/// ```toml
/// [users.alice.SCRAM-SHA-512]
/// salt = "..."
/// iterations = 4096
/// stored_key = "..."
/// server_key = "..."
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub users: BTreeMap<String, BTreeMap<String, ScramEntry>>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let creds: Credentials =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (user, entries) in &creds.users {
            for (mechanism, entry) in entries {
                if Hash::of_mechanism(mechanism).is_none() {
                    return Err(format!(
                        "{}: user `{user}`: `{mechanism}` is not SCRAM-SHA-256 or SCRAM-SHA-512",
                        path.display()
                    ));
                }
                if entry.decoded().is_none() || entry.iterations < MIN_ITERATIONS {
                    return Err(format!(
                        "{}: user `{user}` {mechanism}: salt and keys must be base64 and iterations at least 4096",
                        path.display()
                    ));
                }
            }
        }
        Ok(creds)
    }

    pub(super) fn entry(&self, user: &str, mechanism: &str) -> Option<&ScramEntry> {
        self.users.get(user)?.get(mechanism)
    }

    /// Checks a PLAIN login against any SCRAM entry of the user.
    pub fn check_plain(&self, user: &str, password: &str) -> bool {
        let (known, candidates) = self.plain_candidates(user);
        check_candidates(known, &candidates, password)
    }

    /// The entries a PLAIN login for `user` is checked against, and whether they
    /// are real. An unknown user (or one without a usable entry) gets made-up
    /// entries shaped like the typical user's, so the check costs the same.
    pub(super) fn plain_candidates(&self, user: &str) -> (bool, Vec<(Hash, ScramEntry)>) {
        // Computed for every login, known user or not, so that it costs the same.
        let shape = self.typical_shape();
        let real: Vec<(Hash, ScramEntry)> = self
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|(m, e)| Some((Hash::of_mechanism(m)?, e.clone())))
            .collect();
        if !real.is_empty() {
            return (true, real);
        }
        let decoys = shape
            .into_iter()
            .filter_map(|(m, salt_len, iterations)| {
                let hash = Hash::of_mechanism(&m)?;
                Some((hash, decoy_entry(hash, &m, user, salt_len, iterations)))
            })
            .collect();
        (false, decoys)
    }

    /// The (decoded salt length, iterations) most entries of `mechanism` have, or
    /// most entries of any mechanism when none is of that one.
    pub(super) fn typical_entry(&self, mechanism: &str) -> (usize, u32) {
        let mut this: BTreeMap<(usize, u32), usize> = BTreeMap::new();
        let mut all: BTreeMap<(usize, u32), usize> = BTreeMap::new();
        for (m, e) in self.users.values().flatten() {
            let key = (base64_decoded_len(&e.salt), e.iterations);
            *all.entry(key).or_default() += 1;
            if m == mechanism {
                *this.entry(key).or_default() += 1;
            }
        }
        most_common(this)
            .or_else(|| most_common(all))
            .unwrap_or((DEFAULT_SALT_LEN, MIN_ITERATIONS))
    }

    /// The set of (mechanism, decoded salt length, iterations) most users have.
    fn typical_shape(&self) -> Vec<(String, usize, u32)> {
        let mut shapes: BTreeMap<Vec<(String, usize, u32)>, usize> = BTreeMap::new();
        for entries in self.users.values() {
            let shape: Vec<_> = entries
                .iter()
                .filter(|(m, _)| Hash::of_mechanism(m).is_some())
                .map(|(m, e)| (m.clone(), base64_decoded_len(&e.salt), e.iterations))
                .collect();
            if !shape.is_empty() {
                *shapes.entry(shape).or_default() += 1;
            }
        }
        most_common(shapes)
            .unwrap_or_else(|| vec![(SCRAM_SHA_512.to_string(), DEFAULT_SALT_LEN, MIN_ITERATIONS)])
    }
}

/// The key with the highest count; ties go to the smallest key, so the answer
/// does not change from one login to the next.
fn most_common<K: Ord>(counts: BTreeMap<K, usize>) -> Option<K> {
    let mut best: Option<(K, usize)> = None;
    for (k, n) in counts {
        if best.as_ref().is_none_or(|(_, b)| n > *b) {
            best = Some((k, n));
        }
    }
    best.map(|(k, _)| k)
}

/// The decoded length of valid padded base64 (all the file holds, see `load`).
fn base64_decoded_len(s: &str) -> usize {
    s.trim_end_matches('=').len() * 3 / 4
}

/// Runs every derivation, with no early exit, so a good password, a wrong one
/// and an unknown user all cost the same for the same entries.
pub(super) fn check_candidates(
    known: bool,
    candidates: &[(Hash, ScramEntry)],
    password: &str,
) -> bool {
    let mut matched = false;
    for (hash, entry) in candidates {
        matched |= entry.verify_password(*hash, password);
    }
    known && matched
}

const DEFAULT_SALT_LEN: usize = 24;

/// A secret drawn once per process. It keys the made-up SCRAM material of unknown
/// users, so one unknown name gets the same salt on every attempt (as a real user
/// does) while nobody can compute it. It changes on restart, which a real user's
/// salt does not; hiding that as well would take a configured secret.
fn process_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| rand::rng().random())
}

/// `len` bytes of HMAC-SHA-256(process secret, counter | label | mechanism | user).
fn decoy_bytes(label: &str, mechanism: &str, user: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut m = Hmac::<Sha256>::new_from_slice(process_secret()).expect("any key length");
        m.update(&counter.to_be_bytes());
        for part in [label, mechanism, user] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part.as_bytes());
        }
        out.extend_from_slice(&m.finalize().into_bytes());
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// SCRAM material for a user who does not exist: the typical salt length and
/// iterations, keys nobody knows the password of.
pub(super) fn decoy_entry(
    hash: Hash,
    mechanism: &str,
    user: &str,
    salt_len: usize,
    iterations: u32,
) -> ScramEntry {
    ScramEntry {
        salt: B64.encode(decoy_bytes("salt", mechanism, user, salt_len)),
        iterations,
        stored_key: B64.encode(decoy_bytes("stored-key", mechanism, user, hash.len())),
        server_key: B64.encode(decoy_bytes("server-key", mechanism, user, hash.len())),
    }
}
