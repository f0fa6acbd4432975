//! The embedded store: group-commit throughput of the write-ahead log (records per second,
//! each commit one write and one fsync), and recovery time (log replay, and snapshot load)
//! for 1,000,000 tasks. Each measurement checks what it wrote reads back before it is timed.

use std::time::{Duration, Instant};

use borealis_core::{JobKey, Resources, TaskConfig, TaskId, TaskState, Tier};
use borealis_store::image::{LogRecord, StateImage, TaskImage};
use borealis_store::wal::Wal;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INSTANCES_PER_JOB: u32 = 100;

fn config(key: &JobKey) -> TaskConfig {
    TaskConfig {
        job: key.clone(),
        command: "while true; do sleep 1; done".into(),
        resources: Resources {
            cpu_millis: 250,
            ram_mib: 256,
            disk_mib: 128,
            ports: 0,
        },
        port_names: vec![],
        constraints: vec![],
        tier: Tier::Preferred,
        priority: 0,
        production: false,
        is_service: true,
        max_task_failures: 1,
        finalization_wait_secs: 30,
        health_check: None,
        http_lifecycle: None,
        sla_policy: None,
        partition_policy: None,
    }
}

fn job_key(j: u32) -> JobKey {
    JobKey::new("bench", "prod", &format!("job{j}")).expect("valid key")
}

fn task(job: &JobKey, id: u64, instance: u32, state: TaskState) -> TaskImage {
    TaskImage {
        id: TaskId(id),
        job: job.clone(),
        instance,
        state,
        agent_name: Some(format!("agent{}", id % 10_000)),
        hostname: Some(format!("host{}", id % 10_000)),
        failure_count: 0,
        consecutive_flaps: 0,
        exit_code: -1,
        message: String::new(),
        ports: vec![],
        sandbox: format!(
            "/var/lib/borealis/sandboxes/bench.prod.{}/{instance}/{id:016x}",
            job.name
        ),
        killed_by_user: false,
        preempted_by: None,
        rev: 0,
        usage: None,
    }
}

/// The records a shard logs for `tasks` tasks created and brought to RUNNING.
fn records(tasks: u32) -> Vec<LogRecord> {
    let mut out = Vec::with_capacity(tasks as usize * 2 + 64);
    for j in 0..tasks.div_ceil(INSTANCES_PER_JOB) {
        let key = job_key(j);
        out.push(LogRecord::JobCreated {
            key: key.clone(),
            instances: INSTANCES_PER_JOB,
            config: config(&key),
        });
        for i in 0..INSTANCES_PER_JOB {
            let id = u64::from(j) * u64::from(INSTANCES_PER_JOB) + u64::from(i);
            out.push(LogRecord::TaskUpserted(task(
                &key,
                id,
                i,
                TaskState::Pending,
            )));
            out.push(LogRecord::TaskUpserted(task(
                &key,
                id,
                i,
                TaskState::Running,
            )));
        }
    }
    out
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for batch in [100usize, 1_000, 10_000] {
        let all = records(20_000);
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path()).expect("open");
        // Correct before timed: a committed batch reads back.
        for r in &all[..batch] {
            wal.append(r);
        }
        wal.commit().expect("commit");
        drop(wal);
        let (mut wal, recovery) = Wal::open(dir.path()).expect("reopen");
        assert_eq!(recovery.records_replayed as usize, batch);
        group.throughput(Throughput::Elements(batch as u64));
        let mut at = 0usize;
        group.bench_function(format!("records_per_commit_{batch}"), |b| {
            b.iter(|| {
                for _ in 0..batch {
                    wal.append(&all[at % all.len()]);
                    at += 1;
                }
                wal.commit().expect("commit")
            })
        });
    }
    group.finish();
}

fn recovery(c: &mut Criterion) {
    const TASKS: u32 = 1_000_000;
    let all = records(TASKS);
    let mut expected = StateImage::default();
    for r in &all {
        expected.apply(r).expect("valid records");
    }
    let log_dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut wal, _) = Wal::open(log_dir.path()).expect("open");
        for chunk in all.chunks(10_000) {
            for r in chunk {
                wal.append(r);
            }
            wal.commit().expect("commit");
        }
    }
    let snapshot_dir = tempfile::tempdir().expect("tempdir");
    Wal::create_fresh(snapshot_dir.path(), &expected).expect("snapshot");
    for dir in [log_dir.path(), snapshot_dir.path()] {
        let started = Instant::now();
        let (_, recovered) = Wal::open(dir).expect("recover");
        assert_eq!(recovered.image.tasks.len(), TASKS as usize);
        assert!(recovered.image == expected, "recovered state differs");
        eprintln!(
            "checked recovery of {} in {:?}",
            dir.display(),
            started.elapsed()
        );
    }
    let mut group = c.benchmark_group("recovery_1m_tasks");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("replay_log", |b| {
        b.iter(|| {
            Wal::open(log_dir.path())
                .expect("recover")
                .1
                .records_replayed
        })
    });
    group.bench_function("load_snapshot", |b| {
        b.iter(|| {
            Wal::open(snapshot_dir.path())
                .expect("recover")
                .1
                .image
                .tasks
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit, recovery);
criterion_main!(benches);
