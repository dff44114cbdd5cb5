//! One object's retained records without holding them: where each lies in the
//! archive's and the live log's segments ([`object_history`]), read back one at a
//! time when wanted ([`SegmentFiles`]). A busy object's retained history can be far
//! larger than memory; recovery and restore replay it from here in chunks.

use super::{archive_dir, list_segments, log_dir, LogRecord, RecordKind};
use durable_client::ObjectId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Segment files by number and path, as [`list_segments`] lists them.
pub(crate) type Segments = Vec<(u64, PathBuf)>;

/// Where a record lies, and what a replay or a restore checks before reading it.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// Its segment's place in the list read.
    pub(crate) segment: usize,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) kind: RecordKind,
    pub(crate) seq: u64,
    pub(crate) lsn: u64,
    pub(crate) time_ms: u64,
}

/// Segments read before, opened again as their records are read back.
pub(crate) struct SegmentFiles<'a> {
    paths: &'a [(u64, PathBuf)],
    open: HashMap<usize, std::fs::File>,
    /// The archive: where a live log segment a checkpoint retired since is found.
    archive: PathBuf,
}

impl<'a> SegmentFiles<'a> {
    /// For `paths` (of the log or the archive) under `data_dir`.
    pub(crate) fn new(data_dir: &Path, paths: &'a [(u64, PathBuf)]) -> Self {
        SegmentFiles {
            paths,
            open: HashMap::new(),
            archive: archive_dir(data_dir),
        }
    }

    /// The record at `at`, checksum checked.
    pub(crate) fn read(&mut self, at: &Located) -> std::io::Result<LogRecord> {
        // Records are read in segment order object by object: a few files at a time
        // stay open, not every segment of a long log.
        if self.open.len() >= 64 && !self.open.contains_key(&at.segment) {
            self.open.clear();
        }
        let file = match self.open.entry(at.segment) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(open_or_archived(&self.paths[at.segment].1, &self.archive)?)
            }
        };
        crate::record::read_record_at(file, at.offset, at.len)
    }
}

/// Open the segment at `path`, or, if a checkpoint retired it since it was listed (a
/// live host's checkpoints move the log's segments into the archive), its archived
/// copy.
pub(crate) fn open_or_archived(path: &Path, archive: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match path.file_name() {
            Some(name) if path.parent() != Some(archive) => std::fs::File::open(archive.join(name)),
            _ => Err(e),
        },
        other => other,
    }
}

/// Every retained segment, the live log's and the archive's (one in both listed once),
/// oldest first. The live log is listed first: a segment a checkpoint retires meanwhile
/// (a rename into the archive) is then in one of the two lists; read it with
/// [`open_or_archived`].
pub(crate) fn retained_segments(data_dir: &Path) -> std::io::Result<Segments> {
    let mut listed = list_segments(&log_dir(data_dir))?;
    listed.extend(list_segments(&archive_dir(data_dir))?);
    listed.sort();
    listed.dedup_by_key(|(first, _)| *first);
    Ok(listed)
}

/// Where every retained record of object `id` of `class` lies ([`retained_segments`]),
/// in lsn order. One segment is read at a time; only the records' places are kept
/// (about 60 bytes each). A segment that ends in a torn or damaged tail gives what
/// precedes it.
pub(crate) fn object_history(
    data_dir: &Path,
    class: &str,
    id: ObjectId,
) -> std::io::Result<(Segments, Vec<Located>)> {
    let archive = archive_dir(data_dir);
    let listed = retained_segments(data_dir)?;
    let mut segments = Vec::new();
    let mut mine = Vec::new();
    for (n, path) in listed {
        let read = match open_or_archived(&path, &archive).and_then(crate::record::read_places) {
            Ok(read) => read,
            // Retired past retention since it was listed: no longer retained.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let segment = segments.len();
        segments.push((n, path));
        for (r, &(offset, len)) in read.records.iter().zip(&read.spans) {
            if r.object == id && r.class == class {
                mine.push(Located {
                    segment,
                    offset,
                    len,
                    kind: r.kind,
                    seq: r.seq,
                    lsn: r.lsn,
                    time_ms: r.time_ms,
                });
            }
        }
    }
    mine.sort_by_key(|r| r.lsn);
    Ok((segments, mine))
}

/// Most bytes of records a replay reads back and holds at once.
const REPLAY_CHUNK: usize = 64 << 20;

/// Why [`replay_located`] stopped.
pub(crate) enum ReplayError {
    /// Reading a record back failed.
    Read(std::io::Error),
    /// Applying records to the file failed.
    Apply(String),
}

/// Replay the records at `located` (in order) into the object file at `path`, read
/// back and replayed in chunks of at most [`REPLAY_CHUNK`] bytes: one object's records
/// can outgrow memory. The records applied and the object's earliest alarm due time
/// after them.
pub(crate) fn replay_located(
    path: &Path,
    files: &mut SegmentFiles<'_>,
    located: &[Located],
    window: usize,
) -> Result<(usize, Option<u64>), ReplayError> {
    let mut applied = 0;
    let mut due = None;
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for (i, r) in located.iter().enumerate() {
        let record = files.read(r).map_err(ReplayError::Read)?;
        bytes += record.payload.len();
        chunk.push(record);
        if bytes >= REPLAY_CHUNK || i + 1 == located.len() {
            let (n, chunk_due) =
                crate::store::replay(path, &chunk, window).map_err(ReplayError::Apply)?;
            applied += n;
            due = chunk_due;
            chunk.clear();
            bytes = 0;
        }
    }
    Ok((applied, due))
}

/// The first batches missing from `located` (in lsn order): the batch numbers on both
/// sides of the first gap, if one has a successor more than one above it. An object's
/// batches are numbered one by one; a gap after its image is a damaged or lost
/// segment, and replaying across it would build a state the object never had.
pub(crate) fn first_gap(located: &[Located]) -> Option<(u64, u64)> {
    located
        .windows(2)
        .find(|w| w[1].seq > w[0].seq + 1)
        .map(|w| (w[0].seq, w[1].seq))
}

/// From `located` (in lsn order), the part from the last image on, or `None` if it
/// holds no image.
pub(crate) fn from_last_image(located: &[Located]) -> Option<&[Located]> {
    let at = located.iter().rposition(|r| r.kind == RecordKind::Image)?;
    Some(&located[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_objects_history_is_found_in_order_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let a = ObjectId::from_name("C", "a");
        let b = ObjectId::from_name("C", "b");
        let record = |lsn: u64, object: ObjectId, kind: RecordKind| LogRecord {
            lsn,
            time_ms: 1_000 + lsn,
            kind,
            class: "C".into(),
            object,
            seq: lsn,
            payload: vec![lsn as u8; 100 + lsn as usize],
        };
        // Two segments in the archive, one in the live log (and a copy of the
        // archive's first there too, as a crash mid-retire could leave).
        let write = |dir: &Path, first: u64, records: &[LogRecord]| {
            std::fs::create_dir_all(dir).unwrap();
            let name = super::super::segment_name(first);
            std::fs::write(dir.join(name), crate::record::encode_round(records)).unwrap();
        };
        let all = [
            record(1, a, RecordKind::Image),
            record(2, b, RecordKind::Image),
            record(3, a, RecordKind::Changes),
            record(4, a, RecordKind::Image),
            record(5, a, RecordKind::Changes),
            record(6, b, RecordKind::Changes),
            record(7, a, RecordKind::Changes),
        ];
        write(&archive_dir(dir.path()), 1, &all[..3]);
        write(&archive_dir(dir.path()), 4, &all[3..5]);
        write(&log_dir(dir.path()), 1, &all[..3]);
        write(&log_dir(dir.path()), 6, &all[5..]);
        let (segments, mine) = object_history(dir.path(), "C", a).unwrap();
        assert_eq!(
            mine.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            vec![1, 3, 4, 5, 7]
        );
        let from = from_last_image(&mine).unwrap();
        assert_eq!(
            from.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            vec![4, 5, 7]
        );
        let mut files = SegmentFiles::new(dir.path(), &segments);
        for at in &mine {
            let r = files.read(at).unwrap();
            assert_eq!(r, all[at.lsn as usize - 1]);
            assert_eq!((r.seq, r.time_ms, r.kind), (at.seq, at.time_ms, at.kind));
        }
        // A live log segment a checkpoint retires into the archive after it was
        // listed is read back from there.
        std::fs::rename(
            log_dir(dir.path()).join(super::super::segment_name(6)),
            archive_dir(dir.path()).join(super::super::segment_name(6)),
        )
        .unwrap();
        let mut files = SegmentFiles::new(dir.path(), &segments);
        assert_eq!(files.read(&mine[4]).unwrap(), all[6]);
        assert_eq!(
            first_gap(&mine),
            Some((1, 3)),
            "batch 2 is b's in this test"
        );
        assert_eq!(first_gap(from), Some((5, 7)));
        assert_eq!(first_gap(&mine[2..4]), None);
        let (_, none) = object_history(dir.path(), "D", a).unwrap();
        assert!(none.is_empty() && from_last_image(&none).is_none());
    }
}
