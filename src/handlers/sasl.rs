//! SASL termination (SaslHandshake v1, SaslAuthenticate v0–v2) for clients of the
//! proxy. Until a connection has authenticated, only ApiVersions and these two are
//! answered; anything else closes it, as a broker does. A failed login is answered
//! with SASL_AUTHENTICATION_FAILED and a message that does not say which part was
//! wrong, then the connection is closed.

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::routing::Session;
use crate::codec::{self, DecodeError, RequestFrame};
use crate::sasl::{self, AuthError, Credentials, ScramServer};

const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

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

/// Handles SaslHandshake / SaslAuthenticate.
pub fn handle(
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
                    "client asked for SASL mechanism `{mechanism}`, which is not enabled"
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
                    sasl::plain_login(&server.credentials, &req.auth_bytes)
                        .map(|user| (Bytes::new(), Some(user)))
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
                        tracing::debug!(user = %user, "SASL authentication succeeded");
                        session.authenticated(user);
                    }
                    SaslAuthenticateResponse::default().with_auth_bytes(bytes)
                }
                Err(e) => {
                    let who = match &e {
                        AuthError::BadCredentials { user } => format!("user `{user}`"),
                        AuthError::Malformed(_) => "a client".to_string(),
                    };
                    session.sasl = SaslState::Failed(format!("{who}: {e}"));
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
