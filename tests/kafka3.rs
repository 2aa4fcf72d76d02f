//! Foundation scenarios against a 3-broker Apache Kafka 3.9 (KRaft) cluster, all
//! through the proxy. One cluster and one proxy are shared by the tests of this
//! binary; scenarios run one at a time (see `harness::serial`).

#[macro_use]
mod harness;

foundation_suite!(V3, "kafka3");
