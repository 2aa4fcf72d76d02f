//! Configuration: TOML file (plus `SWITCHYARD__SECTION__KEY` environment overrides)
//! → [`raw::RawConfig`] → validated [`Config`].
//!
//! Validation never stops at the first problem: [`Config::load`] returns every error it
//! found, so `switchyard check` and `POST /reload` can show an operator the whole list.

mod coordination;
mod overlap;
pub mod raw;
mod validate;

use coordination::validate_coordination;
use validate::*;

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
    /// Shared routing through a Kafka topic (None: this process decides alone).
    pub coordination: Option<CoordinationConfig>,
}

/// `[coordination]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinationConfig {
    /// The cluster that holds the shared state topic.
    pub cluster: String,
    /// The state topic (one partition, compacted).
    pub topic: String,
    /// This process's id among the instances; unique per process.
    pub instance: String,
    /// An instance silent this long is no longer counted.
    pub session_timeout: Duration,
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

impl Config {
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// This config with its `[routes]` replaced by `text` (a `[routes]` section in
    /// TOML, as [`RoutesConfig::to_toml`] writes it), validated against this
    /// config's clusters; every problem at once.
    pub fn with_routes_toml(&self, text: &str) -> Result<Config, ConfigErrors> {
        let raw = raw_from_toml(text, Vec::<(String, String)>::new())?;
        let mut errors = Vec::new();
        let sections: BTreeMap<String, serde::de::IgnoredAny> = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigErrors(vec![format!("routes: {e}")]))?;
        if sections.keys().any(|k| k != "routes") {
            errors.push("routes: only a [routes] section may be given".into());
        }
        let names: BTreeSet<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
        let routes = validate_routes(&mut errors, &raw.routes, &names);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            routes,
            ..self.clone()
        })
    }
}

impl RoutesConfig {
    /// The `[routes]` section that [`Config::with_routes_toml`] reads back as this
    /// table.
    pub fn to_toml(&self) -> String {
        // A JSON string is a valid TOML basic string.
        let q = |s: &str| serde_json::to_string(s).expect("strings serialize");
        let mut out = format!("[routes]\ndefault_cluster = {}\n", q(&self.default_cluster));
        for t in &self.topics {
            out.push_str(&format!("\n[routes.topics.{}]\n", q(t.matcher.source())));
            if let Some(p) = &t.produce {
                out.push_str(&format!("produce = {}\n", q(p)));
            }
            if let Some(c) = &t.consume {
                out.push_str(&format!("consume = {}\n", q(c)));
            }
            if !t.rename.is_empty() {
                let pairs: Vec<String> = t
                    .rename
                    .iter()
                    .map(|(c, p)| format!("{} = {}", q(c), q(p)))
                    .collect();
                out.push_str(&format!("rename = {{ {} }}\n", pairs.join(", ")));
            }
        }
        for g in &self.groups {
            out.push_str(&format!(
                "\n[routes.groups.{}]\ncluster = {}\noffsets = {}\nwhen = {}\n",
                q(g.matcher.source()),
                q(&g.cluster),
                q(g.offsets.as_str()),
                q(g.when.as_str())
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests;
