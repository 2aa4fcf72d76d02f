//! Persisted state (DESIGN.md decision 11): a small append-only log of JSON lines in
//! `state_dir`, fsynced on every append and compacted on start (the newest record per
//! key is kept). A torn last line, from a crash in the middle of a write, is dropped.
//!
//! It holds switch marks (the end offsets of a topic's partitions on the cluster its
//! writes moved to, recorded before the first write reaches it) and the progress of
//! every group switch, one record per phase.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The end offsets of `topic` on `cluster` when its `produce` route moved there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub topic: String,
    /// Physical topic name on `cluster`.
    pub physical: String,
    pub cluster: String,
    /// Cluster writes came from before the flip.
    pub from: String,
    pub route_version: u64,
    pub recorded_at_ms: u64,
    pub partitions: BTreeMap<i32, i64>,
}

/// Where a group switch stands. The order is the protocol's (DESIGN.md decision 9);
/// everything before `Flipped` leaves the group on its old cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `when = "drained"`: waiting for the group to read what is left.
    Waiting,
    /// Fetches held; waiting for commits to reach positions.
    Quiescing,
    /// Rejoins held; members removed from the old group.
    Leaving,
    /// Final offsets read and translated.
    Translated,
    /// Translated offsets committed on the new cluster.
    Committed,
    /// Route flipped: the group lives on the new cluster.
    Flipped,
    /// Every member rejoined on the new cluster.
    Done,
    /// Not switched; `reason` says why. The group stays where it was.
    Failed,
    /// Replaced by a later route change before it flipped.
    Cancelled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Quiescing => "quiescing",
            Phase::Leaving => "leaving",
            Phase::Translated => "translated",
            Phase::Committed => "committed",
            Phase::Flipped => "flipped",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    /// Whether the switch is over (successfully or not).
    pub fn finished(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed | Phase::Cancelled)
    }
}

/// One partition's committed offset moved between clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetMove {
    pub topic: String,
    pub partition: i32,
    /// Committed offset on the old cluster (None: the group had none there).
    pub old_offset: Option<i64>,
    pub new_offset: i64,
    /// How `new_offset` was obtained ("marks", "mm2 checkpoint", ...).
    pub method: String,
}

/// A group switch and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSwitch {
    pub group: String,
    pub from: String,
    pub to: String,
    pub offsets: String,
    pub when: String,
    pub phase: Phase,
    /// Why the switch waits or failed.
    pub reason: Option<String>,
    pub moves: Vec<OffsetMove>,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
// Externally tagged (`{"mark": {...}}`): internally tagged enums cannot read maps
// with integer keys back.
#[serde(rename_all = "snake_case")]
enum Record {
    Mark(Mark),
    Group(GroupSwitch),
}

impl Record {
    fn key(&self) -> String {
        match self {
            Record::Mark(m) => format!("mark/{}/{}", m.topic, m.cluster),
            Record::Group(g) => format!("group/{}", g.group),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct StateStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    records: BTreeMap<String, Record>,
}

impl StateStore {
    /// Opens (creating) `dir/state.log`, loads it and rewrites it compacted.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("state.log");
        let mut records = BTreeMap::new();
        if path.exists() {
            let f = File::open(&path).map_err(io(&path))?;
            for line in BufReader::new(f).lines() {
                let line = line.map_err(io(&path))?;
                match serde_json::from_str::<Record>(&line) {
                    Ok(r) => {
                        records.insert(r.key(), r);
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "state store: unreadable line dropped (torn write?)")
                    }
                }
            }
        }
        // Compact: write the live records to a new file, fsync, rename over the old.
        let tmp = dir.join("state.log.tmp");
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            for r in records.values() {
                let line = serde_json::to_string(r).expect("state records serialize");
                writeln!(f, "{line}").map_err(io(&tmp))?;
            }
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(StateStore {
            path,
            inner: Mutex::new(Inner { file, records }),
        })
    }

    fn append(&self, record: Record) -> Result<(), StateError> {
        let mut inner = self.inner.lock().expect("state lock");
        let line = serde_json::to_string(&record).expect("state records serialize");
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        inner
            .file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(io)?;
        inner.file.sync_data().map_err(io)?;
        inner.records.insert(record.key(), record);
        Ok(())
    }

    /// Records a switch mark durably; returns once it is on disk.
    pub fn record_mark(&self, mark: Mark) -> Result<(), StateError> {
        self.append(Record::Mark(mark))
    }

    /// Every mark, newest per (topic, cluster).
    pub fn marks(&self) -> Vec<Mark> {
        let inner = self.inner.lock().expect("state lock");
        inner
            .records
            .values()
            .filter_map(|r| match r {
                Record::Mark(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn mark(&self, topic: &str, cluster: &str) -> Option<Mark> {
        let inner = self.inner.lock().expect("state lock");
        match inner.records.get(&format!("mark/{topic}/{cluster}")) {
            Some(Record::Mark(m)) => Some(m.clone()),
            _ => None,
        }
    }

    /// Records a group switch's progress durably; returns once it is on disk.
    pub fn record_group(&self, switch: GroupSwitch) -> Result<(), StateError> {
        self.append(Record::Group(switch))
    }

    /// The latest record of every group switch.
    pub fn group_switches(&self) -> Vec<GroupSwitch> {
        let inner = self.inner.lock().expect("state lock");
        inner
            .records
            .values()
            .filter_map(|r| match r {
                Record::Group(g) => Some(g.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(topic: &str, cluster: &str, off: i64) -> Mark {
        Mark {
            topic: topic.into(),
            physical: topic.into(),
            cluster: cluster.into(),
            from: "source".into(),
            route_version: 2,
            recorded_at_ms: 1,
            partitions: [(0, off), (1, off + 1)].into(),
        }
    }

    #[test]
    fn marks_survive_reopen_and_compaction_keeps_newest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path()).unwrap();
            s.record_mark(mark("a", "target", 10)).unwrap();
            s.record_mark(mark("a", "target", 20)).unwrap();
            s.record_mark(mark("b", "target", 5)).unwrap();
        }
        // A torn final line from a crash mid-write.
        let log = dir.path().join("state.log");
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"mark\":{\"topic\":\"c\"").unwrap();
        drop(f);
        let s = StateStore::open(dir.path()).unwrap();
        assert_eq!(s.mark("a", "target").unwrap().partitions[&0], 20);
        assert_eq!(s.marks().len(), 2);
        assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
    }
}
