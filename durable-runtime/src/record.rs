//! Log records and segment files: the byte format, writing, and reading a segment
//! back with torn-tail detection.
//!
//! A record is `len: u32 LE` (bytes after this field), `crc: u32 LE` (CRC-32 of the
//! bytes after this field), `lsn: u64 LE`, `time_ms: u64 LE`, `kind: u8`,
//! `class_len: u16 LE`, `class`, `object: [u8; 16]`, `seq: u64 LE`, `payload`.
//! A `len` of zero marks the end of a segment's data. The kind byte's high bit marks
//! the first record of a round (the records written together and made durable by one
//! synchronous write); builds before it never set the bit.

use durable_client::ObjectId;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An SQLite session changeset of one committed batch.
    Changes = 0,
    /// A whole database image (object creation, schema changes, snapshots).
    Image = 1,
}

/// One record of the host log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Log sequence number: position in the host's log, increasing.
    pub lsn: u64,
    /// When the record was written, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Changeset or image.
    pub kind: RecordKind,
    /// The object's class.
    pub class: String,
    /// The object's id.
    pub object: ObjectId,
    /// The object's own batch number; replay applies a record once, when the object's
    /// stored number is below it.
    pub seq: u64,
    /// The changeset or image bytes.
    pub payload: Vec<u8>,
}

const FIXED: usize = 4 + 8 + 8 + 1 + 2 + 16 + 8;

/// The kind byte's bit that marks the first record of a round.
const ROUND_START: u8 = 0x80;

/// Everything of a record but its payload.
pub(crate) struct Header<'a> {
    pub(crate) lsn: u64,
    pub(crate) time_ms: u64,
    pub(crate) kind: RecordKind,
    pub(crate) class: &'a str,
    pub(crate) object: ObjectId,
    pub(crate) seq: u64,
    /// The first record of a round.
    pub(crate) round_start: bool,
}

/// Append the encoding of a record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, h: &Header<'_>, payload: &[u8]) {
    let Header {
        lsn,
        time_ms,
        kind,
        class,
        object,
        seq,
        round_start,
    } = *h;
    let start = out.len();
    let len = FIXED + class.len() + payload.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.push(kind as u8 | if round_start { ROUND_START } else { 0 });
    out.extend_from_slice(&(class.len() as u16).to_le_bytes());
    out.extend_from_slice(class.as_bytes());
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// `records` encoded as one round (a segment's bytes, for tests).
#[cfg(test)]
pub(crate) fn encode_round(records: &[LogRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let header = Header {
            lsn: r.lsn,
            time_ms: r.time_ms,
            kind: r.kind,
            class: &r.class,
            object: r.object,
            seq: r.seq,
            round_start: i == 0,
        };
        encode(&mut out, &header, &r.payload);
    }
    out
}

/// Why reading stopped before the end of a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailProblem {
    /// The last record is cut short.
    Truncated,
    /// A record's checksum does not match.
    BadChecksum,
    /// A record's fields are impossible.
    Invalid(String),
}

impl std::fmt::Display for TailProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailProblem::Truncated => write!(f, "truncated record"),
            TailProblem::BadChecksum => write!(f, "checksum mismatch"),
            TailProblem::Invalid(why) => write!(f, "invalid record: {why}"),
        }
    }
}

/// The records of one segment, and where (and why) reading stopped early, if it did.
#[derive(Debug)]
pub(crate) struct SegmentRead {
    pub(crate) records: Vec<LogRecord>,
    /// Where each record lies in the segment: its offset and length (as
    /// [`read_record_at`] takes them).
    pub(crate) spans: Vec<(u64, u32)>,
    /// Byte offset just past the last good record.
    pub(crate) good_len: u64,
    pub(crate) problem: Option<TailProblem>,
    /// When reading stopped at a problem: the offset and lsn of the first intact record
    /// found after it. Then the problem is damage in the middle, not a torn tail, and
    /// cutting there would drop records that were written whole...
    pub(crate) valid_after: Option<(u64, u64)>,
    /// ...unless they can only be the rest of the round the damage is in: the segment
    /// marks its rounds (its first record starts one) and no intact record after the
    /// damage starts another. A round is written only once the one before it is
    /// durable, so a later round proves the damaged one was synced; without one, what
    /// follows the damage was never acknowledged (the last round, torn by a power cut:
    /// inside a preallocated segment its pages may persist in any order).
    pub(crate) torn_round: bool,
}

/// A record (its payload left empty unless `payload`) and whether it starts a round.
fn decode_body(body: &[u8], payload: bool) -> Result<(LogRecord, bool), TailProblem> {
    let invalid = |why: &str| TailProblem::Invalid(why.into());
    if body.len() < FIXED - 4 {
        return Err(invalid("shorter than its header"));
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
    let lsn = u64_at(0);
    let time_ms = u64_at(8);
    let kind = match body[16] & !ROUND_START {
        0 => RecordKind::Changes,
        1 => RecordKind::Image,
        k => return Err(invalid(&format!("unknown kind {k}"))),
    };
    let class_len = u16::from_le_bytes([body[17], body[18]]) as usize;
    let rest = &body[19..];
    if rest.len() < class_len + 16 + 8 {
        return Err(invalid("class name runs past the record"));
    }
    let class = std::str::from_utf8(&rest[..class_len])
        .map_err(|_| invalid("class name is not UTF-8"))?
        .to_string();
    let object = ObjectId::from_bytes(rest[class_len..class_len + 16].try_into().unwrap());
    let seq = u64::from_le_bytes(rest[class_len + 16..class_len + 24].try_into().unwrap());
    let record = LogRecord {
        lsn,
        time_ms,
        kind,
        class,
        object,
        seq,
        payload: if payload {
            rest[class_len + 24..].to_vec()
        } else {
            Vec::new()
        },
    };
    Ok((record, body[16] & ROUND_START != 0))
}

/// The record whose `len` bytes (after the length field) start at `at`, if its
/// checksum matches and its fields decode. The caller has checked that they fit.
fn checked_record(
    bytes: &[u8],
    at: usize,
    len: usize,
    payload: bool,
) -> Result<(LogRecord, bool), TailProblem> {
    let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
    let body = &bytes[at + 8..at + 4 + len];
    if crc32fast::hash(body) != crc {
        return Err(TailProblem::BadChecksum);
    }
    decode_body(body, payload)
}

/// Read the record of `len` bytes at `offset` of a segment (a span of
/// [`SegmentRead::spans`]) again, checksum checked.
pub(crate) fn read_record_at(
    file: &std::fs::File,
    offset: u64,
    len: u32,
) -> std::io::Result<LogRecord> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; 4 + len as usize];
    file.read_exact_at(&mut bytes, offset)?;
    checked_record(&bytes, 0, len as usize, true)
        .map(|(record, _)| record)
        .map_err(|p| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the record at byte {offset} changed since it was read: {p}"),
            )
        })
}

/// Read a whole segment file.
pub(crate) fn read_segment(path: &Path) -> std::io::Result<SegmentRead> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    Ok(parse_segment(&bytes))
}

/// Read a whole segment file for where its records lie: as [`read_segment`], with
/// every record's payload left empty (checksums still checked). Half the memory of a
/// whole read; the records are read back with [`read_record_at`].
pub(crate) fn read_segment_places(path: &Path) -> std::io::Result<SegmentRead> {
    read_places(std::fs::File::open(path)?)
}

/// [`read_segment`] of a segment file already open.
pub(crate) fn read_segment_file(mut file: std::fs::File) -> std::io::Result<SegmentRead> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(parse_segment(&bytes))
}

/// [`read_segment_places`] of a segment file already open.
pub(crate) fn read_places(mut file: std::fs::File) -> std::io::Result<SegmentRead> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(parse_segment_with(&bytes, false))
}

pub(crate) fn parse_segment(bytes: &[u8]) -> SegmentRead {
    parse_segment_with(bytes, true)
}

/// Parse a segment's bytes; each record's payload is copied only if `payloads`.
fn parse_segment_with(bytes: &[u8], payloads: bool) -> SegmentRead {
    let mut records = Vec::new();
    let mut spans = Vec::new();
    let mut at = 0usize;
    let mut last_lsn = None;
    let mut marks_rounds = false;
    let problem = loop {
        if at == bytes.len() {
            break None;
        }
        if bytes.len() - at < 8 {
            break Some(TailProblem::Truncated);
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            // Zero padding is a clean end; a zeroed length with data after it is not.
            if bytes[at..].iter().all(|b| *b == 0) {
                break None;
            }
            break Some(TailProblem::Invalid(
                "a zero record length with data after it".into(),
            ));
        }
        if len < FIXED {
            break Some(TailProblem::Invalid(format!(
                "record length {len} is below the minimum"
            )));
        }
        if bytes.len() - at - 4 < len {
            break Some(TailProblem::Truncated);
        }
        let record = match checked_record(bytes, at, len, payloads) {
            Ok((r, round_start)) => {
                marks_rounds |= records.is_empty() && round_start;
                r
            }
            Err(p) => break Some(p),
        };
        if last_lsn.is_some_and(|l| record.lsn <= l) {
            break Some(TailProblem::Invalid(format!(
                "lsn {} does not increase",
                record.lsn
            )));
        }
        last_lsn = Some(record.lsn);
        records.push(record);
        spans.push((at as u64, len as u32));
        at += 4 + len;
    };
    let after = || intact_records(bytes, at + 1, last_lsn.unwrap_or(0));
    let valid_after = problem
        .as_ref()
        .and_then(|_| after().next())
        .map(|(offset, lsn, _)| (offset, lsn));
    let torn_round =
        valid_after.is_some() && marks_rounds && !after().any(|(_, _, round_start)| round_start);
    SegmentRead {
        records,
        spans,
        good_len: at as u64,
        problem,
        valid_after,
        torn_round,
    }
}

/// The lsns of every intact record found anywhere in `bytes` (for salvage).
pub(crate) fn intact_lsns(bytes: &[u8]) -> Vec<u64> {
    intact_records(bytes, 0, 0).map(|(_, lsn, _)| lsn).collect()
}

/// Every whole record with a good checksum and an lsn above `after_lsn` that starts at
/// or after `from`, scanning byte by byte: its offset, lsn, and whether it starts a
/// round.
fn intact_records(
    bytes: &[u8],
    from: usize,
    after_lsn: u64,
) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
    (from..bytes.len().saturating_sub(7)).filter_map(move |at| {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len < FIXED || bytes.len() - at - 4 < len || !plausible_header(&bytes[at + 8..], len) {
            return None;
        }
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        if lsn <= after_lsn {
            return None;
        }
        match checked_record(bytes, at, len, false) {
            Ok((r, round_start)) if r.lsn > after_lsn => Some((at as u64, r.lsn, round_start)),
            _ => None,
        }
    })
}

/// Whether `body` (a candidate record's bytes after its checksum, `len - 4` of them
/// at least, as checked) could start a record: a known kind, a class name of 1 to
/// [`MAX_CLASS_NAME`] bytes of UTF-8 inside the record. Checked before the checksum:
/// the scan for intact records tries every offset of a damaged segment, and a checksum
/// over a long length at each offset whose four bytes merely look like a length would
/// make a start over damaged megabytes take hours.
fn plausible_header(body: &[u8], len: usize) -> bool {
    let kind = body[16] & !ROUND_START;
    let class_len = u16::from_le_bytes([body[17], body[18]]) as usize;
    kind <= 1
        && (1..=MAX_CLASS_NAME).contains(&class_len)
        && FIXED + class_len <= len
        && std::str::from_utf8(&body[19..19 + class_len]).is_ok()
}

/// The longest class name a record may carry (a Rust type name, in practice short).
pub(crate) const MAX_CLASS_NAME: usize = 1024;

/// The segment files in `dir`, oldest first, with the first lsn each holds.
pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("seg") {
            continue;
        }
        if let Some(first) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The file name of the segment whose first record is `first_lsn`.
pub(crate) fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.seg")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records 1..=n, each a round of its own.
    fn sample(n: u64) -> Vec<u8> {
        rounds(&[], n)
    }

    /// Records 1..=n; a round starts at each lsn in `starts` (every lsn if empty).
    fn rounds(starts: &[u64], n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for lsn in 1..=n {
            let h = Header {
                lsn,
                time_ms: 7,
                kind: RecordKind::Changes,
                class: "Counter",
                object: ObjectId::from_name("Counter", "a"),
                seq: lsn,
                round_start: starts.is_empty() || starts.contains(&lsn),
            };
            encode(&mut out, &h, &[1, 2, 3]);
        }
        out
    }

    /// A damaged segment full of records with random payloads (no zeros to stop
    /// at) is scanned for the intact records after the damage in about the time of a
    /// read: before the header checks, each offset whose four bytes looked like a
    /// length below the rest cost a checksum over that length (hours for 64 MiB).
    #[test]
    fn the_scan_of_a_damaged_segment_takes_linear_time() {
        let mut out = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut payload = vec![0u8; 256 << 10];
        for lsn in 1..=64u64 {
            for b in payload.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let h = Header {
                lsn,
                time_ms: 7,
                kind: RecordKind::Image,
                class: "Counter",
                object: ObjectId::from_name("Counter", "a"),
                seq: lsn,
                round_start: true,
            };
            encode(&mut out, &h, &payload);
        }
        // Damage inside the first record: the rest are intact.
        out[40] ^= 0xff;
        let started = crate::clock::monotonic();
        let read = parse_segment(&out);
        assert!(
            crate::clock::monotonic().saturating_sub(started) < std::time::Duration::from_secs(5),
            "{:?} to scan 16 MiB",
            crate::clock::monotonic().saturating_sub(started)
        );
        assert_eq!(read.problem, Some(TailProblem::BadChecksum));
        assert_eq!(read.valid_after.map(|(_, lsn)| lsn), Some(2));
        assert_eq!(intact_lsns(&out), (2..=64).collect::<Vec<_>>());
    }

    #[test]
    fn records_round_trip() {
        let read = parse_segment(&sample(3));
        assert_eq!(read.problem, None);
        assert_eq!(read.records.len(), 3);
        assert_eq!(read.records[2].lsn, 3);
        assert_eq!(read.records[2].payload, vec![1, 2, 3]);
        assert_eq!(read.records[2].class, "Counter");
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_at_the_last_good_record() {
        let bytes = sample(3);
        let two = parse_segment(&sample(2)).good_len as usize;
        let torn = parse_segment(&bytes[..bytes.len() - 2]);
        assert_eq!(torn.problem, Some(TailProblem::Truncated));
        assert_eq!((torn.records.len(), torn.good_len as usize), (2, two));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let bad = parse_segment(&flipped);
        assert_eq!(bad.problem, Some(TailProblem::BadChecksum));
        assert_eq!(bad.records.len(), 2);
        // A length too small to hold a header is invalid, not a panic.
        let mut tiny = sample(1);
        tiny.extend([2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let r = parse_segment(&tiny);
        assert!(matches!(r.problem, Some(TailProblem::Invalid(_))));
        assert_eq!(r.records.len(), 1);
        // Zero padding after the data is a clean end.
        let mut padded = bytes.clone();
        padded.extend([0; 64]);
        let clean = parse_segment(&padded);
        assert_eq!((clean.problem, clean.records.len()), (None, 3));
        // A torn tail has nothing intact after it.
        assert_eq!(torn.valid_after, None);
        assert_eq!(bad.valid_after, None);
    }

    #[test]
    fn damage_followed_by_intact_records_is_told_apart_from_a_torn_tail() {
        let bytes = sample(5);
        let one = parse_segment(&sample(1)).good_len as usize;
        let two = parse_segment(&sample(2)).good_len as usize;
        // A flipped byte in the middle of record 2.
        let mut flipped = bytes.clone();
        flipped[one + 20] ^= 0x01;
        let r = parse_segment(&flipped);
        assert_eq!(r.problem, Some(TailProblem::BadChecksum));
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.valid_after, Some((two as u64, 3)));
        // A zeroed length field in the middle is damage too, not a silent end.
        let mut zeroed = bytes.clone();
        zeroed[one..one + 4].fill(0);
        let r = parse_segment(&zeroed);
        assert!(matches!(r.problem, Some(TailProblem::Invalid(_))), "{r:?}");
        assert_eq!(r.valid_after, Some((two as u64, 3)));
        // Later rounds follow the damage: it was synced, so it is damage.
        assert!(!r.torn_round);
    }

    #[test]
    fn a_torn_last_round_is_told_apart_from_damage() {
        // Rounds [1], [2], [3, 4, 5]; the last is torn: a page of zeros inside it, the
        // records after the hole intact (a preallocated segment after a power cut).
        let bytes = rounds(&[1, 2, 3], 5);
        let two = parse_segment(&rounds(&[1, 2], 2)).good_len as usize;
        let three = parse_segment(&rounds(&[1, 2, 3], 3)).good_len as usize;
        let mut torn = bytes.clone();
        torn[two + 10..three + 10].fill(0);
        torn.extend([0; 100]);
        let r = parse_segment(&torn);
        assert!(r.problem.is_some() && r.valid_after.is_some(), "{r:?}");
        assert_eq!((r.records.len(), r.good_len as usize), (2, two));
        assert!(r.torn_round, "only the torn round's own records follow");
        // The hole in round [2]: round [3, 4, 5] starts after it, so [2] was synced.
        let one = parse_segment(&rounds(&[1], 1)).good_len as usize;
        let mut damaged = bytes.clone();
        damaged[one + 10..two].fill(0);
        let r = parse_segment(&damaged);
        assert!(r.valid_after.is_some() && !r.torn_round, "{r:?}");
        // A segment of a build that did not mark rounds keeps the strict rule.
        let legacy = rounds(&[99], 5);
        let mut hole = legacy.clone();
        hole[two + 10..three + 10].fill(0);
        let r = parse_segment(&hole);
        assert!(r.valid_after.is_some() && !r.torn_round, "{r:?}");
        // The flag does not change what a record decodes to.
        assert_eq!(
            parse_segment(&legacy).records,
            parse_segment(&bytes).records
        );
    }
}
