//! Config parsing and validation: every error listed at once.

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
    let c = Config::from_toml(&text, Vec::<(String, String)>::new(), Path::new("/etc/sy")).unwrap();
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

const TWO: &str = r#"
    [listener]
    bind = "127.0.0.1:9092"
    [clusters.source]
    bootstrap = ["s:9092"]
    [clusters.target]
    bootstrap = ["t:9092"]
    node_id_offset = 1000
"#;

#[test]
fn a_routing_table_written_out_reads_back_the_same() {
    let c = parse(&format!(
        r#"{TWO}
        [routes]
        default_cluster = "source"
        [routes.topics."orders"]
        produce = "target"
        consume = "source"
        rename = {{ target = "source.orders", source = "orders \"v1\"" }}
        [routes.topics."^metrics\\..*$"]
        produce = "target"
        rename = {{ target = "src.$0" }}
        [routes.groups."billing"]
        cluster = "target"
        offsets = "mm2"
        when = "now"
        [routes.groups."^batch-.*"]
        cluster = "target"
        "#
    ))
    .unwrap();
    let text = c.routes.to_toml();
    let back = c.with_routes_toml(&text).unwrap();
    assert_eq!(back.routes, c.routes, "{text}");
    assert_eq!(back, c);
}

#[test]
fn a_published_table_is_checked_against_this_config_s_clusters() {
    let c = parse(&format!("{TWO}\n[routes]\ndefault_cluster = \"source\"\n")).unwrap();
    let err = c
        .with_routes_toml(
            "[routes]\ndefault_cluster = \"elsewhere\"\n[proxy]\ncluster_id = \"x\"\n",
        )
        .unwrap_err();
    let all = err.0.join("\n");
    assert!(all.contains("unknown cluster `elsewhere`"), "{all}");
    assert!(all.contains("only a [routes] section"), "{all}");
}

#[test]
fn coordination_is_validated_whole() {
    let c = parse(&format!(
        "{TWO}\n[routes]\ndefault_cluster = \"source\"\n[coordination]\ncluster = \"target\"\ninstance = \"gw-1\"\n"
    ))
    .unwrap();
    let k = c.coordination.unwrap();
    assert_eq!(
        (k.cluster.as_str(), k.topic.as_str(), k.instance.as_str()),
        ("target", "__switchyard_state", "gw-1")
    );
    assert_eq!(k.session_timeout, Duration::from_secs(10));
    let err = parse(&format!(
        "{TWO}\n[routes]\ndefault_cluster = \"source\"\n[coordination]\ncluster = \"nowhere\"\nsession_timeout_ms = 5\ncolour = 1\n"
    ))
    .unwrap_err();
    let all = err.0.join("\n");
    assert!(
        all.contains("[coordination] cluster: unknown cluster `nowhere`"),
        "{all}"
    );
    assert!(all.contains("session_timeout_ms: 5"), "{all}");
    assert!(all.contains("colour"), "{all}");
    let alone = parse(&format!("{TWO}\n[routes]\ndefault_cluster = \"source\"\n")).unwrap();
    assert!(alone.coordination.is_none());
}
