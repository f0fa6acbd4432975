//! File-level building blocks shared by the log, snapshots and backups: the snapshot file
//! format, atomic writes, directory fsyncs and the names of the files in a shard directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::image::StateImage;
use crate::StoreError;

/// First bytes of every snapshot and backup file: tells a snapshot from anything else.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"BRLSSNAP";
/// Format version after the magic; bumped when the layout or the image's encoding changes.
/// 2: tasks' `preempted_by` and the image's `quotas`. 3: the job config's `health_check`,
/// `http_lifecycle`, `sla_policy`, `partition_policy`, and the image's `hosts`. 4: tasks'
/// `rev`, jobs' `revs` and `updates` (rolling updates), and `cron`. 5: tasks' `usage`.
/// Versions 1 to 4 are still read (`crate::legacy`).
pub const SNAPSHOT_VERSION: u32 = 5;
/// magic (8) | version (u32 LE) | payload length (u64 LE) | crc32c of the payload (u32 LE).
pub const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 8 + 4;

/// Encodes an image as a snapshot file's bytes.
pub fn encode_snapshot(image: &StateImage) -> Result<Vec<u8>, StoreError> {
    let payload = postcard::to_stdvec(image)
        .map_err(|e| StoreError::Encode(format!("cannot encode the state image: {e}")))?;
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Decodes a snapshot file's bytes; the error says what is wrong with them.
pub fn decode_snapshot(bytes: &[u8]) -> Result<StateImage, String> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!(
            "short header: {} bytes, a snapshot has at least {SNAPSHOT_HEADER_BYTES}",
            bytes.len()
        ));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err("bad magic: not a Borealis snapshot".to_string());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_VERSION
        && version != crate::legacy::SNAPSHOT_VERSION_4
        && version != crate::legacy::SNAPSHOT_VERSION_3
        && version != crate::legacy::SNAPSHOT_VERSION_2
        && version != crate::legacy::SNAPSHOT_VERSION_1
    {
        return Err(format!(
            "unsupported version {version} (this build reads 1 to {SNAPSHOT_VERSION})"
        ));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = &bytes[SNAPSHOT_HEADER_BYTES..];
    if len != payload.len() as u64 {
        return Err(format!(
            "length mismatch: header says {len} payload bytes, the file has {}",
            payload.len()
        ));
    }
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    if let Some(older) = crate::legacy::decode_state_image(version, payload) {
        return older;
    }
    match postcard::take_from_bytes::<StateImage>(payload) {
        Ok((image, [])) => Ok(image),
        Ok((_, rest)) => Err(format!("{} trailing bytes after the image", rest.len())),
        Err(e) => Err(format!("undecodable image: {e}")),
    }
}

/// Reads and decodes a snapshot file; the error says why it cannot be used.
pub fn read_snapshot(path: &Path) -> Result<StateImage, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    decode_snapshot(&bytes)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the whole new one:
/// temp file, fsync, rename, fsync of the directory (which makes the rename durable).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::io(format!("writing {}", path.display()), e));
    }
    fsync_dir(parent(path))
}

/// The temp file `write_atomic` writes first: the name plus `.tmp`, which no reader matches.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

/// Creates `dir` (and missing parents) and makes each new directory's entry durable in its
/// parent, so that files written into it cannot vanish with it in a crash.
pub fn create_dir_durable(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut created = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        created.push(d);
        cursor = d.parent();
    }
    fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(format!("creating directory {}", dir.display()), e))?;
    for d in created.iter().rev() {
        fsync_dir(parent(d))?;
    }
    Ok(())
}

/// `log-<seq:020>`.
pub fn segment_name(seq: u64) -> String {
    format!("log-{seq:020}")
}

/// `snapshot-<seq:020>`.
pub fn snapshot_name(seq: u64) -> String {
    format!("snapshot-{seq:020}")
}

/// The sequence number in a file name `<prefix><20 digits>`, or None for any other name.
pub fn parse_seq(name: &str, prefix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The snapshots and segments of a shard directory, each sorted by sequence number.
#[derive(Debug, Default)]
pub struct Listing {
    pub snapshots: Vec<u64>,
    pub segments: Vec<u64>,
    /// Leftover `*.tmp` files of interrupted atomic writes.
    pub temps: Vec<PathBuf>,
}

pub fn list_dir(dir: &Path) -> Result<Listing, StoreError> {
    let mut listing = Listing::default();
    let entries =
        fs::read_dir(dir).map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_seq(name, "log-") {
            listing.segments.push(seq);
        } else if let Some(seq) = parse_seq(name, "snapshot-") {
            listing.snapshots.push(seq);
        } else if name.ends_with(".tmp") {
            listing.temps.push(entry.path());
        }
    }
    listing.snapshots.sort_unstable();
    listing.segments.sort_unstable();
    Ok(listing)
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Removes a file, treating "already gone" as done.
pub fn remove_file_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
    }
}
