//! Backups, after Aurora's `backup_dir`, `backup_interval` and `max_saved_backups`
//! (`performBackup`, `listBackups`, `stageRecovery`/`commitRecovery`).
//!
//! A backup is a folder `backup_dir/backup-<interval-aligned UTC time>/` with one file per
//! shard, `shard-<i>.snapshot`, in the snapshot file format. Every shard names the folder from
//! the same aligned time, so one interval's files land together without the shards talking.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::files::{create_dir_durable, read_snapshot, unix_ms_now, write_atomic};
use crate::image::StateImage;
use crate::{install_shards, StoreError};

const PREFIX: &str = "backup-";
const SUFFIX: &str = ".snapshot";

/// A backup folder: its name, how many shard files it has, and their total size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    pub name: String,
    pub shards: usize,
    pub bytes: u64,
}

/// What [`restore_backup`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    pub backup: String,
    /// Shard dirs written (one per shard file of the backup).
    pub shards: usize,
    pub jobs: usize,
    pub tasks: usize,
    /// Roles with a quota.
    pub quotas: usize,
    /// Hosts in maintenance.
    pub hosts: usize,
    /// Where the replaced `shard-*` dirs were moved (None: the data dir had none).
    pub replaced: Option<PathBuf>,
}

/// `backup-<UTC time of unix_ms rounded down to interval_ms>`, e.g.
/// `backup-2026-11-26T10-00-00Z`. Names sort by time (years 0..=9999), and every shard backing
/// up within one interval gets the same name. `interval_ms == 0` means no rounding.
pub fn backup_name(unix_ms: u64, interval_ms: u64) -> String {
    let aligned = match interval_ms {
        0 => unix_ms,
        n => unix_ms - unix_ms % n,
    };
    let secs = aligned / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{PREFIX}{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm),
/// so that naming backups needs no date-time dependency.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A backup name must be one plain path component starting `backup-`: it is joined to
/// `backup_dir`, and must not escape it.
fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = name.starts_with(PREFIX)
        && name.len() > PREFIX.len()
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{name:?} is not a backup name (backup-<letters, digits, '-', '_', '.'>)"
        )))
    }
}

/// Writes shard `shard`'s image as `backup_dir/<name>/shard-<shard>.snapshot`, atomically:
/// a reader sees the whole file or none.
pub fn write_backup(
    backup_dir: &Path,
    name: &str,
    shard: usize,
    image: &StateImage,
) -> Result<(), StoreError> {
    check_name(name)?;
    let folder = backup_dir.join(name);
    create_dir_durable(&folder)?;
    let bytes = crate::files::encode_snapshot(image)?;
    write_atomic(&folder.join(format!("shard-{shard}{SUFFIX}")), &bytes)
}

/// The backup folders, newest first (by name, which sorts by time). A missing `backup_dir`
/// has none.
pub fn list_backups(backup_dir: &Path) -> Result<Vec<BackupInfo>, StoreError> {
    let mut backups = Vec::new();
    for name in backup_names(backup_dir)? {
        let files = shard_files(&backup_dir.join(&name))?;
        backups.push(BackupInfo {
            shards: files.len(),
            bytes: files.iter().map(|(_, _, len)| len).sum(),
            name,
        });
    }
    Ok(backups)
}

/// Keeps the newest `max_saved` backup folders and removes the others (0 removes all);
/// returns the names removed.
pub fn prune_backups(backup_dir: &Path, max_saved: usize) -> Result<Vec<String>, StoreError> {
    let names = backup_names(backup_dir)?;
    let mut removed = Vec::new();
    for name in names.into_iter().skip(max_saved) {
        let folder = backup_dir.join(&name);
        fs::remove_dir_all(&folder)
            .map_err(|e| StoreError::io(format!("removing {}", folder.display()), e))?;
        removed.push(name);
    }
    Ok(removed)
}

/// Reads every shard file of backup `name` and checks it (magic, version, length, checksum,
/// decoding), and that the shard indexes are `0..n` with none missing. Returns the images by
/// shard index.
///
/// A missing *last* shard file cannot be told from a backup of fewer shards: the files do not
/// record the shard count.
pub fn verify_backup(backup_dir: &Path, name: &str) -> Result<Vec<StateImage>, StoreError> {
    check_name(name)?;
    let folder = backup_dir.join(name);
    let bad = |reason: String| StoreError::BadBackup {
        name: name.to_string(),
        reason,
    };
    if !folder.is_dir() {
        return Err(bad(format!("no folder {}", folder.display())));
    }
    let files = shard_files(&folder)?;
    if files.is_empty() {
        return Err(bad("no shard files".to_string()));
    }
    let mut images = Vec::with_capacity(files.len());
    for (expected, (index, path, _)) in files.iter().enumerate() {
        if *index != expected {
            return Err(bad(format!("shard-{expected}{SUFFIX} is missing")));
        }
        let image =
            read_snapshot(path).map_err(|reason| bad(format!("{}: {reason}", path.display())))?;
        images.push(image);
    }
    Ok(images)
}

/// Restores backup `name` into `data_dir`, offline (the scheduler stopped).
///
/// Verifies the whole backup first: if it is bad, nothing changes. Then the current
/// `data_dir/shard-*` dirs move into `data_dir/replaced-<unix_ms>/`, and each shard file
/// becomes `data_dir/shard-<i>/` holding it as its only snapshot, with an empty log (see
/// [`install_shards`]: a crash in the middle finishes at the next recovery). The next start may
/// use another shard count: [`crate::recover_all`] merges and re-partitions.
pub fn restore_backup(
    backup_dir: &Path,
    name: &str,
    data_dir: &Path,
) -> Result<RestoreReport, StoreError> {
    let images = verify_backup(backup_dir, name)?;
    let mut replaced_name = format!("replaced-{}", unix_ms_now());
    while data_dir.join(&replaced_name).exists() {
        replaced_name.push('x');
    }
    let replaced = install_shards(data_dir, &images, Some(&replaced_name))?;
    Ok(RestoreReport {
        backup: name.to_string(),
        shards: images.len(),
        jobs: images.iter().map(|i| i.jobs.len()).sum(),
        tasks: images.iter().map(|i| i.tasks.len()).sum(),
        quotas: images.iter().map(|i| i.quotas.len()).sum(),
        hosts: images.iter().map(|i| i.hosts.len()).sum(),
        replaced,
    })
}

/// Backup folder names in `backup_dir`, newest first.
fn backup_names(backup_dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(backup_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StoreError::io(
                format!("listing {}", backup_dir.display()),
                e,
            ))
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| StoreError::io(format!("listing {}", backup_dir.display()), e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if check_name(&name).is_ok() && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

/// The `shard-<i>.snapshot` files of a backup folder: index, path, size; by index. Leftover
/// temp files of interrupted writes are not shard files.
fn shard_files(folder: &Path) -> Result<Vec<(usize, PathBuf, u64)>, StoreError> {
    let entries = fs::read_dir(folder)
        .map_err(|e| StoreError::io(format!("listing {}", folder.display()), e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| StoreError::io(format!("listing {}", folder.display()), e))?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-")?.strip_suffix(SUFFIX))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<usize>().ok())
        else {
            continue;
        };
        let len = entry
            .metadata()
            .map_err(|e| StoreError::io(format!("reading {}", entry.path().display()), e))?
            .len();
        files.push((index, entry.path(), len));
    }
    files.sort();
    Ok(files)
}
