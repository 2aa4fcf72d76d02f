//! SASL: PLAIN and SCRAM-SHA-256/512 (RFC 5802, RFC 7677), as Kafka uses them.
//!
//! Server side (clients of the proxy): users come from a credentials file in which
//! every entry is salted SCRAM material (salt, iterations, StoredKey, ServerKey),
//! never a password. PLAIN logins are checked against the same material.
//!
//! Client side (the proxy towards a cluster): PLAIN, or a SCRAM exchange with the
//! password read from an environment variable or a file when a connection opens.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

pub const PLAIN: &str = "PLAIN";
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_512: &str = "SCRAM-SHA-512";

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

    fn decoded(&self) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
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

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    fn entry(&self, user: &str, mechanism: &str) -> Option<&ScramEntry> {
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
    fn plain_candidates(&self, user: &str) -> (bool, Vec<(Hash, ScramEntry)>) {
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
    fn typical_entry(&self, mechanism: &str) -> (usize, u32) {
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
fn check_candidates(known: bool, candidates: &[(Hash, ScramEntry)], password: &str) -> bool {
    let mut matched = false;
    for (hash, entry) in candidates {
        matched |= entry.verify_password(*hash, password);
    }
    known && matched
}

/// Iterations below this are refused (RFC 7677 and Kafka both ask for 4096).
pub const MIN_ITERATIONS: u32 = 4096;
/// The most iterations the proxy derives for a cluster's server-first message.
/// Kafka brokers never ask for more than 16384; a broker asking for billions would
/// hold a thread for hours.
pub const MAX_CLIENT_ITERATIONS: u32 = 65_536;
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
fn decoy_entry(
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

/// Why a login failed. The message goes to the client as the SaslAuthenticate
/// error message and into the log; it never says which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed: invalid credentials")]
    BadCredentials { user: String },
    #[error("authentication failed: malformed {0} message")]
    Malformed(&'static str),
}

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

/// The `k=value` attributes of a SCRAM message. Parts whose key is not one
/// character (Kafka's extensions such as `tokenauth=true`) are skipped. Splits
/// only at ASCII `,` and `=`, so any UTF-8 is safe.
fn attributes(msg: &str) -> BTreeMap<char, String> {
    msg.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let mut chars = k.chars();
            match (chars.next(), chars.next()) {
                (Some(k), None) => Some((k, v.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// RFC 5802 saslname: `=2C` is `,`, `=3D` is `=`, any other `=` is malformed.
fn saslname_decode(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((head, tail)) = rest.split_once('=') {
        out.push_str(head);
        if let Some(t) = tail.strip_prefix("2C") {
            out.push(',');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("3D") {
            out.push('=');
            rest = t;
        } else {
            return None;
        }
    }
    out.push_str(rest);
    Some(out)
}

fn saslname_encode(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn nonce() -> String {
    let bytes: [u8; 18] = rand::rng().random();
    B64.encode(bytes)
}

/// The server side of one SCRAM exchange.
#[derive(Debug)]
pub enum ScramServer {
    /// After server-first: what the final message must prove.
    Sent {
        hash: Hash,
        user: String,
        /// The user's entry, or made-up material when `known` is false.
        entry: ScramEntry,
        known: bool,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
}

impl ScramServer {
    /// Handles client-first, returns the state and server-first. An unknown user
    /// gets made-up material shaped like a real user's (salt length, iterations),
    /// the same salt on every attempt, and the same checks in client-final; so
    /// the exchange looks the same until the proof fails.
    pub fn start(
        creds: &Credentials,
        mechanism: &str,
        client_first: &[u8],
    ) -> Result<(ScramServer, Vec<u8>), AuthError> {
        let malformed = AuthError::Malformed("SCRAM client-first");
        let hash = Hash::of_mechanism(mechanism).ok_or(AuthError::Malformed("SCRAM"))?;
        let text = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("SCRAM"))?;
        // gs2 header: `n` or `y` (no channel binding; `p=` asks for one, which is
        // not offered), then an empty authzid or `a=<saslname>`.
        let (cbind, rest) = text.split_once(',').ok_or(malformed.clone())?;
        if cbind != "n" && cbind != "y" {
            return Err(malformed);
        }
        let (authzid, bare) = rest.split_once(',').ok_or(malformed.clone())?;
        let authzid = match authzid {
            "" => None,
            a => Some(
                a.strip_prefix("a=")
                    .and_then(saslname_decode)
                    .ok_or(malformed.clone())?,
            ),
        };
        let attrs = attributes(bare);
        // `m` is a mandatory extension nobody defines: RFC 5802 says fail.
        if attrs.contains_key(&'m') {
            return Err(malformed);
        }
        let (Some(user), Some(client_nonce)) = (attrs.get(&'n'), attrs.get(&'r')) else {
            return Err(malformed);
        };
        let user = saslname_decode(user).ok_or(malformed.clone())?;
        if client_nonce.is_empty() {
            return Err(malformed);
        }
        if authzid.is_some_and(|a| a != user) {
            return Err(AuthError::BadCredentials { user });
        }
        // Computed whether or not the user exists, so both cost the same.
        let (salt_len, iterations) = creds.typical_entry(mechanism);
        let decoy = decoy_entry(hash, mechanism, &user, salt_len, iterations);
        let (entry, known) = match creds.entry(&user, mechanism) {
            Some(e) => (e.clone(), true),
            None => (decoy, false),
        };
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!("r={nonce},s={},i={}", entry.salt, entry.iterations);
        Ok((
            ScramServer::Sent {
                hash,
                user,
                entry,
                known,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first.into_bytes(),
        ))
    }

    /// Handles client-final: verifies the proof, returns (user, server-final).
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Vec<u8>), AuthError> {
        let ScramServer::Sent {
            hash,
            user,
            entry,
            known,
            client_first_bare,
            server_first,
            nonce,
        } = self;
        let text = std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("SCRAM"))?;
        let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
            return Err(AuthError::Malformed("SCRAM client-final"));
        };
        let attrs = attributes(without_proof);
        if attrs.get(&'r') != Some(&nonce) {
            return Err(AuthError::BadCredentials { user });
        }
        let bad = || AuthError::BadCredentials { user: user.clone() };
        // An unknown user's made-up entry goes through every step a real one does.
        let (_, stored_key, server_key) = entry.decoded().ok_or_else(bad)?;
        let proof = B64.decode(proof).map_err(|_| bad())?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hash.hmac(&stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(bad());
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if !constant_eq(&hash.digest(&client_key), &stored_key) || !known {
            return Err(bad());
        }
        let server_signature = hash.hmac(&server_key, auth_message.as_bytes());
        Ok((
            user,
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// A server-first message that passed the checks.
struct ServerFirst<'m> {
    text: &'m str,
    nonce: String,
    salt: Vec<u8>,
    iterations: u32,
}

/// The client side of one SCRAM exchange (the proxy logging in to a cluster).
pub struct ScramClient {
    hash: Hash,
    password: String,
    client_first_bare: String,
    nonce: String,
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    pub fn new(mechanism: &str, user: &str, password: &str) -> Option<(ScramClient, Vec<u8>)> {
        Self::with_nonce(mechanism, user, password, &nonce())
    }

    fn with_nonce(
        mechanism: &str,
        user: &str,
        password: &str,
        nonce: &str,
    ) -> Option<(ScramClient, Vec<u8>)> {
        let hash = Hash::of_mechanism(mechanism)?;
        let bare = format!("n={},r={nonce}", saslname_encode(user));
        let first = format!("n,,{bare}");
        Some((
            ScramClient {
                hash,
                password: password.to_string(),
                client_first_bare: bare,
                nonce: nonce.to_string(),
                expected_server_signature: None,
            },
            first.into_bytes(),
        ))
    }

    /// Takes server-first, returns client-final.
    pub fn respond(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        let first = self.read_server_first(server_first)?;
        let salted = self
            .hash
            .salted_password(&self.password, &first.salt, first.iterations);
        Ok(self.final_with(&salted, &first))
    }

    /// Checks server-first; all of `respond` but the derivation.
    fn read_server_first<'m>(&self, server_first: &'m [u8]) -> Result<ServerFirst<'m>, String> {
        let text = std::str::from_utf8(server_first).map_err(|e| e.to_string())?;
        let attrs = attributes(text);
        let (Some(nonce), Some(salt), Some(iterations)) =
            (attrs.get(&'r'), attrs.get(&'s'), attrs.get(&'i'))
        else {
            return Err(format!(
                "unexpected server-first message `{}`",
                text.escape_debug()
            ));
        };
        if !nonce.starts_with(&self.nonce) {
            return Err("server nonce does not extend ours".into());
        }
        let salt = B64.decode(salt).map_err(|e| e.to_string())?;
        let iterations: u32 = iterations.parse().map_err(|_| "bad iteration count")?;
        if !(MIN_ITERATIONS..=MAX_CLIENT_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "server asks for {iterations} iterations; accepted are {MIN_ITERATIONS} to {MAX_CLIENT_ITERATIONS}"
            ));
        }
        Ok(ServerFirst {
            text,
            nonce: nonce.clone(),
            salt,
            iterations,
        })
    }

    /// Client-final from the salted password.
    fn final_with(&mut self, salted: &[u8], first: &ServerFirst<'_>) -> Vec<u8> {
        let client_key = self.hash.hmac(salted, b"Client Key");
        let stored_key = self.hash.digest(&client_key);
        let without_proof = format!("c=biws,r={}", first.nonce);
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, first.text);
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = self.hash.hmac(salted, b"Server Key");
        self.expected_server_signature = Some(self.hash.hmac(&server_key, auth_message.as_bytes()));
        format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
    }

    /// Checks server-final: the server proved it knows the password too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).map_err(|e| e.to_string())?;
        let attrs = attributes(text);
        if let Some(e) = attrs.get(&'e') {
            return Err(format!("server refused: {}", e.escape_debug()));
        }
        let sig = attrs
            .get(&'v')
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| format!("unexpected server-final message `{}`", text.escape_debug()))?;
        match &self.expected_server_signature {
            Some(expected) if constant_eq(expected, &sig) => Ok(()),
            _ => Err("server signature does not match".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// PBKDF2 runs on this thread: (hash, iterations) of each.
        static DERIVATIONS: RefCell<Vec<(Hash, u32)>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn count_derivation(hash: Hash, iterations: u32) {
        DERIVATIONS.with(|d| d.borrow_mut().push((hash, iterations)));
    }

    /// The derivations `f` ran, sorted.
    fn derivations_of(f: impl FnOnce()) -> Vec<(Hash, u32)> {
        DERIVATIONS.with(|d| d.borrow_mut().clear());
        f();
        let mut out = DERIVATIONS.with(|d| std::mem::take(&mut *d.borrow_mut()));
        out.sort_by_key(|(h, i)| (*h as u8, *i));
        out
    }

    #[test]
    fn rfc7677_sha256_exchange() {
        // RFC 7677 section 3: user "user", password "pencil".
        let (mut client, first) =
            ScramClient::with_nonce(SCRAM_SHA_256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO")
                .unwrap();
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = client.respond(server_first).unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(client.verify(b"v=AAAA").is_err());
    }

    fn creds() -> Credentials {
        let mut c = Credentials::default();
        let mut alice = BTreeMap::new();
        alice.insert(
            SCRAM_SHA_512.to_string(),
            ScramEntry::new(Hash::Sha512, "alice-secret", 4096),
        );
        alice.insert(
            SCRAM_SHA_256.to_string(),
            ScramEntry::new(Hash::Sha256, "alice-secret", 4096),
        );
        c.users.insert("alice".into(), alice);
        c
    }

    #[test]
    fn server_and_client_agree_and_wrong_passwords_fail() {
        let creds = creds();
        for mechanism in [SCRAM_SHA_256, SCRAM_SHA_512] {
            let (mut client, first) = ScramClient::new(mechanism, "alice", "alice-secret").unwrap();
            let (server, server_first) = ScramServer::start(&creds, mechanism, &first).unwrap();
            let fin = client.respond(&server_first).unwrap();
            let (user, server_final) = server.finish(&fin).unwrap();
            assert_eq!(user, "alice");
            client.verify(&server_final).unwrap();

            let (mut client, first) = ScramClient::new(mechanism, "alice", "wrong").unwrap();
            let (server, server_first) = ScramServer::start(&creds, mechanism, &first).unwrap();
            let fin = client.respond(&server_first).unwrap();
            assert!(matches!(
                server.finish(&fin),
                Err(AuthError::BadCredentials { .. })
            ));

            let (mut client, first) = ScramClient::new(mechanism, "mallory", "x").unwrap();
            let (server, server_first) = ScramServer::start(&creds, mechanism, &first).unwrap();
            let fin = client.respond(&server_first).unwrap();
            assert!(matches!(
                server.finish(&fin),
                Err(AuthError::BadCredentials { .. })
            ));
        }
    }

    #[test]
    fn plain_checks_against_salted_entries() {
        let creds = creds();
        assert_eq!(
            plain_login(&creds, b"\0alice\0alice-secret").unwrap(),
            "alice"
        );
        assert!(plain_login(&creds, b"\0alice\0nope").is_err());
        assert!(plain_login(&creds, b"\0bob\0alice-secret").is_err());
        assert!(matches!(
            plain_login(&creds, b"garbage"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn credentials_file_round_trip_holds_no_password() {
        let text = toml::to_string(&creds()).unwrap();
        assert!(!text.contains("alice-secret"));
        let back: Credentials = toml::from_str(&text).unwrap();
        assert!(back.check_plain("alice", "alice-secret"));
    }

    /// Made-up material with a chosen shape, without running PBKDF2.
    fn entry_with(salt_len: usize, iterations: u32, fill: u8) -> ScramEntry {
        ScramEntry {
            salt: B64.encode(vec![fill; salt_len]),
            iterations,
            stored_key: B64.encode([fill; 32]),
            server_key: B64.encode([fill; 32]),
        }
    }

    fn server_first_of(creds: &Credentials, mechanism: &str, user: &str) -> (Vec<u8>, u32) {
        let first = format!("n,,n={user},r=abc");
        let (_, sf) = ScramServer::start(creds, mechanism, first.as_bytes()).unwrap();
        let attrs = attributes(std::str::from_utf8(&sf).unwrap());
        (
            B64.decode(&attrs[&'s']).unwrap(),
            attrs[&'i'].parse().unwrap(),
        )
    }

    #[test]
    fn unknown_users_get_salts_and_iterations_like_real_users() {
        let mut creds = Credentials::default();
        for (i, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
            let mut e = BTreeMap::new();
            e.insert(SCRAM_SHA_256.to_string(), entry_with(32, 10_000, i as u8));
            creds.users.insert(name.into(), e);
        }
        let (alice_salt, alice_i) = server_first_of(&creds, SCRAM_SHA_256, "alice");
        assert_eq!((alice_salt, alice_i), (vec![0; 32], 10_000));

        let (mallory, i) = server_first_of(&creds, SCRAM_SHA_256, "mallory");
        assert_eq!(mallory.len(), 32, "same salt length as the real users");
        assert_eq!(i, 10_000, "same iterations as the real users");
        let (again, _) = server_first_of(&creds, SCRAM_SHA_256, "mallory");
        assert_eq!(mallory, again, "an unknown user's salt is stable too");
        let (trudy, _) = server_first_of(&creds, SCRAM_SHA_256, "trudy");
        assert_ne!(mallory, trudy);
        // A mechanism nobody has takes the shape of the other entries.
        let (other, i) = server_first_of(&creds, SCRAM_SHA_512, "mallory");
        assert_eq!((other.len(), i), (32, 10_000));
    }

    #[test]
    fn plain_costs_the_same_for_unknown_users() {
        let mut creds = Credentials::default();
        for name in ["alice", "bob"] {
            let mut e = BTreeMap::new();
            e.insert(
                SCRAM_SHA_256.to_string(),
                ScramEntry::new(Hash::Sha256, "pw", 5),
            );
            e.insert(
                SCRAM_SHA_512.to_string(),
                ScramEntry::new(Hash::Sha512, "pw", 7),
            );
            creds.users.insert(name.into(), e);
        }
        let wrong = derivations_of(|| assert!(plain_login(&creds, b"\0alice\0nope").is_err()));
        let good = derivations_of(|| assert!(plain_login(&creds, b"\0alice\0pw").is_ok()));
        let unknown = derivations_of(|| assert!(plain_login(&creds, b"\0zed\0pw").is_err()));
        let authzid = derivations_of(|| assert!(plain_login(&creds, b"bob\0alice\0pw").is_err()));
        let expected = vec![(Hash::Sha256, 5), (Hash::Sha512, 7)];
        assert_eq!(wrong, expected);
        assert_eq!(good, expected, "no early exit on a match");
        assert_eq!(
            unknown, expected,
            "an unknown user costs what a real one does"
        );
        assert_eq!(authzid, expected);
    }

    #[test]
    fn scram_final_of_unknown_users_fails_through_the_same_checks() {
        let mut creds = Credentials::default();
        let mut e = BTreeMap::new();
        e.insert(SCRAM_SHA_256.to_string(), entry_with(24, 4096, 1));
        creds.users.insert("alice".into(), e);
        let (server, sf) = ScramServer::start(&creds, SCRAM_SHA_256, b"n,,n=zed,r=abc").unwrap();
        let ScramServer::Sent {
            known, ref entry, ..
        } = server;
        assert!(!known);
        assert!(entry.decoded().is_some(), "decoy material is well-formed");
        let nonce = attributes(std::str::from_utf8(&sf).unwrap())[&'r'].clone();
        let fin = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 32]));
        assert!(matches!(
            server.finish(fin.as_bytes()),
            Err(AuthError::BadCredentials { .. })
        ));
    }

    #[test]
    fn multibyte_characters_at_attribute_positions_are_malformed_not_panics() {
        let creds = creds();
        // `kv[2..]` used to slice inside the three-byte `€`.
        for first in [
            "n,,n=alice,r=abc,\u{20ac}=x",
            "n,,\u{20ac}=alice,r=abc",
            "n,,\u{20ac}",
            "\u{20ac},,n=alice,r=abc",
            "n,\u{20ac}=a,n=alice,r=abc",
            "n,,n=al\u{20ac}ce,r=\u{1d11e}",
        ] {
            let _ = ScramServer::start(&creds, SCRAM_SHA_256, first.as_bytes());
        }
        let (server, sf) = ScramServer::start(&creds, SCRAM_SHA_256, b"n,,n=alice,r=abc").unwrap();
        let nonce = attributes(std::str::from_utf8(&sf).unwrap())[&'r'].clone();
        let fin = format!("c=biws,r={nonce},\u{20ac}=1,p=AAAA");
        assert!(server.finish(fin.as_bytes()).is_err());
        let mut client = ScramClient::with_nonce(SCRAM_SHA_256, "u", "p", "n")
            .unwrap()
            .0;
        assert!(client.respond("\u{20ac}=1,r=n1".as_bytes()).is_err());
        assert!(client.verify("\u{20ac}=1".as_bytes()).is_err());
    }

    #[test]
    fn saslnames_and_gs2_headers_are_checked() {
        let creds = creds();
        let start = |m: &str| ScramServer::start(&creds, SCRAM_SHA_256, m.as_bytes());
        assert!(start("n,,n=alice,r=abc").is_ok());
        assert!(start("y,,n=alice,r=abc").is_ok());
        assert!(start("n,a=alice,n=alice,r=abc").is_ok());
        assert!(matches!(
            start("n,a=bob,n=alice,r=abc"),
            Err(AuthError::BadCredentials { .. })
        ));
        for bad in [
            "p=tls-unique,,n=alice,r=abc",
            "n,x,n=alice,r=abc",
            "n,,n=al=ice,r=abc",
            "n,,n=alice,r=",
            "n,,m=ext,n=alice,r=abc",
            "n,,n=alice",
            "n,,r=abc",
        ] {
            assert!(
                matches!(start(bad), Err(AuthError::Malformed(_))),
                "{bad:?} is malformed"
            );
        }
        assert_eq!(saslname_decode("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(saslname_decode("=3D2C").as_deref(), Some("=2C"));
        assert_eq!(saslname_decode("a=").as_deref(), None);
        assert_eq!(
            saslname_decode(&saslname_encode("x=,y")).as_deref(),
            Some("x=,y")
        );
    }

    #[test]
    fn the_client_refuses_absurd_iteration_counts() {
        for i in ["1", "4095", "65537", "4294967295"] {
            let (mut client, _) =
                ScramClient::with_nonce(SCRAM_SHA_256, "user", "pencil", "abc").unwrap();
            let sf = format!("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={i}");
            let d = derivations_of(|| assert!(client.respond(sf.as_bytes()).is_err()));
            assert!(d.is_empty(), "no derivation for i={i}");
        }
    }

    /// splitmix64: deterministic, so a failure names its seed and input.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Pieces that matter to the parsers: separators, escapes, multi-byte UTF-8
    /// (2, 3 and 4 bytes), invalid UTF-8, and attribute starts.
    const PIECES: &[&[u8]] = &[
        b",",
        b"=",
        b"\0",
        b",,",
        b"=2C",
        b"=3D",
        b"=",
        b",p=",
        b"r=",
        b"n=",
        b"a=",
        b"c=",
        b"m=",
        b"s=",
        b"i=",
        b"n,,",
        b"y,,",
        b"p=",
        "\u{e9}".as_bytes(),
        "\u{20ac}".as_bytes(),
        "\u{1d11e}".as_bytes(),
        "\u{fffd}".as_bytes(),
        b"\xff",
        b"\xe2\x82",
        b"\xc3",
        b"biws",
        b"alice",
        b"AAAA",
        b"==",
        ",\u{20ac}=".as_bytes(),
        "\u{1d11e}=".as_bytes(),
        ",\u{e9}=".as_bytes(),
    ];

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut m = seed.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(m.len() + 1);
            match rng.below(7) {
                // Replace an attribute's key (the byte after a `,`, or the
                // first) with a piece: where slicing by byte offsets broke.
                6 => {
                    let commas: Vec<usize> = std::iter::once(0)
                        .chain(
                            m.iter()
                                .enumerate()
                                .filter(|(_, b)| **b == b',')
                                .map(|(i, _)| i + 1),
                        )
                        .filter(|i| *i < m.len())
                        .collect();
                    if !commas.is_empty() {
                        let k = commas[rng.below(commas.len())];
                        let p = PIECES[rng.below(PIECES.len())];
                        m.splice(k..k + 1, p.iter().copied());
                    }
                }
                0 => m.insert(at, rng.next() as u8),
                1 => {
                    let p = PIECES[rng.below(PIECES.len())];
                    m.splice(at..at, p.iter().copied());
                }
                2 if at < m.len() => m[at] ^= 1 << rng.below(8),
                3 => m.truncate(at),
                4 if at < m.len() => {
                    let end = (at + rng.below(6)).min(m.len());
                    m.drain(at..end);
                }
                _ => {
                    let p = PIECES[rng.below(PIECES.len())];
                    m.extend_from_slice(p);
                }
            }
        }
        m
    }

    fn random_message(rng: &mut Rng) -> Vec<u8> {
        let mut m = Vec::new();
        for _ in 0..rng.below(12) {
            if rng.below(3) == 0 {
                m.push(rng.next() as u8);
            } else {
                m.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
        }
        m
    }

    fn no_panic(what: &str, input: &[u8], f: impl FnOnce()) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        assert!(
            r.is_ok(),
            "{what} panicked on {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn server_side_parsing_survives_random_and_mutated_messages() {
        // Real SCRAM entries (derived once) and, for PLAIN, cheap ones (1
        // iteration) so thousands of checks stay fast; an unknown user's decoy
        // copies that shape.
        let creds = creds();
        let mut plain_creds = Credentials::default();
        let mut alice = BTreeMap::new();
        alice.insert(
            SCRAM_SHA_256.to_string(),
            ScramEntry::new(Hash::Sha256, "pw", 1),
        );
        alice.insert(
            SCRAM_SHA_512.to_string(),
            ScramEntry::new(Hash::Sha512, "pw", 1),
        );
        plain_creds.users.insert("alice".into(), alice);
        // The client's salted passwords, derived once: the exchange below skips
        // PBKDF2 on the client side.
        let salted = |hash: Hash, m: &str| {
            let e = creds.entry("alice", m).unwrap();
            hash.salted_password("alice-secret", &B64.decode(&e.salt).unwrap(), e.iterations)
        };
        let salted = [
            salted(Hash::Sha256, SCRAM_SHA_256),
            salted(Hash::Sha512, SCRAM_SHA_512),
        ];
        let mut rng = Rng(0x5a5a_1234);
        let firsts: &[&[u8]] = &[
            b"n,,n=alice,r=abcdef",
            b"n,a=alice,n=alice,r=abcdef",
            b"y,,n=mallory,r=x",
            b"n,,n=a=2Cb=3D,r=x,tokenauth=true",
        ];
        let plains: &[&[u8]] = &[b"\0alice\0pw", b"alice\0alice\0x", b"\0\0", b"\0zed\0pw"];
        for round in 0..4000 {
            let mechanism = [SCRAM_SHA_256, SCRAM_SHA_512][round % 2];
            let first = if round % 4 == 3 {
                random_message(&mut rng)
            } else {
                let seed = firsts[rng.below(firsts.len())];
                mutate(&mut rng, seed)
            };
            no_panic("client-first", &first, || {
                let _ = ScramServer::start(&creds, mechanism, &first);
            });

            // Client-final against a real exchange: the honest final, mutated, or
            // random bytes.
            let (mut client, good_first) =
                ScramClient::new(mechanism, "alice", "alice-secret").unwrap();
            let (server, server_first) =
                ScramServer::start(&creds, mechanism, &good_first).unwrap();
            let read = client.read_server_first(&server_first).unwrap();
            let honest = client.final_with(&salted[round % 2], &read);
            if round == 0 {
                let (user, server_final) = ScramServer::start(&creds, mechanism, &good_first)
                    .and_then(|(s, sf)| {
                        let read = client.read_server_first(&sf).unwrap();
                        let fin = client.final_with(&salted[0], &read);
                        s.finish(&fin)
                    })
                    .unwrap();
                assert_eq!(user, "alice", "the honest exchange works");
                client.verify(&server_final).unwrap();
            }
            let fin = match round % 3 {
                0 => random_message(&mut rng),
                _ => mutate(&mut rng, &honest),
            };
            no_panic("client-final", &fin, || {
                if let Ok((_, server_final)) = server.finish(&fin) {
                    let _ = client.verify(&server_final);
                }
            });

            let plain = if round % 2 == 0 {
                random_message(&mut rng)
            } else {
                let seed = plains[rng.below(plains.len())];
                mutate(&mut rng, seed)
            };
            no_panic("PLAIN", &plain, || {
                let _ = plain_login(&plain_creds, &plain);
            });

            // And the proxy's own client side against hostile server messages.
            let hostile = mutate(&mut rng, &server_first);
            no_panic("server-first", &hostile, || {
                let (mut c, _) = ScramClient::new(mechanism, "alice", "pw").unwrap();
                if let Ok(read) = c.read_server_first(&hostile) {
                    let _ = c.final_with(&salted[round % 2], &read);
                }
                let _ = c.verify(&hostile);
            });
        }
    }
}
