//! Whether two regex rows can match the same name. Rows are resolved in key order,
//! which is deterministic, but two regex rows that both match a topic and route it
//! differently are almost always a mistake: `switchyard check` rejects them.
//!
//! The check is exact: it walks the product of the two patterns' DFAs over the bytes
//! Kafka allows in topic and group names, looking for one name both match.

use std::collections::{HashSet, VecDeque};

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::Anchored;

/// Bytes of legal Kafka topic names (group ids may hold more; the topic alphabet is
/// the one that matters for overlap in practice).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";

/// Product states explored at most; past it the answer is "cannot tell".
const LIMIT: usize = 200_000;

/// One side of the walk: still running in `StateID`, or already matched (a regex
/// match of a prefix is a match of the whole name, as `Regex::is_match` is used).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Running(StateID),
    Matched,
}

fn step(dfa: &dense::DFA<Vec<u32>>, side: Side, byte: u8) -> Option<Side> {
    match side {
        Side::Matched => Some(Side::Matched),
        Side::Running(s) => {
            let next = dfa.next_state(s, byte);
            if dfa.is_match_state(next) {
                Some(Side::Matched)
            } else if dfa.is_dead_state(next) || dfa.is_quit_state(next) {
                None
            } else {
                Some(Side::Running(next))
            }
        }
    }
}

fn matched_at_end(dfa: &dense::DFA<Vec<u32>>, side: Side) -> bool {
    match side {
        Side::Matched => true,
        Side::Running(s) => dfa.is_match_state(dfa.next_eoi_state(s)),
    }
}

/// Some(true) if a name matches both patterns, Some(false) if none does, None if the
/// patterns are too large to decide within the limit.
pub fn can_overlap(a: &str, b: &str) -> Result<Option<bool>, String> {
    let build = |p: &str| {
        dense::Builder::new()
            .configure(dense::Config::new().start_kind(StartKind::Anchored))
            .build(p)
            .map_err(|e| e.to_string())
    };
    let (da, db) = (build(a)?, build(b)?);
    let cfg = start::Config::new().anchored(Anchored::Yes);
    let start = |d: &dense::DFA<Vec<u32>>| -> Result<Side, String> {
        let s = d.start_state(&cfg).map_err(|e| e.to_string())?;
        Ok(if d.is_match_state(s) {
            Side::Matched
        } else {
            Side::Running(s)
        })
    };
    // Pairs reached after at least one byte (Kafka names are never empty).
    let mut seen = HashSet::new();
    let mut queue = VecDeque::new();
    let mut expand = |x: Side, y: Side, queue: &mut VecDeque<(Side, Side)>| -> Option<bool> {
        for &byte in ALPHABET {
            let (Some(nx), Some(ny)) = (step(&da, x, byte), step(&db, y, byte)) else {
                continue;
            };
            if seen.insert((nx, ny)) {
                if matched_at_end(&da, nx) && matched_at_end(&db, ny) {
                    return Some(true);
                }
                if seen.len() > LIMIT {
                    return None;
                }
                queue.push_back((nx, ny));
            }
        }
        Some(false)
    };
    let (sa, sb) = (start(&da)?, start(&db)?);
    match expand(sa, sb, &mut queue) {
        Some(false) => {}
        other => return Ok(other),
    }
    while let Some((x, y)) = queue.pop_front() {
        match expand(x, y, &mut queue) {
            Some(false) => {}
            other => return Ok(other),
        }
    }
    Ok(Some(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_and_disjoint_rows() {
        assert_eq!(can_overlap(r"^orders\..*", r"^.*\.v1$"), Ok(Some(true)));
        assert_eq!(can_overlap(r"^orders\.", r"^payments\."), Ok(Some(false)));
        assert_eq!(can_overlap(r"^a[0-9]+$", r"^a[a-z]+$"), Ok(Some(false)));
        // Prefix matches count: ^metrics matches "metrics.cpu".
        assert_eq!(can_overlap(r"^metrics", r"^metrics\.cpu$"), Ok(Some(true)));
        // Names outside the topic alphabet do not count.
        assert_eq!(can_overlap(r"^a b$", r"^a.b$"), Ok(Some(false)));
    }
}
