//! `[coordination]`, validated: several processes sharing one routing table.

use super::raw::RawCoordination;
use super::*;

/// `[coordination]`: absent is one process deciding alone.
pub(super) fn validate_coordination(
    errors: &mut Vec<String>,
    raw: &Option<RawCoordination>,
    cluster_names: &BTreeSet<&str>,
    listener: &ListenerConfig,
) -> Option<CoordinationConfig> {
    let c = raw.as_ref()?;
    unknown_keys(errors, "coordination", &c.unknown);
    let cluster = match &c.cluster {
        Some(name) if cluster_names.contains(name.as_str()) => name.clone(),
        Some(name) => {
            errors.push(format!("[coordination] cluster: unknown cluster `{name}`"));
            String::new()
        }
        None => {
            errors.push("[coordination] cluster: required".into());
            String::new()
        }
    };
    let topic = c
        .topic
        .clone()
        .unwrap_or_else(|| "__switchyard_state".into());
    if topic.is_empty() || topic.len() > 249 {
        errors.push("[coordination] topic: must be 1 to 249 characters".into());
    }
    let instance = match &c.instance {
        Some(i) => i.clone(),
        None => format!("{}:{}", hostname(), listener.bind.port()),
    };
    if instance.is_empty() || instance.len() > 200 {
        errors.push("[coordination] instance: must be 1 to 200 characters".into());
    }
    let ms = c.session_timeout_ms.unwrap_or(10_000);
    if !(1_000..=300_000).contains(&ms) {
        errors.push(format!(
            "[coordination] session_timeout_ms: {ms} is outside 1000..=300000"
        ));
    }
    Some(CoordinationConfig {
        cluster,
        topic,
        instance,
        session_timeout: Duration::from_millis(ms),
    })
}

/// This machine's name, for the default instance id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".into())
}
