//! The v2 record batch header (PROTOCOL.md §2): reading producer id, epoch, base
//! sequence and record count off a records blob, and rewriting them with a fresh
//! CRC-32C.

/// Byte offsets in a v2 record batch header (PROTOCOL.md §2).
const LENGTH: usize = 8;
pub(super) const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;
pub const HEADER_LEN: usize = 61;
const TRANSACTIONAL: u16 = 0x10;

/// The fields of one v2 batch header the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the batch within the records blob.
    pub at: usize,
    pub len: usize,
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub count: i32,
    pub transactional: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch at byte {0} is truncated")]
    Truncated(usize),
    #[error("record batch at byte {at} has magic {magic}; only v2 carries producer ids")]
    OldMagic { at: usize, magic: i8 },
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Walks the batches of a records blob. Message sets older than v2 carry no producer
/// id and are reported as [`BatchError::OldMagic`] (the caller passes them on as
/// they are).
pub fn batches(records: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        if records.len() - at < MAGIC + 1 {
            return Err(BatchError::Truncated(at));
        }
        let len = be_i32(records, at + LENGTH);
        let total = 12usize.saturating_add(len.max(0) as usize);
        let magic = records[at + MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::OldMagic { at, magic });
        }
        if len < (HEADER_LEN - 12) as i32 || records.len() - at < total {
            return Err(BatchError::Truncated(at));
        }
        let b = &records[at..at + total];
        out.push(BatchHeader {
            at,
            len: total,
            producer_id: be_i64(b, PRODUCER_ID),
            epoch: be_i16(b, PRODUCER_EPOCH),
            base_sequence: be_i32(b, BASE_SEQUENCE),
            // The client writes these fields; a last offset delta of i32::MAX must
            // not overflow (it did, in debug builds, on a hostile Produce).
            count: be_i32(b, RECORD_COUNT).max(be_i32(b, LAST_OFFSET_DELTA).saturating_add(1)),
            transactional: (be_i16(b, ATTRIBUTES) as u16) & TRANSACTIONAL != 0,
        });
        at += total;
    }
    Ok(out)
}

/// Rewrites producer id, epoch and base sequence of the batch `batch` (one whole
/// batch) and recomputes its CRC-32C, which covers everything from the attributes on.
pub fn patch_batch(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    batch[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..]);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Whether the batch's stored CRC matches its content.
pub fn crc_ok(batch: &[u8]) -> bool {
    batch.len() >= HEADER_LEN && crc32c::crc32c(&batch[ATTRIBUTES..]) == be_i32(batch, CRC) as u32
}
