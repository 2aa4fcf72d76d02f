//! Hostile input against the release binary: requests and broker responses with
//! impossible counts, pipelining past the in-flight limit, and floods of idle, slow
//! and unauthenticated connections. Upstreams are scripted brokers
//! (`tests/scripted`), so every byte the proxy reads is the test's choice. Each test
//! proves the process stays up and that only the offending connection closes.

mod harness;
mod scripted;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use harness::Proxy;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use scripted::{Reply, ScriptedBroker};

fn header(api: ApiKey, version: i16, corr: i32, client: &'static str) -> RequestHeader {
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(corr)
        .with_client_id(Some(StrBytes::from_static_str(client)))
}

/// A frame (with its length prefix) of `body` under a request header.
fn frame(api: ApiKey, version: i16, corr: i32, client: &'static str, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    header(api, version, corr, client)
        .encode(&mut b, api.request_header_version(version))
        .unwrap();
    b.put_slice(body);
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

/// The smallest valid request of `api` at `version`: a zeroed body decoded (empty
/// arrays and strings, zero numbers) and encoded again.
fn minimal_request(api: ApiKey, version: i16) -> Option<Vec<u8>> {
    let mut zeros = Bytes::from(vec![0u8; 256]);
    let mut req = RequestKind::decode(api, &mut zeros, version).ok()?;
    if let RequestKind::Produce(p) = &mut req {
        // acks = 0 would mean no answer, and these tests wait for answers.
        p.acks = 1;
    }
    let mut b = BytesMut::new();
    req.encode(&mut b, version).ok()?;
    Some(b.to_vec())
}

/// The smallest valid response of `api` at `version`, as [`minimal_request`].
fn minimal_response(api: ApiKey, version: i16) -> Option<Vec<u8>> {
    let mut zeros = Bytes::from(vec![0u8; 256]);
    let resp = ResponseKind::decode(api, &mut zeros, version).ok()?;
    let mut b = BytesMut::new();
    resp.encode(&mut b, version).ok()?;
    Some(b.to_vec())
}

/// Reads one response frame; None when the proxy closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The advertised (api, min, max) of a proxy, read with ApiVersions v0.
fn advertised(addr: &str) -> Vec<(ApiKey, i16, i16)> {
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::ApiVersions, 0, 1, "probe", &[]))
        .unwrap();
    let body = read_frame(&mut s).expect("ApiVersions answered");
    let mut b = Bytes::from(body);
    let (_, resp) = switchyard::codec::decode_response::<
        kafka_protocol::messages::ApiVersionsResponse,
    >(ApiKey::ApiVersions, 0, b.split_off(0))
    .unwrap();
    resp.api_keys
        .iter()
        .filter_map(|k| {
            Some((
                ApiKey::try_from(k.api_key).ok()?,
                k.min_version,
                k.max_version,
            ))
        })
        .collect()
}

/// The proxy still serves: a Metadata round trip on a new connection.
fn assert_serving(addr: &str, context: &str) {
    let mut s = connect(addr);
    s.write_all(&frame(ApiKey::Metadata, 1, 99, "probe", &[0, 0, 0, 0]))
        .unwrap();
    let body =
        read_frame(&mut s).unwrap_or_else(|| panic!("proxy stopped serving after {context}"));
    assert_eq!(&body[..4], &99i32.to_be_bytes(), "{context}");
}

fn two_clusters(source: &ScriptedBroker, target: &ScriptedBroker) -> String {
    format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n\
         [clusters.target]\nbootstrap = [\"{}\"]\nnode_id_offset = 1000\n\n\
         [routes]\ndefault_cluster = \"source\"\n\n\
         [routes.topics.\"moved\"]\nproduce = \"target\"\nconsume = \"target\"\n\n\
         [routes.groups.\"g\"]\ncluster = \"target\"\n",
        source.bootstrap(),
        target.bootstrap()
    )
}

/// The request that aborted the process: a 40-byte Fetch v4 whose topic array
/// claims 0x7fffffff entries.
fn hostile_fetch() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&500i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(1i32 << 20).to_be_bytes());
    body.push(0);
    body.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
    let f = frame(ApiKey::Fetch, 4, 7, "hostile-f", &body);
    assert_eq!(f.len(), 44); // 40 bytes after the length prefix
    f
}

/// Every API and version the proxy advertises, with every 4-byte window of a valid
/// body overwritten by 0x7fffffff (the array-count class of the 40-byte Fetch) and
/// by a huge varint: each goes on its own connection, and the proxy must still
/// serve afterwards. Sent to the bootstrap port and to a virtual broker of each
/// cluster, through a two-cluster table so that the routing path decodes them.
#[test]
fn hostile_requests_close_only_their_connection() {
    let source = ScriptedBroker::plain(0, &["kept", "moved"]);
    let target = ScriptedBroker::plain(0, &["moved"]);
    let proxy = Proxy::start(
        "hostile-requests",
        &two_clusters(&source, &target),
        &[0, 1000],
    );
    let addrs = [
        proxy.bootstrap.clone(),
        format!("127.0.0.1:{}", proxy.port_base),
        format!("127.0.0.1:{}", proxy.port_base + 1000),
    ];
    for addr in &addrs {
        let mut s = connect(addr);
        s.write_all(&hostile_fetch()).unwrap();
        // Closed (or answered with an error), never an abort.
        let _ = read_frame(&mut s);
        assert_serving(addr, "the 40-byte Fetch");
    }

    let apis = advertised(&proxy.bootstrap);
    assert!(apis.len() >= 20, "advertised {apis:?}");
    let mut sent = 0usize;
    for (api, min, max) in apis {
        for version in min..=max {
            let Some(body) = minimal_request(api, version) else {
                continue;
            };
            let mut variants: Vec<Vec<u8>> = Vec::new();
            for at in 0..body.len() {
                let mut b = body.clone();
                b.extend_from_slice(&[0; 4]);
                b[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
                variants.push(b);
                let mut v = body.clone();
                v.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
                variants.push(v);
            }
            for (i, b) in variants.iter().enumerate() {
                let addr = &addrs[i % addrs.len()];
                let mut s = connect(addr);
                // The proxy may close before reading everything; that is fine.
                let _ = s.write_all(&frame(api, version, 5, "hostile", b));
                let _ = s.shutdown(std::net::Shutdown::Write);
                while read_frame(&mut s).is_some() {}
                sent += 1;
            }
            assert_serving(&proxy.bootstrap, &format!("{api:?} v{version}"));
        }
    }
    assert!(sent > 1_000, "only {sent} hostile requests built");
    for addr in &addrs {
        assert_serving(addr, "every hostile request");
    }
    let log = proxy.log_text();
    assert!(!log.contains("panicked"), "a task panicked:\n{log}");
    println!("hostile requests: {sent} sent, proxy serving on every port");
}

/// Broker responses with impossible counts: a scripted broker answers the client's
/// request of each API with a valid response whose every 4-byte window in turn is
/// 0x7fffffff. The proxy decodes many of those responses (to rewrite broker ids,
/// epochs, names); it must close that client's connection, never abort.
#[test]
fn hostile_responses_close_only_their_connection() {
    // (api, offset) of the mutation to apply to the next answer for "hostile".
    let plan: Arc<Mutex<Option<(ApiKey, i16, usize)>>> = Arc::new(Mutex::new(None));
    let p = plan.clone();
    let broker = ScriptedBroker::start(
        0,
        &["t"],
        Arc::new(move |h: &RequestHeader, _body: &Bytes| {
            if h.client_id.as_deref() != Some("hostile") {
                return Reply::Default;
            }
            let Some((api, version, at)) = *p.lock().unwrap() else {
                return Reply::Default;
            };
            if h.request_api_key != api as i16 {
                return Reply::Default;
            }
            let mut body = minimal_response(api, version).unwrap_or_default();
            body.extend_from_slice(&[0; 4]);
            if at + 4 <= body.len() {
                body[at..at + 4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
            }
            Reply::Body(Bytes::from(body))
        }),
    );
    let toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n[routes]\ndefault_cluster = \"source\"\n",
        broker.bootstrap()
    );
    let proxy = Proxy::start("hostile-responses", &toml, &[0]);
    let broker_addr = format!("127.0.0.1:{}", proxy.port_base);
    let mut sent = 0usize;
    for (api, min, max) in advertised(&proxy.bootstrap) {
        if matches!(api, ApiKey::ApiVersions) {
            continue; // answered by the proxy itself
        }
        for version in min..=max {
            let (Some(req), Some(resp)) = (
                minimal_request(api, version),
                minimal_response(api, version),
            ) else {
                continue;
            };
            for at in 0..resp.len() {
                *plan.lock().unwrap() = Some((api, version, at));
                let mut s = connect(&broker_addr);
                let _ = s.write_all(&frame(api, version, 5, "hostile", &req));
                let _ = read_frame(&mut s);
                sent += 1;
            }
            *plan.lock().unwrap() = None;
            assert_serving(
                &broker_addr,
                &format!("hostile {api:?} v{version} responses"),
            );
        }
    }
    assert!(sent > 500, "only {sent} hostile responses");
    let log = proxy.log_text();
    assert!(!log.contains("panicked"), "a task panicked:\n{log}");
    println!("hostile responses: {sent} answered, proxy serving");
}

/// A client may send any number of requests before reading an answer. 1,000
/// pipelined ListOffsets on one connection get 1,000 answers in order; with
/// `max_in_flight = 2`, 4 pipelined requests get 4.
#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let broker = ScriptedBroker::plain(0, &["t"]);
    let toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n[routes]\ndefault_cluster = \"source\"\n",
        broker.bootstrap()
    );
    let body = minimal_request(ApiKey::ListOffsets, 1).unwrap();
    let pipeline = |addr: &str, n: i32| {
        let mut s = connect(addr);
        let mut all = Vec::new();
        for corr in 0..n {
            all.extend(frame(ApiKey::ListOffsets, 1, corr, "pipeline", &body));
        }
        // Written from another thread: the proxy may push back before all of it is
        // sent, and this thread must be reading answers meanwhile.
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(&all).unwrap());
        for corr in 0..n {
            let f = read_frame(&mut s).unwrap_or_else(|| panic!("answer {corr} of {n} missing"));
            assert_eq!(&f[..4], &corr.to_be_bytes(), "answers out of order");
        }
        writer.join().unwrap();
    };
    let proxy = Proxy::start("pipeline", &toml, &[0]);
    pipeline(&format!("127.0.0.1:{}", proxy.port_base), 1_000);
    let small = Proxy::start_env(
        "pipeline-small",
        &toml,
        &[0],
        &[("SWITCHYARD__PROXY__MAX_IN_FLIGHT", "2".into())],
    );
    pipeline(&format!("127.0.0.1:{}", small.port_base), 4);
    pipeline(&format!("127.0.0.1:{}", small.port_base), 500);
}

/// Opens a connection from `source` (a loopback address of its own, so that the
/// per-address limit is not what holds the flood back).
fn connect_from(source: std::net::IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(10))?;
    Ok(socket.into())
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A well-behaved client's work: Metadata, then 200 ListOffsets round trips on a
/// virtual broker connection.
fn good_client(proxy: &Proxy) {
    assert_serving(&proxy.bootstrap, "the flood");
    let mut s = connect(&format!("127.0.0.1:{}", proxy.port_base));
    let body = minimal_request(ApiKey::ListOffsets, 1).unwrap();
    for corr in 0..200 {
        s.write_all(&frame(ApiKey::ListOffsets, 1, corr, "good", &body))
            .unwrap();
        let f = read_frame(&mut s).expect("good client answered");
        assert_eq!(&f[..4], &corr.to_be_bytes());
    }
}

/// 10,000 idle connections, 2,000 that announce a 100 MiB frame and trickle bytes,
/// and 2,000 that never log in, against the default limits: the proxy holds them
/// with one descriptor each and no broker connection, a well-behaved client beside
/// them does its work, and RSS stays bounded. Then, with short timeouts, idle, slow
/// and unauthenticated connections are closed by the proxy itself.
#[test]
fn connection_floods_are_held_cheaply_and_timed_out() {
    let broker = ScriptedBroker::plain(0, &["t"]);
    let dir = harness::scratch("flood-users");
    let users = dir.join("users.toml");
    let add = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["user", "add", "good", "--mechanism", "SCRAM-SHA-256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"good-secret\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(add.status.success());
    std::fs::write(&users, &add.stdout).unwrap();
    let plain = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n[routes]\ndefault_cluster = \"source\"\n",
        broker.bootstrap()
    );
    let sasl_toml = format!(
        "{plain}\n[listener.sasl]\nmechanisms = [\"SCRAM-SHA-256\"]\nusers_file = \"{}\"\n",
        users.display()
    );
    let proxy = Proxy::start("flood", &plain, &[0]);
    let sasl = Proxy::start("flood-sasl", &sasl_toml, &[0]);
    let pid = proxy.pid().expect("proxy pid");
    let sasl_pid = sasl.pid().expect("sasl proxy pid");
    let rss_before = proc_status(pid, "VmRSS:");
    let broker_conns_before = broker.open.load(Ordering::SeqCst);
    let to: SocketAddr = format!("127.0.0.1:{}", proxy.port_base).parse().unwrap();
    let sasl_to: SocketAddr = format!("127.0.0.1:{}", sasl.port_base).parse().unwrap();
    let src = |block: u8, i: usize| {
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            10 + block,
            (i / 1000) as u8,
            1,
        ))
    };
    let mut held = Vec::new();
    for i in 0..10_000 {
        held.push(connect_from(src(0, i), to).expect("idle connection"));
    }
    let mut slow = Vec::new();
    for i in 0..2_000 {
        let mut s = connect_from(src(1, i), to).expect("slow connection");
        s.write_all(&(100 * 1024 * 1024i32).to_be_bytes()).unwrap();
        s.write_all(&[0, 3]).unwrap();
        slow.push(s);
    }
    let mut unauth = Vec::new();
    for i in 0..2_000 {
        let mut s = connect_from(src(2, i), sasl_to).expect("unauthenticated connection");
        s.write_all(&frame(ApiKey::ApiVersions, 0, 1, "unauth", &[]))
            .unwrap();
        unauth.push(s);
    }
    // Every connection has reached the proxy once the gauge counts them all.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fds(pid) < 12_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    for s in slow.iter_mut() {
        let _ = s.write_all(&[0]);
    }
    good_client(&proxy);
    let rss = proc_status(pid, "VmRSS:");
    let descriptors = fds(pid);
    let broker_conns = broker.open.load(Ordering::SeqCst) - broker_conns_before;
    println!(
        "flood: 12,000 connections held: proxy RSS {} MiB (before {} MiB), {descriptors} descriptors, {broker_conns} broker connections opened by them and the good client; SASL proxy with 2,000 unauthenticated: RSS {} MiB, {} descriptors",
        rss / 1024,
        rss_before / 1024,
        proc_status(sasl_pid, "VmRSS:") / 1024,
        fds(sasl_pid)
    );
    assert!(
        (12_000..12_200).contains(&descriptors),
        "{descriptors} descriptors"
    );
    // The good client's connection is the only one that needed the broker (plus the
    // proxy's own discovery connection).
    assert!(broker_conns <= 2, "{broker_conns} broker connections");
    assert!(rss < 600 * 1024, "RSS {} MiB", rss / 1024);
    drop((held, slow, unauth));

    // Short timeouts: the proxy closes idle, slow and unauthenticated connections.
    let timeouts = [
        ("SWITCHYARD__PROXY__IDLE_TIMEOUT_MS", "1500".to_string()),
        ("SWITCHYARD__PROXY__LOGIN_TIMEOUT_MS", "1500".to_string()),
    ];
    let short = Proxy::start_env("flood-short", &plain, &[0], &timeouts);
    let short_sasl = Proxy::start_env("flood-short-sasl", &sasl_toml, &[0], &timeouts);
    let short_to: SocketAddr = format!("127.0.0.1:{}", short.port_base).parse().unwrap();
    let short_sasl_to: SocketAddr = format!("127.0.0.1:{}", short_sasl.port_base)
        .parse()
        .unwrap();
    let mut idle = connect_from(src(3, 0), short_to).unwrap();
    let mut trickle = connect_from(src(3, 0), short_to).unwrap();
    trickle
        .write_all(&(100 * 1024 * 1024i32).to_be_bytes())
        .unwrap();
    let mut login = connect_from(src(3, 0), short_sasl_to).unwrap();
    login
        .write_all(&frame(ApiKey::ApiVersions, 0, 1, "unauth", &[]))
        .unwrap();
    assert!(read_frame(&mut login).is_some(), "ApiVersions before login");
    let started = Instant::now();
    for (name, s) in [
        ("idle", &mut idle),
        ("slow", &mut trickle),
        ("unauthenticated", &mut login),
    ] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Trickling a byte now and then does not keep a connection alive.
        if name == "slow" {
            let _ = s.write_all(&[0]);
        }
        let mut b = [0u8; 16];
        let n = s.read(&mut b);
        assert!(
            matches!(n, Ok(0)) || n.is_err(),
            "{name} connection not closed: {n:?}"
        );
        println!(
            "{name} connection closed by the proxy after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(
        short.log_text().contains("connection idle for"),
        "idle close not logged"
    );
    assert!(
        short_sasl.log_text().contains("did not log in"),
        "login timeout not logged"
    );
}

/// A broker that never answers: the client's connection is closed once the answer
/// is overdue (`request_timeout_ms` plus the wait the request asked for), and the
/// proxy keeps serving.
#[test]
fn an_upstream_that_never_answers_times_out() {
    let broker = ScriptedBroker::start(
        0,
        &["t"],
        Arc::new(|h: &RequestHeader, _: &Bytes| {
            if h.client_id.as_deref() == Some("stuck") {
                Reply::Ignore
            } else {
                Reply::Default
            }
        }),
    );
    let toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n[routes]\ndefault_cluster = \"source\"\n",
        broker.bootstrap()
    );
    let proxy = Proxy::start_env(
        "upstream-timeout",
        &toml,
        &[0],
        &[("SWITCHYARD__PROXY__REQUEST_TIMEOUT_MS", "1000".into())],
    );
    let addr = format!("127.0.0.1:{}", proxy.port_base);
    let mut s = connect(&addr);
    let body = minimal_request(ApiKey::ListOffsets, 1).unwrap();
    s.write_all(&frame(ApiKey::ListOffsets, 1, 1, "stuck", &body))
        .unwrap();
    let started = Instant::now();
    assert!(read_frame(&mut s).is_none(), "an answer came from nowhere");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert_serving(&addr, "an upstream timeout");
    let log = proxy.log_text();
    assert!(log.contains("did not answer ListOffsets"), "{log}");
    println!("stuck upstream: client connection closed after {waited:?}");
}

/// `max_connections_per_ip`: the connection over the limit is closed at once, the
/// ones within it and those from other addresses are served.
#[test]
fn connections_per_address_are_capped() {
    let broker = ScriptedBroker::plain(0, &["t"]);
    let toml = format!(
        "[clusters.source]\nbootstrap = [\"{}\"]\nnode_id_offset = 0\n\n[routes]\ndefault_cluster = \"source\"\n",
        broker.bootstrap()
    );
    let proxy = Proxy::start_env(
        "per-ip",
        &toml,
        &[0],
        &[("SWITCHYARD__PROXY__MAX_CONNECTIONS_PER_IP", "3".into())],
    );
    let to: SocketAddr = proxy.bootstrap.parse().unwrap();
    let one = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 20, 0, 1));
    let other = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 20, 0, 2));
    let probe = |s: &mut TcpStream| -> bool {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(&frame(ApiKey::ApiVersions, 0, 3, "per-ip", &[]))
            .is_err()
        {
            return false;
        }
        read_frame(s).is_some()
    };
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from(one, to).unwrap()).collect();
    for s in held.iter_mut() {
        assert!(probe(s), "a connection within the limit was refused");
    }
    let mut over = connect_from(one, to).unwrap();
    assert!(
        !probe(&mut over),
        "the fourth connection from one address was served"
    );
    let mut elsewhere = connect_from(other, to).unwrap();
    assert!(probe(&mut elsewhere), "another address was refused");
    drop(held);
    // Slots come back when connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect_from(one, to).unwrap();
        if probe(&mut again) {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(proxy.metrics().contains("connection_limit_per_ip"));
}
