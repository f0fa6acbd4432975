//! Borealis's embedded durable store: each scheduler shard's write-ahead log (group commit, one
//! fsync per scheduling round), snapshots, backups, and recovery of the whole data dir.
//!
//! Layout of a data dir:
//! - `shard-<i>/`: shard `i`'s log and snapshots (see [`wal`]);
//! - `install.staging/`, `install.ready/`: a re-partition or restore in progress (see
//!   [`install_shards`]); recovery rolls a ready one forward and drops a staging one;
//! - `replaced-<unix_ms>/`: shard dirs a restore replaced, kept for the operator.
//!
//! Plain blocking `std::fs` IO: a shard calls `commit` once per round, and the fsync dominates.

pub mod backup;
pub mod files;
pub mod image;
mod legacy;
pub mod wal;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use files::{create_dir_durable, fsync_dir, write_atomic};
use image::ApplyError;

pub use image::{HostImage, JobImage, JobRevs, LogRecord, StateImage, TaskImage};
pub use wal::{Recovery, Wal};

/// Everything the store can fail with; each names the file (and offset or record) involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{}: corrupt at offset {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{} at offset {offset}: {source}", file.display())]
    Apply {
        file: PathBuf,
        offset: u64,
        #[source]
        source: ApplyError,
    },
    #[error("cannot recover {}: {reason}", dir.display())]
    Unrecoverable { dir: PathBuf, reason: String },
    #[error(
        "{record} is {bytes} bytes, over the record limit of {} bytes",
        wal::RECORD_BYTES_MAX
    )]
    RecordTooLarge { record: String, bytes: usize },
    #[error("{0}")]
    Encode(String),
    #[error("the log refuses writes after an earlier failure: {0}")]
    Poisoned(String),
    #[error("backup {name}: {reason}")]
    BadBackup { name: String, reason: String },
    #[error("conflicting copies in the data dir: {0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn io(context: String, source: io::Error) -> StoreError {
        StoreError::Io { context, source }
    }
}

/// `shard-<i>`.
pub fn shard_dir_name(shard: usize) -> String {
    format!("shard-{shard}")
}

/// The `shard-<i>` directories in `data_dir`, by index.
pub fn shard_dirs(data_dir: &Path) -> Result<Vec<(usize, PathBuf)>, StoreError> {
    let mut dirs = Vec::new();
    let entries = match fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(StoreError::io(format!("listing {}", data_dir.display()), e)),
    };
    for entry in entries {
        let entry =
            entry.map_err(|e| StoreError::io(format!("listing {}", data_dir.display()), e))?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().is_dir() {
            dirs.push((index, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Recovers a whole data dir for `shards` shards, whatever the shard count it was written with.
///
/// Finishes an interrupted [`install_shards`] first, opens every `shard-*` dir present
/// ([`Wal::open`]: torn tails cut, fallback snapshots used), merges their images, and partitions
/// the result by the scheduler's routing (jobs, with their revisions and updates, and their
/// tasks by job key, quotas by role, host maintenance entries by host name). When the dirs on disk are not already exactly that
/// partition (another shard count, a restored backup), the partition is installed crash-safely
/// in their place, and dirs of indexes `>= shards` disappear. Each shard then owns
/// `data_dir/shard-<i>/` holding exactly `images[i]`: open it with [`Wal::open`], or reset it
/// with [`Wal::create_fresh`].
///
/// Returns the images by new shard index, and what recovery found in each dir that was present
/// (their `image` fields are left empty: the state moved into the merge).
pub fn recover_all(
    data_dir: &Path,
    shards: usize,
) -> Result<(Vec<StateImage>, Vec<Recovery>), StoreError> {
    if shards == 0 {
        return Err(StoreError::Invalid("cannot recover for 0 shards".into()));
    }
    create_dir_durable(data_dir)?;
    finish_install(data_dir)?;
    let dirs = shard_dirs(data_dir)?;
    let mut old_parts = Vec::with_capacity(dirs.len());
    let mut recoveries = Vec::with_capacity(dirs.len());
    for (_, dir) in &dirs {
        let (wal, mut recovery) = Wal::open(dir)?;
        drop(wal);
        old_parts.push(std::mem::take(&mut recovery.image));
        recoveries.push(recovery);
    }
    // Already partitioned for `shards`: dirs 0..shards, each holding only what routes to it.
    let in_place = dirs.len() == shards
        && dirs
            .iter()
            .zip(&old_parts)
            .enumerate()
            .all(|(i, ((d, _), part))| {
                i == *d
                    && part.jobs.keys().all(|k| image::shard_of(k, shards) == i)
                    && part
                        .tasks
                        .values()
                        .all(|t| image::shard_of(&t.job, shards) == i)
                    && part
                        .quotas
                        .keys()
                        .all(|r| image::shard_of_role(r, shards) == i)
                    && part
                        .hosts
                        .keys()
                        .all(|h| image::shard_of_host(h, shards) == i)
            });
    let merged = merge_checked(&dirs, old_parts)?;
    let images = merged.partition(shards);
    if !in_place {
        tracing::info!(
            data_dir = %data_dir.display(),
            from_dirs = dirs.len(),
            shards,
            "re-partitioning the data dir"
        );
        install_shards(data_dir, &images, None)?;
    }
    Ok((images, recoveries))
}

/// Merges shard images, failing where two dirs hold different copies of one job, task, quota
/// or host entry.
/// Identical copies are expected after a crash in the middle of [`install_shards`]'s roll
/// forward, and harmless; different ones mean the dirs disagree, and guessing would lose data.
fn merge_checked(
    dirs: &[(usize, PathBuf)],
    parts: Vec<StateImage>,
) -> Result<StateImage, StoreError> {
    let mut merged = StateImage::default();
    for ((_, dir), part) in dirs.iter().zip(parts) {
        for (key, job) in part.jobs {
            if merged.jobs.get(&key).is_some_and(|have| *have != job) {
                return Err(StoreError::Conflict(format!(
                    "job {key} in {} differs from another shard dir's copy",
                    dir.display()
                )));
            }
            merged.jobs.insert(key, job);
        }
        for (id, task) in part.tasks {
            if merged.tasks.get(&id).is_some_and(|have| *have != task) {
                return Err(StoreError::Conflict(format!(
                    "task {id} in {} differs from another shard dir's copy",
                    dir.display()
                )));
            }
            merged.tasks.insert(id, task);
        }
        for (role, quota) in part.quotas {
            if merged.quotas.get(&role).is_some_and(|have| *have != quota) {
                return Err(StoreError::Conflict(format!(
                    "the quota of role {role} in {} differs from another shard dir's copy",
                    dir.display()
                )));
            }
            merged.quotas.insert(role, quota);
        }
        for (host, entry) in part.hosts {
            if merged.hosts.get(&host).is_some_and(|have| *have != entry) {
                return Err(StoreError::Conflict(format!(
                    "the maintenance mode of host {host} in {} differs from another shard dir's copy",
                    dir.display()
                )));
            }
            merged.hosts.insert(host, entry);
        }
    }
    Ok(merged)
}

const STAGING: &str = "install.staging";
const READY: &str = "install.ready";
const TRASH: &str = "install.trash";
const MANIFEST: &str = "MANIFEST";

/// Replaces every `shard-*` dir of `data_dir` with `images` (`shard-<i>` holding `images[i]` as
/// its only snapshot, and an empty log), crash-safely: a crash leaves either the old dirs or,
/// once the next [`recover_all`] (or this function) finishes the roll forward, the new ones.
///
/// How: the new dirs are written and fsynced under `install.staging/`, with a manifest naming
/// the shard count; renaming it to `install.ready/` is the commit point; then each old dir is
/// moved out and its replacement moved in, one index at a time, which a rerun can resume.
/// Old dirs go to `data_dir/<keep_replaced>/` when given (a restore keeps them for the
/// operator), and are deleted otherwise. Returns the folder they were kept in, if any was.
pub fn install_shards(
    data_dir: &Path,
    images: &[StateImage],
    keep_replaced: Option<&str>,
) -> Result<Option<PathBuf>, StoreError> {
    create_dir_durable(data_dir)?;
    // A committed install still pending must finish first: it is newer than what the caller
    // read only if the caller skipped recovery, and finishing it is what recovery would do.
    finish_install(data_dir)?;
    let staging = data_dir.join(STAGING);
    for (i, image) in images.iter().enumerate() {
        Wal::create_fresh(&staging.join(shard_dir_name(i)), image)?;
    }
    create_dir_durable(&staging)?;
    let manifest = format!(
        "shards={}\nreplaced={}\n",
        images.len(),
        keep_replaced.unwrap_or("")
    );
    write_atomic(&staging.join(MANIFEST), manifest.as_bytes())?;
    let ready = data_dir.join(READY);
    fs::rename(&staging, &ready).map_err(|e| {
        StoreError::io(
            format!("renaming {} to {}", staging.display(), ready.display()),
            e,
        )
    })?;
    fsync_dir(data_dir)?;
    finish_install(data_dir)
}

/// Rolls a committed install (`install.ready/`) forward; drops an uncommitted one
/// (`install.staging/`). Idempotent: safe to rerun after a crash at any point.
fn finish_install(data_dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    let staging = data_dir.join(STAGING);
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .map_err(|e| StoreError::io(format!("removing {}", staging.display()), e))?;
    }
    let trash = data_dir.join(TRASH);
    let ready = data_dir.join(READY);
    if !ready.exists() {
        remove_dir_if_exists(&trash)?;
        return Ok(None);
    }
    let manifest_path = ready.join(MANIFEST);
    let manifest = fs::read_to_string(&manifest_path)
        .map_err(|e| StoreError::io(format!("reading {}", manifest_path.display()), e))?;
    let field = |name: &str| {
        manifest
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let shards: usize = field("shards")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| StoreError::Corrupt {
            file: manifest_path.clone(),
            offset: 0,
            reason: format!("no shard count in {manifest:?}"),
        })?;
    let keep = field("replaced").filter(|r| !r.is_empty());
    let old_home = data_dir.join(keep.as_deref().unwrap_or(TRASH));
    let move_out = |dir: &Path, name: &str| -> Result<(), StoreError> {
        create_dir_durable(&old_home)?;
        let to = old_home.join(name);
        fs::rename(dir, &to)
            .map_err(|e| StoreError::io(format!("moving {} to {}", dir.display(), to.display()), e))
    };
    for i in 0..shards {
        let name = shard_dir_name(i);
        let src = ready.join(&name);
        if !src.exists() {
            continue; // moved in before a crash
        }
        let dst = data_dir.join(&name);
        if dst.exists() {
            move_out(&dst, &name)?;
        }
        fs::rename(&src, &dst).map_err(|e| {
            StoreError::io(format!("moving {} to {}", src.display(), dst.display()), e)
        })?;
    }
    for (index, dir) in shard_dirs(data_dir)? {
        if index >= shards {
            move_out(&dir, &shard_dir_name(index))?;
        }
    }
    fsync_dir(data_dir)?;
    if old_home.exists() {
        fsync_dir(&old_home)?;
    }
    fs::remove_dir_all(&ready)
        .map_err(|e| StoreError::io(format!("removing {}", ready.display()), e))?;
    fsync_dir(data_dir)?;
    match keep {
        Some(_) if old_home.exists() => Ok(Some(old_home)),
        Some(_) => Ok(None),
        None => {
            remove_dir_if_exists(&trash)?;
            Ok(None)
        }
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), StoreError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", dir.display()), e)),
    }
}
