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

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
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
                if entry.decoded().is_none() || entry.iterations < 4096 {
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
        let Some(entries) = self.users.get(user) else {
            return false;
        };
        entries
            .iter()
            .any(|(m, e)| Hash::of_mechanism(m).is_some_and(|h| e.verify_password(h, password)))
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

/// PLAIN: `authzid NUL authcid NUL password`. Returns the user.
pub fn plain_login(creds: &Credentials, message: &[u8]) -> Result<String, AuthError> {
    let text = std::str::from_utf8(message).map_err(|_| AuthError::Malformed("PLAIN"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("PLAIN"));
    };
    if !authzid.is_empty() && authzid != user {
        return Err(AuthError::BadCredentials {
            user: user.to_string(),
        });
    }
    if creds.check_plain(user, password) {
        Ok(user.to_string())
    } else {
        Err(AuthError::BadCredentials {
            user: user.to_string(),
        })
    }
}

fn attributes(msg: &str) -> BTreeMap<char, String> {
    msg.split(',')
        .filter_map(|kv| {
            let mut chars = kv.chars();
            let k = chars.next()?;
            // The value starts after the key character and '=': a key may be a
            // multi-byte character (the message is the client's), so `kv[2..]`
            // could split it and panic.
            (chars.next() == Some('=')).then(|| (k, kv[k.len_utf8() + 1..].to_string()))
        })
        .collect()
}

fn saslname_decode(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
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
        entry: Option<ScramEntry>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
}

impl ScramServer {
    /// Handles client-first, returns the state and server-first. An unknown user
    /// gets a made-up salt so the exchange looks the same until the proof fails.
    pub fn start(
        creds: &Credentials,
        mechanism: &str,
        client_first: &[u8],
    ) -> Result<(ScramServer, Vec<u8>), AuthError> {
        let hash = Hash::of_mechanism(mechanism).ok_or(AuthError::Malformed("SCRAM"))?;
        let text = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("SCRAM"))?;
        // gs2 header: "n,," (no channel binding, no authzid) or "n,a=user,".
        let Some(bare) = text
            .strip_prefix("n,,")
            .or_else(|| text.strip_prefix("y,,"))
            .or_else(|| {
                text.split_once(",")
                    .and_then(|(_, rest)| rest.split_once(',').map(|(_, b)| b))
            })
        else {
            return Err(AuthError::Malformed("SCRAM client-first"));
        };
        let attrs = attributes(bare);
        let (Some(user), Some(client_nonce)) = (attrs.get(&'n'), attrs.get(&'r')) else {
            return Err(AuthError::Malformed("SCRAM client-first"));
        };
        let user = saslname_decode(user);
        let entry = creds.entry(&user, mechanism).cloned();
        let (salt, iterations) = match &entry {
            Some(e) => (e.salt.clone(), e.iterations),
            None => (
                B64.encode(hash.digest(user.as_bytes()))[..24].to_string(),
                4096,
            ),
        };
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!("r={nonce},s={salt},i={iterations}");
        Ok((
            ScramServer::Sent {
                hash,
                user,
                entry,
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
        let entry = entry.ok_or_else(bad)?;
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
        if !constant_eq(&hash.digest(&client_key), &stored_key) {
            return Err(bad());
        }
        let server_signature = hash.hmac(&server_key, auth_message.as_bytes());
        Ok((
            user,
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
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
        let text = std::str::from_utf8(server_first).map_err(|e| e.to_string())?;
        let attrs = attributes(text);
        let (Some(nonce), Some(salt), Some(iterations)) =
            (attrs.get(&'r'), attrs.get(&'s'), attrs.get(&'i'))
        else {
            return Err(format!("unexpected server-first message `{text}`"));
        };
        if !nonce.starts_with(&self.nonce) {
            return Err("server nonce does not extend ours".into());
        }
        let salt = B64.decode(salt).map_err(|e| e.to_string())?;
        let iterations: u32 = iterations.parse().map_err(|_| "bad iteration count")?;
        let salted = self.hash.salted_password(&self.password, &salt, iterations);
        let client_key = self.hash.hmac(&salted, b"Client Key");
        let stored_key = self.hash.digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = self.hash.hmac(&salted, b"Server Key");
        self.expected_server_signature = Some(self.hash.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final: the server proved it knows the password too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).map_err(|e| e.to_string())?;
        let attrs = attributes(text);
        if let Some(e) = attrs.get(&'e') {
            return Err(format!("server refused: {e}"));
        }
        let sig = attrs
            .get(&'v')
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| format!("unexpected server-final message `{text}`"))?;
        match &self.expected_server_signature {
            Some(expected) if constant_eq(expected, &sig) => Ok(()),
            _ => Err("server signature does not match".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
