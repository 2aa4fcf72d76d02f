//! Persisted state (DESIGN.md decision 11): a small append-only log in
//! `state_dir/state.log`, fsynced on every append and compacted on start (the newest
//! record per key is kept).
//!
//! It holds switch marks (the end offsets of a topic's partitions on the cluster its
//! writes moved to, recorded before the first write reaches it) and the progress of
//! every group switch, one record per phase. Losing a record is silent data loss for
//! the clients behind the proxy (a consumer group moved with no offsets, a topic read
//! from the wrong place), so damage is refused rather than skipped.
//!
//! # Format
//!
//! One record per line: `<len> <crc> <json>\n`, where `<json>` is the record
//! (`{"mark":{...}}` or `{"group":{...}}`), `<len>` its length in bytes in decimal and
//! `<crc>` its CRC-32C as 8 lowercase hex digits. JSON never holds a raw newline, so a
//! line is a record.
//!
//! Earlier versions wrote the bare JSON (`<json>\n`). Such lines are still read, and
//! may be mixed with checksummed ones; compaction rewrites everything checksummed.
//!
//! # Recovery rules (on open)
//!
//! - Only the final line may be damaged, and only in a way a write cut short by a
//!   crash can produce: no newline at its end, a checksum or header that does not
//!   match, fewer bytes than its length says, or (bare JSON) not JSON at all. It was
//!   never acknowledged (an append returns after its fsync), so it is dropped with a
//!   warning naming the file and line.
//! - Anything else is refused and `open` fails with [`StateError::Corrupt`], naming
//!   the file, the line and the problem: a damaged line with lines after it, a line
//!   longer than its length says (a lost newline joined two records), or a line that
//!   is intact (checksum matches, or well-formed bare JSON) but is not a record this
//!   version understands. Nothing is written in that case, so the file and its
//!   backup stay as they are for the operator.
//! - Before compacting, the file as it was is copied to `state.log.bak` (replaced on
//!   every start, so it holds a dropped torn line until the next start). Compaction
//!   writes `state.log.tmp`, fsyncs it, renames it over `state.log` and fsyncs the
//!   directory, so a crash leaves either the old or the new file whole. This also
//!   removes a torn final line before anything is appended after it.
//!
//! # Appends
//!
//! A record is written in one `write` and fsynced before the in-memory state changes
//! and before the caller proceeds. If the write or the fsync fails, the file is cut
//! back to its length before the append, so a partial line never precedes the next
//! record; if even that fails, the next append retries the cut before writing.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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
    /// The routing table version that started the switch: with `[coordination]`,
    /// what names the same switch on every instance.
    #[serde(default)]
    pub route_version: u64,
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

    /// The record as one checksummed line, newline included.
    fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("state records serialize");
        let mut line = format!("{} {:08x} ", json.len(), crc32c::crc32c(&json)).into_bytes();
        line.extend_from_slice(&json);
        line.push(b'\n');
        line
    }

    /// Reads one line (without its newline) in either format; the flag says whether
    /// it was the bare JSON of earlier versions.
    fn decode(line: &[u8]) -> Result<(Record, bool), LineProblem> {
        match line.first() {
            None => Err(LineProblem::Empty),
            Some(b'{') => match serde_json::from_slice::<Record>(line) {
                Ok(r) => Ok((r, true)),
                // Well-formed JSON cannot come from a cut-short write: it is a record
                // this version does not know, or an edit gone wrong.
                Err(e) if serde_json::from_slice::<serde_json::Value>(line).is_ok() => {
                    Err(LineProblem::NotARecord(e.to_string()))
                }
                Err(e) => Err(LineProblem::BadJson(e.to_string())),
            },
            Some(b'0'..=b'9') => {
                let (declared, stored, json) = split_header(line).ok_or(LineProblem::Header)?;
                if json.len() != declared {
                    return Err(LineProblem::Length {
                        declared,
                        actual: json.len(),
                    });
                }
                let computed = crc32c::crc32c(json);
                if computed != stored {
                    return Err(LineProblem::Checksum { stored, computed });
                }
                serde_json::from_slice::<Record>(json)
                    .map(|r| (r, false))
                    .map_err(|e| LineProblem::NotARecord(e.to_string()))
            }
            Some(_) => Err(LineProblem::Unrecognised),
        }
    }
}

/// `<len> <crc> <json>` → (len, crc, json), or None if the header is malformed.
fn split_header(line: &[u8]) -> Option<(usize, u32, &[u8])> {
    let len_end = line.iter().position(|&b| b == b' ')?;
    let digits = &line[..len_end];
    // Ten digits already exceed any record; the bound keeps the parse from overflowing.
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let declared = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let rest = &line[len_end + 1..];
    let hex = rest.get(..8)?;
    if rest.get(8) != Some(&b' ')
        || !hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let stored = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((declared, stored, &rest[9..]))
}

/// What is wrong with one line of the state file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("no newline at its end")]
    Unterminated,
    #[error("the line is empty")]
    Empty,
    #[error("neither a checksummed record (`<len> <crc32c> <json>`) nor a JSON record")]
    Unrecognised,
    #[error("the record header (`<len> <crc32c> `) is malformed")]
    Header,
    #[error("the header says {declared} bytes of record but the line holds {actual}")]
    Length { declared: usize, actual: usize },
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("not valid JSON: {0}")]
    BadJson(String),
    #[error("the line is intact but not a record this version reads: {0}")]
    NotARecord(String),
}

impl LineProblem {
    /// Whether a write cut short by a crash could leave this as the final line. Only
    /// such damage is tolerated, and only at the very end.
    fn may_be_torn(&self) -> bool {
        match self {
            LineProblem::Unterminated
            | LineProblem::Empty
            | LineProblem::Unrecognised
            | LineProblem::Header
            | LineProblem::Checksum { .. }
            | LineProblem::BadJson(_) => true,
            // A torn write is shorter than its header says, never longer: a longer
            // line is two records whose newline was lost.
            LineProblem::Length { declared, actual } => actual < declared,
            LineProblem::NotARecord(_) => false,
        }
    }

    fn why_refused(&self) -> &'static str {
        if self.may_be_torn() {
            "lines follow it, so it is not a write cut short at the end"
        } else {
            "a write cut short cannot produce this"
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
    /// The file is damaged somewhere a crash cannot explain; nothing was changed.
    #[error(
        "state store {} line {line}: {problem}; {}. Refusing to start rather than lose \
         switch marks or group switch progress: {}",
        path.display(),
        problem.why_refused(),
        restore_hint(backup.as_deref())
    )]
    Corrupt {
        path: PathBuf,
        /// 1-based.
        line: usize,
        problem: LineProblem,
        /// The copy kept at the previous start, if there is one.
        backup: Option<PathBuf>,
    },
}

fn restore_hint(backup: Option<&Path>) -> String {
    match backup {
        Some(b) => format!(
            "restore the file from {} (as it was at the previous start) or fix the line",
            b.display()
        ),
        None => "fix the line (there is no backup from a previous start)".to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, source }
}

/// The append side of the log file, so tests can make writes and fsyncs fail.
trait LogFile: Send {
    /// Appends `buf` at the end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes, durably.
    fn cut(&mut self, len: u64) -> io::Result<()>;
}

impl LogFile for File {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }

    fn cut(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        self.sync_all()
    }
}

pub struct StateStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: Box<dyn LogFile>,
    /// Bytes of whole, fsynced records: where a failed append is cut back to.
    len: u64,
    /// A failed append could not be cut back; retry before the next write.
    cut_pending: bool,
    records: BTreeMap<String, Record>,
}

/// What a read of the file found.
struct Loaded {
    records: BTreeMap<String, Record>,
    bare: usize,
}

/// Reads the whole file, applying the recovery rules in the module doc.
fn load(path: &Path, bytes: &[u8]) -> Result<Loaded, StateError> {
    let mut loaded = Loaded {
        records: BTreeMap::new(),
        bare: 0,
    };
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let (line, next, decoded) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &bytes[start..start + i];
                (line, start + i + 1, Record::decode(line))
            }
            None => (&bytes[start..], bytes.len(), Err(LineProblem::Unterminated)),
        };
        let last = next == bytes.len();
        match decoded {
            Ok((record, bare)) => {
                loaded.bare += usize::from(bare);
                loaded.records.insert(record.key(), record);
            }
            Err(problem) if last && problem.may_be_torn() => {
                tracing::warn!(
                    path = %path.display(),
                    line = line_no,
                    bytes = line.len(),
                    %problem,
                    "state store: torn final record dropped (a write cut short by a crash; never acknowledged); the file as it was is kept in state.log.bak until the next start"
                );
            }
            Err(problem) => {
                return Err(StateError::Corrupt {
                    path: path.to_path_buf(),
                    line: line_no,
                    problem,
                    backup: Some(backup_path(path)).filter(|b| b.exists()),
                })
            }
        }
        start = next;
    }
    Ok(loaded)
}

fn backup_path(path: &Path) -> PathBuf {
    sibling(path, "bak")
}

fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(ext);
    path.with_file_name(name)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// a temp file, fsynced, renamed over, then the directory fsynced.
fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = sibling(path, "tmp");
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl StateStore {
    /// Opens (creating) `dir/state.log`, loads it and rewrites it compacted, after
    /// keeping the file as it was in `dir/state.log.bak`. Fails, changing nothing, if
    /// the file is damaged anywhere but a torn final record.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        Self::open_with(dir, |f| Box::new(f))
    }

    fn open_with(
        dir: &Path,
        wrap: impl FnOnce(File) -> Box<dyn LogFile>,
    ) -> Result<StateStore, StateError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join("state.log");
        let loaded = match fs::read(&path) {
            Ok(bytes) => {
                // Everything is checked before anything is written, so a refusal
                // leaves the file and the previous backup for the operator.
                let loaded = load(&path, &bytes)?;
                replace_file(dir, &backup_path(&path), &bytes)?;
                loaded
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let backup = backup_path(&path);
                if backup.exists() {
                    tracing::warn!(path = %path.display(), backup = %backup.display(), "state store: the file is missing but a backup exists; starting empty (restore the backup to keep its switch marks and group switches)");
                }
                Loaded {
                    records: BTreeMap::new(),
                    bare: 0,
                }
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if loaded.bare > 0 {
            tracing::info!(path = %path.display(), lines = loaded.bare, "state store: lines from an earlier version rewritten with checksums");
        }
        let compacted: Vec<u8> = loaded.records.values().flat_map(Record::encode).collect();
        replace_file(dir, &path, &compacted)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(StateStore {
            path,
            inner: Mutex::new(Inner {
                file: wrap(file),
                len: compacted.len() as u64,
                cut_pending: false,
                records: loaded.records,
            }),
        })
    }

    fn append(&self, record: Record) -> Result<(), StateError> {
        let mut inner = self.inner.lock().expect("state lock");
        let inner = &mut *inner;
        if inner.cut_pending {
            inner.file.cut(inner.len).map_err(io_err(&self.path))?;
            inner.cut_pending = false;
        }
        let line = record.encode();
        let written = inner.file.append(&line).and_then(|()| inner.file.sync());
        if let Err(source) = written {
            // Without the cut, the next record would follow a partial line and turn
            // it into damage in the middle of the file.
            if let Err(e) = inner.file.cut(inner.len) {
                tracing::error!(path = %self.path.display(), error = %e, "state store: could not cut a failed append back; the next append retries");
                inner.cut_pending = true;
            }
            return Err(io_err(&self.path)(source));
        }
        inner.len += line.len() as u64;
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

/// A 32-byte secret kept in `dir/name` (hex), made at first use. Switchyard keys
/// the tags of the virtual producer ids it issues with it, so that after a restart
/// it still recognises the ids it handed out (and only those). The file is created
/// readable by its owner only.
pub fn secret(dir: &Path, name: &str) -> std::io::Result<[u8; 32]> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = text.trim();
            let bytes: Option<Vec<u8>> = (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect();
            match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                Some(key) => Ok(key),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: not 64 hex digits; restore it, or remove it to make a new one (producers issued before then must re-initialise)",
                        path.display()
                    ),
                )),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = path.with_extension("tmp");
            let mut f = {
                let mut o = std::fs::OpenOptions::new();
                o.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                o.open(&tmp)?
            };
            f.write_all(hex.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
