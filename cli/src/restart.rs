//! `borealis job restart`: a rolling restart driven by the client, as Aurora's `job restart` is.
//! The instances go in batches: the scheduler replaces a batch's tasks (RESTARTING, killed,
//! new tasks), and the next batch starts once every instance of this one has a new task that
//! has been RUNNING (so healthy, for a health-checked job) for the watch time. Interrupting the
//! command stops the restart between batches.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use borealis_core::{JobKey, TaskState};

use crate::client::Client;

/// How often a batch's progress is polled.
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPlan {
    /// Instances to restart (empty: every instance of the job).
    pub instances: Vec<u32>,
    pub batch_size: u32,
    pub watch: Duration,
    pub max_wait: Duration,
}

/// The batches, in order: consecutive runs of `batch_size` of the (sorted) instances.
pub fn batches(instances: &[u32], batch_size: u32) -> Vec<Vec<u32>> {
    let mut sorted = instances.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
        .chunks(batch_size.max(1) as usize)
        .map(<[u32]>::to_vec)
        .collect()
}

/// "0-2,5" for printing.
fn ranges_text(instances: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < instances.len() {
        let start = instances[i];
        let mut end = start;
        while i + 1 < instances.len() && instances[i + 1] == end + 1 {
            i += 1;
            end = instances[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Runs the restart; returns what to print.
pub fn run(client: &mut Client, job: &JobKey, plan: &RestartPlan) -> anyhow::Result<String> {
    let status = client.job_status(job)?;
    let instances: Vec<u32> = if plan.instances.is_empty() {
        (0..status.job.instances).collect()
    } else {
        plan.instances.clone()
    };
    if let Some(bad) = instances.iter().find(|&&i| i >= status.job.instances) {
        bail!(
            "job {job} has no instance {bad} (instances 0..{})",
            status.job.instances
        );
    }
    let mut out = String::new();
    let plan_batches = batches(&instances, plan.batch_size);
    for batch in &plan_batches {
        // The tasks each instance runs now: the restart is done when each has a newer one (a
        // job's task ids only grow: they are issued by its one shard, epoch first).
        let now_status = client.job_status(job)?;
        let before: BTreeMap<u32, Option<u64>> = batch
            .iter()
            .map(|&i| (i, current_task(&now_status, i)))
            .collect();
        client.restart_job(job, batch)?;
        let started = Instant::now();
        let mut running_since: BTreeMap<u32, Instant> = BTreeMap::new();
        loop {
            let status = client.job_status(job)?;
            let now = Instant::now();
            for &i in batch {
                let current = status
                    .tasks
                    .iter()
                    .filter(|t| t.instance == i && t.task_id > before[&i].unwrap_or(0))
                    .filter(|t| t.state.is_some_and(|s| !s.is_terminal()))
                    .max_by_key(|t| t.task_id);
                match current {
                    Some(t) if t.state == Some(TaskState::Running) => {
                        running_since.entry(i).or_insert(now);
                    }
                    _ => {
                        running_since.remove(&i);
                    }
                }
                // A new task of this instance that ended: the restart stops.
                let ended = status.tasks.iter().find(|t| {
                    t.instance == i
                        && t.task_id > before[&i].unwrap_or(0)
                        && t.state.is_some_and(|s| {
                            matches!(s, TaskState::Failed | TaskState::Lost | TaskState::Killed)
                        })
                });
                if let Some(t) = ended {
                    bail!(
                        "restart of {job} stopped: instance {i}'s new task ended {} ({})",
                        t.state.map_or("?", TaskState::as_str),
                        t.message
                    );
                }
            }
            let healthy = batch.iter().all(|i| {
                running_since
                    .get(i)
                    .is_some_and(|since| now.duration_since(*since) >= plan.watch)
            });
            if healthy {
                break;
            }
            if started.elapsed() > plan.max_wait {
                let waiting: Vec<u32> = batch
                    .iter()
                    .copied()
                    .filter(|i| !running_since.contains_key(i))
                    .collect();
                bail!(
                    "restart of {job} stopped: instances {} not RUNNING for {}s within {}s",
                    ranges_text(&waiting),
                    plan.watch.as_secs(),
                    plan.max_wait.as_secs()
                );
            }
            std::thread::sleep(POLL);
        }
        out.push_str(&format!(
            "restarted instances {} of {job}: RUNNING for {}s\n",
            ranges_text(batch),
            plan.watch.as_secs()
        ));
    }
    out.push_str(&format!(
        "restarted {} instances of {job} in {} batches\n",
        instances.len(),
        plan_batches.len()
    ));
    Ok(out)
}

/// The instance's current (not ended) task, if any.
fn current_task(status: &borealis_net::views::JobStatusView, instance: u32) -> Option<u64> {
    status
        .tasks
        .iter()
        .filter(|t| t.instance == instance && t.state.is_some_and(|s| !s.is_terminal()))
        .map(|t| t.task_id)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_consecutive_runs_of_the_sorted_instances() {
        assert_eq!(
            batches(&[3, 0, 1, 2, 7], 2),
            vec![vec![0, 1], vec![2, 3], vec![7]]
        );
        assert_eq!(batches(&[1, 1, 0], 5), vec![vec![0, 1]]);
        assert!(batches(&[], 2).is_empty());
    }

    #[test]
    fn ranges_print_compactly() {
        assert_eq!(ranges_text(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges_text(&[4]), "4");
    }

    /// `borealis job restart ARGS...`, parsed.
    fn parse(args: &[&str]) -> Result<crate::client::JobCommand, clap::Error> {
        use clap::Parser;
        let argv = ["borealis", "job", "restart"].iter().chain(args).copied();
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Command::Job { command, .. } => Ok(command),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restart_parses_with_auroras_defaults() {
        use crate::client::JobCommand;
        let cmd = parse(&["www/prod/web"]).unwrap();
        let JobCommand::Restart {
            job_key,
            instances,
            batch_size,
            watch_secs,
            max_wait,
        } = cmd
        else {
            panic!("{cmd:?}");
        };
        assert_eq!(job_key, "www/prod/web");
        assert_eq!(instances, None);
        assert_eq!((batch_size, watch_secs), (1, 30));
        assert_eq!(max_wait, Duration::from_secs(600));

        let cmd = parse(&[
            "www/prod/web",
            "--instances",
            "0-3,7",
            "--batch-size",
            "2",
            "--watch-secs",
            "1",
            "--max-wait",
            "90s",
        ])
        .unwrap();
        let JobCommand::Restart {
            instances,
            batch_size,
            watch_secs,
            max_wait,
            ..
        } = cmd
        else {
            panic!("{cmd:?}");
        };
        assert_eq!(instances.as_deref(), Some("0-3,7"));
        assert_eq!((batch_size, watch_secs), (2, 1));
        assert_eq!(max_wait, Duration::from_secs(90));
        assert_eq!(
            batches(
                &crate::client::parse_instance_ranges(&instances.unwrap()).unwrap(),
                batch_size
            ),
            vec![vec![0, 1], vec![2, 3], vec![7]]
        );

        for args in [
            &[][..],
            &["www/prod/web", "--batch-size", "0"],
            &["www/prod/web", "--watch-secs", "-1"],
            &["www/prod/web", "--max-wait", "soon"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }
}
