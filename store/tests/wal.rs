//! The log: group commit, reopening, torn tails, bit flips, snapshot fallback, corruption.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use borealis_core::update::UpdateStatus;
use borealis_core::{HostMode, TaskId, TaskState};
use borealis_store::files::{segment_name, snapshot_name};
use borealis_store::image::{HostImage, LogRecord, StateImage};
use borealis_store::wal::{Wal, COMMIT_FRAME_BYTES, FRAME_HEADER_BYTES, RECORD_BYTES_MAX};
use borealis_store::StoreError;
use common::{
    host_mode_set, image_of, job_created, job_revised, job_update, key, quota, quota_set, records,
    service_config, task, update_saved, with_status,
};
use proptest::prelude::*;
use proptest::sample::Index;

fn open(dir: &Path) -> (Wal, borealis_store::wal::Recovery) {
    Wal::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

/// The segments of a shard dir, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("log-"))
        .collect();
    segs.sort();
    segs
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn flip_bit(path: &Path, bit: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
    fs::write(path, bytes).unwrap();
}

/// Writes each round with one commit; returns each round's byte range (its records and its
/// commit marker) in the last segment.
fn write_rounds(wal: &mut Wal, rounds: &[&[LogRecord]]) -> Vec<(u64, u64)> {
    let mut start = fs::metadata(wal.segment_path()).unwrap().len();
    rounds
        .iter()
        .map(|round| {
            for r in *round {
                wal.append(r);
            }
            let end = start + wal.commit().unwrap();
            let range = (start, end);
            start = end;
            range
        })
        .collect()
}

/// Writes `records`, committing each one alone (a round of one record); returns each round's
/// byte range in the (single, last) segment.
fn write_one_by_one(wal: &mut Wal, records: &[LogRecord]) -> Vec<(u64, u64)> {
    let rounds: Vec<&[LogRecord]> = records.chunks(1).collect();
    write_rounds(wal, &rounds)
}

/// Splits `records` into non-empty rounds: a round ends after record `i` when `ends[i]` (and
/// after the last record).
fn split_rounds<'a>(records: &'a [LogRecord], ends: &[bool]) -> Vec<&'a [LogRecord]> {
    let mut rounds = Vec::new();
    let mut start = 0;
    for i in 0..records.len() {
        if ends[i % ends.len()] || i + 1 == records.len() {
            rounds.push(&records[start..=i]);
            start = i + 1;
        }
    }
    rounds
}

/// The frames of a segment file: start offset, end offset and record, in order.
fn frames(path: &Path) -> Vec<(u64, u64, LogRecord)> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let end = at + FRAME_HEADER_BYTES + len;
        let record: LogRecord = postcard::from_bytes(&bytes[at + FRAME_HEADER_BYTES..end]).unwrap();
        out.push((at as u64, end as u64, record));
        at = end;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// (a) Whatever the records, commit points and snapshots, reopening gives exactly the
    /// image of the records committed (records appended after the last commit are not).
    #[test]
    fn reopen_gives_the_committed_image(
        records in records(60),
        commits in proptest::collection::vec(any::<bool>(), 60),
        snapshots in proptest::collection::vec(0u8..10, 60),
        final_commit in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        let (mut wal, recovery) = open(&dir);
        prop_assert_eq!(recovery.image, StateImage::default());
        let mut image = StateImage::default();
        let mut durable = StateImage::default();
        for (i, record) in records.iter().enumerate() {
            wal.append(record);
            image.apply(record).unwrap();
            if snapshots[i % snapshots.len()] == 0 {
                wal.snapshot(&image).unwrap();
                durable = image.clone();
            } else if commits[i % commits.len()] {
                wal.commit().unwrap();
                durable = image.clone();
            }
        }
        if final_commit {
            wal.commit().unwrap();
            durable = image.clone();
        }
        drop(wal);
        let (mut wal, recovery) = open(&dir);
        prop_assert!(recovery.cut.is_none());
        prop_assert_eq!(&recovery.image, &durable);
        // At most two snapshots are kept.
        prop_assert!(names(&dir).iter().filter(|n| n.starts_with("snapshot-")).count() <= 2);
        // The reopened log appends after what it recovered.
        let extra = job_created(&key(99), 1);
        wal.append(&extra);
        wal.commit().unwrap();
        drop(wal);
        let mut expected = durable;
        expected.apply(&extra).unwrap();
        prop_assert_eq!(open(&dir).1.image, expected);
    }

    /// (b) Truncating the last segment at any byte recovers the image of the rounds whose
    /// commit marker lies wholly before the cut (never part of a round), never an error, and
    /// the log goes on from there.
    #[test]
    fn torn_tail_at_any_offset(
        records in records(30),
        ends in proptest::collection::vec(proptest::bool::weighted(0.3), 30),
        snapshot_after in any::<Index>(),
        cut in any::<Index>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        let (mut wal, _) = open(&dir);
        // Part of the records go before a snapshot, so the last segment is not the first.
        let split = snapshot_after.index(records.len() + 1);
        let before = image_of(&records[..split]);
        for r in &records[..split] {
            wal.append(r);
        }
        wal.snapshot(&before).unwrap();
        let rounds = split_rounds(&records[split..], &ends);
        let ranges = write_rounds(&mut wal, &rounds);
        let segment = wal.segment_path();
        drop(wal);
        let len = fs::metadata(&segment).unwrap().len();
        let at = cut.index(len as usize + 1) as u64;
        OpenOptions::new().write(true).open(&segment).unwrap().set_len(at).unwrap();

        let whole = ranges.iter().take_while(|(_, end)| *end <= at).count();
        let kept = if whole == 0 { 0 } else { ranges[whole - 1].1 };
        let whole_records: usize = rounds[..whole].iter().map(|r| r.len()).sum();
        let mut expected = before;
        for r in rounds[..whole].iter().copied().flatten() {
            expected.apply(r).unwrap();
        }
        let (mut wal, recovery) = open(&dir);
        prop_assert_eq!(&recovery.image, &expected);
        let boundary = at == kept;
        prop_assert_eq!(recovery.cut.is_some(), !boundary, "cut: {:?}", recovery.cut);
        prop_assert_eq!(recovery.records_replayed, whole_records as u64);
        prop_assert_eq!(fs::metadata(&segment).unwrap().len(), kept);
        prop_assert_eq!(wal.bytes_since_snapshot(), kept);
        let extra = job_created(&key(99), 1);
        wal.append(&extra);
        wal.commit().unwrap();
        drop(wal);
        expected.apply(&extra).unwrap();
        let reopened = open(&dir).1;
        prop_assert!(reopened.cut.is_none());
        prop_assert_eq!(reopened.image, expected);
    }

    /// (c) Flipping any single bit of a round (a record or its commit marker) in the last
    /// segment drops that whole round and every round after it: only that round when it is
    /// the last one.
    #[test]
    fn bit_flip_in_a_round_drops_that_whole_round(
        records in records(30),
        ends in proptest::collection::vec(proptest::bool::weighted(0.3), 30),
        round in any::<Index>(),
        bit in any::<Index>(),
        last_round in any::<bool>(),
    ) {
        prop_assume!(!records.is_empty());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        let (mut wal, _) = open(&dir);
        let rounds = split_rounds(&records, &ends);
        let ranges = write_rounds(&mut wal, &rounds);
        let segment = wal.segment_path();
        drop(wal);
        let hit = if last_round { rounds.len() - 1 } else { round.index(rounds.len()) };
        let (start, end) = ranges[hit];
        flip_bit(&segment, start * 8 + bit.index(((end - start) * 8) as usize) as u64);
        let recovery = open(&dir).1;
        let kept: Vec<LogRecord> = rounds[..hit].iter().copied().flatten().cloned().collect();
        prop_assert_eq!(recovery.image, image_of(&kept));
        prop_assert_eq!(recovery.records_replayed, kept.len() as u64);
        prop_assert!(recovery.cut.is_some());
        prop_assert_eq!(fs::metadata(&segment).unwrap().len(), start);
    }
}

/// Each way a tail can be damaged, and the reason recovery gives for cutting it. These are the
/// rare branches of the frame decoder, named one by one.
#[test]
fn tail_damage_is_cut_with_its_reason() {
    let a = key(0);
    let good = vec![
        job_created(&a, 1),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Pending)),
    ];
    let frame = |payload: &[u8], crc: u32| {
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(payload);
        f
    };
    type Damage = Box<dyn Fn(&mut Vec<u8>, u64)>;
    let set_u32 = |at: u64, v: u32| -> Damage {
        Box::new(move |b: &mut Vec<u8>, start: u64| {
            let i = (start + at) as usize;
            b[i..i + 4].copy_from_slice(&v.to_le_bytes());
        })
    };
    let valid_payload = postcard::to_stdvec(&LogRecord::TaskEnded { id: TaskId(7) }).unwrap();
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "short header",
            Box::new(|b, start| b.truncate(start as usize + 5)),
            "short header",
        ),
        (
            "short payload",
            Box::new(|b, _| {
                b.pop();
            }),
            "short record",
        ),
        (
            "length over the limit",
            set_u32(0, RECORD_BYTES_MAX as u32 + 1),
            "over the limit",
        ),
        (
            "length grown past the end",
            set_u32(0, 1000),
            "short record",
        ),
        (
            "length shrunk",
            Box::new(|b, start| {
                let i = start as usize;
                let len = u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
                b[i..i + 4].copy_from_slice(&(len - 1).to_le_bytes());
            }),
            "checksum mismatch",
        ),
        (
            "crc flipped",
            Box::new(|b, start| b[start as usize + 4] ^= 0x80),
            "checksum mismatch",
        ),
        (
            "payload flipped",
            Box::new(|b, _| *b.last_mut().unwrap() ^= 1),
            "checksum mismatch",
        ),
        (
            "zeroed tail (preallocated space)",
            Box::new(|b, _| b.extend_from_slice(&[0; 16])),
            "undecodable record",
        ),
        (
            "garbage with a valid checksum",
            Box::new(move |b, _| b.extend(frame(&[0xff; 9], crc32c::crc32c(&[0xff; 9])))),
            "undecodable record",
        ),
        (
            "valid record plus trailing bytes",
            Box::new({
                let mut p = valid_payload.clone();
                p.push(0);
                move |b, _| b.extend(frame(&p, crc32c::crc32c(&p)))
            }),
            "trailing bytes",
        ),
        (
            // Intact, but never committed: not applied (it would not apply), and cut.
            "valid record without its commit marker",
            Box::new({
                let p = valid_payload.clone();
                move |b, _| b.extend(frame(&p, crc32c::crc32c(&p)))
            }),
            "uncommitted round of 1 record",
        ),
        (
            "the last round's marker cut short",
            Box::new(|b, _| b.truncate(b.len() - 3)),
            "uncommitted round of 1 record, ended by short header",
        ),
    ];
    for (name, damage, reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        let (mut wal, _) = open(&dir);
        let ranges = write_one_by_one(&mut wal, &good);
        let segment = wal.segment_path();
        drop(wal);
        let mut bytes = fs::read(&segment).unwrap();
        let (start, _) = ranges[1];
        damage(&mut bytes, start);
        fs::write(&segment, &bytes).unwrap();
        let recovery = Wal::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}")).1;
        let cut = recovery
            .cut
            .unwrap_or_else(|| panic!("{name}: nothing cut"));
        assert!(
            cut.contains(reason) && cut.contains("log-"),
            "{name}: {cut}"
        );
        // Appended bytes are cut at the end of the last commit marker; damage to the last
        // round (its record or its marker) cuts that whole round, at its start.
        let kept = if fs::metadata(&segment).unwrap().len() == ranges[1].1 {
            2
        } else {
            1
        };
        assert_eq!(recovery.image, image_of(&good[..kept]), "{name}");
    }
}

#[test]
fn commit_is_one_write_per_round_and_nothing_pending_is_no_io() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let (mut wal, _) = open(&dir);
    assert_eq!(wal.commit().unwrap(), 0);
    let a = key(0);
    wal.append(&job_created(&a, 3));
    for i in 0..3 {
        wal.append(&LogRecord::TaskUpserted(task(
            i + 1,
            &a,
            i as u32,
            TaskState::Pending,
        )));
    }
    let pending = wal.pending_bytes() as u64;
    assert_eq!(wal.commit().unwrap(), pending);
    assert_eq!(fs::metadata(wal.segment_path()).unwrap().len(), pending);
    assert_eq!(wal.bytes_since_snapshot(), pending);
    // The round's four records, then one commit marker ending the file.
    let written = frames(&wal.segment_path());
    assert_eq!(written.len(), 5);
    let (start, end, marker) = written.last().unwrap();
    assert_eq!(*marker, LogRecord::Commit);
    assert_eq!((end - start) as usize, COMMIT_FRAME_BYTES);
    assert_eq!(*end, pending);
    assert_eq!(wal.commit().unwrap(), 0);
    // A caller's marker is ignored: it neither splits a round nor makes an empty one.
    wal.append(&LogRecord::Commit);
    assert_eq!(wal.pending_bytes(), 0);
    assert_eq!(wal.commit().unwrap(), 0);
    wal.snapshot(&open_image(&dir)).unwrap();
    assert_eq!(wal.bytes_since_snapshot(), 0);
}

fn open_image(dir: &Path) -> StateImage {
    // A second reader of the same dir, only to get the committed image for the snapshot.
    let mut image = StateImage::default();
    for seg in segments(dir) {
        let bytes = fs::read(seg).unwrap();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let record: LogRecord = postcard::from_bytes(&bytes[at + 8..at + 8 + len]).unwrap();
            image.apply(&record).unwrap();
            at += 8 + len;
        }
    }
    image
}

#[test]
fn an_oversized_record_fails_the_commit_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let (mut wal, _) = open(&dir);
    let a = key(0);
    wal.append(&job_created(&a, 1));
    let mut t = task(1, &a, 0, TaskState::Pending);
    t.message = "x".repeat(RECORD_BYTES_MAX + 1);
    wal.append(&LogRecord::TaskUpserted(t));
    let err = wal.commit().unwrap_err();
    assert!(matches!(err, StoreError::RecordTooLarge { .. }), "{err}");
    // Poisoned: nothing more is written, and what was pending in that round is not either.
    wal.append(&job_created(&key(1), 1));
    assert!(matches!(wal.commit(), Err(StoreError::Poisoned(_))));
    assert_eq!(fs::metadata(wal.segment_path()).unwrap().len(), 0);
}

/// Builds a dir with two snapshots and records before, between and after them; returns the
/// final image.
fn two_snapshots(dir: &Path) -> StateImage {
    let a = key(0);
    let b = key(1);
    let (mut wal, _) = open(dir);
    let mut image = StateImage::default();
    let log = |wal: &mut Wal, image: &mut StateImage, r: LogRecord| {
        image.apply(&r).unwrap();
        wal.append(&r);
        wal.commit().unwrap();
    };
    log(&mut wal, &mut image, job_created(&a, 2));
    log(
        &mut wal,
        &mut image,
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Pending)),
    );
    wal.snapshot(&image).unwrap(); // snapshot-2, log-2
    log(
        &mut wal,
        &mut image,
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Running)),
    );
    log(&mut wal, &mut image, job_created(&b, 1));
    wal.snapshot(&image).unwrap(); // snapshot-3, log-3
    log(
        &mut wal,
        &mut image,
        LogRecord::TaskUpserted(task(2, &b, 0, TaskState::Pending)),
    );
    image
}

/// A quota is durable: replayed from the log, carried by a snapshot, replaced by a later
/// record, and a task's preemptor goes with its image.
#[test]
fn quotas_and_preemptors_survive_replay_and_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let a = key(0);
    let (mut wal, _) = open(&dir);
    let mut preempted = task(1, &a, 0, TaskState::Preempting);
    preempted.preempted_by = Some(TaskId(0xabc));
    for r in [
        quota_set("www", 4000),
        job_created(&a, 1),
        LogRecord::TaskUpserted(preempted.clone()),
    ] {
        wal.append(&r);
    }
    wal.commit().unwrap();
    drop(wal);

    // Replayed from the log alone.
    let (mut wal, recovery) = open(&dir);
    assert_eq!(recovery.snapshot, None);
    assert_eq!(recovery.records_replayed, 3);
    let mut image = recovery.image;
    assert_eq!(image.quotas["www"], quota(4000));
    assert_eq!(image.tasks[&TaskId(1)].preempted_by, Some(TaskId(0xabc)));

    // Carried by a snapshot; a later record replaces it on top.
    wal.snapshot(&image).unwrap();
    let later = quota_set("www", 1500);
    image.apply(&later).unwrap();
    wal.append(&later);
    wal.append(&quota_set("batch", 0));
    image.apply(&quota_set("batch", 0)).unwrap();
    wal.commit().unwrap();
    let after_snapshot = wal.segment_path();
    drop(wal);
    let recovery = open(&dir).1;
    assert!(recovery.snapshot.is_some());
    assert_eq!(recovery.records_replayed, 2);
    assert_eq!(recovery.image, image);
    assert_eq!(recovery.image.quotas["www"], quota(1500));
    assert_eq!(recovery.image.quotas["batch"], quota(0));

    // The snapshot alone (the log after it cut off) still has the first quota.
    fs::write(&after_snapshot, b"").unwrap();
    let recovery = open(&dir).1;
    assert_eq!(recovery.image.quotas["www"], quota(4000));
    assert!(!recovery.image.quotas.contains_key("batch"));
    assert_eq!(
        recovery.image.tasks[&TaskId(1)].preempted_by,
        Some(TaskId(0xabc))
    );
}

#[test]
fn snapshot_keeps_the_previous_one_and_the_segments_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let image = two_snapshots(&dir);
    assert_eq!(
        names(&dir),
        vec![
            segment_name(2),
            segment_name(3),
            snapshot_name(2),
            snapshot_name(3)
        ]
    );
    let recovery = open(&dir).1;
    assert_eq!(recovery.image, image);
    assert_eq!(recovery.snapshot, Some(dir.join(snapshot_name(3))));
    assert_eq!(recovery.records_replayed, 1);
}

/// Each way the newest snapshot can be unusable: recovery falls back to the previous one,
/// replays the segments after it, and reaches the present.
#[test]
fn unusable_newest_snapshot_falls_back_to_the_previous_one() {
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "payload byte flipped",
            |p| flip_bit(p, 8 * 30),
            "checksum mismatch",
        ),
        (
            "truncated",
            |p| {
                let len = fs::metadata(p).unwrap().len();
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len - 1)
                    .unwrap();
            },
            "length mismatch",
        ),
        ("empty", |p| fs::write(p, b"").unwrap(), "short header"),
        ("bad magic", |p| flip_bit(p, 0), "bad magic"),
        (
            "unknown version",
            |p| flip_bit(p, 8 * 9),
            "unsupported version",
        ),
        (
            "length field flipped",
            |p| flip_bit(p, 8 * 12),
            "length mismatch",
        ),
    ];
    for (name, damage, reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard-0");
        let image = two_snapshots(&dir);
        damage(&dir.join(snapshot_name(3)));
        let recovery = Wal::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}")).1;
        assert_eq!(recovery.image, image, "{name}");
        assert_eq!(
            recovery.snapshot,
            Some(dir.join(snapshot_name(2))),
            "{name}"
        );
        assert_eq!(recovery.records_replayed, 3, "{name}");
        let skipped = recovery.skipped_snapshots.join(" ");
        assert!(
            skipped.contains(&snapshot_name(3)) && skipped.contains(reason),
            "{name}: {skipped}"
        );
        // The bad file is set aside, so the next snapshot's retention keeps the good one.
        assert!(
            dir.join(format!("{}.corrupt", snapshot_name(3))).exists(),
            "{name}"
        );
    }
}

#[test]
fn corrupt_non_last_segment_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    two_snapshots(&dir);
    // Fall back to snapshot-2, so that log-2 is replayed and is not the last segment.
    fs::write(dir.join(snapshot_name(3)), b"junk").unwrap();
    flip_bit(&dir.join(segment_name(2)), 8 * 10);
    let err = Wal::open(&dir).unwrap_err();
    match &err {
        StoreError::Corrupt {
            file,
            offset,
            reason,
        } => {
            assert_eq!(file, &dir.join(segment_name(2)));
            assert_eq!(*offset, 0);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(err.to_string().contains(&segment_name(2)), "{err}");
}

#[test]
fn missing_segment_or_snapshot_is_unrecoverable_not_silently_empty() {
    // A segment missing between the snapshot and the last one.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    two_snapshots(&dir);
    fs::write(dir.join(snapshot_name(3)), b"junk").unwrap();
    fs::remove_file(dir.join(segment_name(2))).unwrap();
    let err = Wal::open(&dir).unwrap_err();
    assert!(
        matches!(err, StoreError::Unrecoverable { .. })
            && err.to_string().contains(&segment_name(2)),
        "{err}"
    );

    // Every snapshot unusable and the log no longer starting at segment 1.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    two_snapshots(&dir);
    fs::write(dir.join(snapshot_name(2)), b"junk").unwrap();
    fs::write(dir.join(snapshot_name(3)), b"junk").unwrap();
    let err = Wal::open(&dir).unwrap_err();
    assert!(err.to_string().contains("no usable snapshot"), "{err}");

    // A fresh dir's log, with its only snapshot unusable, replays from segment 1.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let (mut wal, _) = open(&dir);
    let records = vec![job_created(&key(0), 1), job_created(&key(1), 1)];
    wal.append(&records[0]);
    wal.snapshot(&image_of(&records[..1])).unwrap();
    wal.append(&records[1]);
    wal.commit().unwrap();
    drop(wal);
    fs::write(dir.join(snapshot_name(2)), b"junk").unwrap();
    assert_eq!(open(&dir).1.image, image_of(&records));
}

#[test]
fn a_checksummed_record_that_does_not_apply_is_an_error_not_a_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let (mut wal, _) = open(&dir);
    wal.append(&job_created(&key(0), 1));
    wal.append(&LogRecord::TaskEnded { id: TaskId(42) });
    wal.commit().unwrap();
    drop(wal);
    let err = Wal::open(&dir).unwrap_err();
    match &err {
        StoreError::Apply {
            file,
            offset,
            source,
        } => {
            assert_eq!(file, &dir.join(segment_name(1)));
            assert!(*offset > 0);
            assert!(source.reason.contains("does not exist"), "{source}");
        }
        other => panic!("expected Apply, got {other}"),
    }
}

#[test]
fn create_fresh_replaces_everything_in_the_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    two_snapshots(&dir);
    let image = image_of(&[job_created(&key(5), 2)]);
    let mut wal = Wal::create_fresh(&dir, &image).unwrap();
    assert_eq!(names(&dir), vec![segment_name(4), snapshot_name(4)]);
    wal.append(&LogRecord::JobRemoved { key: key(5) });
    wal.commit().unwrap();
    drop(wal);
    assert_eq!(open(&dir).1.image, StateImage::default());
    // In an empty dir the first snapshot is numbered 2, never 1.
    let empty = tmp.path().join("shard-1");
    Wal::create_fresh(&empty, &image).unwrap();
    assert_eq!(names(&empty), vec![segment_name(2), snapshot_name(2)]);
    assert_eq!(open(&empty).1.image, image);
}

#[test]
fn leftover_temp_files_are_ignored_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let image = two_snapshots(&dir);
    fs::write(
        dir.join(format!("{}.tmp", snapshot_name(4))),
        b"half a snapshot",
    )
    .unwrap();
    let recovery = open(&dir).1;
    assert_eq!(recovery.image, image);
    assert!(!dir.join(format!("{}.tmp", snapshot_name(4))).exists());
}

/// A job's creation logs `JobCreated` and one `TaskUpserted` per instance in one round. A crash
/// that tears that round anywhere (between its records, inside one, inside its marker) must
/// not recover the job with only some of its tasks: the round is lost whole.
#[test]
fn a_round_cut_in_its_middle_loses_the_whole_round_never_part_of_it() {
    let a = key(0);
    let b = key(1);
    let first: Vec<LogRecord> = vec![
        job_created(&a, 1),
        LogRecord::TaskUpserted(task(1, &a, 0, TaskState::Pending)),
    ];
    let second: Vec<LogRecord> = vec![
        job_created(&b, 2),
        LogRecord::TaskUpserted(task(2, &b, 0, TaskState::Pending)),
        LogRecord::TaskUpserted(task(3, &b, 1, TaskState::Pending)),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let (mut wal, _) = open(&template);
    let ranges = write_rounds(&mut wal, &[&first, &second]);
    let segment = wal.segment_path();
    drop(wal);
    let bytes = fs::read(&segment).unwrap();
    let (round_start, round_end) = ranges[1];
    assert_eq!(round_start, ranges[0].1);
    // Frame boundaries inside the round: after JobCreated, after the first task, before the
    // marker. Each gives a cut that is only a missing marker, not a damaged frame.
    let boundaries: Vec<u64> = frames(&segment)
        .iter()
        .filter(|(start, end, _)| *start >= round_start && *end < round_end)
        .map(|(_, end, _)| *end)
        .collect();
    assert_eq!(boundaries.len(), 3, "{boundaries:?}");
    for at in round_start..=round_end {
        let dir = tmp.path().join(format!("cut-{at}"));
        fs::create_dir(&dir).unwrap();
        let seg = dir.join(segment.file_name().unwrap());
        fs::write(&seg, &bytes[..at as usize]).unwrap();
        let recovery = Wal::open(&dir)
            .unwrap_or_else(|e| panic!("cut at {at}: {e}"))
            .1;
        recovery.image.check_invariants().unwrap();
        if at == round_start {
            // Round one whole and nothing of round two: a clean end, nothing to cut.
            assert!(recovery.cut.is_none(), "cut at {at}: {:?}", recovery.cut);
            assert_eq!(recovery.image, image_of(&first));
            continue;
        }
        if at == round_end {
            assert!(recovery.cut.is_none(), "cut at {at}: {:?}", recovery.cut);
            let job = &recovery.image.jobs[&b];
            assert_eq!(job.current.iter().flatten().count(), 2);
            assert_eq!(recovery.records_replayed, 5);
            continue;
        }
        // Everything of round two is gone: the job as well as its tasks.
        assert_eq!(recovery.image, image_of(&first), "cut at {at}");
        assert!(!recovery.image.jobs.contains_key(&b), "cut at {at}");
        assert_eq!(recovery.records_replayed, 2, "cut at {at}");
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            round_start,
            "cut at {at}"
        );
        let cut = recovery
            .cut
            .unwrap_or_else(|| panic!("cut at {at}: nothing cut"));
        assert!(
            cut.contains(&format!("at offset {round_start}")),
            "cut at {at}: {cut}"
        );
        if let Some(n) = boundaries.iter().position(|&end| end == at) {
            let n = n + 1;
            let records = if n == 1 { "record" } else { "records" };
            assert!(
                cut.ends_with(&format!("uncommitted round of {n} {records}")),
                "cut at {at}: {cut}"
            );
        }
    }
}

#[test]
fn a_non_last_segment_without_a_final_marker_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    two_snapshots(&dir);
    // Fall back to snapshot-2, so that log-2 is replayed and is not the last segment.
    fs::write(dir.join(snapshot_name(3)), b"junk").unwrap();
    let log2 = dir.join(segment_name(2));
    let len = fs::metadata(&log2).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log2)
        .unwrap()
        .set_len(len - COMMIT_FRAME_BYTES as u64)
        .unwrap();
    // The unfinished round is the segment's last record, after the first round's marker.
    let written = frames(&log2);
    assert_eq!(written.len(), 3);
    assert_eq!(written[1].2, LogRecord::Commit);
    let unfinished = written[2].0;
    let err = Wal::open(&dir).unwrap_err();
    match &err {
        StoreError::Corrupt {
            file,
            offset,
            reason,
        } => {
            assert_eq!(file, &log2);
            assert_eq!(*offset, unfinished);
            assert!(reason.contains("after the last commit marker"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(err.to_string().contains(&segment_name(2)), "{err}");
    // Nothing was cut: an error leaves the files for the operator.
    assert_eq!(
        fs::metadata(&log2).unwrap().len(),
        len - COMMIT_FRAME_BYTES as u64
    );
}

/// Host maintenance is durable: replayed from the log, carried by a snapshot, replaced and
/// removed (NONE) by later records; a job's service fields go with its config.
#[test]
fn host_modes_and_service_configs_survive_replay_and_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let a = key(0);
    let service = LogRecord::JobCreated {
        key: a.clone(),
        instances: 2,
        config: service_config(&a),
    };
    let (mut wal, _) = open(&dir);
    for r in [
        host_mode_set("h1", HostMode::Scheduled, 0),
        service.clone(),
        host_mode_set("h2", HostMode::Draining, 1_800_000_000_000),
        host_mode_set("h3", HostMode::Drained, 0),
    ] {
        wal.append(&r);
    }
    wal.commit().unwrap();
    drop(wal);

    // Replayed from the log alone.
    let (mut wal, recovery) = open(&dir);
    assert_eq!(recovery.snapshot, None);
    assert_eq!(recovery.records_replayed, 4);
    let mut image = recovery.image;
    assert_eq!(image.hosts.len(), 3);
    assert_eq!(
        image.hosts["h2"],
        HostImage {
            mode: HostMode::Draining,
            drain_deadline_unix_ms: 1_800_000_000_000
        }
    );
    assert_eq!(image.jobs[&a].config, service_config(&a));

    // Carried by a snapshot; later records replace and remove on top.
    wal.snapshot(&image).unwrap();
    for r in [
        host_mode_set("h2", HostMode::Drained, 0),
        host_mode_set("h3", HostMode::None, 0),
    ] {
        image.apply(&r).unwrap();
        wal.append(&r);
    }
    wal.commit().unwrap();
    let after_snapshot = wal.segment_path();
    drop(wal);
    let recovery = open(&dir).1;
    assert!(recovery.snapshot.is_some());
    assert_eq!(recovery.records_replayed, 2);
    assert_eq!(recovery.image, image);
    assert_eq!(recovery.image.hosts["h2"].mode, HostMode::Drained);
    assert!(!recovery.image.hosts.contains_key("h3"));

    // The snapshot alone still has what it was taken with.
    fs::write(&after_snapshot, b"").unwrap();
    let recovery = open(&dir).1;
    assert_eq!(recovery.image.hosts["h2"].mode, HostMode::Draining);
    assert_eq!(recovery.image.hosts["h3"].mode, HostMode::Drained);
    assert_eq!(recovery.image.jobs[&a].config, service_config(&a));
}

/// Revisions, updates and task revisions are durable: replayed from the log (an update's
/// transient fields are not, and the image never holds them), carried by a snapshot, and
/// changed and pruned by later records; the borrowed task record carries `rev` too.
#[test]
fn revisions_and_updates_survive_replay_and_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard-0");
    let a = key(0);
    let (mut wal, _) = open(&dir);
    let mut on_1 = task(1, &a, 0, TaskState::Running);
    on_1.rev = 1;
    let mut on_0 = task(2, &a, 2, TaskState::Pending);
    on_0.rev = 0;
    let mut live = job_update(1, &a, 3, 1);
    live.watching = vec![Some(1), None, Some(3)];
    live.last_pulse_us = Some(99);
    let records = [
        job_created(&a, 2),
        job_revised(&a, 3, 1, &[0], &[(2, 0)]),
        LogRecord::TaskUpserted(on_1.clone()),
        update_saved(&a, live.clone()),
    ];
    let mut image = image_of(&records);
    for r in &records {
        wal.append(r);
    }
    wal.append_task(&borealis_store::image::TaskImageRef {
        id: on_0.id,
        job: &on_0.job,
        instance: on_0.instance,
        state: on_0.state,
        agent_name: None,
        hostname: None,
        failure_count: 0,
        consecutive_flaps: 0,
        exit_code: -1,
        message: "",
        ports: &[],
        sandbox: "",
        killed_by_user: false,
        preempted_by: None,
        rev: 0,
        usage: None,
    });
    image.apply(&LogRecord::TaskUpserted(on_0)).unwrap();
    wal.commit().unwrap();
    drop(wal);

    let (mut wal, recovery) = open(&dir);
    assert_eq!(recovery.records_replayed, 5);
    assert_eq!(recovery.image, image);
    let j = &recovery.image.jobs[&a];
    assert_eq!((j.revs.head, j.revs.desired(2), j.instances), (1, 0, 3));
    assert_eq!(j.updates[0].watching, Vec::<Option<u64>>::new());
    assert_eq!(j.updates[0].last_pulse_us, None);
    assert_eq!(recovery.image.tasks[&TaskId(2)].rev, 0);
    recovery.image.check_invariants().unwrap();

    // Carried by a snapshot; the update ends and is pruned on top.
    wal.snapshot(&image).unwrap();
    let done = with_status(job_update(1, &a, 3, 1), UpdateStatus::RolledForward);
    for r in [
        update_saved(&a, done),
        update_saved(&a, job_update(2, &a, 3, 1)),
        LogRecord::UpdateRemoved {
            key: a.clone(),
            id: 1,
        },
    ] {
        image.apply(&r).unwrap();
        wal.append(&r);
    }
    wal.commit().unwrap();
    let after_snapshot = wal.segment_path();
    drop(wal);
    let recovery = open(&dir).1;
    assert!(recovery.snapshot.is_some());
    assert_eq!(recovery.records_replayed, 3);
    assert_eq!(recovery.image, image);
    assert_eq!(recovery.image.jobs[&a].updates.len(), 1);
    assert_eq!(recovery.image.jobs[&a].updates[0].id, 2);

    // The snapshot alone still has the first update, active.
    fs::write(&after_snapshot, b"").unwrap();
    let recovery = open(&dir).1;
    let j = &recovery.image.jobs[&a];
    assert_eq!(j.updates.len(), 1);
    assert_eq!(j.updates[0].status, live.status);
    assert_eq!(j.revs.others.keys().copied().collect::<Vec<_>>(), vec![0]);
}
