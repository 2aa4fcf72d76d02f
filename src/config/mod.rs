//! Configuration: TOML file (plus `SWITCHYARD__SECTION__KEY` environment overrides)
//! → [`raw::RawConfig`] → validated [`Config`].
//!
//! Validation never stops at the first problem: [`Config::load`] returns every error it
//! found, so `switchyard check` and `POST /reload` can show an operator the whole list.

mod overlap;
pub mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The TLS file sets belong to [`crate::tls`], which reads them.
pub use crate::tls::{TlsFiles, UpstreamTls};

use raw::{RawConfig, Unknown};
use regex::Regex;

/// Default largest frame, the broker's own `socket.request.max.bytes` default.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// Default connection limit for the whole process. An idle client connection costs
/// one descriptor and a few KiB (its upstream connection opens with its first
/// forwarded request), so this is set by descriptors, not memory.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 50_000;

/// Default connections per source address: enough for every client of one
/// application host (a sidecar sees them all from loopback), small enough that one
/// host cannot take the whole process.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 5_000;

/// Default largest frame before login on a SASL listener, the broker's own
/// `sasl.server.max.receive.size` default.
pub const DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES: usize = 512 * 1024;

/// Default memory all connections together may hold for frames being received.
pub const DEFAULT_BUFFER_BUDGET_BYTES: usize = 1024 * 1024 * 1024;

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    Port,
    Sni,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub advertised_host: String,
    pub mode: ListenerMode,
    pub broker_port_base: u16,
    pub sni_pattern: Option<String>,
    pub tls: Option<TlsFiles>,
    pub sasl: Option<ListenerSasl>,
}

/// SASL termination for clients: the mechanisms offered and the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSasl {
    pub mechanisms: Vec<String>,
    pub users_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSasl {
    pub mechanism: String,
    pub username: String,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub bootstrap: Vec<String>,
    pub node_id_offset: i32,
    pub tls: Option<UpstreamTls>,
    pub sasl: Option<UpstreamSasl>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum OffsetStrategy {
    Marks,
    Mm2,
    Identity,
    Timestamp,
}

impl OffsetStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetStrategy::Marks => "marks",
            OffsetStrategy::Mm2 => "mm2",
            OffsetStrategy::Identity => "identity",
            OffsetStrategy::Timestamp => "timestamp",
        }
    }

    pub fn parse(s: &str) -> Option<OffsetStrategy> {
        Some(match s {
            "marks" => OffsetStrategy::Marks,
            "mm2" => OffsetStrategy::Mm2,
            "identity" => OffsetStrategy::Identity,
            "timestamp" => OffsetStrategy::Timestamp,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum SwitchWhen {
    Drained,
    Now,
}

impl SwitchWhen {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchWhen::Drained => "drained",
            SwitchWhen::Now => "now",
        }
    }

    pub fn parse(s: &str) -> Option<SwitchWhen> {
        match s {
            "drained" => Some(SwitchWhen::Drained),
            "now" => Some(SwitchWhen::Now),
            _ => None,
        }
    }
}

impl TryFrom<String> for OffsetStrategy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        OffsetStrategy::parse(&s)
            .ok_or_else(|| format!("offsets: `{s}` is not one of marks, mm2, identity, timestamp"))
    }
}

impl TryFrom<String> for SwitchWhen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SwitchWhen::parse(&s).ok_or_else(|| format!("when: `{s}` is not one of drained, now"))
    }
}

/// At most this many clusters: a virtual producer id carries its issuing
/// cluster's index in its low 4 bits (switch::producers).
pub const MAX_CLUSTERS: usize = 16;

/// Reports two regex rows that some name matches both of.
fn ambiguous_rows(errors: &mut Vec<String>, section: &str, a: &str, b: &str) {
    match overlap::can_overlap(a, b) {
        Ok(Some(false)) => {}
        Ok(Some(true)) => errors.push(format!(
            "[{section}]: regex rows \"{a}\" and \"{b}\" both match some names but route them differently; make them disjoint or give one name an exact row"
        )),
        Ok(None) => errors.push(format!(
            "[{section}]: regex rows \"{a}\" and \"{b}\" are too complex to prove disjoint; simplify them"
        )),
        Err(e) => errors.push(format!("[{section}]: regex rows \"{a}\" and \"{b}\": {e}")),
    }
}

/// A row key: an exact name, or (written with a leading `^`) a regex.
#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    Regex(Regex),
}

impl Matcher {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == name,
            Matcher::Regex(r) => r.is_match(name),
        }
    }

    pub fn source(&self) -> &str {
        match self {
            Matcher::Exact(s) => s,
            Matcher::Regex(r) => r.as_str(),
        }
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.source() == other.source()
            && matches!(
                (self, other),
                (Matcher::Exact(_), Matcher::Exact(_)) | (Matcher::Regex(_), Matcher::Regex(_))
            )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicRoute {
    pub matcher: Matcher,
    pub produce: Option<String>,
    pub consume: Option<String>,
    /// Physical topic name per cluster, where it differs from the logical name.
    pub rename: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupRoute {
    pub matcher: Matcher,
    pub cluster: String,
    pub offsets: OffsetStrategy,
    pub when: SwitchWhen,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutesConfig {
    pub default_cluster: String,
    pub topics: Vec<TopicRoute>,
    pub groups: Vec<GroupRoute>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub cluster_id: String,
    pub state_dir: PathBuf,
    pub max_frame_bytes: usize,
    pub max_in_flight: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_unauthenticated_frame_bytes: usize,
    pub login_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub buffer_budget_bytes: usize,
    pub connect_timeout: Duration,
    pub metadata_refresh: Duration,
    pub shutdown_grace: Duration,
}

/// Where the admin API's bearer token comes from. Only the source is part of the
/// config; the secret itself is read when the proxy starts and on every reload (see
/// `crate::token::AdminToken`), so a config can be checked on a machine without it
/// and the token never sits in a value that is logged or compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `[admin] token_env`: the name of an environment variable.
    Env(String),
    /// `[admin] token_file`: a file whose first line is the token.
    File(PathBuf),
}

/// Who may call the admin API: `[admin]` besides `bind`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAuth {
    /// None: no token; then `bind` must be a loopback address.
    pub token: Option<TokenSource>,
    /// Whether GETs need the token too (mutating calls always do when one is set).
    pub token_for_reads: bool,
}

/// A validated configuration. Building one proves every cross-reference holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub listener: ListenerConfig,
    pub admin_bind: SocketAddr,
    pub admin_auth: AdminAuth,
    /// Clusters in name order.
    pub clusters: Vec<ClusterConfig>,
    pub routes: RoutesConfig,
}

impl Config {
    /// Reads `path`, applies `SWITCHYARD__SECTION__KEY` overrides from the process
    /// environment, and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, env)
    }

    /// As [`Config::load`] with an explicit environment (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, env, base)
    }

    /// Parses TOML text. Relative file paths in the config are resolved against
    /// `base_dir` (the config file's directory).
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base_dir: &Path,
    ) -> Result<Config, ConfigErrors> {
        validate(raw_from_toml(text, env)?, base_dir)
    }

    /// Only the `[admin]` section of the config file at `path` (with environment
    /// overrides), validated by the same rules as [`Config::load`]. The CLI uses it
    /// to find the admin address and token without needing every other file the
    /// config names to be readable where it runs.
    pub fn load_admin(path: &Path) -> Result<(SocketAddr, AdminAuth), ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        let raw = raw_from_toml(&text, std::env::vars())?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errors = Vec::new();
        let admin = validate_admin(&mut errors, &raw.admin, base);
        if errors.is_empty() {
            Ok(admin)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

fn raw_from_toml(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RawConfig, ConfigErrors> {
    let env_map: std::collections::HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("SWITCHYARD__"))
        .collect();
    let built = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .add_source(
            ::config::Environment::with_prefix("SWITCHYARD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("clusters.source.bootstrap")
                .with_list_parse_key("clusters.target.bootstrap")
                .source(Some(env_map)),
        )
        .build()
        .map_err(|e| ConfigErrors(vec![format!("config syntax: {e}")]))?;
    built
        .try_deserialize()
        .map_err(|e| ConfigErrors(vec![format!("config: {e}")]))
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// `[admin]`: its bind address and who may call it. The admin API can reroute every
/// client, so an address other machines can reach (anything but loopback, including
/// `0.0.0.0`) is refused unless a token guards it.
fn validate_admin(
    errors: &mut Vec<String>,
    raw: &raw::RawAdmin,
    base: &Path,
) -> (SocketAddr, AdminAuth) {
    unknown_keys(errors, "admin", &raw.unknown);
    let text = raw.bind.clone().unwrap_or_else(|| "127.0.0.1:9644".into());
    let bind = match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errors.push(format!("[admin] bind: `{text}` is not an IP:port address"));
            "127.0.0.1:9644".parse().unwrap()
        }
    };
    let token = match (&raw.token_env, &raw.token_file) {
        (Some(_), Some(_)) => {
            errors.push("[admin]: token_env and token_file are both set; give exactly one".into());
            None
        }
        (Some(name), None) if name.is_empty() => {
            errors.push("[admin] token_env: must name an environment variable".into());
            None
        }
        (Some(name), None) => Some(TokenSource::Env(name.clone())),
        (None, Some(file)) if file.is_empty() => {
            errors.push("[admin] token_file: must name a file".into());
            None
        }
        (None, Some(file)) => Some(TokenSource::File(resolve_path(base, file))),
        (None, None) => None,
    };
    let guarded = raw.token_env.is_some() || raw.token_file.is_some();
    if !guarded && !bind.ip().to_canonical().is_loopback() {
        errors.push(format!(
            "[admin] bind: {bind} is reachable from other machines and the admin API can reroute every client; set token_env or token_file, or bind to 127.0.0.1"
        ));
    }
    let token_for_reads = raw.token_for_reads.unwrap_or(false);
    if token_for_reads && !guarded {
        errors.push("[admin] token_for_reads: needs token_env or token_file".into());
    }
    (
        bind,
        AdminAuth {
            token,
            token_for_reads,
        },
    )
}

fn unknown_keys(errors: &mut Vec<String>, section: &str, unknown: &Unknown) {
    for key in unknown.keys() {
        if section.is_empty() {
            errors.push(format!("unknown key `{key}`"));
        } else {
            errors.push(format!("[{section}]: unknown key `{key}`"));
        }
    }
}

fn parse_matcher(errors: &mut Vec<String>, section: &str, key: &str) -> Option<Matcher> {
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

fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
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
    let check_cluster = |errors: &mut Vec<String>, where_: &str, name: &str| {
        if !cluster_names.contains(name) {
            errors.push(format!(
                "[{where_}]: unknown cluster `{name}` (known: {})",
                cluster_names.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    };

    // [routes]
    let r = &raw.routes;
    unknown_keys(&mut errors, "routes", &r.unknown);
    let default_cluster = match &r.default_cluster {
        Some(d) => {
            check_cluster(&mut errors, "routes", d);
            d.clone()
        }
        None if clusters.len() == 1 => clusters[0].name.clone(),
        None if clusters.is_empty() => String::new(), // already reported
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
        unknown_keys(&mut errors, &section, &t.unknown);
        let matcher = parse_matcher(&mut errors, "routes.topics", key);
        for c in t.produce.iter().chain(t.consume.iter()) {
            check_cluster(&mut errors, &section, c);
        }
        for (c, physical) in &t.rename {
            check_cluster(&mut errors, &format!("{section}.rename"), c);
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
            for c in &cluster_names {
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
                    &mut errors,
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
        unknown_keys(&mut errors, &section, &g.unknown);
        let matcher = parse_matcher(&mut errors, "routes.groups", key);
        let cluster = match &g.cluster {
            Some(c) => {
                check_cluster(&mut errors, &section, c);
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
                    &mut errors,
                    "routes.groups",
                    a.matcher.source(),
                    b.matcher.source(),
                );
            }
        }
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        proxy,
        listener,
        admin_bind,
        admin_auth,
        clusters,
        routes: RoutesConfig {
            default_cluster,
            topics,
            groups,
        },
    })
}

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(text, Vec::<(String, String)>::new(), Path::new("."))
    }

    const MINIMAL: &str = r#"
        [listener]
        bind = "127.0.0.1:9092"
        [clusters.source]
        bootstrap = ["localhost:19092"]
    "#;

    #[test]
    fn minimal_config_gets_spec_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.proxy.cluster_id, "switchyard");
        assert_eq!(c.listener.broker_port_base, 9100);
        assert_eq!(c.listener.mode, ListenerMode::Port);
        assert_eq!(c.admin_bind, "127.0.0.1:9644".parse().unwrap());
        assert_eq!(c.routes.default_cluster, "source");
        assert_eq!(c.proxy.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            r#"
            bogus = 1
            [proxy]
            colour = "red"
            [listener]
            bind = "nowhere"
            mode = "carrier-pigeon"
            [clusters.source]
            bootstrap = ["no-port"]
            [clusters.target]
            bootstrap = ["t:9092"]
            node_id_offset = 10
            [routes]
            default_cluster = "elsewhere"
            [routes.topics."^orders("]
            produce = "target"
            [routes.topics."^orders\\..*"]
            produce = "source"
            [routes.topics."^.*\\.v1$"]
            produce = "target"
            [routes.topics."payments"]
            produce = "mars"
            [routes.groups."billing"]
            cluster = "target"
            offsets = "guess"
            "#,
        )
        .unwrap_err();
        let all = err.to_string();
        for needle in [
            "unknown key `bogus`",
            "[proxy]: unknown key `colour`",
            "`nowhere` is not an IP:port",
            "carrier-pigeon",
            "`no-port` is not host:port",
            "less than 1000 apart",
            "unknown cluster `elsewhere`",
            "invalid regex",
            "unknown cluster `mars`",
            "`guess` is not one of",
            "both match some names but route them differently",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(err.0.len() >= 10, "{all}");
    }

    #[test]
    fn env_overrides_a_key() {
        let env = vec![
            (
                "SWITCHYARD__PROXY__CLUSTER_ID".to_string(),
                "from-env".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let c = Config::from_toml(MINIMAL, env, Path::new(".")).unwrap();
        assert_eq!(c.proxy.cluster_id, "from-env");
    }

    #[test]
    fn topic_names_keep_dots_and_case() {
        let c = parse(
            r#"
            [clusters.source]
            bootstrap = ["s:9092"]
            [clusters.target]
            bootstrap = ["t:9092"]
            node_id_offset = 1000
            [routes]
            default_cluster = "source"
            [routes.topics."Orders.v1"]
            produce = "target"
            rename = { target = "source.Orders.v1" }
            [routes.groups."^billing-.*"]
            cluster = "target"
            "#,
        )
        .unwrap();
        assert_eq!(c.routes.topics.len(), 1);
        assert!(c.routes.topics[0].matcher.matches("Orders.v1"));
        assert_eq!(c.routes.topics[0].rename["target"], "source.Orders.v1");
        assert!(c.routes.groups[0].matcher.matches("billing-eu"));
        assert!(!c.routes.groups[0].matcher.matches("xbilling-eu"));
    }

    #[test]
    fn rename_collisions_are_rejected() {
        let err = parse(
            r#"
            [clusters.source]
            bootstrap = ["s:9092"]
            [clusters.target]
            bootstrap = ["t:9092"]
            node_id_offset = 1000
            [routes]
            default_cluster = "source"
            [routes.topics."a"]
            rename = { target = "b" }
            [routes.topics."b"]
            produce = "target"
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("both map to topic `b`"), "{err}");
    }

    fn with_admin(admin: &str) -> Result<Config, ConfigErrors> {
        parse(&format!("{MINIMAL}\n[admin]\n{admin}\n"))
    }

    #[test]
    fn admin_on_a_non_loopback_address_needs_a_token() {
        for bind in ["0.0.0.0:9644", "[::]:9644", "10.1.2.3:9644"] {
            let err = with_admin(&format!("bind = \"{bind}\"")).unwrap_err();
            assert!(
                err.to_string()
                    .contains("reachable from other machines and the admin API can reroute every client; set token_env or token_file"),
                "{bind}: {err}"
            );
        }
        for bind in ["127.0.0.1:9644", "127.0.0.2:9644", "[::1]:9644"] {
            with_admin(&format!("bind = \"{bind}\"")).unwrap();
        }
        let c = with_admin("bind = \"0.0.0.0:9644\"\ntoken_env = \"ADMIN_TOKEN\"").unwrap();
        assert_eq!(
            c.admin_auth.token,
            Some(TokenSource::Env("ADMIN_TOKEN".into()))
        );
        assert!(!c.admin_auth.token_for_reads);
    }

    #[test]
    fn admin_token_has_exactly_one_source() {
        let err = with_admin("token_env = \"A\"\ntoken_file = \"t\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("token_env and token_file are both set"),
            "{err}"
        );
        let err = with_admin("token_env = \"\"").unwrap_err();
        assert!(err.to_string().contains("token_env: must name"), "{err}");
        let err = with_admin("token_for_reads = true").unwrap_err();
        assert!(
            err.to_string().contains("token_for_reads: needs token_env"),
            "{err}"
        );
        let err = with_admin("token = \"secret\"").unwrap_err();
        assert!(
            err.to_string().contains("[admin]: unknown key `token`"),
            "{err}"
        );
    }

    #[test]
    fn admin_token_file_is_relative_to_the_config_file() {
        let text =
            format!("{MINIMAL}\n[admin]\ntoken_file = \"secrets/admin\"\ntoken_for_reads = true\n");
        let c =
            Config::from_toml(&text, Vec::<(String, String)>::new(), Path::new("/etc/sy")).unwrap();
        assert_eq!(
            c.admin_auth.token,
            Some(TokenSource::File(PathBuf::from("/etc/sy/secrets/admin")))
        );
        assert!(c.admin_auth.token_for_reads);
    }

    #[test]
    fn load_admin_reads_only_the_admin_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        // The listener's TLS files do not exist; the CLI still finds its token.
        std::fs::write(
            &path,
            "[listener.tls]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n[admin]\nbind = \"127.0.0.1:9700\"\ntoken_file = \"tok\"\n",
        )
        .unwrap();
        assert!(Config::load(&path).is_err());
        let (bind, auth) = Config::load_admin(&path).unwrap();
        assert_eq!(bind, "127.0.0.1:9700".parse().unwrap());
        assert_eq!(auth.token, Some(TokenSource::File(dir.path().join("tok"))));
    }
}
