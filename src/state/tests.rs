//! Unit tests of the state store: records, compaction, damage detection and recovery.

use std::sync::Arc;

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

fn group(name: &str, phase: Phase) -> GroupSwitch {
    GroupSwitch {
        group: name.into(),
        from: "source".into(),
        to: "target".into(),
        offsets: "marks".into(),
        when: "drained".into(),
        phase,
        reason: None,
        moves: vec![OffsetMove {
            topic: "a".into(),
            partition: 0,
            old_offset: Some(7),
            new_offset: 9,
            method: "marks".into(),
        }],
        started_at_ms: 1,
        updated_at_ms: 2,
        route_version: 0,
    }
}

fn log(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state.log")
}

/// A store holding marks a, b and c (in that order, one line each).
fn three_marks() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let s = StateStore::open(dir.path()).unwrap();
    for (t, off) in [("a", 10), ("b", 20), ("c", 30)] {
        s.record_mark(mark(t, "target", off)).unwrap();
    }
    drop(s);
    let bytes = fs::read(log(&dir)).unwrap();
    (dir, bytes)
}

fn dir_with(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(log(&dir), bytes).unwrap();
    dir
}

/// Byte ranges of each line, newline included.
fn lines(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    out
}

fn corrupt(dir: &tempfile::TempDir) -> (usize, LineProblem, String) {
    match StateStore::open(dir.path()) {
        Err(e @ StateError::Corrupt { .. }) => {
            let msg = e.to_string();
            let StateError::Corrupt { line, problem, .. } = e else {
                unreachable!()
            };
            (line, problem, msg)
        }
        Err(e) => panic!("expected a corrupt-file error, got {e}"),
        Ok(_) => panic!("a damaged file was accepted"),
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
        s.record_group(group("g", Phase::Quiescing)).unwrap();
    }
    let s = StateStore::open(dir.path()).unwrap();
    assert_eq!(s.mark("a", "target").unwrap().partitions[&0], 20);
    assert_eq!(s.marks().len(), 2);
    assert_eq!(s.group_switches(), vec![group("g", Phase::Quiescing)]);
    assert_eq!(lines(&fs::read(log(&dir)).unwrap()).len(), 3);
}

#[test]
fn final_record_cut_at_any_byte_is_dropped_and_the_rest_kept() {
    let (_full, bytes) = three_marks();
    let last = lines(&bytes).pop().unwrap();
    for cut in last.start..bytes.len() {
        let dir = dir_with(&bytes[..cut]);
        let s = StateStore::open(dir.path())
            .unwrap_or_else(|e| panic!("cut at byte {cut} refused: {e}"));
        assert_eq!(
            s.mark("a", "target").unwrap().partitions[&0],
            10,
            "cut {cut}"
        );
        assert_eq!(
            s.mark("b", "target").unwrap().partitions[&0],
            20,
            "cut {cut}"
        );
        assert_eq!(s.mark("c", "target"), None, "cut {cut}");
        // The torn tail is gone before anything is appended after it.
        assert_eq!(
            fs::read(log(&dir)).unwrap(),
            &bytes[..last.start],
            "cut {cut}"
        );
        s.record_mark(mark("c", "target", 31)).unwrap();
        drop(s);
        let s = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            s.mark("c", "target").unwrap().partitions[&0],
            31,
            "cut {cut}"
        );
    }
}

#[test]
fn final_record_with_a_bad_checksum_is_dropped() {
    // The newline made it to disk but part of the record did not.
    let (_full, mut bytes) = three_marks();
    let last = lines(&bytes).pop().unwrap();
    bytes[last.end - 3] ^= 0x01;
    let dir = dir_with(&bytes);
    let s = StateStore::open(dir.path()).unwrap();
    assert_eq!(s.marks().len(), 2);
    assert_eq!(s.mark("c", "target"), None);
}

#[test]
fn any_flipped_byte_in_a_middle_record_refuses_with_path_and_line() {
    let (_full, bytes) = three_marks();
    let middle = lines(&bytes)[1].clone();
    for at in middle.clone() {
        for flip in [0x01u8, 0x80] {
            let mut damaged = bytes.clone();
            damaged[at] ^= flip;
            let dir = dir_with(&damaged);
            let bak = dir.path().join("state.log.bak");
            fs::write(&bak, b"previous").unwrap();
            let (line, problem, msg) = corrupt(&dir);
            assert_eq!(line, 2, "byte {at} ^ {flip:#x}: {problem}");
            let path = log(&dir).display().to_string();
            assert!(msg.contains(&format!("{path} line 2:")), "{msg}");
            assert!(
                msg.contains(&format!("restore the file from {path}.bak")),
                "{msg}"
            );
            // Refused without touching anything.
            assert_eq!(fs::read(log(&dir)).unwrap(), damaged);
            assert_eq!(fs::read(&bak).unwrap(), b"previous");
        }
    }
}

#[test]
fn lost_newline_before_the_final_record_refuses() {
    // Two acknowledged records joined into one over-long last line: not a tear.
    let (_full, mut bytes) = three_marks();
    let second = lines(&bytes)[1].clone();
    bytes[second.end - 1] = b' ';
    let (line, problem, msg) = corrupt(&dir_with(&bytes));
    assert!(msg.contains("there is no backup"), "{msg}");
    assert_eq!(line, 2);
    assert!(matches!(problem, LineProblem::Length { declared, actual } if actual > declared));
}

#[test]
fn intact_line_that_is_not_a_record_refuses_even_at_the_end() {
    let json = br#"{"route":{"version":3}}"#;
    let mut bytes = three_marks().1;
    bytes.extend_from_slice(format!("{} {:08x} ", json.len(), crc32c::crc32c(json)).as_bytes());
    bytes.extend_from_slice(json);
    bytes.push(b'\n');
    let (line, problem, _) = corrupt(&dir_with(&bytes));
    assert_eq!(line, 4);
    assert!(matches!(problem, LineProblem::NotARecord(_)), "{problem}");

    // The same in the bare format of earlier versions.
    let mut bytes = three_marks().1;
    bytes.extend_from_slice(json);
    bytes.push(b'\n');
    let (line, problem, _) = corrupt(&dir_with(&bytes));
    assert_eq!(line, 4);
    assert!(matches!(problem, LineProblem::NotARecord(_)), "{problem}");
}

#[test]
fn damaged_bare_json_line_in_the_middle_refuses() {
    let mut old = String::new();
    for r in [
        Record::Mark(mark("a", "target", 1)),
        Record::Group(group("g", Phase::Leaving)),
    ] {
        old.push_str(&serde_json::to_string(&r).unwrap());
        old.push('\n');
    }
    let torn = old.replacen("\"leaving\"", "\"leav", 1);
    let old = format!("{}\n{}", &old[..20], old);
    let (line, problem, _) = corrupt(&dir_with(old.as_bytes()));
    assert_eq!(line, 1);
    assert!(matches!(problem, LineProblem::BadJson(_)), "{problem}");
    // The same damage in the final line is a tear.
    let s = StateStore::open(dir_with(torn.as_bytes()).path()).unwrap();
    assert_eq!(s.marks().len(), 1);
    assert!(s.group_switches().is_empty());
}

#[test]
fn earlier_bare_json_file_opens_and_is_rewritten_with_checksums() {
    let records = [
        Record::Mark(mark("a", "target", 10)),
        Record::Group(group("g", Phase::Translated)),
        Record::Mark(mark("a", "target", 11)),
    ];
    let old: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let dir = dir_with(old.as_bytes());
    let s = StateStore::open(dir.path()).unwrap();
    assert_eq!(s.mark("a", "target").unwrap().partitions[&0], 11);
    assert_eq!(s.group_switches(), vec![group("g", Phase::Translated)]);
    let new = fs::read(log(&dir)).unwrap();
    let ranges = lines(&new);
    assert_eq!(ranges.len(), 2);
    for r in ranges {
        let line = &new[r.start..r.end - 1];
        assert!(matches!(Record::decode(line), Ok((_, false))));
    }
    assert_eq!(
        fs::read(dir.path().join("state.log.bak")).unwrap(),
        old.as_bytes()
    );

    // Lines of both formats in one file.
    let mut mixed = new.clone();
    mixed.extend_from_slice(old.as_bytes());
    let s = StateStore::open(dir_with(&mixed).path()).unwrap();
    assert_eq!(s.marks().len(), 1);
    assert_eq!(s.group_switches().len(), 1);
}

#[test]
fn backup_holds_the_file_as_it_was_before_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = StateStore::open(dir.path()).unwrap();
    s.record_mark(mark("a", "target", 1)).unwrap();
    s.record_mark(mark("a", "target", 2)).unwrap();
    drop(s);
    let before = fs::read(log(&dir)).unwrap();
    let s = StateStore::open(dir.path()).unwrap();
    let bak = dir.path().join("state.log.bak");
    assert_eq!(fs::read(&bak).unwrap(), before);
    assert!(fs::read(log(&dir)).unwrap().len() < before.len());
    // Replaced on the next start.
    s.record_mark(mark("b", "target", 1)).unwrap();
    drop(s);
    let before = fs::read(log(&dir)).unwrap();
    StateStore::open(dir.path()).unwrap();
    assert_eq!(fs::read(&bak).unwrap(), before);
    assert!(!dir.path().join("state.log.tmp").exists());
    assert!(!dir.path().join("state.log.bak.tmp").exists());
}

/// Failures to inject into the next append.
#[derive(Default)]
struct Faults {
    /// Write half the buffer, then fail.
    short_write: bool,
    fail_sync: bool,
    fail_cut: bool,
}

struct FaultyFile {
    file: File,
    faults: Arc<Mutex<Faults>>,
}

impl LogFile for FaultyFile {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.faults.lock().unwrap().short_write {
            self.file.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::other("injected: no space left"));
        }
        self.file.append(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.faults.lock().unwrap().fail_sync {
            return Err(io::Error::other("injected: fsync failed"));
        }
        self.file.sync()
    }

    fn cut(&mut self, len: u64) -> io::Result<()> {
        if self.faults.lock().unwrap().fail_cut {
            return Err(io::Error::other("injected: truncate failed"));
        }
        self.file.cut(len)
    }
}

fn faulty(dir: &tempfile::TempDir) -> (StateStore, Arc<Mutex<Faults>>) {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let f = faults.clone();
    let s = StateStore::open_with(dir.path(), move |file| {
        Box::new(FaultyFile { file, faults: f })
    })
    .unwrap();
    (s, faults)
}

fn set(faults: &Mutex<Faults>, short_write: bool, fail_sync: bool, fail_cut: bool) {
    *faults.lock().unwrap() = Faults {
        short_write,
        fail_sync,
        fail_cut,
    };
}

#[test]
fn failed_append_leaves_no_partial_line_before_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let (s, faults) = faulty(&dir);
    s.record_mark(mark("a", "target", 1)).unwrap();
    let good = fs::read(log(&dir)).unwrap();

    for (short_write, fail_sync) in [(true, false), (false, true)] {
        set(&faults, short_write, fail_sync, false);
        let e = s.record_group(group("g", Phase::Committed)).unwrap_err();
        assert!(matches!(e, StateError::Io { .. }), "{e}");
        assert!(
            s.group_switches().is_empty(),
            "memory changed by a failed append"
        );
        assert_eq!(fs::read(log(&dir)).unwrap(), good);
    }

    set(&faults, false, false, false);
    s.record_mark(mark("b", "target", 2)).unwrap();
    drop(s);
    let s = StateStore::open(dir.path()).unwrap();
    assert_eq!(s.marks().len(), 2);
    assert!(s.group_switches().is_empty());
}

#[test]
fn append_after_a_failed_cut_cuts_first() {
    let dir = tempfile::tempdir().unwrap();
    let (s, faults) = faulty(&dir);
    s.record_mark(mark("a", "target", 1)).unwrap();

    set(&faults, true, false, true);
    s.record_group(group("g", Phase::Committed)).unwrap_err();
    // Still unable to cut: the append is refused rather than written after the
    // partial line.
    set(&faults, false, false, true);
    s.record_mark(mark("b", "target", 2)).unwrap_err();
    assert_eq!(s.marks().len(), 1);

    set(&faults, false, false, false);
    s.record_mark(mark("b", "target", 2)).unwrap();
    drop(s);
    let s = StateStore::open(dir.path()).unwrap();
    assert_eq!(s.marks().len(), 2);
    assert!(s.group_switches().is_empty());
}
