//! `host backup` and `host restore`: a consistent copy of every object, taken while
//! the host serves, and a new data directory filled from one.
//!
//! Each object is copied as [`super::current`] reads it: a snapshot of its file (a
//! read transaction, which WAL mode lets run beside the host's writer) brought
//! forward with the batches the host log holds past it, so the copy has every batch
//! durable when it was taken, and always whole batches: never half a turn. Objects are copied one after another;
//! each is consistent in itself, as of the moment it was copied.

use crate::alarms::AlarmIndex;
use crate::catalog::Catalog;
use std::path::{Path, PathBuf};

/// The file that marks a directory as a backup, with what it holds.
const MANIFEST: &str = "durable-backup.json";

/// What a backup copied.
#[derive(Debug)]
pub(crate) struct BackupReport {
    /// Objects copied.
    pub(crate) objects: usize,
    /// Batches applied from the host log on top of the files' snapshots.
    pub(crate) batches_from_log: usize,
}

fn empty_or_absent(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(format!("{} is not empty", dir.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("reading {}: {e}", dir.display())),
    }
}

/// `host backup --data-dir DIR --to BACKUP`.
pub(crate) fn backup(data_dir: &Path, to: &Path) -> Result<BackupReport, String> {
    if !data_dir.join("objects").exists() && !data_dir.join("tls").exists() {
        return Err(format!("{} is not a data directory", data_dir.display()));
    }
    empty_or_absent(to)?;
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    crate::files::create_dirs(to).map_err(io(to))?;
    let objects = crate::store::list_objects(data_dir).map_err(io(data_dir))?;
    let catalog = Catalog::open(to).map_err(|e| format!("creating the backup's catalog: {e}"))?;
    let alarms =
        AlarmIndex::open(to).map_err(|e| format!("creating the backup's alarm index: {e}"))?;
    let mut report = BackupReport {
        objects: 0,
        batches_from_log: 0,
    };
    for (class, id, _) in &objects {
        let dest = crate::files::object_path(to, class, *id);
        let mut current = super::current(data_dir, class, *id)?;
        let mut image = current
            .conn
            .serialize("main")
            .map_err(|e| format!("copying {class} {id}: {e}"))?
            .to_vec();
        if image.len() > 19 {
            // Back to WAL mode, as the host keeps its objects.
            image[18] = 2;
            image[19] = 2;
        }
        let due = crate::alarms::earliest_due(&current.conn)
            .map_err(|e| format!("reading the alarms of {class} {id}: {e}"))?;
        report.batches_from_log += current.from_log;
        crate::store::write_image(&dest, &image).map_err(io(&dest))?;
        catalog
            .add(class, *id)
            .map_err(|e| format!("recording {class} {id} in the backup's catalog: {e}"))?;
        if due.is_some() {
            alarms
                .set(class, *id, due)
                .map_err(|e| format!("indexing the alarms of {class} {id}: {e}"))?;
        }
        report.objects += 1;
    }
    drop(catalog);
    drop(alarms);
    copy_tree(&data_dir.join("tls"), &to.join("tls"))?;
    let manifest = serde_json::json!({
        "format": 1,
        "created": super::utc(crate::clock::Clock::now_ms(&crate::clock::SystemClock)),
        "objects": report.objects,
    });
    write_synced(&to.join(MANIFEST), manifest.to_string().as_bytes()).map_err(io(to))?;
    sync_dirs(to)?;
    Ok(report)
}

/// `host restore --from BACKUP --data-dir NEW`: fill an empty (or new) data directory
/// from a backup. A host started on it serves every object as the backup holds it.
pub(crate) fn restore(from: &Path, data_dir: &Path) -> Result<usize, String> {
    if !from.join(MANIFEST).exists() {
        return Err(format!(
            "{} is not a backup (no {MANIFEST}); make one with `host backup`",
            from.display()
        ));
    }
    empty_or_absent(data_dir)?;
    crate::files::create_dirs(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    // No host may start on it while it is being filled.
    let _lock = crate::files::DirLock::acquire(data_dir)?;
    copy_tree(from, data_dir)?;
    sync_dirs(data_dir)?;
    let objects = crate::store::list_objects(data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?
        .len();
    Ok(objects)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = crate::files::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn copy_file(src: &Path, dest: &Path) -> Result<(), String> {
    let bytes = std::fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
    write_synced(dest, &bytes).map_err(|e| format!("{}: {e}", dest.display()))
}

/// Copy the files under `from` into `to` (created 0700), skipping SQLite's
/// `-wal`/`-shm` companions (every database here was checkpointed into its file),
/// lock files and the backup manifest.
/// Returns how many files were copied; a missing `from` copies nothing.
fn copy_tree(from: &Path, to: &Path) -> Result<usize, String> {
    if !from.exists() {
        return Ok(0);
    }
    crate::files::create_dirs(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut n = 0;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let src = entry.path();
        let name = entry.file_name();
        let s = name.to_string_lossy();
        if s.ends_with("-wal")
            || s.ends_with("-shm")
            || s.ends_with(".tmp")
            || s == "host.lock"
            || s == MANIFEST
        {
            continue;
        }
        let dest: PathBuf = to.join(&name);
        if src.is_dir() {
            n += copy_tree(&src, &dest)?;
        } else {
            copy_file(&src, &dest)?;
            n += 1;
        }
    }
    crate::files::sync_dir(to).map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(n)
}

/// fsync `root` and every directory under it.
fn sync_dirs(root: &Path) -> Result<(), String> {
    crate::files::sync_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for entry in std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))? {
        let path = entry
            .map_err(|e| format!("{}: {e}", root.display()))?
            .path();
        if path.is_dir() {
            sync_dirs(&path)?;
        }
    }
    Ok(())
}
