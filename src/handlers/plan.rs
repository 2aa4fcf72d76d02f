//! What a routed Produce, Fetch or ListOffsets needs on its way back: the
//! partitions the proxy answered itself, the renames to undo, the producer
//! batches to account for.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::messages::TopicName;

use super::context::topic_name;
use crate::routes::RouteTable;
use crate::switch::inflight::InflightGuard;
use crate::switch::producers::{Producers, Sent};

/// A topic and the partitions the proxy answered itself with `error`.
#[derive(Debug, Clone)]
pub struct Refused {
    pub topic: TopicName,
    pub partitions: Vec<i32>,
}

/// What a routed Produce, Fetch or ListOffsets response needs on its way back.
#[derive(Debug, Default)]
pub struct Plan {
    /// Produce: batches whose producer id was mapped, reported as written when
    /// their partition's response carries no error.
    pub sent: Vec<Sent>,
    pub producers: Option<Arc<Producers>>,
    /// Produce: the partitions this request holds in flight (released on drop).
    pub hold: Option<InflightGuard>,
    pub refused: Vec<Refused>,
    /// Produce: partitions refused with UNKNOWN_PRODUCER_ID (a producer id the
    /// proxy holds no state for, away from its home cluster).
    pub unknown_producer: Vec<Refused>,
    /// physical name upstream → logical name the client used
    pub renames: HashMap<TopicName, TopicName>,
    /// For fetches: topics (logical) this connection must not serve at all, even if
    /// the broker's fetch session still returns them.
    pub not_here: Option<ReadCheck>,
    /// For fetches of a group being switched: answer without records.
    pub strip_records: bool,
}

/// Whether a logical topic is read from another cluster, for one request's routes.
#[derive(Clone)]
pub struct ReadCheck(pub(crate) Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl ReadCheck {
    pub(crate) fn elsewhere(&self, topic: &str) -> bool {
        (self.0)(topic)
    }
}

impl std::fmt::Debug for ReadCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadCheck")
    }
}

impl Plan {
    pub(crate) fn is_noop(&self) -> bool {
        self.refused.is_empty()
            && self.unknown_producer.is_empty()
            && self.renames.is_empty()
            && self.not_here.is_none()
            && !self.strip_records
    }

    /// One topic of a request: refused (every partition answered with a retriable
    /// error) when `elsewhere`, else renamed to its physical name on `here`.
    /// Returns whether the topic stays in the request.
    pub(crate) fn route_topic(
        &mut self,
        routes: &RouteTable,
        here: &str,
        name: &mut TopicName,
        partitions: impl Iterator<Item = i32>,
        elsewhere: bool,
    ) -> bool {
        if elsewhere {
            self.refused.push(Refused {
                topic: name.clone(),
                partitions: partitions.collect(),
            });
            return false;
        }
        let physical = routes.physical_topic(name, here);
        if physical != name.as_str() {
            let physical = topic_name(&physical);
            self.renames.insert(physical.clone(), name.clone());
            *name = physical;
        }
        true
    }

    pub(crate) fn logical(&self, name: &TopicName) -> TopicName {
        self.renames
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.clone())
    }
}
