//! Durability end-to-end: a real scheduler with its write-ahead log (`--data-dir`), killed with
//! SIGKILL and restarted on the same data dir and port, with real agents and the real
//! `borealis job` / `borealis admin` command lines. Build the binary first:
//! `cargo build -p borealis`.
//!
//! The contract under test: the scheduler answers a client (and acknowledges an agent's
//! update) only after the round's records are on disk, so whatever a client was told survives
//! a crash; a torn or corrupt tail of a log is cut at the restart, keeping every record before
//! it; a backup restores the state it was taken from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use borealis_tests::{
    describe, expect_one_line_error, field, has_field, holds_for, instance, job_toml, run_borealis,
    tasks, wait_until, AgentSpec, Cluster, POLL,
};
use serde_json::Value;

/// The states a task never leaves.
const TERMINAL: [&str; 4] = ["FINISHED", "FAILED", "KILLED", "LOST"];

/// The reconciliation grace of test 1: restored tasks on an agent wait this long for it.
const GRACE: &str = "3s";
const GRACE_TIME: Duration = Duration::from_secs(3);

/// A small xorshift generator: the tests pick random cut points and bits, and print the seed
/// (`DURABILITY_SEED` replays one).
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("DURABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("random seed: DURABILITY_SEED={seed}");
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi, "empty range {lo}..{hi}");
        lo + self.next() % (hi - lo)
    }
}

/// Panics if some instance of the job has more than one non-terminal task.
fn assert_one_active_per_instance(status: &Value) {
    let mut active = BTreeMap::<u64, Vec<&str>>::new();
    for task in tasks(status) {
        if !TERMINAL.contains(&field(task, "state")) {
            active
                .entry(instance(task))
                .or_default()
                .push(field(task, "task_id"));
        }
    }
    for (i, ids) in &active {
        assert!(
            ids.len() <= 1,
            "instance {i} has {} non-terminal tasks {ids:?}: {status:#}",
            ids.len()
        );
    }
}

/// `job status --json` against a scheduler address; `None` if the command fails.
fn status_at(addr: &str, job: &str) -> Option<Value> {
    let output = run_borealis(&["job", "status", job, "--json", "--scheduler", addr]);
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// task id -> state, of a status.
fn states_by_id(status: &Value) -> BTreeMap<String, String> {
    tasks(status)
        .iter()
        .map(|t| {
            (
                field(t, "task_id").to_string(),
                field(t, "state").to_string(),
            )
        })
        .collect()
}

/// instance -> task id of the RUNNING tasks, when each of `0..instances` has exactly one.
fn running_ids(status: &Value, instances: u64) -> Option<BTreeMap<u64, String>> {
    borealis_tests::running_by_instance(status, instances).map(|running| {
        running
            .into_iter()
            .map(|(i, t)| (i, field(t, "task_id").to_string()))
            .collect()
    })
}

#[test]
fn kill9_mid_stream_loses_nothing_acknowledged() {
    const AD_HOC_MAX: usize = 60;
    const KILL_AFTER_ACKED: usize = 25;
    const SERVICES: [&str; 2] = ["www/prod/svc-0", "www/prod/svc-1"];
    let flags = ["--reconciliation-grace", GRACE];
    let mut cluster = Cluster::start_with(
        &flags,
        &[AgentSpec::new("a1", "h1"), AgentSpec::new("a2", "h2")],
    );
    let addr = cluster.addr();
    let dir = cluster.dir().to_path_buf();

    // The job stream: ad-hoc jobs, with the two services among the first ones.
    let ad_hoc_toml = job_toml(3, "echo hi", "");
    let service_toml = job_toml(
        2,
        "while true; do sleep 1; done",
        "service = true\nfinalization_wait_secs = 1",
    );
    let mut stream: Vec<(String, &str)> = (0..AD_HOC_MAX)
        .map(|i| (format!("www/devel/adhoc-{i:03}"), ad_hoc_toml.as_str()))
        .collect();
    stream.insert(2, (SERVICES[0].to_string(), service_toml.as_str()));
    stream.insert(7, (SERVICES[1].to_string(), service_toml.as_str()));

    let acked = Mutex::new(Vec::<String>::new());
    let stop = AtomicBool::new(false);
    // What clients were told before the kill: (job, task id) seen FINISHED, and the service
    // tasks seen RUNNING (the last answer before the kill).
    let mut finished_seen = BTreeSet::<(String, String)>::new();
    let mut services_running = BTreeMap::<&str, BTreeMap<u64, String>>::new();
    let mut acked_at_kill = 0;

    std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            // Creates jobs until told to stop or a create fails (the scheduler is gone).
            let mut failed = None;
            for (job, toml) in &stream {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let file = dir.join(format!("{}.toml", job.replace('/', ".")));
                fs::write(&file, toml).expect("write a job file");
                let file = file.display().to_string();
                let output =
                    run_borealis(&["job", "create", job, &file, "--scheduler", addr.as_str()]);
                if output.status.success() {
                    acked.lock().unwrap().push(job.clone());
                } else {
                    failed = Some(format!("job create {job}: {}", describe(&output)));
                    break;
                }
            }
            failed
        });

        // Watch the jobs while they are created, then kill the scheduler in the middle.
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut complete = BTreeSet::<String>::new();
        loop {
            assert!(
                !client.is_finished() || acked.lock().unwrap().len() >= KILL_AFTER_ACKED,
                "the client stopped before {KILL_AFTER_ACKED} jobs were acknowledged: {:?}",
                client.join()
            );
            let jobs = acked.lock().unwrap().clone();
            let services_up = SERVICES.iter().all(|s| jobs.iter().any(|j| j == s));
            if services_up && jobs.len() >= KILL_AFTER_ACKED && !finished_seen.is_empty() {
                // The last answers before the kill: both services fully RUNNING.
                services_running.clear();
                for service in SERVICES {
                    if let Some(ids) = status_at(&addr, service).and_then(|s| {
                        assert_one_active_per_instance(&s);
                        running_ids(&s, 2)
                    }) {
                        services_running.insert(service, ids);
                    }
                }
                if services_running.len() == SERVICES.len() {
                    acked_at_kill = acked.lock().unwrap().len();
                    cluster.scheduler.kill9();
                    break;
                }
            }
            let mut polled = 0;
            for job in &jobs {
                if SERVICES.contains(&job.as_str()) || complete.contains(job) || polled >= 4 {
                    continue;
                }
                polled += 1;
                let Some(status) = status_at(&addr, job) else {
                    continue;
                };
                assert_one_active_per_instance(&status);
                let mut finished = BTreeSet::new();
                for task in tasks(&status) {
                    if field(task, "state") == "FINISHED" {
                        finished.insert(instance(task));
                        finished_seen.insert((job.clone(), field(task, "task_id").to_string()));
                    }
                }
                if finished.len() == 3 {
                    complete.insert(job.clone());
                }
            }
            assert!(
                Instant::now() < deadline,
                "no point to kill at within 40 s: {} acked, services running {services_running:?}, \
                 {} tasks seen FINISHED",
                jobs.len(),
                finished_seen.len()
            );
            std::thread::sleep(POLL);
        }
        stop.store(true, Ordering::SeqCst);
        let failure = client.join().expect("the client thread panicked");
        eprintln!(
            "killed the scheduler with {acked_at_kill} jobs acknowledged ({} in the end; \
             the client's last error: {failure:?}), {} tasks seen FINISHED, services {services_running:?}",
            acked.lock().unwrap().len(),
            finished_seen.len()
        );
    });
    let acked = acked.into_inner().unwrap();
    assert!(acked.len() >= KILL_AFTER_ACKED);

    let restarted = Instant::now();
    cluster.restart_scheduler(&flags);
    cluster.wait_agents_registered();

    // Every acknowledged job is there.
    let listed: BTreeSet<String> = cluster
        .list_json()
        .iter()
        .filter_map(|j| j["job_key"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|j| !listed.contains(*j)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged jobs missing after the restart: {missing:?}"
    );

    // Every task a client saw FINISHED is FINISHED, with the same id.
    let mut by_job = BTreeMap::<&str, Vec<&str>>::new();
    for (job, id) in &finished_seen {
        by_job.entry(job).or_default().push(id);
    }
    for (job, ids) in &by_job {
        let status = cluster.status_json(job);
        assert_one_active_per_instance(&status);
        let states = states_by_id(&status);
        for id in ids {
            assert_eq!(
                states.get(*id).map(String::as_str),
                Some("FINISHED"),
                "task {id} of {job} was seen FINISHED before the kill: {status:#}"
            );
        }
    }

    // The services' tasks are adopted: the same ids RUNNING, never replaced, also once the
    // grace is over.
    for (service, ids) in &services_running {
        cluster.wait_for(
            service,
            &format!("the tasks {ids:?} RUNNING again (adopted)"),
            Duration::from_secs(20),
            |status| {
                assert_one_active_per_instance(status);
                let states = states_by_id(status);
                for id in ids.values() {
                    let state = states.get(id).map_or("<absent>", String::as_str);
                    assert!(
                        !TERMINAL.contains(&state) && state != "<absent>",
                        "service task {id} was RUNNING before the kill, now {state}: {status:#}"
                    );
                }
                (running_ids(status, 2).as_ref() == Some(ids)).then_some(())
            },
        );
    }
    let past_grace = GRACE_TIME + Duration::from_millis(1500);
    let hold = past_grace.saturating_sub(restarted.elapsed());
    holds_for(hold, Duration::from_millis(500), || {
        for (service, ids) in &services_running {
            let status = cluster.status_json(service);
            assert_one_active_per_instance(&status);
            assert_eq!(
                running_ids(&status, 2).as_ref(),
                Some(ids),
                "{service}'s adopted tasks changed after the grace: {status:#}"
            );
        }
    });

    // Every ad-hoc job runs to the end: each instance FINISHED, never two live tasks at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lost = Vec::new();
    for job in acked.iter().filter(|j| !SERVICES.contains(&j.as_str())) {
        let status = cluster.wait_for(
            job,
            "every instance FINISHED",
            deadline.saturating_duration_since(Instant::now()),
            |status| {
                assert_one_active_per_instance(status);
                let finished: BTreeSet<u64> = tasks(status)
                    .iter()
                    .filter(|t| field(t, "state") == "FINISHED")
                    .map(instance)
                    .collect();
                (finished == (0..3).collect()).then(|| status.clone())
            },
        );
        for task in tasks(&status) {
            if field(task, "state") == "LOST" {
                // Whether an agent ran it (its sandbox has its output): then its end was
                // reported at the re-registration, and yet it was not adopted.
                let ran = cluster.agents.iter().any(|a| {
                    let stdout = a
                        .work_dir
                        .join("sandboxes")
                        .join(job)
                        .join(instance(task).to_string())
                        .join(field(task, "task_id"))
                        .join("stdout");
                    fs::read_to_string(stdout).is_ok_and(|out| out.contains("hi"))
                });
                lost.push(format!(
                    "{job}/{} {} (ran on an agent: {ran})",
                    instance(task),
                    field(task, "task_id")
                ));
            }
        }
    }
    // Agents never died, so a LOST task is one whose launch never reached its agent (the
    // kill came between the round's commit and the socket write): legitimate. A LOST task an
    // agent ran (its end was reported at re-registration) would have been run twice.
    let ran_twice: Vec<&String> = lost
        .iter()
        .filter(|l| l.ends_with("(ran on an agent: true)"))
        .collect();
    assert!(
        ran_twice.is_empty(),
        "tasks that ended while the scheduler was down were marked LOST and run again: {ran_twice:?}"
    );
    if !lost.is_empty() {
        eprintln!(
            "note: {} ad-hoc task(s) LOST across the restart and replaced: {lost:?}",
            lost.len()
        );
    }
    assert!(cluster.scheduler.is_running());
}

/// The current Unix time in whole seconds.
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Sleeps until the wall clock is past the second `secs`. A scheduler's task ids start from
/// its start time in whole seconds, so a scheduler started in the same second as the previous
/// one reuses its task ids (see `restart_within_a_second_reuses_no_task_id`): tests that are
/// about something else restart in a later second.
fn sleep_past_second(secs: u64) {
    wait_until(
        &format!("the wall clock to pass second {secs}"),
        Duration::from_secs(3),
        Duration::from_millis(20),
        || (unix_secs() > secs).then_some(()),
    );
}

/// The segment files (`log-*`) of a shard dir, by sequence number.
fn segments(shard_dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = fs::read_dir(shard_dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", shard_dir.display()))
        .map(|e| e.expect("a dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("log-") && !n.contains('.'))
        })
        .collect();
    segs.sort();
    segs
}

/// The frames of a segment, `u32 LE len | u32 LE crc | payload`, as (start, end) byte ranges,
/// from the start; a frame running past the end of the file ends the list.
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let end = offset + 8 + len;
        if end > bytes.len() {
            break;
        }
        out.push((offset, end));
        offset = end;
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A segment's last record, and which of `names` (job names) its records mention.
struct LastSegment {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Start and end of the last record.
    last: (usize, usize),
    /// Names mentioned in a record before the last one.
    before_last: BTreeSet<String>,
    /// Names mentioned only in the last record.
    only_last: BTreeSet<String>,
}

/// Of the data dir's shard dirs, the last segment with the most records (at least 2), with
/// the job names its records mention. Postcard writes a string's bytes as they are, so a
/// record about a job (its creation, or one of its tasks) contains the job's name.
fn pick_last_segment(data_dir: &Path, names: &[String]) -> LastSegment {
    let mut best: Option<(usize, PathBuf, Vec<u8>)> = None;
    for entry in fs::read_dir(data_dir).expect("list the data dir") {
        let path = entry.expect("a dir entry").path();
        let is_shard = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("shard-"));
        if !is_shard {
            continue;
        }
        let Some(last) = segments(&path).pop() else {
            continue;
        };
        let bytes = fs::read(&last).expect("read a segment");
        let n = frames(&bytes).len();
        if best.as_ref().is_none_or(|(m, _, _)| n > *m) {
            best = Some((n, last, bytes));
        }
    }
    let (n, path, bytes) = best.expect("a shard dir with a segment");
    let framed = frames(&bytes);
    assert!(
        n >= 2 && framed.last().map(|f| f.1) == Some(bytes.len()),
        "{} should hold at least 2 whole records: {} bytes, frames {framed:?}",
        path.display(),
        bytes.len()
    );
    // A round (one commit) ends with a commit marker: a frame whose postcard payload is the
    // single byte of `LogRecord::Commit`. Recovery keeps or drops whole rounds, so "the last
    // record" here is the last round: from the end of the previous marker to the end of file.
    let is_marker = |&(start, end): &(usize, usize)| end - start == 9 && bytes[start + 8] == 5;
    let markers: Vec<usize> = framed
        .iter()
        .enumerate()
        .filter(|(_, f)| is_marker(f))
        .map(|(i, _)| i)
        .collect();
    assert!(
        markers.last() == Some(&(framed.len() - 1)),
        "{} should end with a commit marker",
        path.display()
    );
    let first_of_last_round = match markers.len() {
        0 | 1 => 0,
        k => markers[k - 2] + 1,
    };
    let last = (framed[first_of_last_round].0, bytes.len());
    let mut before_last = BTreeSet::new();
    let mut in_last = BTreeSet::new();
    for (i, &(start, end)) in framed.iter().enumerate() {
        for name in names {
            if contains(&bytes[start + 8..end], name.as_bytes()) {
                if i < first_of_last_round {
                    before_last.insert(name.clone());
                } else {
                    in_last.insert(name.clone());
                }
            }
        }
    }
    let only_last = in_last.difference(&before_last).cloned().collect();
    LastSegment {
        path,
        bytes,
        last,
        before_last,
        only_last,
    }
}

/// The scheduler log line that reports a cut tail in `segment`.
fn cut_line(log: &str, segment: &Path) -> String {
    let name = segment.file_name().unwrap().to_str().unwrap();
    log.lines()
        .find(|l| l.contains("cutting the log's torn or corrupt tail") && l.contains(name))
        .unwrap_or_else(|| panic!("no line about cutting {name} in the scheduler's log:\n{log}"))
        .to_string()
}

/// The present jobs (of `created`) some instance of which has no task at all, with their
/// status: a job recovered without all of its tasks, which nothing will ever run.
fn jobs_missing_instances(cluster: &Cluster, created: &[(String, String)]) -> Vec<String> {
    let mut incomplete = Vec::new();
    for (_, key) in created {
        if !cluster.job_listed(key) {
            continue;
        }
        let status = cluster.status_json(key);
        let instances = status["instances"].as_u64().expect("instances");
        let have: BTreeSet<u64> = tasks(&status).iter().map(instance).collect();
        if have != (0..instances).collect() {
            incomplete.push(status.to_string());
        }
    }
    incomplete
}

/// Asserts which of the created jobs are listed: all but `absent`.
fn assert_jobs(cluster: &Cluster, created: &[(String, String)], absent: &BTreeSet<String>) {
    let listed: BTreeSet<String> = cluster
        .list_json()
        .iter()
        .filter_map(|j| j["job_key"].as_str().map(str::to_string))
        .collect();
    for (name, key) in created {
        assert_eq!(
            listed.contains(key),
            !absent.contains(name),
            "{key} (expected {}) in the job list {listed:?}",
            if absent.contains(name) {
                "absent: its only record was cut"
            } else {
                "present"
            }
        );
    }
}

#[test]
fn torn_and_bitflipped_log_tails_are_cut() {
    let mut rng = Rng::from_env_or_clock();
    let mut started = unix_secs();
    let mut cluster = Cluster::start_with(&[], &[]);
    let data_dir = cluster.data_dir();
    let toml = job_toml(2, "echo hi", "");
    let mut created: Vec<(String, String)> = Vec::new();
    let create = |cluster: &Cluster, created: &mut Vec<(String, String)>, name: String| {
        let key = format!("www/devel/{name}");
        cluster.create_job(&key, &toml);
        created.push((name, key));
    };

    // (a) A torn write: the last record of a segment cut short at a random offset.
    for i in 0..8 {
        create(&cluster, &mut created, format!("tornjob-{i:02}"));
    }
    cluster.scheduler.kill9();
    let names: Vec<String> = created.iter().map(|(n, _)| n.clone()).collect();
    let seg = pick_last_segment(&data_dir, &names);
    let (start, end) = seg.last;
    let cut_at = rng.range(start as u64 + 1, end as u64);
    eprintln!(
        "(a) truncating {} ({} bytes, last round {start}..{end}) to {cut_at} bytes; names \
         before the last round {:?}, only in it {:?}",
        seg.path.display(),
        seg.bytes.len(),
        seg.before_last,
        seg.only_last
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .and_then(|f| f.set_len(cut_at))
        .unwrap_or_else(|e| panic!("truncate {}: {e}", seg.path.display()));
    sleep_past_second(started);
    started = unix_secs();
    cluster.restart_scheduler(&[]);
    let line = cut_line(&cluster.scheduler.stderr_text(), &seg.path);
    assert!(
        has_field(&line, "offset", &start.to_string())
            && has_field(&line, "bytes_cut", &(cut_at - start as u64).to_string()),
        "expected offset={start} bytes_cut={}: {line}",
        cut_at - start as u64
    );
    assert_jobs(&cluster, &created, &seg.only_last);
    // A record cut from a round (one `job create`: the job and a task per instance) must not
    // leave a job that lacks tasks. Checked at the end, so that (b) runs either way.
    let mut incomplete = jobs_missing_instances(&cluster, &created);
    // Jobs whose creation was cut are gone for good: forget them.
    created.retain(|(name, _)| !seg.only_last.contains(name));

    // (b) The restarted scheduler works on; a flipped bit in the payload of a segment's last record.
    let before_b = created.len();
    for i in 0..8 {
        create(&cluster, &mut created, format!("flipjob-{i:02}"));
    }
    cluster.scheduler.kill9();
    let names: Vec<String> = created[before_b..].iter().map(|(n, _)| n.clone()).collect();
    let seg = pick_last_segment(&data_dir, &names);
    let (start, end) = seg.last;
    let byte = rng.range(start as u64 + 8, end as u64) as usize;
    let bit = rng.range(0, 8);
    eprintln!(
        "(b) flipping bit {bit} of byte {byte} in {} (last round {start}..{end}); names \
         before the last round {:?}, only in it {:?}",
        seg.path.display(),
        seg.before_last,
        seg.only_last
    );
    let mut bytes = seg.bytes.clone();
    bytes[byte] ^= 1 << bit;
    fs::write(&seg.path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", seg.path.display()));
    sleep_past_second(started);
    cluster.restart_scheduler(&[]);
    let line = cut_line(&cluster.scheduler.stderr_text(), &seg.path);
    assert!(
        has_field(&line, "offset", &start.to_string())
            && has_field(&line, "bytes_cut", &(end - start).to_string()),
        "expected the whole last round cut: offset={start} bytes_cut={}: {line}",
        end - start
    );
    assert_jobs(&cluster, &created, &seg.only_last);
    incomplete.extend(jobs_missing_instances(&cluster, &created[before_b..]));
    assert!(
        incomplete.is_empty(),
        "recovered jobs with instances that have no task (nothing will ever run them):\n{}",
        incomplete.join("\n")
    );
}

/// `borealis admin backup list`: the backups' names and shard counts, newest first.
fn list_backups(data_dir: &Path, backup_dir: &Path) -> Vec<(String, usize)> {
    let output = run_borealis(&[
        "admin",
        "backup",
        "list",
        "--data-dir",
        &data_dir.display().to_string(),
        "--backup-dir",
        &backup_dir.display().to_string(),
    ]);
    assert!(
        output.status.success(),
        "admin backup list: {}",
        describe(&output)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with("backup-"))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().expect("a name").to_string();
            let shards = words
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no shard count in {l:?}"));
            (name, shards)
        })
        .collect()
}

fn restore_backup(name: &str, data_dir: &Path, backup_dir: &Path) -> std::process::Output {
    run_borealis(&[
        "admin",
        "backup",
        "restore",
        name,
        "--data-dir",
        &data_dir.display().to_string(),
        "--backup-dir",
        &backup_dir.display().to_string(),
    ])
}

#[test]
fn backup_list_and_restore() {
    let backups = tempfile::Builder::new()
        .prefix("borealis-backups-")
        .tempdir()
        .expect("create a temp dir");
    let backup_dir = backups.path().to_path_buf();
    let backup_dir_text = backup_dir.display().to_string();
    let flags = ["--backup-interval", "1s", "--backup-dir", &backup_dir_text];
    let mut cluster = Cluster::start_with(&flags, &[]);
    let data_dir = cluster.data_dir();
    let toml = job_toml(2, "echo hi", "");

    let job_a = "www/devel/job-a";
    let job_b = "www/devel/job-b";
    cluster.create_job(job_a, &toml);
    // A backup folder appears only when its first shard file is written, so one named later
    // than every folder listed now was written wholly after A's creation was acknowledged.
    let listed_after_a = list_backups(&data_dir, &backup_dir);
    let newest_before = listed_after_a.first().map(|(n, _)| n.clone());
    let with_a = wait_until(
        "a complete (2-shard) backup taken after job A was created",
        Duration::from_secs(15),
        POLL,
        || {
            list_backups(&data_dir, &backup_dir)
                .into_iter()
                .find(|(name, shards)| {
                    *shards == 2 && newest_before.as_ref().is_none_or(|n| name > n)
                })
                .map(|(name, _)| name)
        },
    );
    eprintln!("backup with job A: {with_a}; listed right after A: {listed_after_a:?}");

    // A running scheduler's data dir cannot be restored into.
    let output = restore_backup(&with_a, &data_dir, &backup_dir);
    let error = expect_one_line_error(&output);
    assert!(error.contains("in use"), "{error}");
    assert!(cluster.scheduler.is_running());
    assert!(cluster.job_listed(job_a));

    // Each shard writes a given name at most once (backups are >= 1 s apart and named by
    // the second), so a backup listed with both shard files no longer changes: `with_a` was
    // complete before B existed.
    cluster.create_job(job_b, &toml);
    assert!(cluster.job_listed(job_b));

    cluster.scheduler.kill9();
    let output = restore_backup(&with_a, &data_dir, &backup_dir);
    assert!(
        output.status.success(),
        "restoring {with_a}: {}",
        describe(&output)
    );
    let replaced: Vec<String> = fs::read_dir(&data_dir)
        .expect("list the data dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("replaced-"))
        .collect();
    assert_eq!(
        replaced.len(),
        1,
        "the replaced state is kept aside: {replaced:?}"
    );

    cluster.restart_scheduler(&flags);
    assert!(cluster.job_listed(job_a), "job A is in the backup");
    assert!(
        !cluster.job_listed(job_b),
        "job B was created after the backup"
    );
    let status = cluster.status_json(job_a);
    assert_eq!(status["instances"], 2, "{status:#}");
}

#[test]
fn restart_within_a_second_reuses_no_task_id() {
    // Task ids of different scheduler runs must differ even when a run starts within the
    // same wall-clock second as the previous one (a crash right after a start, a supervisor
    // that restarts at once): a reused id makes the log unrecoverable.
    const ATTEMPTS: usize = 3;
    let toml = job_toml(1, "echo hi", "");
    for attempt in 1..=ATTEMPTS {
        // Start at the beginning of a second, so that the restart can fall within it.
        wait_until(
            "the start of a second",
            Duration::from_secs(2),
            Duration::from_millis(5),
            || {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("after 1970");
                (now.subsec_millis() < 30).then_some(())
            },
        );
        let mut cluster = Cluster::start_with(&[], &[]);
        let first = "www/devel/first-run";
        cluster.create_job(first, &toml);
        cluster.restart_scheduler(&[]);
        let second = "www/devel/second-run";
        cluster.create_job(second, &toml);
        let id_of = |cluster: &Cluster, job: &str| {
            let status = cluster.status_json(job);
            let ids: Vec<String> = tasks(&status)
                .iter()
                .map(|t| field(t, "task_id").to_string())
                .collect();
            assert_eq!(ids.len(), 1, "{status:#}");
            ids[0].clone()
        };
        let (a, b) = (id_of(&cluster, first), id_of(&cluster, second));
        // The first 8 hex digits are the run's start second.
        let same_second = a[..8] == b[..8];
        eprintln!("attempt {attempt}: task ids {a} (first run) and {b} (second run)");
        assert_ne!(a, b, "the second run reused the first run's task id");
        // And the log of both runs recovers.
        cluster.restart_scheduler(&[]);
        assert!(cluster.job_listed(first) && cluster.job_listed(second));
        assert_eq!(id_of(&cluster, first), a);
        assert_eq!(id_of(&cluster, second), b);
        if same_second {
            return;
        }
    }
    eprintln!("note: no restart fell within its previous run's second in {ATTEMPTS} attempts");
}

/// `borealis admin backup now` (Aurora's performBackup): a running scheduler writes a backup of
/// every shard into the folder the command names.
#[test]
fn backup_now_writes_every_shard() {
    let mut cluster = Cluster::start_with(&[], &[]);
    cluster.create_job("www/devel/now", &job_toml(1, "echo hi", ""));
    let data_dir = cluster.data_dir();
    let http = cluster.http_addr();
    let output = run_borealis(&["admin", "backup", "now", "--http", &http]);
    assert!(output.status.success(), "backup now: {}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let name = stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no backup name in {stdout:?}"))
        .to_string();
    assert!(name.starts_with("backup-"), "{stdout}");
    let backups = data_dir.join("backups");
    wait_until(
        &format!("backup {name} with both shards"),
        Duration::from_secs(20),
        POLL,
        || {
            list_backups(&data_dir, &backups)
                .into_iter()
                .find(|(n, shards)| *n == name && *shards == 2)
        },
    );
}
