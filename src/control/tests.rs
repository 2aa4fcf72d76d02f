//! The control plane against a proxy whose clusters are never reached.

use super::*;

/// Two clusters that are never reached: nothing listens on port 1, and the
/// changes below (consume routes, drained group switches) need no upstream.
fn proxy(dir: &std::path::Path) -> Arc<Proxy> {
    let text = format!(
        r#"
        [proxy]
        state_dir = "{}"
        [listener]
        bind = "127.0.0.1:9092"
        [clusters.source]
        bootstrap = ["127.0.0.1:1"]
        [clusters.target]
        bootstrap = ["127.0.0.1:1"]
        node_id_offset = 1000
        [routes]
        default_cluster = "source"
        "#,
        dir.join("state").display()
    );
    let config = Config::from_toml(&text, Vec::<(String, String)>::new(), dir).unwrap();
    Proxy::new(config, None).unwrap()
}

fn consume_on_target() -> TopicSwitch {
    TopicSwitch {
        produce: None,
        consume: Some("target".into()),
    }
}

/// Both switches queue behind a change in progress. Each must build its new
/// config from what the other left, not from the table both saw while waiting.
#[tokio::test(flavor = "current_thread")]
async fn queued_switches_of_two_topics_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(dir.path());
    let held = p.changing.lock().await;
    let a = tokio::spawn({
        let p = p.clone();
        async move { p.switch_topic("a", consume_on_target()).await }
    });
    let b = tokio::spawn({
        let p = p.clone();
        async move { p.switch_topic("b", consume_on_target()).await }
    });
    // One thread: each yield lets both tasks run until they wait for the lock.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    drop(held);
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    let routes = p.routes();
    assert_eq!(routes.version, 3);
    assert_eq!(routes.consume_cluster("a"), "target");
    assert_eq!(routes.consume_cluster("b"), "target");
}

/// A group switch writes its record before the table that pins the group is
/// visible. When that write fails, nothing of the change may be visible.
#[tokio::test(flavor = "current_thread")]
async fn failed_state_write_leaves_the_running_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(dir.path());
    let before = p.config();
    p.fail_state_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let result = p
        .switch_group(
            "billing",
            GroupSwitchRequest {
                to: "target".into(),
                offsets: None,
                when: None,
            },
        )
        .await;
    let Err(SwitchRefused::Invalid(e)) = result else {
        panic!("expected the state write to fail the switch: {result:?}");
    };
    assert!(e.to_string().contains("injected write failure"), "{e}");
    assert_eq!(*p.config(), *before);
    assert_eq!(p.routes().version, 1);
    assert_eq!(p.routes().group_cluster("billing"), "source");
    assert!(p.routes().pins.is_empty());
    assert!(!p.group_switches.is_live("billing"));
    assert!(p.group_switch_records().is_empty());
}
