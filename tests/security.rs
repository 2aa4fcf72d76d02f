//! TLS termination and TLS to the cluster: Java and librdkafka clients over TLS and
//! mTLS through Switchyard to a Kafka 3.9 cluster that accepts only TLS, and clients
//! with bad certificates or no TLS at all refused cleanly beside a working one.

#[macro_use]
mod harness;

use harness::security::{self, TlsEnv};

fn env() -> &'static TlsEnv {
    static ENV: std::sync::OnceLock<TlsEnv> = std::sync::OnceLock::new();
    ENV.get_or_init(|| TlsEnv::start("security"))
}

#[test]
fn tls_clients_through_to_a_tls_cluster() {
    let _serial = harness::serial();
    security::tls_round_trip(env());
}

#[test]
fn mtls_clients_carry_their_certificate_principal() {
    let _serial = harness::serial();
    security::mtls_round_trip(env());
}

#[test]
fn bad_certificates_and_plaintext_are_refused_beside_a_working_client() {
    let _serial = harness::serial();
    security::bad_clients_are_refused(env());
}
