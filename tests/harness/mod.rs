//! Real-Kafka test harness (TESTING.md): Apache Kafka brokers started from Maven
//! Central jars with plain `java -cp`, the `switchyard` binary in front of them, and
//! client drivers written by other people (Java kafka-clients, librdkafka, franz-go,
//! kafka-go).
//!
//! Every process is started under `tests/kafka/guard.sh`, which kills it when the
//! test binary exits, even when a test panics or the harness is killed: statics are
//! never dropped by the test runner, so Drop alone would leak brokers.

#![allow(dead_code)]

pub mod clients;
pub mod groups;
pub mod migration;
pub mod rdk;
pub mod relay;
pub mod scenarios;
pub mod security;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Serializes scenarios inside one test binary: on 2 cores, three clients and six
/// brokers at once starve each other into timeouts.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A scratch directory under target/, removed of stale runs on first use.
pub fn scratch(name: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let base = repo().join("target").join("harness");
        let _ = std::fs::create_dir_all(&base);
        // Remove directories of earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().to_string();
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Ports for everything the tests start (brokers, controllers, proxies) come from
/// a lane of the range below the kernel's ephemeral ports. The kernel never hands
/// out those ports for outgoing connections, so nothing can take one between the
/// moment it is picked here and the moment the process under test binds it (which
/// a random pick inside the ephemeral range could not promise). Each test process
/// claims one lane with an advisory file lock, so test binaries running at the same
/// time never share a port; inside a lane every port is handed out once.
struct Ports {
    lane_start: u16,
    lane_end: u16,
    used: std::collections::BTreeSet<u16>,
    /// Held for the life of the process: the lock is the claim on the lane.
    _lock: std::fs::File,
}

const PORT_LANES: u16 = 4;

fn ports() -> MutexGuard<'static, Ports> {
    static PORTS: OnceLock<Mutex<Ports>> = OnceLock::new();
    PORTS
        .get_or_init(|| Mutex::new(Ports::claim()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

impl Ports {
    fn claim() -> Ports {
        // The ephemeral range starts at 32768 by default; read it, so a machine
        // with another setting still gets ports the kernel will not use.
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let (low, high) = (10_000u16, ephemeral_low);
        assert!(
            high > low + PORT_LANES * 2_500,
            "the ephemeral port range starts at {high}; the tests need ports 10000..{} below it",
            low + PORT_LANES * 2_500
        );
        let width = (high - low) / PORT_LANES;
        let dir = std::env::temp_dir().join("switchyard-test-ports");
        std::fs::create_dir_all(&dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            for lane in 0..PORT_LANES {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(dir.join(format!("lane-{lane}.lock")))
                    .unwrap();
                if file.try_lock().is_ok() {
                    let lane_start = low + lane * width;
                    return Ports {
                        lane_start,
                        lane_end: lane_start + width,
                        used: Default::default(),
                        _lock: file,
                    };
                }
            }
            // Every lane is held by another test process: wait for one to finish
            // rather than share ports with it.
            assert!(Instant::now() < deadline, "no free test port lane in 600 s");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn free(&self, port: u16) -> bool {
        !self.used.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok()
    }

    fn take(&mut self, avoid: impl Fn(u16) -> bool) -> u16 {
        let port = (self.lane_start..self.lane_end)
            .find(|&p| !avoid(p) && self.free(p))
            .expect("test port lane exhausted");
        self.used.insert(port);
        port
    }
}

/// A port nobody listens on, that nothing else will be given.
pub fn free_port() -> u16 {
    ports().take(|_| false)
}

/// Ports for a proxy whose virtual brokers have the ids `virtual_ids`: a base such
/// that `base + id` is free for each of them, and a bootstrap port outside every
/// virtual broker range (`base + offset .. base + offset + 999`), as the config
/// check demands.
pub fn proxy_ports(virtual_ids: &[i32]) -> (u16, u16) {
    let mut p = ports();
    let top = virtual_ids.iter().copied().max().unwrap_or(0).max(0) as u16;
    let base = (p.lane_start..p.lane_end.saturating_sub(top))
        .find(|&b| virtual_ids.iter().all(|&id| p.free(b + id as u16)))
        .expect("test port lane exhausted");
    for &id in virtual_ids {
        p.used.insert(base + id as u16);
    }
    // The tests' clusters use offsets 0, 1000 and 2000 (SNI-mode proxies pass no
    // ids but are checked against the same ranges).
    let ranges = base..base.saturating_add(3000).max(base + top + 1);
    let bind = p.take(|port| ranges.contains(&port));
    (base, bind)
}

/// Starts `cmd` under the guard script so it dies with this process.
fn spawn_guarded(program: &str, args: &[String], log: &Path, envs: &[(&str, String)]) -> Child {
    let guard = repo().join("tests/kafka/guard.sh");
    // Append: a restarted broker's log follows its first life's.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(guard)
        .arg(std::process::id().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Resolves (once) and returns the Maven classpath of a project under tests/.
pub fn classpath(project: &str) -> String {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = repo().join(project);
    let file = dir.join("classpath.txt");
    if !file.exists() {
        run_ok(
            Command::new("mvn").current_dir(&dir).args([
                "-q",
                "-B",
                "dependency:build-classpath",
                "-Dmdep.outputFile=classpath.txt",
            ]),
            &format!("mvn dependency:build-classpath in {project}"),
        );
    }
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaVersion {
    /// Apache Kafka 2.4.1 with ZooKeeper: the source clusters in the field.
    V2_4,
    /// Apache Kafka 3.9 in KRaft mode.
    V3,
}

impl KafkaVersion {
    fn project(self) -> &'static str {
        match self {
            KafkaVersion::V2_4 => "tests/kafka/kafka-2.4.1",
            KafkaVersion::V3 => "tests/kafka/kafka-3",
        }
    }
}

struct Broker {
    id: i32,
    port: u16,
    props: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running Apache Kafka cluster on loopback.
pub struct Cluster {
    pub version: KafkaVersion,
    pub dir: PathBuf,
    /// The CA of an SSL-only cluster (`start_tls`); None for plaintext.
    pub tls_ca: Option<PathBuf>,
    /// (user, password file) of a SASL/SCRAM-SHA-512 cluster (`start_scram`).
    pub scram: Option<(String, PathBuf)>,
    classpath: String,
    brokers: Mutex<Vec<Broker>>,
    zookeeper: Mutex<Option<Child>>,
}

const JVM_OPTS: &[&str] = &[
    "-Xmx384m",
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
    "-Dzookeeper.admin.enableServer=false",
];

fn log4j(dir: &Path) -> PathBuf {
    let path = dir.join("log4j.properties");
    std::fs::write(
        &path,
        "log4j.rootLogger=WARN, stdout\n\
         log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n\
         log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n\
         log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n\
         log4j.logger.kafka.server.KafkaServer=INFO\n\
         log4j.logger.kafka.server.KafkaRaftServer=INFO\n\
         log4j.logger.kafka.controller=WARN\n\
         log4j.logger.state.change.logger=WARN\n",
    )
    .unwrap();
    path
}

impl Cluster {
    /// Starts a cluster of `n` brokers and waits until all are in its metadata.
    pub fn start(version: KafkaVersion, n: usize, name: &str) -> Cluster {
        Self::start_with(version, n, name, None)
    }

    /// A Kafka 3.9 cluster whose brokers accept only TLS, with the certificates of
    /// `certs/gen.sh` in `certs` (server.crt/key, ca.crt).
    pub fn start_tls(n: usize, name: &str, certs: &Path) -> Cluster {
        Self::start_with(KafkaVersion::V3, n, name, Some(certs))
    }

    /// A Kafka 2.4.1 cluster whose brokers accept only SASL_PLAINTEXT with
    /// SCRAM-SHA-512; `user`/`password` is the only account (also used between
    /// brokers).
    pub fn start_scram(n: usize, name: &str, user: &str, password: &str) -> Cluster {
        Self::start_inner(
            KafkaVersion::V2_4,
            n,
            name,
            None,
            Some((user, password)),
            &[],
        )
    }

    /// Java client properties for talking to this cluster directly.
    pub fn client_props(&self) -> Vec<String> {
        if let Some((user, file)) = &self.scram {
            let password = std::fs::read_to_string(file).unwrap();
            return [
                "security.protocol=SASL_PLAINTEXT".to_string(),
                "sasl.mechanism=SCRAM-SHA-512".to_string(),
                format!(
                    "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{}\";",
                    password.trim()
                ),
            ]
            .into_iter()
            .flat_map(|p| ["--prop".to_string(), p])
            .collect();
        }
        match &self.tls_ca {
            None => Vec::new(),
            Some(ca) => [
                "security.protocol=SSL".to_string(),
                "ssl.truststore.type=PEM".to_string(),
                format!("ssl.truststore.location={}", ca.display()),
            ]
            .into_iter()
            .flat_map(|p| ["--prop".to_string(), p])
            .collect(),
        }
    }

    fn start_with(version: KafkaVersion, n: usize, name: &str, tls: Option<&Path>) -> Cluster {
        Self::start_inner(version, n, name, tls, None, &[])
    }

    /// A one-broker Kafka 3.9 cluster with one more plaintext listener per entry of
    /// `relayed`: listener `i` is on port `relayed[i].1` and advertises
    /// `127.0.0.1:relayed[i].0`, where a [`relay::Relay`] forwards to it. A client
    /// bootstrapped at a relay reaches the broker only through it, so cutting the
    /// relay cuts that client off the cluster, and no one else.
    pub fn start_relayed(name: &str, relayed: &[(u16, u16)]) -> Cluster {
        Self::start_inner(KafkaVersion::V3, 1, name, None, None, relayed)
    }

    fn start_inner(
        version: KafkaVersion,
        n: usize,
        name: &str,
        tls: Option<&Path>,
        scram: Option<(&str, &str)>,
        relayed: &[(u16, u16)],
    ) -> Cluster {
        assert!(
            scram.is_none() || version == KafkaVersion::V2_4,
            "SCRAM brokers are 2.4 only"
        );
        assert!(
            tls.is_none() || version == KafkaVersion::V3,
            "TLS brokers are 3.x only"
        );
        let classpath = classpath(version.project());
        let dir = scratch(name);
        let log4j = log4j(&dir);
        let mut brokers = Vec::new();
        let mut zookeeper = None;
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let rf = n.min(3);
        let min_isr = if n >= 3 { 2 } else { 1 };
        let common = format!(
            "offsets.topic.replication.factor={rf}\n\
             offsets.topic.num.partitions=10\n\
             transaction.state.log.replication.factor={rf}\n\
             transaction.state.log.min.isr={min_isr}\n\
             transaction.state.log.num.partitions=5\n\
             default.replication.factor={rf}\n\
             group.initial.rebalance.delay.ms=0\n\
             auto.create.topics.enable=false\n\
             num.network.threads=2\n\
             num.io.threads=4\n\
             log.flush.interval.messages=100000000\n\
             log.retention.check.interval.ms=600000\n\
             delete.topic.enable=true\n"
        );
        // Per broker, what differs between the two kinds of cluster.
        let mut kraft_cluster_id = None;
        let own_props: Vec<String> = match version {
            KafkaVersion::V2_4 => {
                let zk_port = free_port();
                let zk_dir = dir.join("zk");
                std::fs::create_dir_all(&zk_dir).unwrap();
                let mut args: Vec<String> = JVM_OPTS.iter().map(|s| s.to_string()).collect();
                args.extend([
                    format!("-Dlog4j.configuration=file:{}", log4j.display()),
                    "-cp".into(),
                    classpath.clone(),
                    "org.apache.zookeeper.server.ZooKeeperServerMain".into(),
                    zk_port.to_string(),
                    zk_dir.display().to_string(),
                ]);
                zookeeper = Some(spawn_guarded("java", &args, &dir.join("zk.log"), &[]));
                wait_port(zk_port, Duration::from_secs(60), "zookeeper");
                let (proto, sasl) = match scram {
                    None => ("PLAINTEXT", String::new()),
                    Some((user, password)) => {
                        // SCRAM credentials live in ZooKeeper before any broker starts.
                        run_ok(
                            Command::new("java").args([
                                "-cp",
                                &classpath,
                                &format!("-Dlog4j.configuration=file:{}", log4j.display()),
                                "kafka.admin.ConfigCommand",
                                "--zookeeper",
                                &format!("127.0.0.1:{zk_port}"),
                                "--alter",
                                "--add-config",
                                &format!("SCRAM-SHA-512=[iterations=4096,password={password}]"),
                                "--entity-type",
                                "users",
                                "--entity-name",
                                user,
                            ]),
                            "ConfigCommand add SCRAM user",
                        );
                        (
                            "SASL_PLAINTEXT",
                            format!(
                                "security.inter.broker.protocol=SASL_PLAINTEXT\n\
                                 sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n\
                                 sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                                 listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";\n"
                            ),
                        )
                    }
                };
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, port)| {
                        format!(
                            "broker.id={}\n\
                             listeners={proto}://127.0.0.1:{port}\n\
                             zookeeper.connect=127.0.0.1:{zk_port}\n\
                             zookeeper.connection.timeout.ms=30000\n{sasl}",
                            i + 1
                        )
                    })
                    .collect()
            }
            KafkaVersion::V3 => {
                let controller_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
                let voters = controller_ports
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
                    .collect::<Vec<_>>()
                    .join(",");
                kraft_cluster_id = Some(
                    run_ok(
                        Command::new("java").args([
                            "-cp",
                            &classpath,
                            "kafka.tools.StorageTool",
                            "random-uuid",
                        ]),
                        "StorageTool random-uuid",
                    )
                    .trim()
                    .to_string(),
                );
                ports
                    .iter()
                    .zip(&controller_ports)
                    .enumerate()
                    .map(|(i, (port, controller_port))| {
                        let (proto, ssl) = match tls {
                            None => ("PLAINTEXT", String::new()),
                            Some(certs) => {
                                // A PEM keystore is the key followed by its chain.
                                let pem = dir.join("server.pem");
                                let mut both = std::fs::read(certs.join("server.key")).unwrap();
                                both.extend(std::fs::read(certs.join("server.crt")).unwrap());
                                std::fs::write(&pem, both).unwrap();
                                (
                                    "SSL",
                                    format!(
                                        "ssl.keystore.type=PEM\n\
                                         ssl.keystore.location={}\n\
                                         ssl.truststore.type=PEM\n\
                                         ssl.truststore.location={}\n\
                                         ssl.client.auth=none\n",
                                        pem.display(),
                                        certs.join("ca.crt").display()
                                    ),
                                )
                            }
                        };
                        let mut listeners = format!("{proto}://127.0.0.1:{port}");
                        let mut advertised = listeners.clone();
                        let mut map = format!("{proto}:{proto},CONTROLLER:PLAINTEXT");
                        for (r, (relay, listener)) in relayed.iter().enumerate() {
                            listeners += &format!(",RELAY{r}://127.0.0.1:{listener}");
                            advertised += &format!(",RELAY{r}://127.0.0.1:{relay}");
                            map += &format!(",RELAY{r}:PLAINTEXT");
                        }
                        format!(
                            "process.roles=broker,controller\n\
                             node.id={}\n\
                             controller.quorum.voters={voters}\n\
                             listeners={listeners},CONTROLLER://127.0.0.1:{controller_port}\n\
                             advertised.listeners={advertised}\n\
                             controller.listener.names=CONTROLLER\n\
                             inter.broker.listener.name={proto}\n\
                             listener.security.protocol.map={map}\n{ssl}",
                            i + 1
                        )
                    })
                    .collect()
            }
        };
        for (i, (port, own)) in ports.iter().zip(own_props).enumerate() {
            let id = i as i32 + 1;
            let props = dir.join(format!("broker-{id}.properties"));
            let data = dir.join(format!("data-{id}"));
            std::fs::write(
                &props,
                format!("{own}log.dirs={}\n{common}", data.display()),
            )
            .unwrap();
            if let Some(cluster_id) = &kraft_cluster_id {
                run_ok(
                    Command::new("java").args([
                        "-cp",
                        &classpath,
                        &format!("-Dlog4j.configuration=file:{}", log4j.display()),
                        "kafka.tools.StorageTool",
                        "format",
                        "-t",
                        cluster_id,
                        "-c",
                        &props.display().to_string(),
                    ]),
                    "StorageTool format",
                );
            }
            brokers.push(Broker {
                id,
                port: *port,
                props,
                log: dir.join(format!("broker-{id}.log")),
                child: None,
            });
        }
        let cluster = Cluster {
            version,
            tls_ca: tls.map(|c| c.join("ca.crt")),
            scram: scram.map(|(user, password)| {
                let file = dir.join("scram-password");
                std::fs::write(&file, password).unwrap();
                (user.to_string(), file)
            }),
            dir,
            classpath,
            brokers: Mutex::new(brokers),
            zookeeper: Mutex::new(zookeeper),
        };
        let ids: Vec<i32> = cluster
            .brokers
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.id)
            .collect();
        for id in ids {
            cluster.start_broker(id);
        }
        cluster.wait_brokers(n, Duration::from_secs(180));
        cluster
    }

    pub fn bootstrap(&self) -> String {
        self.brokers
            .lock()
            .unwrap()
            .iter()
            .map(|b| format!("127.0.0.1:{}", b.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn bootstrap_list(&self) -> Vec<String> {
        self.bootstrap().split(',').map(String::from).collect()
    }

    pub fn broker_ids(&self) -> Vec<i32> {
        self.brokers.lock().unwrap().iter().map(|b| b.id).collect()
    }

    pub fn start_broker(&self, id: i32) {
        let mut brokers = self.brokers.lock().unwrap();
        let b = brokers.iter_mut().find(|b| b.id == id).unwrap();
        let mut args: Vec<String> = JVM_OPTS.iter().map(|s| s.to_string()).collect();
        args.extend([
            format!(
                "-Dlog4j.configuration=file:{}",
                self.dir.join("log4j.properties").display()
            ),
            "-cp".into(),
            self.classpath.clone(),
            "kafka.Kafka".into(),
            b.props.display().to_string(),
        ]);
        b.child = Some(spawn_guarded("java", &args, &b.log, &[]));
    }

    /// Kills a broker the hard way (SIGKILL via its guard), like a machine loss.
    pub fn kill_broker(&self, id: i32) {
        let mut brokers = self.brokers.lock().unwrap();
        let b = brokers.iter_mut().find(|b| b.id == id).unwrap();
        if let Some(mut c) = b.child.take() {
            kill_guard(&mut c);
        }
    }

    /// Waits until the cluster's metadata lists `n` brokers.
    pub fn wait_brokers(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        loop {
            let view = self.probe_view();
            let ok = rt.block_on(view.refresh(Duration::from_secs(3))).is_ok();
            if ok && view.brokers().len() >= n && view.controller() >= 0 {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster in {} did not show {n} brokers in time",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A view of this cluster through the proxy's own upstream code, for probes.
    fn probe_view(&self) -> switchyard::upstream::ClusterView {
        switchyard::upstream::ClusterView::new(switchyard::config::ClusterConfig {
            name: "probe".into(),
            bootstrap: self.bootstrap_list(),
            node_id_offset: 0,
            tls: self
                .tls_ca
                .as_ref()
                .map(|ca| switchyard::config::UpstreamTls {
                    ca: Some(ca.clone()),
                    cert: None,
                    key: None,
                }),
            sasl: self
                .scram
                .as_ref()
                .map(|(user, file)| switchyard::config::UpstreamSasl {
                    mechanism: "SCRAM-SHA-512".into(),
                    username: user.clone(),
                    password_env: None,
                    password_file: Some(file.clone()),
                }),
        })
        .unwrap()
    }

    /// Makes the brokers create `__consumer_offsets` now (they do on the first
    /// FindCoordinator), while every broker is up: a test that kills a broker
    /// before any group was used would otherwise find the offsets topic impossible
    /// to create (its replication factor exceeds the brokers alive) and every group
    /// coordinator unavailable.
    pub fn ensure_offsets_topic(&self, timeout: Duration) {
        use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
        use kafka_protocol::protocol::StrBytes;
        let deadline = Instant::now() + timeout;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let view = self.probe_view();
        let req = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str("switchyard-test-warmup"));
        loop {
            let _ = rt.block_on(view.refresh(Duration::from_secs(3)));
            let resp: Result<FindCoordinatorResponse, _> =
                rt.block_on(view.call(ApiKey::FindCoordinator, 1, &req, Duration::from_secs(5)));
            if resp.is_ok_and(|r| r.error_code == 0) {
                return;
            }
            if Instant::now() > deadline {
                panic!("cluster in {} has no group coordinator", self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for b in self.brokers.lock().unwrap().iter_mut() {
            if let Some(mut c) = b.child.take() {
                kill_guard(&mut c);
            }
        }
        if let Some(mut c) = self.zookeeper.lock().unwrap().take() {
            kill_guard(&mut c);
        }
    }
}

fn kill_guard(c: &mut Child) {
    // SIGTERM to the guard makes it SIGKILL its child and exit.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub fn wait_port(port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            panic!("{what} did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The switchyard binary, running in front of clusters.
pub struct Proxy {
    pub bootstrap: String,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log: PathBuf,
    pub port_base: u16,
    /// The config before the `[clusters]`/`[routes]` part (ports, state dir).
    header: String,
    envs: Vec<(&'static str, String)>,
    broker_ids: Vec<i32>,
    child: Mutex<Option<Child>>,
}

impl Proxy {
    /// Starts the proxy with a config whose `[clusters]` and `[routes]` sections are
    /// `clusters_toml`; listener and admin ports are picked here.
    pub fn start(name: &str, clusters_toml: &str, broker_ids: &[i32]) -> Proxy {
        Self::start_env(name, clusters_toml, broker_ids, &[])
    }

    /// Like [`start`](Self::start), with extra environment for the proxy process.
    pub fn start_env(
        name: &str,
        clusters_toml: &str,
        broker_ids: &[i32],
        extra_env: &[(&'static str, String)],
    ) -> Proxy {
        let dir = scratch(name);
        let (port_base, bind_port) = proxy_ports(broker_ids);
        let admin_port = free_port();
        let header = format!(
            "[proxy]\ncluster_id = \"switchyard-test\"\nstate_dir = \"{}\"\nmetadata_refresh_ms = 2000\n\n\
             [listener]\nbind = \"127.0.0.1:{bind_port}\"\nadvertised_host = \"127.0.0.1\"\nbroker_port_base = {port_base}\n\n\
             [admin]\nbind = \"127.0.0.1:{admin_port}\"\n\n",
            dir.join("state").display()
        );
        let config = format!("{header}{clusters_toml}\n");
        let config_path = dir.join("switchyard.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("switchyard.log");
        let mut envs = vec![("SWITCHYARD_LOG", "info,switchyard=debug".to_string())];
        envs.extend(extra_env.iter().cloned());
        let proxy = Proxy {
            bootstrap: format!("127.0.0.1:{bind_port}"),
            admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
            config_path,
            log,
            port_base,
            header,
            envs,
            broker_ids: broker_ids.to_vec(),
            child: Mutex::new(None),
        };
        proxy.spawn();
        proxy
    }

    fn spawn(&self) {
        let child = spawn_guarded(
            env!("CARGO_BIN_EXE_switchyard"),
            &[
                "run".into(),
                "--config".into(),
                self.config_path.display().to_string(),
            ],
            &self.log,
            &self
                .envs
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<_>>(),
        );
        *self.child.lock().unwrap() = Some(child);
        let bind_port: u16 = self.bootstrap.rsplit(':').next().unwrap().parse().unwrap();
        wait_port(bind_port, Duration::from_secs(60), "switchyard bootstrap");
        wait_port(
            self.admin.port(),
            Duration::from_secs(60),
            "switchyard admin",
        );
        for id in &self.broker_ids {
            wait_port(
                self.port_base + *id as u16,
                Duration::from_secs(60),
                "switchyard broker listener",
            );
        }
    }

    /// The process id of the running proxy (the guard's child), found by its
    /// command line.
    pub fn pid(&self) -> Option<u32> {
        let config = self.config_path.display().to_string();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let exe = String::from_utf8_lossy(args.first()?);
            let is_proxy = exe.ends_with("/switchyard") && args.contains(&config.as_bytes());
            is_proxy.then_some(pid)
        })
    }

    /// SIGKILLs the proxy (its guard kills it with SIGKILL) and starts it again with
    /// the same config file and state directory.
    pub fn kill_and_restart(&self) {
        self.stop();
        self.spawn();
    }

    /// Starts a proxy stopped with [`Proxy::stop`] again, with the same config file
    /// and state directory.
    pub fn start_again(&self) {
        self.spawn();
    }

    /// Sends `signal` ("STOP", "CONT", ...) to the proxy process itself.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the proxy is running");
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Rewrites the config file with new `[clusters]`/`[routes]` sections (the
    /// proxy notices the change on disk; callers may also POST /reload).
    pub fn write_routes(&self, clusters_toml: &str) {
        let tmp = self.config_path.with_extension("toml.tmp");
        std::fs::write(&tmp, format!("{}{clusters_toml}\n", self.header)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Runs the `switchyard` command line against this proxy's admin API:
    /// (exit code, stdout).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let admin = format!("http://{}", self.admin);
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--admin", &admin]);
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(&full)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.http("GET", "/status").1).unwrap()
    }

    pub fn metrics(&self) -> String {
        self.http("GET", "/metrics").1
    }

    /// A bare HTTP/1.1 request to the admin API: (status code, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        self.http_body(method, path, "")
    }

    /// Like [`http`](Self::http), with a JSON body.
    pub fn http_body(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            kill_guard(&mut c);
        }
    }

    /// Sends SIGTERM to the proxy process itself (not its guard), as an init system
    /// would, and waits for it to exit. Returns its exit code, or None on timeout.
    pub fn terminate(&self, timeout: Duration) -> Option<i32> {
        let config = self.config_path.display().to_string();
        let pid = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"switchyard"))
                    && args.contains(&config.as_bytes())
            })
            .expect("proxy process");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let mut guard = self.child.lock().unwrap();
        let child = guard.as_mut()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // The guard exits with its child's status once the child is gone.
            if let Ok(Some(status)) = child.try_wait() {
                guard.take();
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the Java client driver (kafka-clients 3.9) and returns its JSON summary.
pub fn java_driver(args: &[&str]) -> Value {
    static BUILT: OnceLock<(PathBuf, String)> = OnceLock::new();
    let (classes, cp) = BUILT.get_or_init(|| {
        let dir = repo().join("tests/clients/java");
        let cp = classpath("tests/clients/java");
        let classes = dir.join("classes");
        std::fs::create_dir_all(&classes).unwrap();
        run_ok(
            Command::new("javac").current_dir(&dir).args([
                "-d",
                "classes",
                "-cp",
                &cp,
                "src/Driver.java",
            ]),
            "javac Driver.java",
        );
        (classes, cp)
    });
    let mut cmd = Command::new("java");
    cmd.args(["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]);
    // Extra JVM options for investigations, e.g. client log levels:
    // SWITCHYARD_JAVA_DRIVER_OPTS=-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients.producer=debug
    if let Ok(extra) = std::env::var("SWITCHYARD_JAVA_DRIVER_OPTS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.arg("-cp")
        .arg(format!("{}:{cp}", classes.display()))
        .arg("Driver")
        .args(args);
    driver_json(cmd, "java driver")
}

/// Runs the franz-go driver and returns its JSON summary.
pub fn go_driver(args: &[&str]) -> Value {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        let dir = repo().join("tests/clients/go");
        run_ok(
            Command::new("go")
                .current_dir(&dir)
                .args(["build", "-o", "franz-driver", "."]),
            "go build franz-driver",
        );
        dir.join("franz-driver")
    });
    let mut cmd = Command::new(bin);
    cmd.args(args).args(["-log-level", "warn"]);
    driver_json(cmd, "franz-go driver")
}

/// Runs the segmentio/kafka-go driver and returns its JSON summary.
pub fn kafkago_driver(args: &[&str]) -> Value {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        let dir = repo().join("tests/clients/kafkago");
        run_ok(
            Command::new("go")
                .current_dir(&dir)
                .args(["build", "-o", "kafkago-driver", "."]),
            "go build kafkago-driver",
        );
        dir.join("kafkago-driver")
    });
    let mut cmd = Command::new(bin);
    cmd.args(args);
    driver_json(cmd, "kafka-go driver")
}

fn driver_json(mut cmd: Command, what: &str) -> Value {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    // Keep every driver's log (client library warnings, retries) for post-mortems.
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = scratch("driver-logs");
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = what.replace(' ', "-");
        let _ = std::fs::write(dir.join(format!("{n:03}-{name}.log")), &out.stderr);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    match last.and_then(|l| serde_json::from_str::<Value>(l).ok()) {
        Some(v) => {
            eprintln!("{what}: {v}");
            v
        }
        None => panic!(
            "{what} printed no JSON ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts a consume summary: nothing missing, per-key order held, duplicates
/// within `max_dups`.
pub fn assert_consumed(v: &Value, expect: u64, max_dups: u64) {
    assert_eq!(v["fatal"], Value::Null, "fatal error: {v}");
    assert_eq!(v["unique"].as_u64(), Some(expect), "unique: {v}");
    assert_eq!(v["missing"].as_u64(), Some(0), "missing: {v}");
    assert_eq!(v["order_violations"].as_u64(), Some(0), "order: {v}");
    let dups = v["duplicates"].as_u64().unwrap_or(u64::MAX);
    assert!(dups <= max_dups, "duplicates {dups} > {max_dups}: {v}");
}

pub fn assert_produced(v: &Value, count: u64) {
    assert_eq!(v["fatal"], Value::Null, "fatal error: {v}");
    assert_eq!(v["acked"].as_u64(), Some(count), "acked: {v}");
    assert_eq!(v["errors"].as_u64(), Some(0), "errors: {v}");
}

/// Declares the Foundation test suite for one Kafka version: a shared cluster and
/// proxy per test binary, one `#[test]` per scenario, run one at a time.
#[macro_export]
macro_rules! foundation_suite {
    ($version:ident, $name:literal) => {
        fn env() -> &'static harness::scenarios::Env {
            static ENV: std::sync::OnceLock<harness::scenarios::Env> = std::sync::OnceLock::new();
            ENV.get_or_init(|| {
                harness::scenarios::Env::start(harness::KafkaVersion::$version, $name)
            })
        }
        foundation_suite!(@tests
            java_client_round_trip => java_round_trip,
            librdkafka_round_trip => rdkafka_round_trip,
            franz_go_round_trip => franz_round_trip,
            admin_operations => admin_operations,
            broker_killed_under_load => broker_killed_under_load,
            sigterm_finishes_in_flight_and_exits => graceful_shutdown,
            bad_input_closes_only_its_connection => bad_input,
        );
    };
    (@tests $($test:ident => $scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let _serial = harness::serial();
                harness::scenarios::$scenario(env());
            }
        )*
    };
}

/// MirrorMaker 2 in dedicated mode (`org.apache.kafka.connect.mirror.MirrorMaker`),
/// replicating `topics` and checkpointing `groups` from the cluster aliased `source`
/// to the one aliased `target`, with the default replication policy (`source.<topic>`).
pub struct Mirror {
    pub log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Mirror {
    pub fn start(
        name: &str,
        source: &Cluster,
        target: &Cluster,
        topics: &str,
        groups: &str,
    ) -> Mirror {
        let dir = scratch(name);
        let props = dir.join("mm2.properties");
        std::fs::write(
            &props,
            format!(
                "clusters = source, target\n\
                 source.bootstrap.servers = {}\n\
                 target.bootstrap.servers = {}\n\
                 source->target.enabled = true\n\
                 target->source.enabled = false\n\
                 source->target.topics = {topics}\n\
                 source->target.groups = {groups}\n\
                 replication.factor = 1\n\
                 checkpoints.topic.replication.factor = 1\n\
                 heartbeats.topic.replication.factor = 1\n\
                 offset-syncs.topic.replication.factor = 1\n\
                 offset.storage.replication.factor = 1\n\
                 status.storage.replication.factor = 1\n\
                 config.storage.replication.factor = 1\n\
                 emit.checkpoints.interval.seconds = 1\n\
                 emit.heartbeats.interval.seconds = 1\n\
                 refresh.topics.interval.seconds = 2\n\
                 refresh.groups.interval.seconds = 2\n\
                 sync.group.offsets.enabled = false\n\
                 sync.topic.acls.enabled = false\n\
                 plugin.discovery = service_load\n",
                source.bootstrap(),
                target.bootstrap()
            ),
        )
        .unwrap();
        let log = dir.join("mirror.log");
        let mut args: Vec<String> = JVM_OPTS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "-Dlog4j.configuration=file:{}",
            log4j(&dir).display()
        ));
        args.extend([
            "-cp".into(),
            classpath("tests/kafka/mirror"),
            "org.apache.kafka.connect.mirror.MirrorMaker".into(),
            props.display().to_string(),
        ]);
        let child = spawn_guarded("java", &args, &log, &[]);
        Mirror {
            log,
            child: Mutex::new(Some(child)),
        }
    }

    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            kill_guard(&mut c);
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop();
    }
}
