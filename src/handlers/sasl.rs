//! SASL termination (SaslHandshake v1, SaslAuthenticate v0–v2) for clients of the
//! proxy. Until a connection has authenticated, only ApiVersions and these two are
//! answered; anything else closes it, as a broker does. A failed login is answered
//! with SASL_AUTHENTICATION_FAILED and a message that does not say which part was
//! wrong, then the connection is closed.
//!
//! Guessing passwords is slowed down in three ways, none of which can lock a
//! legitimate client out (a per-address failure budget could: many clients share
//! an address behind NAT, and one bad actor there would shut them all out):
//! - every failed SaslAuthenticate answer is held back [`FAILURE_DELAY`], and the
//!   connection is closed after it, so one connection tries one password per
//!   delay and each try costs a new connection. Across connections the rate is
//!   still the listener's connection limit per delay (1000 connections: about
//!   3300 guesses a second), so this slows, it does not stop, a determined
//!   guesser: long random passwords remain the defence;
//! - PBKDF2 (PLAIN logins) runs on tokio's blocking threads, at most
//!   [`max_derivations`] at once, so a flood of logins neither stalls the async
//!   runtime nor takes every blocking thread; the rest wait their turn (which
//!   also caps PLAIN guesses at cores / derivation time). SCRAM needs no PBKDF2
//!   on the server: the client derives, the server only checks HMACs;
//! - unknown users cost and look the same as real ones (see `crate::sasl`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::Session;
use crate::codec::{self, DecodeError, RequestFrame};
use crate::sasl::{self, AuthError, Credentials, PlainAttempt, ScramServer};
use tokio::sync::Semaphore;

const UNSUPPORTED_SASL_MECHANISM: i16 = ResponseError::UnsupportedSaslMechanism.code();
const ILLEGAL_SASL_STATE: i16 = ResponseError::IllegalSaslState.code();
const SASL_AUTHENTICATION_FAILED: i16 = ResponseError::SaslAuthenticationFailed.code();

/// What the listener offers, rebuilt on every reload (users file re-read).
#[derive(Debug)]
pub struct ServerSasl {
    pub mechanisms: Vec<String>,
    pub credentials: Credentials,
}

/// Where a connection stands in its SASL exchange.
#[derive(Debug, Default)]
pub enum SaslState {
    #[default]
    Start,
    /// Handshake done with this mechanism.
    Mechanism(String),
    /// SCRAM server-first sent.
    Scram(ScramServer),
    Authenticated,
    /// The answer being sent is the last one on this connection.
    Failed(String),
}

/// The ranges advertised for the SASL APIs when the listener requires SASL.
pub const ADVERTISED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// How long a failed SaslAuthenticate answer waits before it is sent. Fixed, so
/// it says nothing about why the login failed; long enough that one connection
/// can try only a few passwords a second, short enough that a client with a
/// wrong password hears so promptly.
pub const FAILURE_DELAY: Duration = Duration::from_millis(300);

/// How many key derivations may run at once: one per core, since PBKDF2 is pure
/// CPU and more at once only makes each slower.
pub fn max_derivations() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn derivations() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(max_derivations())))
}

/// Checks a PLAIN login on a blocking thread once a derivation permit is free.
/// The permit goes with the work, so it stays taken until the derivation ends
/// even if this connection goes away meanwhile.
async fn check_plain(attempt: PlainAttempt) -> Result<String, AuthError> {
    let failed = AuthError::BadCredentials {
        user: attempt.user().to_string(),
    };
    let Ok(permit) = derivations().clone().acquire_owned().await else {
        return Err(failed);
    };
    tokio::task::spawn_blocking(move || {
        let outcome = attempt.check();
        drop(permit);
        outcome
    })
    .await
    .unwrap_or(Err(failed))
}

/// A client-supplied string made safe for one log line.
fn escaped(s: &str) -> String {
    s.escape_debug().to_string()
}

/// Handles SaslHandshake / SaslAuthenticate.
pub async fn handle(
    server: &ServerSasl,
    session: &mut Session,
    frame: &RequestFrame,
) -> Result<Bytes, DecodeError> {
    match frame.api {
        ApiKey::SaslHandshake => {
            let req: SaslHandshakeRequest = frame.decode()?;
            let offered: Vec<StrBytes> = server
                .mechanisms
                .iter()
                .map(|m| StrBytes::from_string(m.clone()))
                .collect();
            let mechanism = req.mechanism.to_string();
            let error = if !matches!(session.sasl, SaslState::Start) {
                ILLEGAL_SASL_STATE
            } else if server.mechanisms.contains(&mechanism) {
                session.sasl = SaslState::Mechanism(mechanism);
                0
            } else {
                session.sasl = SaslState::Failed(format!(
                    "client asked for SASL mechanism `{}`, which is not enabled",
                    escaped(&mechanism)
                ));
                UNSUPPORTED_SASL_MECHANISM
            };
            codec::encode_response(
                frame.api,
                frame.version(),
                frame.correlation_id(),
                &SaslHandshakeResponse::default()
                    .with_error_code(error)
                    .with_mechanisms(offered),
            )
        }
        ApiKey::SaslAuthenticate => {
            let req: SaslAuthenticateRequest = frame.decode()?;
            let state = std::mem::take(&mut session.sasl);
            let outcome: Result<(Bytes, Option<String>), AuthError> = match state {
                SaslState::Mechanism(m) if m == sasl::PLAIN => {
                    match sasl::plain_attempt(&server.credentials, &req.auth_bytes) {
                        Ok(attempt) => check_plain(attempt)
                            .await
                            .map(|user| (Bytes::new(), Some(user))),
                        Err(e) => Err(e),
                    }
                }
                SaslState::Mechanism(m) => {
                    ScramServer::start(&server.credentials, &m, &req.auth_bytes).map(
                        |(scram, first)| {
                            session.sasl = SaslState::Scram(scram);
                            (Bytes::from(first), None)
                        },
                    )
                }
                SaslState::Scram(scram) => scram
                    .finish(&req.auth_bytes)
                    .map(|(user, fin)| (Bytes::from(fin), Some(user))),
                _ => Err(AuthError::Malformed("out-of-order SASL")),
            };
            let resp = match outcome {
                Ok((bytes, user)) => {
                    if let Some(user) = user {
                        tracing::debug!(user = %escaped(&user), "SASL authentication succeeded");
                        session.authenticated(user);
                    }
                    SaslAuthenticateResponse::default().with_auth_bytes(bytes)
                }
                Err(e) => {
                    let who = match &e {
                        AuthError::BadCredentials { user } => format!("user `{}`", escaped(user)),
                        AuthError::Malformed(_) => "a client".to_string(),
                    };
                    session.sasl = SaslState::Failed(format!("{who}: {e}"));
                    tokio::time::sleep(FAILURE_DELAY).await;
                    SaslAuthenticateResponse::default()
                        .with_error_code(SASL_AUTHENTICATION_FAILED)
                        .with_error_message(Some(StrBytes::from_string(e.to_string())))
                }
            };
            codec::encode_response(frame.api, frame.version(), frame.correlation_id(), &resp)
        }
        _ => unreachable!("only SASL APIs come here"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use kafka_protocol::messages::RequestHeader;

    use super::*;
    use crate::sasl::{Hash, ScramEntry};

    fn server() -> ServerSasl {
        let mut credentials = Credentials::default();
        let mut alice = BTreeMap::new();
        // Few iterations: these tests are about the handler, not PBKDF2's cost.
        alice.insert(
            sasl::SCRAM_SHA_256.to_string(),
            ScramEntry::new(Hash::Sha256, "pw", 2),
        );
        credentials.users.insert("alice".into(), alice);
        ServerSasl {
            mechanisms: vec![sasl::PLAIN.into(), sasl::SCRAM_SHA_256.into()],
            credentials,
        }
    }

    fn session() -> Session {
        Session::new("192.0.2.1".parse().unwrap(), None)
    }

    fn frame<T: kafka_protocol::protocol::Encodable>(
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> RequestFrame {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7);
        codec::parse_request(codec::encode_request(api, &header, body).unwrap()).unwrap()
    }

    async fn handshake(server: &ServerSasl, session: &mut Session, mechanism: &str) -> i16 {
        let f = frame(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_string(mechanism.into())),
        );
        let out = handle(server, session, &f).await.unwrap();
        let (_, r) =
            codec::decode_response::<SaslHandshakeResponse>(ApiKey::SaslHandshake, 1, out).unwrap();
        r.error_code
    }

    async fn authenticate(
        server: &ServerSasl,
        session: &mut Session,
        bytes: &[u8],
    ) -> SaslAuthenticateResponse {
        let f = frame(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(bytes)),
        );
        let out = handle(server, session, &f).await.unwrap();
        let (_, r) =
            codec::decode_response::<SaslAuthenticateResponse>(ApiKey::SaslAuthenticate, 2, out)
                .unwrap();
        r
    }

    fn reason(session: &Session) -> &str {
        match &session.sasl {
            SaslState::Failed(r) => r,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_login_is_answered_only_after_the_delay() {
        let server = server();
        let mut s = session();
        assert_eq!(handshake(&server, &mut s, sasl::SCRAM_SHA_256).await, 0);
        // A sleep never ends early, so this bound cannot flake.
        let started = Instant::now();
        let r = authenticate(&server, &mut s, b"garbage").await;
        assert!(started.elapsed() >= FAILURE_DELAY);
        assert_eq!(r.error_code, SASL_AUTHENTICATION_FAILED);
        assert!(matches!(s.sasl, SaslState::Failed(_)));
    }

    #[tokio::test]
    async fn plain_logins_work_through_the_blocking_pool() {
        let server = server();
        let mut s = session();
        assert_eq!(handshake(&server, &mut s, sasl::PLAIN).await, 0);
        let r = authenticate(&server, &mut s, b"\0alice\0pw").await;
        assert_eq!(r.error_code, 0);
        assert!(matches!(s.sasl, SaslState::Authenticated));
        assert_eq!(s.principal.as_deref(), Some("alice"));

        let mut s = session();
        handshake(&server, &mut s, sasl::PLAIN).await;
        let r = authenticate(&server, &mut s, b"\0alice\0wrong").await;
        assert_eq!(r.error_code, SASL_AUTHENTICATION_FAILED);
    }

    #[tokio::test]
    async fn a_plain_login_waits_for_a_derivation_permit() {
        let server = server();
        let mut s = session();
        handshake(&server, &mut s, sasl::PLAIN).await;
        let all = derivations()
            .clone()
            .acquire_many_owned(max_derivations() as u32)
            .await
            .unwrap();
        let f = frame(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0alice\0pw")),
        );
        let login = handle(&server, &mut s, &f);
        tokio::pin!(login);
        // Polled once: it parses, then waits for a permit. Given time, it still
        // waits (without the permit it would have derived and answered by then).
        for _ in 0..2 {
            tokio::select! {
                biased;
                _ = &mut login => panic!("derived without a permit"),
                () = std::future::ready(()) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(all);
        let out = login.await.unwrap();
        let (_, r) =
            codec::decode_response::<SaslAuthenticateResponse>(ApiKey::SaslAuthenticate, 2, out)
                .unwrap();
        assert_eq!(r.error_code, 0);
    }

    #[tokio::test]
    async fn client_strings_in_failure_reasons_are_escaped() {
        let server = server();
        let mut s = session();
        handshake(&server, &mut s, sasl::PLAIN).await;
        authenticate(&server, &mut s, b"\0eve\nINFO forged line\0x").await;
        let r = reason(&s);
        assert!(!r.contains('\n'), "{r}");
        assert!(r.contains("eve\\nINFO forged line"), "{r}");

        let mut s = session();
        handshake(&server, &mut s, sasl::SCRAM_SHA_256).await;
        // An authzid that is not the user: refused at client-first, with the user.
        authenticate(&server, &mut s, b"n,a=bob,n=x\rz,r=1").await;
        let r = reason(&s);
        assert!(!r.contains('\r') && r.contains("x\\rz"), "{r}");

        let mut s = session();
        assert_eq!(
            handshake(&server, &mut s, "EVIL\n2026 WARN forged").await,
            UNSUPPORTED_SASL_MECHANISM
        );
        let r = reason(&s);
        assert!(!r.contains('\n') && r.contains("EVIL\\n2026"), "{r}");
    }

    #[test]
    fn the_handler_future_can_move_between_threads() {
        fn send<T: Send>(_: T) {}
        let server = server();
        let mut s = session();
        let f = frame(ApiKey::SaslHandshake, 1, &SaslHandshakeRequest::default());
        send(handle(&server, &mut s, &f));
    }
}
