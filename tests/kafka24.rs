//! Foundation scenarios against a 3-broker Apache Kafka 2.4.1 (ZooKeeper) cluster,
//! the version old clusters in the field run, all through the proxy. One cluster and
//! one proxy are shared by the tests of this binary; scenarios run one at a time.

#[macro_use]
mod harness;

foundation_suite!(V2_4, "kafka24");
