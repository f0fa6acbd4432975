//! Leadership and the desired-state store against a real etcd (Debian's `etcd-server`, started
//! per test on free loopback ports). Missing etcd fails the tests: run scripts/setup.sh.

mod support;

use std::time::Duration;

use borealis_control::etcd_client::{GetOptions, Txn, TxnOp};
use borealis_control::{DesiredSnapshot, DesiredStore, Leadership, Space, StoreError, MAX_TXN_OPS};
use borealis_core::{
    Constraint, HealthCheck, HealthChecker, HostMode, HttpLifecycle, JobKey, PartitionPolicy,
    Resources, SlaPolicy, TaskConfig, Tier,
};
use borealis_store::HostImage;
use support::*;

/// Slack on top of a TTL for scheduling, RPC timeouts and a loaded 2-core machine.
const MARGIN: Duration = Duration::from_secs(3);
const ELECT_WITHIN: Duration = Duration::from_secs(15);
const TTL: i64 = 2;

fn ttl() -> Duration {
    Duration::from_secs(TTL as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_candidates_one_leader_others_follow_it() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/three";
    let cands: Vec<Candidate> = (0..3)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.0.{i}:8081"), 5)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "one leader, two followers naming it",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    // Stays settled (no flapping) for a while.
    let leader = settled(&all).unwrap();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(settled(&all), Some(leader), "{}", describe(&all));
    }
    let codes: Vec<u16> = all.iter().map(|c| c.view.http_status()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1);
    assert_eq!(codes.iter().filter(|&&c| c == 503).count(), 2);

    // A graceful shutdown resigns and revokes: a successor well before the TTL (5 s) runs out.
    let mut cands = cands;
    let old = cands.remove(leader);
    let old_fence = fence(&old);
    let old_view = old.view.clone();
    old.shutdown().await;
    assert_eq!(*old_view.get(), Leadership::Unknown);
    let rest: Vec<&Candidate> = cands.iter().collect();
    let took = wait_until(
        ELECT_WITHIN,
        "a successor after a graceful shutdown",
        || settled(&rest).is_some(),
        || describe(&rest),
    )
    .await;
    assert!(
        took < Duration::from_secs(4),
        "graceful handover took {took:?}"
    );
    assert!(fence(rest[settled(&rest).unwrap()]) > old_fence);
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_with_revoked_lease_is_replaced_within_ttl() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/failover";
    let mut cands: Vec<Candidate> = (0..3)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.1.{i}:8081"), TTL)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let leader = settled(&all).unwrap();
    let old = cands.remove(leader);
    let old_fence = fence(&old);
    let lease = lease_of(&etcd, prefix, old_fence).await;
    let old_view = old.view.clone();
    old.abort().await;
    // A dropped election task does not leave `Leader` behind.
    assert_eq!(*old_view.get(), Leadership::Unknown);
    etcd.client()
        .await
        .lease_revoke(lease)
        .await
        .expect("revoke");

    let rest: Vec<&Candidate> = cands.iter().collect();
    let took = wait_until(
        ttl() + MARGIN,
        "a new single leader after the old one was killed",
        || settled(&rest).is_some(),
        || describe(&rest),
    )
    .await;
    let new_fence = fence(rest[settled(&rest).unwrap()]);
    assert!(new_fence > old_fence, "{new_fence} > {old_fence}");
    eprintln!("failover after revoke: {took:?}");
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_when_its_lease_expires() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/expiry";
    let mut cands: Vec<Candidate> = (0..2)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.2.{i}:8081"), TTL)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let old = cands.remove(settled(&all).unwrap());
    let old_fence = fence(&old);
    old.abort().await; // no resign, no revoke: only the lease's expiry frees the election
    let rest: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ttl() + MARGIN,
        "the survivor leads once the dead leader's lease expired",
        || settled(&rest).is_some(),
        || describe(&rest),
    )
    .await;
    assert!(fence(rest[0]) > old_fence);
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_fenced_to_the_current_leader() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/fence";
    let mut cands: Vec<Candidate> = (0..3)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.3.{i}:8081"), TTL)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let store = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .expect("store");
    let a = cands.remove(settled(&all).unwrap());
    let fence_a = fence(&a);
    store
        .put_batch(fence_a, vec![("role/env/a".into(), Some(b"A1".to_vec()))])
        .await
        .expect("the leader writes");

    // A candidate that has not won holds an election key too: its revision is not a fence.
    let mut raw = etcd.client().await;
    let keys = raw
        .get(
            format!("{prefix}/election/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let waiting = keys
        .kvs()
        .iter()
        .map(|kv| kv.create_revision())
        .max()
        .unwrap();
    assert!(waiting > fence_a);
    let err = store
        .put_batch(waiting, vec![("role/env/w".into(), Some(b"W".to_vec()))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { committed: 0, .. }),
        "{err}"
    );
    let err = store
        .put_batch(0, vec![("role/env/w".into(), Some(b"W".to_vec()))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");

    // Depose A (killed, lease revoked); B takes over.
    let lease = lease_of(&etcd, prefix, fence_a).await;
    a.abort().await;
    raw.lease_revoke(lease).await.unwrap();
    let rest: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ttl() + MARGIN,
        "new leader",
        || settled(&rest).is_some(),
        || describe(&rest),
    )
    .await;
    let fence_b = fence(rest[settled(&rest).unwrap()]);

    // A late write from the deposed leader (same store, cached fence key) is refused…
    let err = store
        .put_batch(
            fence_a,
            vec![
                ("role/env/a".into(), Some(b"A2".to_vec())),
                ("role/env/late".into(), Some(b"L".to_vec())),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { fence_revision, committed: 0 } if fence_revision == fence_a),
        "{err}"
    );
    // …and so is one through a fresh store (no cached key).
    let fresh = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .unwrap();
    let err = fresh
        .put_batch(fence_a, vec![("role/env/late".into(), Some(b"L".to_vec()))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // The new leader's write lands.
    store
        .put_batch(
            fence_b,
            vec![
                ("role/env/a".into(), None),
                ("role/env/b".into(), Some(b"B1".to_vec())),
            ],
        )
        .await
        .expect("the new leader writes");
    assert_eq!(
        store.load_all().await.unwrap(),
        vec![("role/env/b".to_string(), b"B1".to_vec())]
    );
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_stored_beside_jobs_and_fenced_the_same_way() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/quotas";
    let mut cands: Vec<Candidate> = (0..2)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.5.{i}:8081"), TTL)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let store = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .expect("store");
    let a = cands.remove(settled(&all).unwrap());
    let fence_a = fence(&a);
    store
        .put_quota(fence_a, "www-data", Some(b"Q1".to_vec()))
        .await
        .expect("the leader sets a quota");
    // Jobs and quotas share fenced txns; each lives under its own prefix.
    store
        .write(
            fence_a,
            vec![
                (Space::Jobs, "www-data/prod/web".into(), Some(b"J".to_vec())),
                (Space::Quotas, "batch".into(), Some(b"QB".to_vec())),
                (Space::Quotas, "www-data".into(), Some(b"Q2".to_vec())),
            ],
        )
        .await
        .expect("a mixed batch lands");
    let mut raw = etcd.client().await;
    let stored = raw
        .get(format!("{prefix}/quotas/www-data"), None)
        .await
        .unwrap();
    assert_eq!(stored.kvs()[0].value(), b"Q2");
    assert_eq!(
        store.load_all().await.unwrap(),
        vec![("www-data/prod/web".to_string(), b"J".to_vec())],
        "quotas are not jobs"
    );
    let quotas = vec![
        ("batch".to_string(), b"QB".to_vec()),
        ("www-data".to_string(), b"Q2".to_vec()),
    ];
    assert_eq!(store.load_quotas().await.unwrap(), quotas);
    assert_eq!(
        store.load_desired().await.unwrap(),
        DesiredSnapshot {
            jobs: vec![("www-data/prod/web".to_string(), b"J".to_vec())],
            quotas: quotas.clone(),
            hosts: Vec::new(),
        }
    );
    let err = store.put_quota(fence_a, "", Some(b"x".to_vec())).await;
    assert!(matches!(err, Err(StoreError::InvalidKey(_))), "{err:?}");

    // Depose A (killed, lease revoked); B takes over.
    let lease = lease_of(&etcd, prefix, fence_a).await;
    a.abort().await;
    raw.lease_revoke(lease).await.unwrap();
    let rest: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ttl() + MARGIN,
        "new leader",
        || settled(&rest).is_some(),
        || describe(&rest),
    )
    .await;
    let fence_b = fence(rest[settled(&rest).unwrap()]);
    assert!(fence_b > fence_a);

    // The deposed leader's quota write is refused (cached fence key, and a fresh store)…
    let err = store
        .put_quota(fence_a, "www-data", Some(b"LATE".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { fence_revision, committed: 0 } if fence_revision == fence_a),
        "{err}"
    );
    let fresh = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .unwrap();
    let err = fresh
        .put_quota(fence_a, "www-data", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // …so the new leader loads what A committed, and its own writes land.
    assert_eq!(fresh.load_quotas().await.unwrap(), quotas);
    fresh
        .put_quota(fence_b, "batch", None)
        .await
        .expect("the new leader deletes a quota");
    assert_eq!(
        fresh.load_quotas().await.unwrap(),
        vec![("www-data".to_string(), b"Q2".to_vec())]
    );
    for c in cands {
        c.shutdown().await;
    }
}

fn host_value(mode: HostMode, drain_deadline_unix_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&HostImage {
        mode,
        drain_deadline_unix_ms,
    })
    .unwrap()
}

fn host_of(value: &[u8]) -> HostImage {
    serde_json::from_slice(value).expect("a host entry decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_modes_are_stored_beside_jobs_and_quotas_and_fenced_the_same_way() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/hosts";
    let mut cands: Vec<Candidate> = (0..2)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.8.{i}:8081"), TTL)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let store = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .expect("store");
    let a = cands.remove(settled(&all).unwrap());
    let fence_a = fence(&a);
    store
        .put_host_mode(
            fence_a,
            "h1.example.com",
            Some(host_value(HostMode::Scheduled, 0)),
        )
        .await
        .expect("the leader schedules maintenance");
    // Jobs, quotas and hosts share fenced txns; each lives under its own prefix.
    store
        .write(
            fence_a,
            vec![
                (Space::Jobs, "www-data/prod/web".into(), Some(b"J".to_vec())),
                (Space::Quotas, "www-data".into(), Some(b"Q".to_vec())),
                (
                    Space::Hosts,
                    "h2.example.com".into(),
                    Some(host_value(HostMode::Draining, 1_800_000_000_000)),
                ),
                (
                    Space::Hosts,
                    "h1.example.com".into(),
                    Some(host_value(HostMode::Drained, 0)),
                ),
            ],
        )
        .await
        .expect("a mixed batch lands");
    let mut raw = etcd.client().await;
    let stored = raw
        .get(format!("{prefix}/hosts/h2.example.com"), None)
        .await
        .unwrap();
    assert_eq!(
        host_of(stored.kvs()[0].value()),
        HostImage {
            mode: HostMode::Draining,
            drain_deadline_unix_ms: 1_800_000_000_000
        }
    );
    let hosts = vec![
        (
            "h1.example.com".to_string(),
            host_value(HostMode::Drained, 0),
        ),
        (
            "h2.example.com".to_string(),
            host_value(HostMode::Draining, 1_800_000_000_000),
        ),
    ];
    assert_eq!(store.load_hosts().await.unwrap(), hosts);
    assert_eq!(
        store.load_desired().await.unwrap(),
        DesiredSnapshot {
            jobs: vec![("www-data/prod/web".to_string(), b"J".to_vec())],
            quotas: vec![("www-data".to_string(), b"Q".to_vec())],
            hosts: hosts.clone(),
        },
        "hosts are neither jobs nor quotas"
    );
    let err = store.put_host_mode(fence_a, "", None).await;
    assert!(matches!(err, Err(StoreError::InvalidKey(_))), "{err:?}");

    // Depose A (killed, lease revoked); B takes over.
    let lease = lease_of(&etcd, prefix, fence_a).await;
    a.abort().await;
    raw.lease_revoke(lease).await.unwrap();
    let rest: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ttl() + MARGIN,
        "new leader",
        || settled(&rest).is_some(),
        || describe(&rest),
    )
    .await;
    let fence_b = fence(rest[settled(&rest).unwrap()]);
    assert!(fence_b > fence_a);

    // The deposed leader can neither set nor clear a mode (cached fence key, fresh store)…
    let err = store
        .put_host_mode(
            fence_a,
            "h3.example.com",
            Some(host_value(HostMode::Scheduled, 0)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Fenced { fence_revision, committed: 0 } if fence_revision == fence_a),
        "{err}"
    );
    let fresh = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .unwrap();
    let err = fresh
        .put_host_mode(fence_a, "h1.example.com", None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // …so the new leader loads every host's mode as A left it, and its own writes land:
    // `None` (mode NONE) deletes the key.
    assert_eq!(fresh.load_desired().await.unwrap().hosts, hosts);
    fresh
        .put_host_mode(fence_b, "h1.example.com", None)
        .await
        .expect("the new leader ends maintenance");
    let left = fresh.load_hosts().await.unwrap();
    assert_eq!(left, hosts[1..].to_vec());
    assert_eq!(host_of(&left[0].1).mode, HostMode::Draining);
    for c in cands {
        c.shutdown().await;
    }
}

/// `TaskConfig` as the build before the service fields wrote it (JSON field names: what
/// matters to serde_json).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct TaskConfigBefore {
    job: JobKey,
    command: String,
    resources: Resources,
    port_names: Vec<String>,
    constraints: Vec<Constraint>,
    tier: Tier,
    priority: i32,
    production: bool,
    is_service: bool,
    max_task_failures: i32,
    finalization_wait_secs: u32,
}

/// The shards' `ha::DesiredJob` of that build; `DesiredJobNow` is today's (same field names:
/// the lead's `borealis_shards::ha::DesiredJob`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct DesiredJobBefore {
    key: JobKey,
    instances: u32,
    config: TaskConfigBefore,
    retired: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct DesiredJobNow {
    key: JobKey,
    instances: u32,
    config: TaskConfig,
    retired: Vec<u32>,
}

/// A desired job the previous build wrote to etcd (JSON without the service fields) loads as
/// today's job with those fields unset; today's jobs keep them through etcd; and the previous
/// build still reads today's values (unknown fields ignored), so a rollback keeps the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_jobs_of_the_previous_build_still_load() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/upgrade";
    let key: JobKey = "www-data/prod/web".parse().unwrap();
    let before = DesiredJobBefore {
        key: key.clone(),
        instances: 3,
        config: TaskConfigBefore {
            job: key.clone(),
            command: "serve".into(),
            resources: Resources {
                cpu_millis: 500,
                ram_mib: 256,
                disk_mib: 128,
                ports: 1,
            },
            port_names: vec!["http".into()],
            constraints: vec![Constraint::Limit {
                attribute: "host".into(),
                limit: 1,
            }],
            tier: Tier::Preferred,
            priority: 2,
            production: true,
            is_service: true,
            max_task_failures: -1,
            finalization_wait_secs: 10,
        },
        retired: vec![1],
    };
    let old_json = serde_json::to_vec(&before).unwrap();
    let mut raw = etcd.client().await;
    raw.put(format!("{prefix}/jobs/{key}"), old_json.clone(), None)
        .await
        .unwrap();
    let store = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .expect("store");
    let loaded = store.load_desired().await.unwrap();
    assert_eq!(loaded.jobs, vec![(key.to_string(), old_json)]);
    assert!(loaded.quotas.is_empty() && loaded.hosts.is_empty());
    let job: DesiredJobNow = serde_json::from_slice(&loaded.jobs[0].1).expect("an old job loads");
    let c = &job.config;
    assert_eq!(
        (job.key.clone(), job.instances, job.retired.clone()),
        (key.clone(), 3, vec![1])
    );
    assert_eq!(
        (
            c.command.as_str(),
            c.finalization_wait_secs,
            c.max_task_failures,
            &c.constraints
        ),
        ("serve", 10, -1, &before.config.constraints)
    );
    assert_eq!(
        (
            &c.health_check,
            &c.http_lifecycle,
            &c.sla_policy,
            &c.partition_policy
        ),
        (&None, &None, &None, &None)
    );

    // Today's job, with every service field, through etcd and back.
    let now = DesiredJobNow {
        config: TaskConfig {
            health_check: Some(HealthCheck::with_defaults(HealthChecker::Http {
                port: "http".into(),
                endpoint: "/health".into(),
                expected_status: 200,
            })),
            http_lifecycle: Some(HttpLifecycle::default()),
            sla_policy: Some(SlaPolicy::Coordinator {
                coordinator_url: "http://127.0.0.1:9/sla".into(),
                status_key: SlaPolicy::DEFAULT_STATUS_KEY.into(),
            }),
            partition_policy: Some(PartitionPolicy {
                reschedule: false,
                delay_secs: 60,
            }),
            ..job.config.clone()
        },
        ..job
    };
    raw.put(
        format!("{prefix}/jobs/{key}"),
        serde_json::to_vec(&now).unwrap(),
        None,
    )
    .await
    .unwrap();
    let loaded = store.load_desired().await.unwrap();
    let back: DesiredJobNow = serde_json::from_slice(&loaded.jobs[0].1).unwrap();
    assert_eq!(back, now);
    // The previous build reads it too, minus what it does not know.
    let rolled_back: DesiredJobBefore = serde_json::from_slice(&loaded.jobs[0].1).unwrap();
    assert_eq!(rolled_back, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_split_into_txns_of_at_most_128_ops() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/batch";
    let leader = Candidate::spawn(config(&etcd, prefix, "10.0.4.1:8081", TTL));
    wait_until(
        ELECT_WITHIN,
        "leader",
        || leader.view.is_leader(),
        || format!("{:?}", leader.status()),
    )
    .await;
    let fence = fence(&leader);
    let mut raw = etcd.client().await;

    // This etcd refuses a txn of 129 operations: the limit the store splits at is real.
    let too_many: Vec<TxnOp> = (0..=MAX_TXN_OPS)
        .map(|i| TxnOp::put(format!("{prefix}/scratch/{i}"), "x", None))
        .collect();
    assert!(raw.txn(Txn::new().and_then(too_many)).await.is_err());

    let store = DesiredStore::connect(&etcd.endpoints(), prefix)
        .await
        .unwrap();
    let ops: Vec<(String, Option<Vec<u8>>)> = (0..300)
        .map(|i| {
            (
                format!("role/env/job{i:04}"),
                Some(format!("cfg{i}").into_bytes()),
            )
        })
        .collect();
    store.put_batch(fence, ops).await.expect("300 ops land");

    let loaded = store.load_all().await.unwrap(); // 300 keys: more than one page
    assert_eq!(loaded.len(), 300);
    for (i, (k, v)) in loaded.iter().enumerate() {
        assert_eq!(k, &format!("role/env/job{i:04}"));
        assert_eq!(v, &format!("cfg{i}").into_bytes());
    }
    // One revision per txn: 128 + 128 + 44.
    let resp = raw
        .get(
            format!("{prefix}/jobs/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let mut per_rev = std::collections::BTreeMap::<i64, usize>::new();
    for kv in resp.kvs() {
        *per_rev.entry(kv.mod_revision()).or_default() += 1;
    }
    assert_eq!(
        per_rev.values().copied().collect::<Vec<_>>(),
        vec![128, 128, 44]
    );

    // Deletes are batched the same way; the last operation of a repeated key wins.
    let mut ops: Vec<(String, Option<Vec<u8>>)> = (0..300)
        .map(|i| (format!("role/env/job{i:04}"), None))
        .collect();
    ops.push(("role/env/job0007".into(), Some(b"kept".to_vec())));
    store.put_batch(fence, ops).await.expect("deletes land");
    assert_eq!(
        store.load_all().await.unwrap(),
        vec![("role/env/job0007".to_string(), b"kept".to_vec())]
    );
    leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_when_etcd_stops_and_leads_again_after_restart() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let prefix = "/borealis/outage";
    let cands: Vec<Candidate> = (0..2)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.5.{i}:8081"), TTL)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let leader = settled(&all).unwrap();
    let old_fence = fence(all[leader]);

    etcd.pause(); // kill -STOP
    let took = wait_until(
        ttl() + MARGIN,
        "the leader publishes Unknown once etcd stopped answering",
        || all[leader].status() == Leadership::Unknown,
        || describe(&all),
    )
    .await;
    eprintln!("leader stepped down after etcd stopped: {took:?}");
    wait_until(
        ttl() + MARGIN,
        "everyone Unknown while etcd is stopped",
        || all.iter().all(|c| c.status() == Leadership::Unknown),
        || describe(&all),
    )
    .await;
    // Nobody claims leadership while etcd is away.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            all.iter().all(|c| c.view.http_status() == 502),
            "{}",
            describe(&all)
        );
    }

    etcd.kill();
    etcd.restart().await; // same ports, same data dir
    wait_until(
        ELECT_WITHIN,
        "a single leader again after etcd restarted",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let new_fence = fence(all[settled(&all).unwrap()]);
    assert!(
        new_fence > old_fence,
        "a new term: {new_fence} > {old_fence}"
    );
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_leading_makes_the_leader_resign_and_another_take_over() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/maxlead";
    let max_leading = Duration::from_secs(3);
    let cands: Vec<Candidate> = (0..2)
        .map(|i| {
            let mut cfg = config(&etcd, prefix, &format!("10.0.6.{i}:8081"), TTL);
            cfg.max_leading = max_leading;
            Candidate::spawn(cfg)
        })
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let first = settled(&all).unwrap();
    let first_fence = fence(all[first]);
    let other = 1 - first;
    let took = wait_until(
        max_leading + MARGIN,
        "the other candidate leads after max_leading",
        || settled(&all) == Some(other),
        || describe(&all),
    )
    .await;
    eprintln!("handover after max_leading: {took:?}");
    assert!(fence(all[other]) > first_fence);
    assert_eq!(
        all[first].status(),
        Leadership::Follower {
            leader: all[other].advertise.clone()
        }
    );
    for c in cands {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_resigns_after_max_leading_and_starts_a_new_term() {
    init_tracing();
    let etcd = Etcd::start().await;
    let mut cfg = config(&etcd, "/borealis/lone", "10.0.7.1:8081", TTL);
    cfg.max_leading = Duration::from_secs(2);
    let c = Candidate::spawn(cfg);
    wait_until(
        ELECT_WITHIN,
        "leader",
        || c.view.is_leader(),
        || format!("{:?}", c.status()),
    )
    .await;
    let first = fence(&c);
    wait_until(
        Duration::from_secs(2) + MARGIN,
        "a new term",
        || c.view.fence_revision().is_some_and(|f| f > first),
        || format!("{:?}", c.status()),
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_etcd_stall_pauses_the_leader_and_keeps_its_term() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = "/borealis/stall";
    let ttl = 8; // keep-alive every 2 s, 2 s timeout: a stall is seen well before the lease ends
    let cands: Vec<Candidate> = (0..2)
        .map(|i| Candidate::spawn(config(&etcd, prefix, &format!("10.0.8.{i}:8081"), ttl)))
        .collect();
    let all: Vec<&Candidate> = cands.iter().collect();
    wait_until(
        ELECT_WITHIN,
        "first leader",
        || settled(&all).is_some(),
        || describe(&all),
    )
    .await;
    let leader = settled(&all).unwrap();
    let term = fence(all[leader]);

    etcd.pause();
    wait_until(
        Duration::from_secs(6),
        "the leader stops claiming leadership while etcd stalls",
        || all[leader].status() == Leadership::Unknown,
        || describe(&all),
    )
    .await;
    etcd.resume();
    // The lease never expired: the same process leads again, in the same term (same fence).
    wait_until(
        Duration::from_secs(8),
        "the same leader, same term, after the stall",
        || settled(&all) == Some(leader),
        || describe(&all),
    )
    .await;
    assert_eq!(fence(all[leader]), term);
    for c in cands {
        c.shutdown().await;
    }
}
