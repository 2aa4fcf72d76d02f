//! SCRAM-SHA-256/512 exchanges: the server side for clients of the proxy, the
//! client side for the proxy logging in to a cluster, and the message parsing both
//! share.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::Rng;

use super::credentials::{decoy_entry, Credentials, ScramEntry};
use super::{constant_eq, AuthError, Hash, MAX_CLIENT_ITERATIONS, MIN_ITERATIONS};

/// The `k=value` attributes of a SCRAM message. Parts whose key is not one
/// character (Kafka's extensions such as `tokenauth=true`) are skipped. Splits
/// only at ASCII `,` and `=`, so any UTF-8 is safe.
pub(super) fn attributes(msg: &str) -> BTreeMap<char, String> {
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
pub(super) fn saslname_decode(s: &str) -> Option<String> {
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

pub(super) fn saslname_encode(s: &str) -> String {
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
pub(super) struct ServerFirst<'m> {
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

    pub(super) fn with_nonce(
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
    pub(super) fn read_server_first<'m>(
        &self,
        server_first: &'m [u8],
    ) -> Result<ServerFirst<'m>, String> {
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
    pub(super) fn final_with(&mut self, salted: &[u8], first: &ServerFirst<'_>) -> Vec<u8> {
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
