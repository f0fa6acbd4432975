//! Backups, restore, and recovery of a whole data dir across shard counts.

mod common;

use std::fs;
use std::path::Path;

use borealis_core::HostMode;
use borealis_core::TaskState;
use borealis_store::backup::{
    backup_name, list_backups, prune_backups, restore_backup, verify_backup, write_backup,
};
use borealis_store::image::{JobRevs, LogRecord, StateImage};
use borealis_store::wal::Wal;
use borealis_store::{install_shards, recover_all, shard_dirs, StoreError};
use common::{
    host_mode_set, image_of, interpret, job_created, key, quota_set, records, task, tree, Step,
};
use proptest::prelude::*;

/// A state with several jobs, so that any partition spreads them.
fn sample_state() -> StateImage {
    let mut steps = Vec::new();
    for job in 0..5 {
        steps.push(Step::CreateJob { job, instances: 3 });
        for instance in 0..3 {
            steps.push(Step::NewTask {
                job,
                instance,
                state: TaskState::Running as u8,
            });
        }
    }
    steps.push(Step::End { pick: 3 });
    for role in 0..6 {
        steps.push(Step::SetQuota {
            role,
            cpu: 4 * role + 1,
        });
    }
    for host in 0..6 {
        steps.push(Step::SetHostMode {
            host,
            mode: host % 3 + 1, // SCHEDULED, DRAINING, DRAINED
            deadline: host,
        });
    }
    steps.push(Step::Update {
        pick: 7,
        state: TaskState::Killing as u8,
        text: 9,
    });
    // Revisions and updates, which move with their jobs.
    for job in 0..5 {
        steps.push(Step::Revise {
            job,
            grow: job,
            keep: 0b101,
        });
        for pick in [0, 6, 1, 4] {
            steps.push(Step::SaveUpdate { job, pick });
        }
    }
    let image = image_of(&interpret(&steps));
    assert!(image.jobs.len() == 5 && image.tasks.len() >= 15 && image.quotas.len() == 6);
    assert_eq!(image.hosts.len(), 6);
    assert!(image
        .jobs
        .values()
        .all(|j| j.revs.head > 0 && !j.revs.others.is_empty() && !j.updates.is_empty()));
    image
}

#[test]
fn backup_names_are_interval_aligned_utc() {
    let cases = [
        (1_795_687_200_000, 3_600_000, "backup-2026-11-26T10-00-00Z"),
        (
            1_795_687_200_000 + 3_599_999,
            3_600_000,
            "backup-2026-11-26T10-00-00Z",
        ),
        (
            1_795_687_200_000 + 3_600_000,
            3_600_000,
            "backup-2026-11-26T11-00-00Z",
        ),
        (0, 0, "backup-1970-01-01T00-00-00Z"),
        (951_782_400_000, 60_000, "backup-2000-02-29T00-00-00Z"),
        (4_102_444_799_000, 0, "backup-2099-12-31T23-59-59Z"),
    ];
    for (unix_ms, interval_ms, expected) in cases {
        assert_eq!(
            backup_name(unix_ms, interval_ms),
            expected,
            "{unix_ms} / {interval_ms}"
        );
    }
}

fn write_all_shards(backup_dir: &Path, name: &str, image: &StateImage, shards: usize) {
    for (i, part) in image.clone().partition(shards).iter().enumerate() {
        write_backup(backup_dir, name, i, part).unwrap();
    }
}

#[test]
fn write_list_prune_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    assert!(list_backups(&backups).unwrap().is_empty());
    let state = sample_state();
    let hour = 3_600_000;
    let names: Vec<String> = (0..4)
        .map(|h| backup_name(1_795_687_200_000 + h * hour, hour))
        .collect();
    for name in &names {
        write_all_shards(&backups, name, &state, 3);
    }
    fs::write(backups.join("not-a-backup"), b"ignored").unwrap();
    let listed = list_backups(&backups).unwrap();
    let listed_names: Vec<&str> = listed.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        listed_names,
        names.iter().rev().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(listed.iter().all(|b| b.shards == 3 && b.bytes > 0));

    let images = verify_backup(&backups, &names[3]).unwrap();
    assert_eq!(StateImage::merge(images), state);

    let removed = prune_backups(&backups, 2).unwrap();
    assert_eq!(removed, vec![names[1].clone(), names[0].clone()]);
    let left: Vec<String> = list_backups(&backups)
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(left, vec![names[3].clone(), names[2].clone()]);
    assert!(backups.join("not-a-backup").exists());
}

#[test]
fn verify_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let name = backup_name(1_795_687_200_000, 0);
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "flipped byte",
            |f| {
                let mut b = fs::read(f.join("shard-1.snapshot")).unwrap();
                let last = b.len() - 1;
                b[last] ^= 4;
                fs::write(f.join("shard-1.snapshot"), b).unwrap();
            },
            "shard-1.snapshot: checksum mismatch",
        ),
        (
            "missing middle shard",
            |f| fs::remove_file(f.join("shard-1.snapshot")).unwrap(),
            "shard-1.snapshot is missing",
        ),
        (
            "no shard files",
            |f| {
                for i in 0..3 {
                    fs::remove_file(f.join(format!("shard-{i}.snapshot"))).unwrap();
                }
            },
            "no shard files",
        ),
    ];
    for (case, damage, expected) in cases {
        let _ = fs::remove_dir_all(&backups);
        write_all_shards(&backups, &name, &sample_state(), 3);
        damage(&backups.join(&name));
        let err = verify_backup(&backups, &name).unwrap_err();
        assert!(
            matches!(err, StoreError::BadBackup { .. }) && err.to_string().contains(expected),
            "{case}: {err}"
        );
    }
    assert!(verify_backup(&backups, "backup-none").is_err());
    assert!(matches!(
        verify_backup(&backups, "../etc"),
        Err(StoreError::Invalid(_))
    ));
    assert!(write_backup(&backups, "backup-../../x", 0, &StateImage::default()).is_err());
}

/// A data dir of `shards` shards holding `state`, each shard with a snapshot and some log.
fn data_dir_with(data: &Path, state: &StateImage, shards: usize) {
    for (i, part) in state.clone().partition(shards).into_iter().enumerate() {
        let dir = data.join(format!("shard-{i}"));
        let (mut wal, _) = Wal::open(&dir).unwrap();
        // Half the jobs by snapshot, the rest by log records.
        let (by_snapshot, by_log): (Vec<_>, Vec<_>) = part
            .jobs
            .keys()
            .cloned()
            .enumerate()
            .partition(|(n, _)| n % 2 == 0);
        let mut snap = part.clone();
        for (_, k) in &by_log {
            snap.apply(&LogRecord::JobRemoved { key: k.clone() })
                .unwrap();
        }
        drop(by_snapshot);
        wal.snapshot(&snap).unwrap();
        for (_, k) in &by_log {
            let job = &part.jobs[k];
            wal.append(&LogRecord::JobCreated {
                key: k.clone(),
                instances: job.instances,
                config: job.config.clone(),
            });
            // Revisions wide enough for every task's, ended ones' too (they may run revisions
            // the job has dropped since); the exact ones once the tasks are in.
            let mut wide = job.revs.clone();
            for t in part.tasks.values().filter(|t| t.job == *k) {
                if !wide.knows(t.rev) {
                    wide.others.insert(t.rev, job.config.clone());
                }
            }
            let revised = |revs: JobRevs| LogRecord::JobRevised {
                key: k.clone(),
                instances: job.instances,
                config: job.config.clone(),
                revs,
            };
            wal.append(&revised(wide));
            for t in part.tasks.values().filter(|t| t.job == *k) {
                if t.state.is_terminal() && job.current[t.instance as usize] == Some(t.id) {
                    // Terminal and still current: it got there by being live first.
                    let mut live = t.clone();
                    live.state = TaskState::Running;
                    wal.append(&LogRecord::TaskUpserted(live));
                }
                wal.append(&LogRecord::TaskUpserted(t.clone()));
            }
            for id in &job.history {
                wal.append(&LogRecord::TaskEnded { id: *id });
            }
            wal.append(&revised(job.revs.clone()));
            for update in &job.updates {
                wal.append(&LogRecord::UpdateSaved {
                    key: k.clone(),
                    update: update.clone(),
                });
            }
        }
        wal.commit().unwrap();
    }
}

#[test]
fn restore_replaces_the_data_dir_and_recovery_repartitions() {
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let data = tmp.path().join("data");
    let old_state = image_of(&[
        job_created(&key(40), 1),
        LogRecord::TaskUpserted(task(900, &key(40), 0, TaskState::Pending)),
    ]);
    data_dir_with(&data, &old_state, 2);
    let state = sample_state();
    let name = backup_name(1_795_687_200_000, 0);
    write_all_shards(&backups, &name, &state, 3);

    let report = restore_backup(&backups, &name, &data).unwrap();
    assert_eq!(
        (
            report.shards,
            report.jobs,
            report.tasks,
            report.quotas,
            report.hosts
        ),
        (
            3,
            state.jobs.len(),
            state.tasks.len(),
            state.quotas.len(),
            state.hosts.len()
        )
    );
    let replaced = report.replaced.expect("the old dirs were kept");
    assert!(replaced.join("shard-0").is_dir() && replaced.join("shard-1").is_dir());
    assert_eq!(shard_dirs(&data).unwrap().len(), 3);

    // Restart with 2 shards: merged, re-partitioned, and shard-2 is gone.
    let (images, recoveries) = recover_all(&data, 2).unwrap();
    assert_eq!(recoveries.len(), 3);
    assert_eq!(images, state.clone().partition(2));
    assert_eq!(
        shard_dirs(&data)
            .unwrap()
            .iter()
            .map(|(i, _)| *i)
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            &Wal::open(&data.join(format!("shard-{i}"))).unwrap().1.image,
            image
        );
    }
    // Already partitioned: recovering again changes nothing on disk.
    let before = tree(&data);
    let (again, _) = recover_all(&data, 2).unwrap();
    assert_eq!(again, images);
    assert_eq!(tree(&data), before);
}

#[test]
fn restoring_a_bad_backup_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let backups = tmp.path().join("backups");
    let data = tmp.path().join("data");
    data_dir_with(&data, &sample_state(), 2);
    let name = backup_name(1_795_687_200_000, 0);
    write_all_shards(&backups, &name, &sample_state(), 3);
    let file = backups.join(&name).join("shard-2.snapshot");
    let mut bytes = fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 3);
    fs::write(&file, bytes).unwrap();
    let before = tree(&data);
    let err = restore_backup(&backups, &name, &data).unwrap_err();
    assert!(err.to_string().contains("shard-2.snapshot"), "{err}");
    assert_eq!(tree(&data), before);
}

#[test]
fn recover_all_of_an_empty_or_missing_data_dir_is_fresh() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("never-created");
    let (images, recoveries) = recover_all(&data, 4).unwrap();
    assert_eq!(images, vec![StateImage::default(); 4]);
    assert!(recoveries.is_empty());
    assert_eq!(shard_dirs(&data).unwrap().len(), 4);
    assert!(matches!(recover_all(&data, 0), Err(StoreError::Invalid(_))));
}

/// A crash in the middle of an install: after the commit point recovery rolls it forward
/// (wherever it stopped), before it recovery drops it and the old state stands.
#[test]
fn interrupted_install_rolls_forward_once_committed() {
    let state = sample_state();
    let new_state = image_of(&[job_created(&key(77), 2)]);
    for moved_in in 0..=3 {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir_with(&data, &state, 3);
        // What install_shards leaves at its commit point, then `moved_in` dirs already swapped.
        let ready = data.join("install.ready");
        let parts = new_state.clone().partition(2);
        for (i, part) in parts.iter().enumerate() {
            Wal::create_fresh(&ready.join(format!("shard-{i}")), part).unwrap();
        }
        fs::write(ready.join("MANIFEST"), "shards=2\nreplaced=\n").unwrap();
        fs::create_dir_all(data.join("install.trash")).unwrap();
        for i in 0..moved_in.min(2) {
            let name = format!("shard-{i}");
            fs::rename(data.join(&name), data.join("install.trash").join(&name)).unwrap();
            fs::rename(ready.join(&name), data.join(&name)).unwrap();
        }
        if moved_in == 3 {
            fs::rename(
                data.join("shard-2"),
                data.join("install.trash").join("shard-2"),
            )
            .unwrap();
        }
        let (images, _) = recover_all(&data, 2).unwrap();
        assert_eq!(StateImage::merge(images), new_state, "moved_in {moved_in}");
        assert!(!ready.exists() && !data.join("install.trash").exists());
        assert_eq!(shard_dirs(&data).unwrap().len(), 2);
    }

    // Before the commit point: the staging dir is dropped and the old state stands.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_dir_with(&data, &state, 3);
    Wal::create_fresh(&data.join("install.staging").join("shard-0"), &new_state).unwrap();
    let (images, _) = recover_all(&data, 3).unwrap();
    assert_eq!(StateImage::merge(images), state);
    assert!(!data.join("install.staging").exists());
}

/// Quotas move with the shard count: each role's quota ends on shard
/// `route_hash_str(role) % shards`, from 1 shard to 3 and back, by log and by snapshot.
#[test]
fn quotas_are_repartitioned_by_role() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let roles: Vec<String> = (0..12).map(|i| format!("role{i}")).collect();
    // One shard: the jobs and half of the quotas in its snapshot, the others in its log.
    let mut whole = sample_state();
    let (mut wal, _) = Wal::open(&data.join("shard-0")).unwrap();
    for (i, role) in roles.iter().enumerate() {
        if i == 6 {
            wal.snapshot(&whole).unwrap();
        }
        let record = quota_set(role, 100 * i as u32 + 100);
        whole.apply(&record).unwrap();
        wal.append(&record);
        wal.commit().unwrap();
    }
    drop(wal);
    assert_eq!(whole.quotas.len(), 12);

    for shards in [3usize, 1, 3, 2, 1] {
        let (images, _) = recover_all(&data, shards).unwrap();
        assert_eq!(images.len(), shards);
        for (i, image) in images.iter().enumerate() {
            for role in image.quotas.keys() {
                assert_eq!(
                    borealis_store::image::shard_of_role(role, shards),
                    i,
                    "{role} on shard {i} of {shards}"
                );
                assert_eq!(
                    (borealis_core::route_hash_str(role) % shards as u64) as usize,
                    i
                );
            }
        }
        assert_eq!(StateImage::merge(images.clone()), whole, "{shards} shards");
        // What is on disk is that partition.
        for (i, image) in images.iter().enumerate() {
            assert_eq!(
                &Wal::open(&data.join(format!("shard-{i}"))).unwrap().1.image,
                image
            );
        }
        if shards == 3 {
            assert!(
                images.iter().filter(|i| !i.quotas.is_empty()).count() > 1,
                "12 roles spread over 3 shards"
            );
        }
    }
}

/// Host maintenance entries move with the shard count like quotas: each host's entry ends on
/// shard `route_hash_str(host) % shards`, by log and by snapshot; backups carry them.
#[test]
fn hosts_are_repartitioned_by_host_name_and_backed_up() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hosts: Vec<String> = (0..12).map(|i| format!("host{i}.example.com")).collect();
    let mut whole = sample_state();
    let (mut wal, _) = Wal::open(&data.join("shard-0")).unwrap();
    for (i, host) in hosts.iter().enumerate() {
        if i == 6 {
            wal.snapshot(&whole).unwrap();
        }
        let mode = [HostMode::Scheduled, HostMode::Draining, HostMode::Drained][i % 3];
        let record = host_mode_set(host, mode, 1000 * i as u64);
        whole.apply(&record).unwrap();
        wal.append(&record);
        wal.commit().unwrap();
    }
    drop(wal);
    assert_eq!(whole.hosts.len(), 12 + 6);

    for shards in [3usize, 1, 4, 2] {
        let (images, _) = recover_all(&data, shards).unwrap();
        for (i, image) in images.iter().enumerate() {
            for host in image.hosts.keys() {
                assert_eq!(
                    (borealis_core::route_hash_str(host) % shards as u64) as usize,
                    i,
                    "{host} on shard {i} of {shards}"
                );
            }
        }
        assert_eq!(StateImage::merge(images.clone()), whole, "{shards} shards");
        for (i, image) in images.iter().enumerate() {
            assert_eq!(
                &Wal::open(&data.join(format!("shard-{i}"))).unwrap().1.image,
                image
            );
        }
        if shards > 1 {
            assert!(
                images.iter().filter(|i| !i.hosts.is_empty()).count() > 1,
                "18 hosts spread over {shards} shards"
            );
        }
    }

    // A backup of the 2-shard state carries the hosts; restored, they come back for 3.
    let (images, _) = recover_all(&data, 2).unwrap();
    let backups = tmp.path().join("backups");
    let name = backup_name(1_795_687_200_000, 0);
    for (i, part) in images.iter().enumerate() {
        write_backup(&backups, &name, i, part).unwrap();
    }
    let verified = verify_backup(&backups, &name).unwrap();
    assert_eq!(verified, images);
    let restored = tmp.path().join("restored");
    let report = restore_backup(&backups, &name, &restored).unwrap();
    assert_eq!(report.hosts, 18);
    let (images, _) = recover_all(&restored, 3).unwrap();
    assert_eq!(StateImage::merge(images), whole);
}

#[test]
fn conflicting_host_modes_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let drain = |deadline| image_of(&[host_mode_set("h1", HostMode::Draining, deadline)]);
    Wal::create_fresh(&data.join("shard-0"), &drain(1)).unwrap();
    Wal::create_fresh(&data.join("shard-1"), &drain(2)).unwrap();
    let err = recover_all(&data, 2).unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)) && err.to_string().contains("host h1"),
        "{err}"
    );
    // Identical copies merge.
    Wal::create_fresh(&data.join("shard-1"), &drain(1)).unwrap();
    let (images, _) = recover_all(&data, 2).unwrap();
    assert_eq!(StateImage::merge(images), drain(1));
}

#[test]
fn conflicting_quotas_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    Wal::create_fresh(&data.join("shard-0"), &image_of(&[quota_set("www", 1)])).unwrap();
    Wal::create_fresh(&data.join("shard-1"), &image_of(&[quota_set("www", 2)])).unwrap();
    let err = recover_all(&data, 2).unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)) && err.to_string().contains("role www"),
        "{err}"
    );
    // Identical copies merge.
    Wal::create_fresh(&data.join("shard-1"), &image_of(&[quota_set("www", 1)])).unwrap();
    let (images, _) = recover_all(&data, 2).unwrap();
    assert_eq!(StateImage::merge(images), image_of(&[quota_set("www", 1)]));
}

#[test]
fn conflicting_copies_of_a_job_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let a = key(0);
    Wal::create_fresh(&data.join("shard-0"), &image_of(&[job_created(&a, 1)])).unwrap();
    Wal::create_fresh(&data.join("shard-1"), &image_of(&[job_created(&a, 2)])).unwrap();
    let err = recover_all(&data, 2).unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(_)) && err.to_string().contains(&a.to_string()),
        "{err}"
    );
    // Identical copies (a crash during a roll forward) merge.
    Wal::create_fresh(&data.join("shard-1"), &image_of(&[job_created(&a, 1)])).unwrap();
    let (images, _) = recover_all(&data, 2).unwrap();
    assert_eq!(StateImage::merge(images), image_of(&[job_created(&a, 1)]));
}

#[test]
fn install_shards_keeps_the_replaced_dirs_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    data_dir_with(&data, &sample_state(), 2);
    let kept = install_shards(&data, &[StateImage::default()], Some("replaced-1")).unwrap();
    assert_eq!(kept, Some(data.join("replaced-1")));
    assert!(data.join("replaced-1/shard-0").is_dir() && data.join("replaced-1/shard-1").is_dir());
    assert_eq!(shard_dirs(&data).unwrap().len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Any state, written for any shard count, recovers for any other as its partition.
    #[test]
    fn recover_all_across_shard_counts(records in records(60), from in 1usize..5, to in 1usize..5) {
        let state = image_of(&records);
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        data_dir_with(&data, &state, from);
        let (images, _) = recover_all(&data, to).unwrap();
        prop_assert_eq!(images, state.partition(to));
    }
}
