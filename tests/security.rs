//! TLS and SASL on both sides of the proxy: Java and librdkafka clients over TLS,
//! mTLS and SASL_SSL (SCRAM-SHA-512) through Switchyard to a Kafka 3.9 cluster that
//! accepts only TLS and a Kafka 2.4.1 cluster that accepts only SASL/SCRAM; clients
//! with bad certificates, bad passwords or no TLS at all are refused cleanly beside
//! working ones.

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

#[test]
fn sasl_ssl_scram_to_a_scram_cluster_and_a_tls_cluster() {
    let _serial = harness::serial();
    security::sasl_scram_round_trip(env());
}

#[test]
fn wrong_passwords_and_unknown_users_fail_cleanly() {
    let _serial = harness::serial();
    security::sasl_failures(env());
}

#[test]
fn sni_mode_serves_every_broker_on_one_port() {
    let _serial = harness::serial();
    security::sni_mode(env());
}

/// The clients of `sni_mode_serves_every_broker_on_one_port`, which runs this test
/// in a child process with the SNI names in a private /etc/hosts.
#[test]
#[ignore = "run by sni_mode_serves_every_broker_on_one_port in a mount namespace"]
fn sni_clients_in_a_namespace() {
    security::sni_clients();
}
