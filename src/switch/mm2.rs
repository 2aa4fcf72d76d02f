//! MirrorMaker 2's own records (PROTOCOL.md §6), read the way the `mm2` offset
//! strategy needs them: checkpoints on the target, offset-syncs on the source.
//!
//! Aliases are not configured: the source alias comes from a renamed topic
//! (`<alias>.<topic>` under the default replication policy), else the old cluster's
//! name; the offset-syncs topic is the one `mm2-offset-syncs.*.internal` topic found
//! on either cluster (preferring the one named after the new cluster).

use std::collections::HashMap;

use bytes::{Buf, Bytes};

use super::ops;
use super::translate::{Committed, TranslateCtx, TranslateError};
use crate::upstream::ClusterView;

/// One checkpoint: a group's committed offset upstream and its translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub upstream: i64,
    pub downstream: i64,
}

/// One offset-sync: an upstream offset and the downstream offset of the same record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sync {
    pub upstream: i64,
    pub downstream: i64,
}

fn string(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let len = b.get_i16();
    if len < 0 || b.remaining() < len as usize {
        return None;
    }
    let s = b.split_to(len as usize);
    String::from_utf8(s.to_vec()).ok()
}

/// Checkpoint key: group, topic (target-side name), partition.
pub fn parse_checkpoint_key(mut b: Bytes) -> Option<(String, String, i32)> {
    let group = string(&mut b)?;
    let topic = string(&mut b)?;
    (b.remaining() >= 4).then(|| (group, topic, b.get_i32()))
}

/// Checkpoint value: version 0, upstream offset, downstream offset, metadata.
pub fn parse_checkpoint_value(mut b: Bytes) -> Option<Checkpoint> {
    if b.remaining() < 18 || b.get_i16() != 0 {
        return None;
    }
    Some(Checkpoint {
        upstream: b.get_i64(),
        downstream: b.get_i64(),
    })
}

/// Offset-sync key: topic (source-side name), partition.
pub fn parse_sync_key(mut b: Bytes) -> Option<(String, i32)> {
    let topic = string(&mut b)?;
    (b.remaining() >= 4).then(|| (topic, b.get_i32()))
}

/// Offset-sync value: upstream offset, downstream offset (no version).
pub fn parse_sync_value(mut b: Bytes) -> Option<Sync> {
    (b.remaining() >= 16).then(|| Sync {
        upstream: b.get_i64(),
        downstream: b.get_i64(),
    })
}

/// The translation rule of Kafka 3.5+ (KAFKA-12468/14666): the latest sync at or
/// below `u`; exact when it is `u`, else one past its downstream offset.
pub fn translate_by_syncs(syncs: &[Sync], u: i64) -> Option<i64> {
    syncs
        .iter()
        .rev()
        .filter(|s| s.upstream <= u)
        .max_by_key(|s| s.upstream)
        .map(|s| s.downstream + i64::from(s.upstream != u))
}

/// Checkpoints and syncs for one switch.
#[derive(Debug, Default)]
pub struct Mm2Data {
    /// (group, target topic, partition) → newest checkpoint
    checkpoints: HashMap<(String, String, i32), Checkpoint>,
    /// (source topic, partition) → syncs in the order written
    syncs: HashMap<(String, i32), Vec<Sync>>,
}

/// Every record of partition 0 of `topic`, start to end.
async fn read_all(
    c: &ClusterView,
    topic: &str,
    cx: &TranslateCtx<'_>,
) -> Result<Vec<(Bytes, Bytes)>, String> {
    let leaders = ops::leaders(c, topic, cx.timeout).await?;
    let mut out = Vec::new();
    for (p, leader) in leaders {
        let start = ops::offsets_at(c, topic, ops::EARLIEST, cx.timeout).await?;
        let end = ops::offsets_at(c, topic, ops::LATEST, cx.timeout).await?;
        let (start, end) = (
            start.get(&p).copied().unwrap_or(0),
            end.get(&p).copied().unwrap_or(0),
        );
        let mut at = start;
        while at < end {
            let records = ops::read(c, topic, p, leader, at, 1 << 20, cx.timeout).await?;
            let Some(last) = records.last() else { break };
            at = last.offset + 1;
            out.extend(records.into_iter().filter_map(|r| Some((r.key?, r.value?))));
        }
    }
    Ok(out)
}

async fn topic_list(c: &ClusterView, cx: &TranslateCtx<'_>) -> Result<Vec<String>, String> {
    super::topic_names_all(c, cx.timeout)
        .await
        .map_err(|e| e.to_string())
}

impl Mm2Data {
    pub async fn load(
        cx: &TranslateCtx<'_>,
        committed: &Committed,
    ) -> Result<Mm2Data, TranslateError> {
        let (from, to) = (cx.from.name(), cx.to.name());
        let notyet = TranslateError::NotYet;
        // Source alias from a renamed topic, `<alias>.<topic>`.
        let alias = committed
            .keys()
            .find_map(|(t, _)| {
                let old = cx.routes.physical_topic(t, from);
                let new = cx.routes.physical_topic(t, to);
                new.strip_suffix(&format!(".{old}")).map(str::to_string)
            })
            .unwrap_or_else(|| from.to_string());
        let mut data = Mm2Data::default();
        let checkpoints = format!("{alias}.checkpoints.internal");
        let to_topics = topic_list(cx.to, cx).await.map_err(notyet)?;
        if to_topics.contains(&checkpoints) {
            for (k, v) in read_all(cx.to, &checkpoints, cx).await.map_err(notyet)? {
                if let (Some(key), Some(cp)) = (parse_checkpoint_key(k), parse_checkpoint_value(v))
                {
                    data.checkpoints.insert(key, cp);
                }
            }
        }
        let from_topics = topic_list(cx.from, cx).await.map_err(notyet)?;
        let is_sync = |t: &String| t.starts_with("mm2-offset-syncs.") && t.ends_with(".internal");
        let preferred = format!("mm2-offset-syncs.{to}.internal");
        let mut found: Vec<(&ClusterView, String)> = Vec::new();
        for (c, list) in [(cx.from, &from_topics), (cx.to, &to_topics)] {
            for t in list.iter().filter(|t| is_sync(t)) {
                found.push((c, t.clone()));
            }
        }
        let chosen = found
            .iter()
            .find(|(_, t)| *t == preferred)
            .or_else(|| (found.len() == 1).then(|| &found[0]));
        if let Some((c, topic)) = chosen {
            for (k, v) in read_all(c, topic, cx).await.map_err(notyet)? {
                if let (Some(key), Some(s)) = (parse_sync_key(k), parse_sync_value(v)) {
                    data.syncs.entry(key).or_default().push(s);
                }
            }
        }
        tracing::info!(
            group = cx.group,
            %checkpoints,
            offset_syncs = ?chosen.map(|(_, t)| t),
            checkpoint_records = data.checkpoints.len(),
            sync_partitions = data.syncs.len(),
            "MirrorMaker 2 records read"
        );
        if data.checkpoints.is_empty() && data.syncs.is_empty() {
            tracing::warn!(group = cx.group, %checkpoints, "no MirrorMaker 2 checkpoints or offset-syncs found; offsets fall back to timestamps");
        }
        Ok(data)
    }

    /// The new offset of `group`'s committed offset `u` in one partition, and the
    /// method; None when neither checkpoints nor syncs cover it.
    pub fn translate(
        &self,
        group: &str,
        old_topic: &str,
        new_topic: &str,
        partition: i32,
        u: i64,
    ) -> Option<(i64, &'static str)> {
        let cp = self
            .checkpoints
            .get(&(group.to_string(), new_topic.to_string(), partition));
        if let Some(cp) = cp.filter(|cp| cp.upstream == u) {
            return Some((cp.downstream, "mm2 checkpoint"));
        }
        if let Some(o) = self
            .syncs
            .get(&(old_topic.to_string(), partition))
            .and_then(|s| translate_by_syncs(s, u))
        {
            return Some((o, "mm2 offset-sync"));
        }
        cp.filter(|cp| cp.upstream < u).map(|cp| {
            (
                cp.downstream,
                "mm2 checkpoint older than the last commit (records after it are read again)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn s(b: &mut bytes::BytesMut, v: &str) {
        b.put_i16(v.len() as i16);
        b.put_slice(v.as_bytes());
    }

    #[test]
    fn checkpoint_and_sync_records_parse() {
        let mut k = bytes::BytesMut::new();
        s(&mut k, "billing");
        s(&mut k, "source.orders");
        k.put_i32(3);
        assert_eq!(
            parse_checkpoint_key(k.freeze()),
            Some(("billing".into(), "source.orders".into(), 3))
        );
        let mut v = bytes::BytesMut::new();
        v.put_i16(0);
        v.put_i64(120);
        v.put_i64(95);
        s(&mut v, "");
        assert_eq!(
            parse_checkpoint_value(v.freeze()),
            Some(Checkpoint {
                upstream: 120,
                downstream: 95
            })
        );
        let mut k = bytes::BytesMut::new();
        s(&mut k, "orders");
        k.put_i32(1);
        assert_eq!(parse_sync_key(k.freeze()), Some(("orders".into(), 1)));
        let mut v = bytes::BytesMut::new();
        v.put_i64(7);
        v.put_i64(5);
        assert_eq!(
            parse_sync_value(v.freeze()),
            Some(Sync {
                upstream: 7,
                downstream: 5
            })
        );
        assert_eq!(parse_checkpoint_value(Bytes::from_static(&[0, 1])), None);
    }

    #[test]
    fn sync_rule_is_exact_on_a_sync_and_one_past_otherwise() {
        let syncs = [
            Sync {
                upstream: 0,
                downstream: 0,
            },
            Sync {
                upstream: 100,
                downstream: 90,
            },
            Sync {
                upstream: 250,
                downstream: 230,
            },
        ];
        assert_eq!(translate_by_syncs(&syncs, 100), Some(90));
        assert_eq!(translate_by_syncs(&syncs, 180), Some(91));
        assert_eq!(translate_by_syncs(&syncs, 400), Some(231));
        assert_eq!(translate_by_syncs(&syncs[1..], 50), None);
    }

    #[test]
    fn checkpoints_first_then_syncs() {
        let mut d = Mm2Data::default();
        d.checkpoints.insert(
            ("g".into(), "src.t".into(), 0),
            Checkpoint {
                upstream: 10,
                downstream: 8,
            },
        );
        d.syncs.insert(
            ("t".into(), 0),
            vec![Sync {
                upstream: 5,
                downstream: 4,
            }],
        );
        assert_eq!(
            d.translate("g", "t", "src.t", 0, 10),
            Some((8, "mm2 checkpoint"))
        );
        assert_eq!(
            d.translate("g", "t", "src.t", 0, 12),
            Some((5, "mm2 offset-sync"))
        );
        assert_eq!(d.translate("g", "t", "src.t", 0, 3).map(|x| x.0), None);
    }
}
