//! Offset strategies (DESIGN.md decision 10): given a group's committed offsets on
//! the cluster it leaves, each returns, per partition, the offset to commit on the
//! cluster it joins and how that offset was obtained.
//!
//! - `marks`: the new cluster's end offsets recorded when the topic's writes moved
//!   there. Only exact once the group has read everything left on the old cluster.
//! - `mm2`: MirrorMaker 2 checkpoints for the group, else offset-syncs with the rule
//!   of Kafka 3.5+ (PROTOCOL.md §6), else timestamps, and the method says which.
//! - `identity`: the same offset (replication that preserves offsets).
//! - `timestamp`: the first record on the new cluster at or after the timestamp of
//!   the group's next record on the old one (its last read one when none is left).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::OffsetStrategy;
use crate::routes::RouteTable;
use crate::state::{OffsetMove, StateStore};
use crate::upstream::ClusterView;

use super::{mm2, ops};

/// Why offsets cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Not yet: the group has records left on the old cluster, or replication is
    /// behind. Waiting may fix it.
    #[error("{0}")]
    NotYet(String),
    /// This strategy cannot translate these offsets.
    #[error("{0}")]
    Impossible(String),
}

use TranslateError::{Impossible, NotYet};

/// Everything a strategy may look at.
pub struct TranslateCtx<'a> {
    pub group: &'a str,
    pub routes: &'a RouteTable,
    pub from: &'a ClusterView,
    pub to: &'a ClusterView,
    pub state: &'a StateStore,
    pub timeout: Duration,
}

/// Committed offsets by (logical topic, partition).
pub type Committed = BTreeMap<(String, i32), i64>;

/// One offset strategy.
#[allow(async_fn_in_trait)] // implemented and called inside this crate only
pub trait Translator {
    async fn translate(
        &self,
        cx: &TranslateCtx<'_>,
        committed: &Committed,
    ) -> Result<Vec<OffsetMove>, TranslateError>;
}

fn err(e: String) -> TranslateError {
    NotYet(e)
}

fn topics(committed: &Committed) -> BTreeMap<&str, BTreeMap<i32, i64>> {
    let mut out: BTreeMap<&str, BTreeMap<i32, i64>> = BTreeMap::new();
    for ((t, p), o) in committed {
        out.entry(t.as_str()).or_default().insert(*p, *o);
    }
    out
}

pub struct Marks;
pub struct Identity;
pub struct Timestamp;
pub struct Mm2;

impl Translator for Marks {
    async fn translate(
        &self,
        cx: &TranslateCtx<'_>,
        committed: &Committed,
    ) -> Result<Vec<OffsetMove>, TranslateError> {
        let (from, to) = (cx.from.name(), cx.to.name());
        let mut moves = Vec::new();
        for (topic, parts) in topics(committed) {
            if cx.routes.produce_cluster(topic) == from {
                return Err(Impossible(format!(
                    "topic `{topic}`: its writes still go to `{from}`; `marks` needs them moved to `{to}` first"
                )));
            }
            let mark = cx
                .state
                .mark(topic, to)
                .filter(|m| m.from == from)
                .ok_or_else(|| {
                    Impossible(format!(
                        "topic `{topic}`: no switch mark for writes moving from `{from}` to `{to}`"
                    ))
                })?;
            let physical = cx.routes.physical_topic(topic, from);
            let ends = ops::offsets_at(cx.from, &physical, ops::LATEST, cx.timeout)
                .await
                .map_err(err)?;
            let starts = ops::offsets_at(cx.from, &physical, ops::EARLIEST, cx.timeout)
                .await
                .map_err(err)?;
            let mut left = Vec::new();
            for (p, end) in &ends {
                let read_to = parts
                    .get(p)
                    .copied()
                    .unwrap_or(starts.get(p).copied().unwrap_or(0));
                if read_to < *end {
                    left.push(format!("{topic}-{p}: {} records", end - read_to));
                    continue;
                }
                moves.push(OffsetMove {
                    topic: topic.to_string(),
                    partition: *p,
                    old_offset: parts.get(p).copied(),
                    new_offset: mark.partitions.get(p).copied().unwrap_or(0),
                    method: "marks".into(),
                });
            }
            if !left.is_empty() {
                return Err(NotYet(format!(
                    "the group has not read everything left on `{from}`: {}",
                    left.join(", ")
                )));
            }
        }
        Ok(moves)
    }
}

impl Translator for Identity {
    async fn translate(
        &self,
        cx: &TranslateCtx<'_>,
        committed: &Committed,
    ) -> Result<Vec<OffsetMove>, TranslateError> {
        let to = cx.to.name();
        let mut moves = Vec::new();
        for (topic, parts) in topics(committed) {
            let physical = cx.routes.physical_topic(topic, to);
            let ends = ops::offsets_at(cx.to, &physical, ops::LATEST, cx.timeout)
                .await
                .map_err(err)?;
            for (p, o) in parts {
                let end = ends.get(&p).copied().ok_or_else(|| {
                    Impossible(format!("`{physical}` on `{to}` has no partition {p}"))
                })?;
                if o > end {
                    return Err(NotYet(format!(
                        "{topic}-{p}: committed offset {o} is beyond the end of `{to}` ({end}); replication is behind"
                    )));
                }
                moves.push(OffsetMove {
                    topic: topic.to_string(),
                    partition: p,
                    old_offset: Some(o),
                    new_offset: o,
                    method: "identity".into(),
                });
            }
        }
        Ok(moves)
    }
}

/// The timestamp the group stands at in one partition of the old cluster: its next
/// record's, or its last read one's when nothing is left; None when it read nothing.
async fn position_timestamp(
    cx: &TranslateCtx<'_>,
    physical: &str,
    leader: i32,
    partition: i32,
    offset: i64,
    end: i64,
) -> Result<Option<i64>, TranslateError> {
    let at = if offset < end {
        offset
    } else if offset > 0 {
        offset - 1
    } else {
        return Ok(None);
    };
    let records = ops::read(
        cx.from,
        physical,
        partition,
        leader,
        at,
        256 * 1024,
        cx.timeout,
    )
    .await
    .map_err(err)?;
    Ok(records.first().map(|r| r.timestamp))
}

/// Offsets on the new cluster for (partition → old offset) by timestamp.
async fn by_timestamp(
    cx: &TranslateCtx<'_>,
    topic: &str,
    parts: &BTreeMap<i32, i64>,
    method: &str,
) -> Result<Vec<OffsetMove>, TranslateError> {
    let (from, to) = (cx.from.name(), cx.to.name());
    let old_physical = cx.routes.physical_topic(topic, from);
    let new_physical = cx.routes.physical_topic(topic, to);
    let leaders = ops::leaders(cx.from, &old_physical, cx.timeout)
        .await
        .map_err(err)?;
    let ends = ops::offsets_at(cx.from, &old_physical, ops::LATEST, cx.timeout)
        .await
        .map_err(err)?;
    let new_leaders = ops::leaders(cx.to, &new_physical, cx.timeout)
        .await
        .map_err(err)?;
    let mut wanted = BTreeMap::new();
    for (p, o) in parts {
        let leader = *leaders.get(p).ok_or_else(|| {
            Impossible(format!("`{old_physical}` on `{from}` has no partition {p}"))
        })?;
        if !new_leaders.contains_key(p) {
            return Err(Impossible(format!(
                "`{new_physical}` on `{to}` has no partition {p}"
            )));
        }
        let end = ends.get(p).copied().unwrap_or(0);
        let ts = position_timestamp(cx, &old_physical, leader, *p, *o, end).await?;
        wanted.insert(*p, ts.unwrap_or(ops::EARLIEST));
    }
    let found = ops::offsets_for(cx.to, &new_physical, &new_leaders, &wanted, cx.timeout)
        .await
        .map_err(err)?;
    let new_ends = ops::offsets_at(cx.to, &new_physical, ops::LATEST, cx.timeout)
        .await
        .map_err(err)?;
    Ok(parts
        .iter()
        .map(|(p, o)| {
            let at = found.get(p).copied().unwrap_or(-1);
            OffsetMove {
                topic: topic.to_string(),
                partition: *p,
                old_offset: Some(*o),
                // No record that recent: the end, where the next one will be.
                new_offset: if at < 0 {
                    new_ends.get(p).copied().unwrap_or(0)
                } else {
                    at
                },
                method: method.to_string(),
            }
        })
        .collect())
}

impl Translator for Timestamp {
    async fn translate(
        &self,
        cx: &TranslateCtx<'_>,
        committed: &Committed,
    ) -> Result<Vec<OffsetMove>, TranslateError> {
        let mut moves = Vec::new();
        for (topic, parts) in topics(committed) {
            moves.extend(by_timestamp(cx, topic, &parts, "timestamp").await?);
        }
        Ok(moves)
    }
}

impl Translator for Mm2 {
    async fn translate(
        &self,
        cx: &TranslateCtx<'_>,
        committed: &Committed,
    ) -> Result<Vec<OffsetMove>, TranslateError> {
        let (from, to) = (cx.from.name(), cx.to.name());
        let data = mm2::Mm2Data::load(cx, committed).await?;
        let mut moves = Vec::new();
        for (topic, parts) in topics(committed) {
            let old_physical = cx.routes.physical_topic(topic, from);
            let new_physical = cx.routes.physical_topic(topic, to);
            let mut fallback = BTreeMap::new();
            for (p, u) in &parts {
                match data.translate(cx.group, &old_physical, &new_physical, *p, *u) {
                    Some((offset, method)) => moves.push(OffsetMove {
                        topic: topic.to_string(),
                        partition: *p,
                        old_offset: Some(*u),
                        new_offset: offset,
                        method: method.into(),
                    }),
                    None => {
                        fallback.insert(*p, *u);
                    }
                }
            }
            if !fallback.is_empty() {
                moves.extend(
                    by_timestamp(
                        cx,
                        topic,
                        &fallback,
                        "timestamp (no MirrorMaker 2 checkpoint or offset-sync covers this offset)",
                    )
                    .await?,
                );
            }
        }
        Ok(moves)
    }
}

/// Translates with the named strategy.
pub async fn translate(
    strategy: OffsetStrategy,
    cx: &TranslateCtx<'_>,
    committed: &Committed,
) -> Result<Vec<OffsetMove>, TranslateError> {
    match strategy {
        OffsetStrategy::Marks => Marks.translate(cx, committed).await,
        OffsetStrategy::Mm2 => Mm2.translate(cx, committed).await,
        OffsetStrategy::Identity => Identity.translate(cx, committed).await,
        OffsetStrategy::Timestamp => Timestamp.translate(cx, committed).await,
    }
}

/// Committed offsets on `cluster` (physical names) by logical name.
pub fn logical(
    routes: &RouteTable,
    cluster: &str,
    physical: BTreeMap<(String, i32), i64>,
) -> Committed {
    let reverse: BTreeMap<&str, &str> = routes.renamed_on(cluster).collect();
    physical
        .into_iter()
        .map(|((t, p), o)| {
            let name = reverse.get(t.as_str()).map_or(t.clone(), |l| l.to_string());
            ((name, p), o)
        })
        .collect()
}
