//! From the raw file to a validated [`Config`]: every field checked, every
//! problem collected, nothing applied until all of it is valid.

use super::raw::RawRoutes;
use super::*;

pub(super) fn parse_matcher(errors: &mut Vec<String>, section: &str, key: &str) -> Option<Matcher> {
    if key.starts_with('^') {
        match Regex::new(key) {
            Ok(r) => Some(Matcher::Regex(r)),
            Err(e) => {
                errors.push(format!("[{section}.\"{key}\"]: invalid regex: {e}"));
                None
            }
        }
    } else if key.is_empty() {
        errors.push(format!("[{section}]: empty name"));
        None
    } else {
        Some(Matcher::Exact(key.to_string()))
    }
}

pub(super) fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let resolve = |p: &str| resolve_path(base, p);

    unknown_keys(&mut errors, "", &raw.unknown);

    // [proxy]
    let p = &raw.proxy;
    unknown_keys(&mut errors, "proxy", &p.unknown);
    let cluster_id = p.cluster_id.clone().unwrap_or_else(|| "switchyard".into());
    if cluster_id.is_empty() {
        errors.push("[proxy] cluster_id: must not be empty".into());
    }
    let max_frame_bytes = p.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES as u64);
    if !(1024..=i32::MAX as u64).contains(&max_frame_bytes) {
        errors.push(format!(
            "[proxy] max_frame_bytes: {max_frame_bytes} is outside 1024..={}",
            i32::MAX
        ));
    }
    let max_in_flight = p.max_in_flight.unwrap_or(128);
    if max_in_flight == 0 {
        errors.push("[proxy] max_in_flight: must be at least 1".into());
    }
    let max_connections = p.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        errors.push("[proxy] max_connections: must be at least 1".into());
    }
    let max_connections_per_ip = p
        .max_connections_per_ip
        .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP);
    if max_connections_per_ip == 0 {
        errors.push("[proxy] max_connections_per_ip: must be at least 1".into());
    }
    let max_unauth = p
        .max_unauthenticated_frame_bytes
        .unwrap_or(DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES as u64);
    if !(1024..=max_frame_bytes).contains(&max_unauth) {
        errors.push(format!(
            "[proxy] max_unauthenticated_frame_bytes: {max_unauth} is outside 1024..=max_frame_bytes ({max_frame_bytes})"
        ));
    }
    let buffer_budget = p
        .buffer_budget_bytes
        .unwrap_or(DEFAULT_BUFFER_BUDGET_BYTES as u64);
    if buffer_budget < max_frame_bytes {
        errors.push(format!(
            "[proxy] buffer_budget_bytes: {buffer_budget} is less than max_frame_bytes ({max_frame_bytes}); one largest frame must fit"
        ));
    }
    let millis = |errors: &mut Vec<String>, key: &str, v: Option<u64>, default: u64| {
        let v = v.unwrap_or(default);
        if v == 0 {
            errors.push(format!("[proxy] {key}: must be at least 1"));
        }
        Duration::from_millis(v.max(1))
    };
    let login_timeout = millis(&mut errors, "login_timeout_ms", p.login_timeout_ms, 30_000);
    let idle_timeout = millis(&mut errors, "idle_timeout_ms", p.idle_timeout_ms, 600_000);
    let request_timeout = millis(
        &mut errors,
        "request_timeout_ms",
        p.request_timeout_ms,
        60_000,
    );
    let proxy = ProxyConfig {
        cluster_id,
        state_dir: resolve(p.state_dir.as_deref().unwrap_or("./state")),
        max_frame_bytes: max_frame_bytes as usize,
        max_in_flight: max_in_flight.max(1) as usize,
        max_connections: max_connections.max(1) as usize,
        max_connections_per_ip: max_connections_per_ip.max(1) as usize,
        max_unauthenticated_frame_bytes: max_unauth as usize,
        login_timeout,
        idle_timeout,
        request_timeout,
        buffer_budget_bytes: buffer_budget as usize,
        connect_timeout: Duration::from_millis(p.connect_timeout_ms.unwrap_or(5_000)),
        metadata_refresh: Duration::from_millis(p.metadata_refresh_ms.unwrap_or(10_000).max(100)),
        shutdown_grace: Duration::from_millis(p.shutdown_grace_ms.unwrap_or(30_000)),
    };

    // [listener]
    let l = &raw.listener;
    unknown_keys(&mut errors, "listener", &l.unknown);
    let bind_text = l.bind.clone().unwrap_or_else(|| "0.0.0.0:9092".into());
    let bind = match bind_text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errors.push(format!(
                "[listener] bind: `{bind_text}` is not an IP:port address"
            ));
            "0.0.0.0:9092".parse().unwrap()
        }
    };
    let mode = match l.mode.as_deref().unwrap_or("port") {
        "port" => ListenerMode::Port,
        "sni" => ListenerMode::Sni,
        other => {
            errors.push(format!(
                "[listener] mode: `{other}` is not one of \"port\", \"sni\""
            ));
            ListenerMode::Port
        }
    };
    let broker_port_base = l.broker_port_base.unwrap_or(9100);
    if broker_port_base == 0 || broker_port_base > u16::MAX as u32 {
        errors.push(format!(
            "[listener] broker_port_base: {broker_port_base} is not a port number"
        ));
    }
    if mode == ListenerMode::Sni {
        match &l.sni_pattern {
            Some(p) if p.contains("{node}") => {}
            Some(p) => errors.push(format!(
                "[listener] sni_pattern: `{p}` must contain {{node}}"
            )),
            None => errors.push("[listener] sni_pattern: required when mode = \"sni\"".into()),
        }
        if l.tls.is_none() {
            errors.push(
                "[listener] mode = \"sni\" needs [listener.tls]: SNI names travel in the TLS handshake"
                    .into(),
            );
        }
    }
    let tls = l.tls.as_ref().and_then(|t| {
        unknown_keys(&mut errors, "listener.tls", &t.unknown);
        let mut need = |name: &str, v: &Option<String>| -> Option<PathBuf> {
            match v {
                None => {
                    errors.push(format!("[listener.tls] {name}: required"));
                    None
                }
                Some(s) => {
                    let path = resolve(s);
                    if !path.exists() {
                        errors.push(format!(
                            "[listener.tls] {name}: {} does not exist",
                            path.display()
                        ));
                    }
                    Some(path)
                }
            }
        };
        let cert = need("cert", &t.cert);
        let key = need("key", &t.key);
        let client_ca = t.client_ca.as_ref().map(|c| {
            let path = resolve(c);
            if !path.exists() {
                errors.push(format!(
                    "[listener.tls] client_ca: {} does not exist",
                    path.display()
                ));
            }
            path
        });
        let files = TlsFiles {
            cert: cert?,
            key: key?,
            client_ca,
        };
        let readable = files.cert.exists()
            && files.key.exists()
            && files.client_ca.as_ref().is_none_or(|c| c.exists());
        if readable {
            if let Err(e) = crate::tls::server_config(&files) {
                errors.push(format!("[listener.tls]: {e}"));
            }
        }
        Some(files)
    });
    let advertised_host = l
        .advertised_host
        .clone()
        .unwrap_or_else(|| "localhost".into());
    if advertised_host.is_empty() {
        errors.push("[listener] advertised_host: must not be empty".into());
    }
    let sasl = l.sasl.as_ref().and_then(|s| {
        unknown_keys(&mut errors, "listener.sasl", &s.unknown);
        let mechanisms = s
            .mechanisms
            .clone()
            .unwrap_or_else(|| vec![crate::sasl::SCRAM_SHA_512.to_string()]);
        if mechanisms.is_empty() {
            errors.push("[listener.sasl] mechanisms: at least one is required".into());
        }
        for m in &mechanisms {
            if ![crate::sasl::PLAIN, crate::sasl::SCRAM_SHA_256, crate::sasl::SCRAM_SHA_512]
                .contains(&m.as_str())
            {
                errors.push(format!(
                    "[listener.sasl] mechanisms: `{m}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
                ));
            }
        }
        let Some(file) = &s.users_file else {
            errors.push("[listener.sasl] users_file: required".into());
            return None;
        };
        let users_file = resolve(file);
        if let Err(e) = crate::sasl::Credentials::load(&users_file) {
            errors.push(format!("[listener.sasl] users_file: {e}"));
        }
        if mechanisms.iter().any(|m| m == crate::sasl::PLAIN) && tls.is_none() {
            errors.push(
                "[listener.sasl]: PLAIN sends passwords in the clear; it needs [listener.tls]"
                    .into(),
            );
        }
        Some(ListenerSasl {
            mechanisms,
            users_file,
        })
    });
    let listener = ListenerConfig {
        bind,
        advertised_host,
        mode,
        broker_port_base: broker_port_base.min(u16::MAX as u32) as u16,
        sni_pattern: l.sni_pattern.clone(),
        tls,
        sasl,
    };

    // [admin]
    let (admin_bind, admin_auth) = validate_admin(&mut errors, &raw.admin, base);
    if admin_bind == bind {
        errors.push(format!(
            "[admin] bind: {admin_bind} is also the listener's bind address"
        ));
    }

    // [clusters.*]
    if raw.clusters.is_empty() {
        errors.push("[clusters]: at least one cluster is required".into());
    }
    if raw.clusters.len() > MAX_CLUSTERS {
        errors.push(format!(
            "[clusters]: {} clusters configured; at most {} (virtual producer ids name their cluster in 4 bits)",
            raw.clusters.len(),
            MAX_CLUSTERS
        ));
    }
    let mut clusters = Vec::new();
    for (name, c) in &raw.clusters {
        let section = format!("clusters.{name}");
        unknown_keys(&mut errors, &section, &c.unknown);
        let bootstrap = c.bootstrap.clone().unwrap_or_default();
        if bootstrap.is_empty() {
            errors.push(format!(
                "[{section}] bootstrap: at least one host:port is required"
            ));
        }
        for b in &bootstrap {
            let ok = b
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().map(|p| p > 0).unwrap_or(false))
                .unwrap_or(false);
            if !ok {
                errors.push(format!("[{section}] bootstrap: `{b}` is not host:port"));
            }
        }
        let offset = c.node_id_offset.unwrap_or(0);
        if !(0..=1_000_000).contains(&offset) {
            errors.push(format!(
                "[{section}] node_id_offset: {offset} is outside 0..=1000000"
            ));
        }
        let tls = c.tls.as_ref().map(|t| {
            unknown_keys(&mut errors, &format!("{section}.tls"), &t.unknown);
            if t.cert.is_some() != t.key.is_some() {
                errors.push(format!(
                    "[{section}.tls]: cert and key must be given together"
                ));
            }
            let tls = UpstreamTls {
                ca: t.ca.as_deref().map(resolve),
                cert: t.cert.as_deref().map(resolve),
                key: t.key.as_deref().map(resolve),
            };
            if let Err(e) = crate::tls::client_config(&tls) {
                errors.push(format!("[{section}.tls]: {e}"));
            }
            tls
        });
        let sasl = c.sasl.as_ref().and_then(|s| {
            unknown_keys(&mut errors, &format!("{section}.sasl"), &s.unknown);
            let mechanism = s.mechanism.clone().unwrap_or_default();
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
                errors.push(format!(
                    "[{section}.sasl] mechanism: `{mechanism}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
                ));
            }
            if s.username.as_deref().unwrap_or("").is_empty() {
                errors.push(format!("[{section}.sasl] username: required"));
            }
            if s.password_env.is_none() && s.password_file.is_none() {
                errors.push(format!(
                    "[{section}.sasl]: password_env or password_file is required (passwords are never written in the config)"
                ));
            }
            Some(UpstreamSasl {
                mechanism,
                username: s.username.clone()?,
                password_env: s.password_env.clone(),
                password_file: s.password_file.as_deref().map(resolve),
            })
        });
        clusters.push(ClusterConfig {
            name: name.clone(),
            bootstrap,
            node_id_offset: offset.clamp(0, 1_000_000) as i32,
            tls,
            sasl,
        });
    }
    // Virtual node ids of two clusters must not meet. Upstream ids are only known at
    // run time, so require offsets at least 1000 apart: brokers number below 1000 in
    // every deployment Switchyard targets, and the proxy also refuses, at run time,
    // any broker whose virtual id falls into another cluster's range.
    let mut offsets: Vec<(i32, &str)> = clusters
        .iter()
        .map(|c| (c.node_id_offset, c.name.as_str()))
        .collect();
    offsets.sort();
    for w in offsets.windows(2) {
        if w[1].0 - w[0].0 < 1000 {
            errors.push(format!(
                "[clusters]: node_id_offset of `{}` ({}) and `{}` ({}) are less than 1000 apart; their virtual broker ids and ports would collide",
                w[0].1, w[0].0, w[1].1, w[1].0
            ));
        }
    }
    if listener.mode == ListenerMode::Port {
        let top = offsets.last().map(|o| o.0).unwrap_or(0) as u32 + 999;
        if broker_port_base + top > u16::MAX as u32 {
            errors.push(format!(
                "[listener] broker_port_base: {broker_port_base} + the highest virtual broker id ({top}) is past port 65535"
            ));
        }
        let bind_port = listener.bind.port() as u32;
        if bind_port >= broker_port_base && bind_port <= broker_port_base + top {
            // Only a collision if a broker actually gets that id; warn loudly by
            // rejecting, since the listener could not bind later.
            for c in &clusters {
                let lo = broker_port_base + c.node_id_offset as u32;
                if bind_port >= lo && bind_port <= lo + 999 {
                    errors.push(format!(
                        "[listener] bind port {bind_port} lies in the virtual broker port range of cluster `{}` ({lo}..={})",
                        c.name,
                        lo + 999
                    ));
                }
            }
        }
    }
    let cluster_names: BTreeSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    let routes = validate_routes(&mut errors, &raw.routes, &cluster_names);
    let coordination =
        validate_coordination(&mut errors, &raw.coordination, &cluster_names, &listener);

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        proxy,
        listener,
        admin_bind,
        admin_auth,
        clusters,
        routes,
        coordination,
    })
}

/// `[routes]` against the configured cluster names: every problem into `errors`.
/// Also used for a routing table another instance published (control::coordination).
pub(super) fn validate_routes(
    errors: &mut Vec<String>,
    r: &RawRoutes,
    cluster_names: &BTreeSet<&str>,
) -> RoutesConfig {
    let check_cluster = |errors: &mut Vec<String>, where_: &str, name: &str| {
        if !cluster_names.contains(name) {
            errors.push(format!(
                "[{where_}]: unknown cluster `{name}` (known: {})",
                cluster_names.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    };
    unknown_keys(errors, "routes", &r.unknown);
    let default_cluster = match &r.default_cluster {
        Some(d) => {
            check_cluster(errors, "routes", d);
            d.clone()
        }
        None if cluster_names.len() == 1 => cluster_names.iter().next().expect("one").to_string(),
        None if cluster_names.is_empty() => String::new(), // already reported
        None => {
            errors.push(
                "[routes] default_cluster: required when more than one cluster is configured"
                    .into(),
            );
            String::new()
        }
    };
    let mut topics = Vec::new();
    for (key, t) in &r.topics {
        let section = format!("routes.topics.\"{key}\"");
        unknown_keys(errors, &section, &t.unknown);
        let matcher = parse_matcher(errors, "routes.topics", key);
        for c in t.produce.iter().chain(t.consume.iter()) {
            check_cluster(errors, &section, c);
        }
        for (c, physical) in &t.rename {
            check_cluster(errors, &format!("{section}.rename"), c);
            if physical.is_empty() {
                errors.push(format!("[{section}.rename] {c}: empty topic name"));
            }
            if matches!(matcher, Some(Matcher::Regex(_))) && !physical.contains('$') {
                // A regex row renaming every match to one fixed name would merge topics.
                errors.push(format!(
                    "[{section}.rename] {c}: a regex row must rename with a pattern using capture groups ($1, ${{name}}), not a fixed name"
                ));
            }
        }
        if let Some(matcher) = matcher {
            topics.push(TopicRoute {
                matcher,
                produce: t.produce.clone(),
                consume: t.consume.clone(),
                rename: t.rename.clone(),
            });
        }
    }
    // Two exact rows renaming different logical topics to the same physical name on
    // one cluster would merge their data.
    let mut physical_names: BTreeMap<(String, String), String> = BTreeMap::new();
    for t in &topics {
        if let Matcher::Exact(logical) = &t.matcher {
            for c in cluster_names.iter() {
                let physical = t.rename.get(*c).cloned().unwrap_or_else(|| logical.clone());
                if let Some(other) =
                    physical_names.insert((c.to_string(), physical.clone()), logical.clone())
                {
                    errors.push(format!(
                        "[routes.topics]: `{other}` and `{logical}` both map to topic `{physical}` on cluster `{c}`"
                    ));
                }
            }
        }
    }
    // Regex rows that can match one topic and route it differently.
    let regex_topics: Vec<&TopicRoute> = topics
        .iter()
        .filter(|t| matches!(t.matcher, Matcher::Regex(_)))
        .collect();
    for (i, a) in regex_topics.iter().enumerate() {
        for b in &regex_topics[i + 1..] {
            let same = a.produce == b.produce && a.consume == b.consume && a.rename == b.rename;
            if !same {
                ambiguous_rows(
                    errors,
                    "routes.topics",
                    a.matcher.source(),
                    b.matcher.source(),
                );
            }
        }
    }
    let mut groups = Vec::new();
    for (key, g) in &r.groups {
        let section = format!("routes.groups.\"{key}\"");
        unknown_keys(errors, &section, &g.unknown);
        let matcher = parse_matcher(errors, "routes.groups", key);
        let cluster = match &g.cluster {
            Some(c) => {
                check_cluster(errors, &section, c);
                c.clone()
            }
            None => {
                errors.push(format!("[{section}] cluster: required"));
                String::new()
            }
        };
        let offsets = match g.offsets.as_deref().unwrap_or("marks") {
            "marks" => OffsetStrategy::Marks,
            "mm2" => OffsetStrategy::Mm2,
            "identity" => OffsetStrategy::Identity,
            "timestamp" => OffsetStrategy::Timestamp,
            other => {
                errors.push(format!(
                    "[{section}] offsets: `{other}` is not one of marks, mm2, identity, timestamp"
                ));
                OffsetStrategy::Marks
            }
        };
        let when = match g.when.as_deref().unwrap_or("drained") {
            "drained" => SwitchWhen::Drained,
            "now" => SwitchWhen::Now,
            other => {
                errors.push(format!(
                    "[{section}] when: `{other}` is not one of drained, now"
                ));
                SwitchWhen::Drained
            }
        };
        if let Some(matcher) = matcher {
            groups.push(GroupRoute {
                matcher,
                cluster,
                offsets,
                when,
            });
        }
    }

    let regex_groups: Vec<&GroupRoute> = groups
        .iter()
        .filter(|g| matches!(g.matcher, Matcher::Regex(_)))
        .collect();
    for (i, a) in regex_groups.iter().enumerate() {
        for b in &regex_groups[i + 1..] {
            if (&a.cluster, &a.offsets, &a.when) != (&b.cluster, &b.offsets, &b.when) {
                ambiguous_rows(
                    errors,
                    "routes.groups",
                    a.matcher.source(),
                    b.matcher.source(),
                );
            }
        }
    }

    RoutesConfig {
        default_cluster,
        topics,
        groups,
    }
}
