//! A shard's write-ahead log: segments of checksummed records, group commit, snapshots and
//! recovery.
//!
//! Directory layout (`DATA_DIR/shard-<i>/`):
//! - `log-<seq:020>`: a segment, a run of frames `u32 LE len | u32 LE crc32c(payload) | payload`
//!   where the payload is a postcard-encoded [`LogRecord`];
//! - `snapshot-<seq:020>`: the image as of the start of segment `seq` (it covers every segment
//!   below `seq`; recovery replays segments `seq, seq+1, ...` on top of it).
//!
//! Each commit (one scheduling round) is its records followed by a [`LogRecord::Commit`]
//! marker, written together. A round's records belong together (a job's creation and its
//! tasks), so recovery applies them only once it reads their marker: a round is all or nothing.
//!
//! Only the last segment is ever appended to, and a new segment starts only after the previous
//! one was committed (so every segment ends with a marker), so a torn write can only be at the
//! end of the last segment: recovery cuts it there, at the end of the last marker, dropping the
//! unfinished round whole. Anything wrong earlier is real corruption and an error.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::files::{
    create_dir_durable, encode_snapshot, fsync_dir, list_dir, read_snapshot, remove_file_if_exists,
    segment_name, snapshot_name, write_atomic,
};
use crate::image::{LogRecord, StateImage};
use crate::StoreError;

/// A frame's header: payload length and payload checksum.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest record payload. A length field above it is corruption (a torn or flipped header
/// could otherwise make recovery try to read gigabytes), and `append` refuses to write one.
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// The commit marker's frame: a header and the one-byte encoding of [`LogRecord::Commit`].
pub const COMMIT_FRAME_BYTES: usize = FRAME_HEADER_BYTES + 1;
/// A commit buffer grown past this by an unusually large round is given back afterwards.
const BUF_KEEP_BYTES: usize = 16 << 20;

/// What [`Wal::open`] found and repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The state: the snapshot plus every replayed record.
    pub image: StateImage,
    /// Records replayed on top of the snapshot (commit markers not counted).
    pub records_replayed: u64,
    /// The snapshot the image started from (None: from empty).
    pub snapshot: Option<PathBuf>,
    /// The torn or corrupt tail cut from the last segment (an unfinished round, or damage):
    /// file, offset, bytes cut, reason.
    pub cut: Option<String>,
    /// Newer snapshots that could not be used, and why (each renamed to `<name>.corrupt`).
    pub skipped_snapshots: Vec<String>,
}

/// A shard's log. One owner, no locks; blocking `std::fs` IO.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    /// The last segment, open for appending.
    file: File,
    seq: u64,
    /// Frames appended since the last commit.
    buf: Vec<u8>,
    /// A record `append` could not frame; the next `commit` reports it instead of writing.
    deferred: Option<StoreError>,
    /// Why the log refuses to write (a failed commit or snapshot): see [`StoreError::Poisoned`].
    poisoned: Option<String>,
    bytes_since_snapshot: u64,
}

/// What replaying a segment applied, and how it ended.
struct Replayed {
    /// Bytes up to the end of the last commit marker: the rounds applied.
    kept: u64,
    /// Records applied (markers not counted).
    records: u64,
    /// Records read after the last marker: a round whose marker never made it to disk.
    uncommitted: u64,
    /// The first frame that is not a whole, intact frame (offset, why), which ended the replay.
    bad_frame: Option<(u64, String)>,
}

impl Replayed {
    /// Whether the segment ends in anything but whole committed rounds.
    fn has_tail(&self) -> bool {
        self.uncommitted > 0 || self.bad_frame.is_some()
    }

    /// Why the bytes after `kept` are dropped.
    fn tail_reason(&self) -> String {
        let round = format!(
            "uncommitted round of {}",
            plural(self.uncommitted, "record")
        );
        match &self.bad_frame {
            Some((_, why)) if self.uncommitted == 0 => why.clone(),
            Some((at, why)) => format!("{round}, ended by {why} at offset {at}"),
            None => round,
        }
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir` and recovers its state.
    ///
    /// Loads the newest readable snapshot (an unreadable one is renamed `<name>.corrupt`, with a
    /// warning, and the previous one is used), replays the segments from it on, one committed
    /// round at a time, cuts a torn or corrupt tail off the last segment at the end of its last
    /// commit marker (warning with file, offset and bytes cut: an unfinished round goes whole),
    /// and fails on corruption anywhere else (a bad frame, or records after the last marker of a
    /// segment that is not the last), on a missing segment, or on a record that does not apply.
    pub fn open(dir: &Path) -> Result<(Wal, Recovery), StoreError> {
        create_dir_durable(dir)?;
        let listing = list_dir(dir)?;
        for tmp in &listing.temps {
            remove_file_if_exists(tmp)?;
        }

        let mut image = StateImage::default();
        let mut base: Option<u64> = None;
        let mut skipped = Vec::new();
        for &seq in listing.snapshots.iter().rev() {
            let path = dir.join(snapshot_name(seq));
            match read_snapshot(&path) {
                Ok(loaded) => {
                    image = loaded;
                    base = Some(seq);
                    break;
                }
                Err(reason) => {
                    tracing::warn!(
                        file = %path.display(),
                        %reason,
                        "snapshot unusable, renamed to .corrupt; falling back to the previous one"
                    );
                    let mut corrupt = path.clone().into_os_string();
                    corrupt.push(".corrupt");
                    fs::rename(&path, &corrupt).map_err(|e| {
                        StoreError::io(format!("renaming corrupt {}", path.display()), e)
                    })?;
                    skipped.push(format!("{}: {reason}", path.display()));
                }
            }
        }
        if !skipped.is_empty() {
            fsync_dir(dir)?;
        }

        // Replay from the snapshot's segment on; without a snapshot, from the very first.
        let first = base.unwrap_or(1);
        let replay: Vec<u64> = listing
            .segments
            .iter()
            .copied()
            .filter(|&s| s >= first)
            .collect();
        if base.is_none() {
            // Without a snapshot the state is rebuilt from empty, which is right only when the
            // log still starts at segment 1: snapshots are numbered from 2, so no snapshot ever
            // stood in for segment 1's predecessors. Once a snapshot covered older segments
            // they were deleted, and without it the log alone cannot rebuild the state.
            let from_start = listing
                .segments
                .first()
                .map_or(skipped.is_empty(), |&s| s == 1);
            if !from_start {
                return Err(StoreError::Unrecoverable {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "no usable snapshot and the log does not start at segment 1 (segments: \
                         {:?}; unusable snapshots: {skipped:?})",
                        listing.segments
                    ),
                });
            }
        }
        for (i, &seq) in replay.iter().enumerate() {
            let expected = first + i as u64;
            if seq != expected {
                return Err(StoreError::Unrecoverable {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "segment {} is missing (replaying {:?} from {first})",
                        segment_name(expected),
                        replay
                    ),
                });
            }
        }

        let mut records_replayed = 0;
        let mut bytes_since_snapshot = 0;
        let mut cut = None;
        let mut pending = Vec::new();
        for (i, &seq) in replay.iter().enumerate() {
            let path = dir.join(segment_name(seq));
            let last = i + 1 == replay.len();
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
            let replayed = replay_segment(&bytes, &mut image, &path, &mut pending)?;
            records_replayed += replayed.records;
            bytes_since_snapshot += replayed.kept;
            if !replayed.has_tail() {
                continue;
            }
            if !last {
                // Segments rotate only after a commit: an earlier one ends with a marker.
                let (offset, reason) = replayed.bad_frame.unwrap_or_else(|| {
                    let n = plural(replayed.uncommitted, "record");
                    let why = format!(
                        "{n} after the last commit marker, but only the last segment may end \
                         in an unfinished round"
                    );
                    (replayed.kept, why)
                });
                return Err(StoreError::Corrupt {
                    file: path,
                    offset,
                    reason,
                });
            }
            let good = replayed.kept;
            let reason = replayed.tail_reason();
            let cut_bytes = bytes.len() as u64 - good;
            tracing::warn!(
                file = %path.display(),
                offset = good,
                bytes_cut = cut_bytes,
                reason = %reason,
                "cutting the log's torn or corrupt tail"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
            file.set_len(good)
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io(format!("truncating {}", path.display()), e))?;
            cut = Some(format!(
                "{}: cut {cut_bytes} bytes at offset {good}: {reason}",
                path.display()
            ));
        }

        let seq = replay.last().copied().unwrap_or(first);
        let file = if replay.is_empty() {
            create_segment(dir, seq)?
        } else {
            let path = dir.join(segment_name(seq));
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            buf: Vec::new(),
            deferred: None,
            poisoned: None,
            bytes_since_snapshot,
        };
        let recovery = Recovery {
            image,
            records_replayed,
            snapshot: base.map(|s| dir.join(snapshot_name(s))),
            cut,
            skipped_snapshots: skipped,
        };
        Ok((wal, recovery))
    }

    /// Makes `image` the whole content of `dir`: writes it as a snapshot numbered above every
    /// file there, starts an empty segment after it, then removes every older snapshot and
    /// segment. A crash at any point leaves either the old state or `image`.
    pub fn create_fresh(dir: &Path, image: &StateImage) -> Result<Wal, StoreError> {
        create_dir_durable(dir)?;
        let listing = list_dir(dir)?;
        for tmp in &listing.temps {
            remove_file_if_exists(tmp)?;
        }
        let newest = listing
            .snapshots
            .iter()
            .chain(&listing.segments)
            .copied()
            .max()
            .unwrap_or(0);
        // Never 1: a snapshot numbered 1 would make "the log starts at segment 1" ambiguous
        // (see `open`).
        let seq = (newest + 1).max(2);
        write_atomic(&dir.join(snapshot_name(seq)), &encode_snapshot(image)?)?;
        let file = create_segment(dir, seq)?;
        for &old in &listing.snapshots {
            remove_file_if_exists(&dir.join(snapshot_name(old)))?;
        }
        for &old in &listing.segments {
            remove_file_if_exists(&dir.join(segment_name(old)))?;
        }
        fsync_dir(dir)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            seq,
            buf: Vec::new(),
            deferred: None,
            poisoned: None,
            bytes_since_snapshot: 0,
        })
    }

    /// Frames `record` into the commit buffer. No IO: the round's records reach the disk
    /// together at [`Wal::commit`], which closes the round with a commit marker.
    ///
    /// Never fails by itself, so the hot path has nothing to handle: a record that cannot be
    /// framed (over [`RECORD_BYTES_MAX`], or not encodable) makes the next `commit` fail, and
    /// nothing of that round is written, rather than writing a frame recovery would reject.
    ///
    /// [`LogRecord::Commit`] is ignored: only `commit` ends a round, so a caller's marker cannot
    /// split one.
    pub fn append(&mut self, record: &LogRecord) {
        if self.deferred.is_some() || self.poisoned.is_some() || matches!(record, LogRecord::Commit)
        {
            return;
        }
        self.frame(record);
    }

    /// Appends a task's image from borrowed fields: the same frame as
    /// `append(&LogRecord::TaskUpserted(image))`, without cloning the task's strings (the
    /// shard logs one per transition).
    pub fn append_task(&mut self, task: &crate::image::TaskImageRef<'_>) {
        if self.deferred.is_some() || self.poisoned.is_some() {
            return;
        }
        self.frame(&crate::image::TaskUpsertRef(task));
    }

    /// Appends `record`'s frame to the commit buffer (or defers the error that prevents it).
    fn frame<R: serde::Serialize + std::fmt::Display>(&mut self, record: &R) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        let payload_len = match postcard::to_io(record, &mut self.buf) {
            Ok(_) => self.buf.len() - start - FRAME_HEADER_BYTES,
            Err(e) => {
                self.buf.truncate(start);
                self.deferred = Some(StoreError::Encode(format!("cannot encode {record}: {e}")));
                return;
            }
        };
        if payload_len > RECORD_BYTES_MAX {
            self.buf.truncate(start);
            self.deferred = Some(StoreError::RecordTooLarge {
                record: record.to_string(),
                bytes: payload_len,
            });
            return;
        }
        let crc = crc32c::crc32c(&self.buf[start + FRAME_HEADER_BYTES..]);
        self.buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Group commit: writes every record appended since the last commit, then a commit marker
    /// that makes them one all-or-nothing round for recovery, with one `write_all` and one
    /// `sync_data`, and returns the bytes written (marker included). Nothing pending: no IO,
    /// `Ok(0)`.
    ///
    /// After a failure the log is poisoned (every later write fails): the segment may hold part
    /// of the batch (recovery drops it whole unless its marker is there), and after a failed fsync the kernel may have dropped the pages, so
    /// retrying could acknowledge what is not on disk. The owner should stop; restarting
    /// recovers exactly what was durable.
    pub fn commit(&mut self) -> Result<u64, StoreError> {
        if let Some(why) = &self.poisoned {
            return Err(StoreError::Poisoned(why.clone()));
        }
        if let Some(e) = self.deferred.take() {
            self.buf.clear();
            self.poisoned = Some(e.to_string());
            return Err(e);
        }
        if self.buf.is_empty() {
            return Ok(0);
        }
        self.frame(&LogRecord::Commit);
        debug_assert!(self.deferred.is_none(), "the commit marker always frames");
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            let e = StoreError::io(
                format!("committing to {}", self.segment_path().display()),
                e,
            );
            self.poisoned = Some(e.to_string());
            self.buf.clear();
            return Err(e);
        }
        let written = self.buf.len() as u64;
        self.bytes_since_snapshot += written;
        self.buf.clear();
        if self.buf.capacity() > BUF_KEEP_BYTES {
            self.buf = Vec::new();
        }
        Ok(written)
    }

    /// Commits what is pending, writes `image` as a snapshot, starts a new segment, and removes
    /// what no recovery can need any more: snapshots older than the previous one and the
    /// segments before it. Keeping the previous snapshot and its segments means a corrupt
    /// newest snapshot still recovers to the present.
    ///
    /// `image` must be the state after every record appended so far. On failure the log is
    /// poisoned: once the snapshot file may exist, appending to the old segment would write
    /// records recovery skips.
    pub fn snapshot(&mut self, image: &StateImage) -> Result<(), StoreError> {
        self.commit()?;
        let result = self.write_snapshot(image);
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
        }
        result
    }

    fn write_snapshot(&mut self, image: &StateImage) -> Result<(), StoreError> {
        let seq = self.seq + 1;
        write_atomic(&self.dir.join(snapshot_name(seq)), &encode_snapshot(image)?)?;
        self.file = create_segment(&self.dir, seq)?;
        self.seq = seq;
        self.bytes_since_snapshot = 0;

        let listing = list_dir(&self.dir)?;
        let Some(&previous) = listing.snapshots.iter().rev().find(|&&s| s < seq) else {
            return Ok(());
        };
        for &old in listing.snapshots.iter().filter(|&&s| s < previous) {
            remove_file_if_exists(&self.dir.join(snapshot_name(old)))?;
        }
        for &old in listing.segments.iter().filter(|&&s| s < previous) {
            remove_file_if_exists(&self.dir.join(segment_name(old)))?;
        }
        fsync_dir(&self.dir)
    }

    /// Bytes committed to the log since the last snapshot (at open: the bytes replayed), so
    /// the owner can snapshot every N MiB and bound replay time.
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.bytes_since_snapshot
    }

    /// Bytes the next [`Wal::commit`] writes: the frames appended since the last commit and,
    /// when there are any, the commit marker that ends their round.
    pub fn pending_bytes(&self) -> usize {
        match self.buf.len() {
            0 => 0,
            n => n + COMMIT_FRAME_BYTES,
        }
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being appended to.
    pub fn segment_path(&self) -> PathBuf {
        self.dir.join(segment_name(self.seq))
    }
}

/// Creates an empty segment and makes its directory entry durable.
fn create_segment(dir: &Path, seq: u64) -> Result<File, StoreError> {
    let path = dir.join(segment_name(seq));
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    fsync_dir(dir)?;
    Ok(file)
}

/// Replays a segment one round at a time: each record is read into `pending` and applied to
/// `image` only when its round's commit marker is read. Stops at the first bad frame. Records
/// after the last marker are left unapplied (counted in `uncommitted`). A record that decodes
/// but does not apply is an error, never a cut: its checksum and its round's marker say it is
/// what was committed.
fn replay_segment(
    bytes: &[u8],
    image: &mut StateImage,
    path: &Path,
    pending: &mut Vec<(u64, LogRecord)>,
) -> Result<Replayed, StoreError> {
    pending.clear();
    let mut offset = 0usize;
    let mut kept = 0u64;
    let mut records = 0u64;
    let mut bad_frame = None;
    while offset < bytes.len() {
        match decode_frame(&bytes[offset..]) {
            Ok((LogRecord::Commit, frame_len)) => {
                for (at, record) in pending.drain(..) {
                    image.apply(&record).map_err(|source| StoreError::Apply {
                        file: path.to_path_buf(),
                        offset: at,
                        source,
                    })?;
                    records += 1;
                }
                offset += frame_len;
                kept = offset as u64;
            }
            Ok((record, frame_len)) => {
                pending.push((offset as u64, record));
                offset += frame_len;
            }
            Err(reason) => {
                bad_frame = Some((offset as u64, reason));
                break;
            }
        }
    }
    let uncommitted = pending.len() as u64;
    pending.clear();
    Ok(Replayed {
        kept,
        records,
        uncommitted,
        bad_frame,
    })
}

/// Decodes the frame at the start of `bytes`: the record and the frame's length, or why the
/// bytes are not a whole, intact frame.
pub(crate) fn decode_frame(bytes: &[u8]) -> Result<(LogRecord, usize), String> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(format!(
            "short header ({} of {FRAME_HEADER_BYTES} bytes)",
            bytes.len()
        ));
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if len > RECORD_BYTES_MAX {
        return Err(format!("length {len} over the limit of {RECORD_BYTES_MAX}"));
    }
    let payload = &bytes[FRAME_HEADER_BYTES..];
    if payload.len() < len {
        return Err(format!(
            "short record ({} of {len} payload bytes)",
            payload.len()
        ));
    }
    let payload = &payload[..len];
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    let current = match postcard::take_from_bytes::<LogRecord>(payload) {
        Ok((record, [])) => return Ok((record, FRAME_HEADER_BYTES + len)),
        Ok((_, rest)) => format!("{} trailing bytes in the record", rest.len()),
        Err(e) => format!("undecodable record: {e}"),
    };
    // A record an earlier build wrote (see `crate::legacy`), or the current decode's error.
    crate::legacy::decode_record_legacy(payload)
        .map(|record| (record, FRAME_HEADER_BYTES + len))
        .ok_or(current)
}
