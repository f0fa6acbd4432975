//! `borealis cron schedule|deschedule|start` (Aurora's `aurora cron schedule`, `deschedule`,
//! `start`): cron jobs, which the scheduler runs at each trigger of their `cron_schedule` (read
//! in its `--cron-timezone`), settling a trigger that finds the last run still going by the
//! job's `cron_collision_policy`.

use std::path::PathBuf;

use anyhow::bail;
use borealis_core::cron::CronSpec;
use borealis_core::jobfile::JobSpec;
use borealis_core::JobKey;

use crate::client::{self, Client};

/// The `borealis cron` commands.
#[derive(clap::Subcommand, Debug)]
pub enum CronCommand {
    /// Schedule a cron job from a job file with a `cron_schedule` (replacing the job's schedule
    /// and config if it is scheduled already). The job first runs at the schedule's next
    /// trigger.
    Schedule {
        /// The job's key: role/environment/name.
        job_key: String,
        /// The job file (with `cron_schedule` and, optionally, `cron_collision_policy`).
        file: PathBuf,
    },
    /// Remove a cron job's schedule. A run that is going on is left alone.
    Deschedule {
        /// The job's key: role/environment/name.
        job_key: String,
    },
    /// Run a cron job now (its collision policy applies to a run still going).
    Start {
        /// The job's key: role/environment/name.
        job_key: String,
    },
}

/// Runs one cron command against the scheduler at `scheduler`, printing its result. A bad job
/// key or job file is reported before anything is sent.
pub fn run(scheduler: &str, cmd: CronCommand) -> anyhow::Result<()> {
    let output = match cmd {
        CronCommand::Schedule { job_key, file } => {
            let job = client::parse_job_key(&job_key)?;
            let job_file = client::read_job_file(job.clone(), &file)?;
            let Some(cron) = job_file.spec.cron.clone() else {
                bail!(
                    "{job}'s file has no cron_schedule: a job that is not a cron job is created \
                     with `borealis job create`"
                );
            };
            Client::connect(scheduler)?.schedule_cron(
                &job,
                &job_file.spec,
                job_file.tier_explicit,
                &cron,
            )?;
            scheduled_text(&job, &job_file.spec, &cron)
        }
        CronCommand::Deschedule { job_key } => {
            let job = client::parse_job_key(&job_key)?;
            Client::connect(scheduler)?.deschedule_cron(&job)?;
            format!("descheduled cron job {job}\n")
        }
        CronCommand::Start { job_key } => {
            let job = client::parse_job_key(&job_key)?;
            Client::connect(scheduler)?.start_cron(&job)?;
            format!("cron job {job} triggered: a run starts now, unless its collision policy skips it (CANCEL_NEW) or waits for the previous run to be killed (KILL_EXISTING)\n")
        }
    };
    client::write_stdout(&output)
}

/// `scheduled cron job www/prod/report ("0 3 * * *", KILL_EXISTING) with 2 instances`.
pub fn scheduled_text(job: &JobKey, spec: &JobSpec, cron: &CronSpec) -> String {
    format!(
        "scheduled cron job {job} ({:?}, {}) with {}\n",
        cron.schedule.as_str(),
        cron.collision_policy,
        client::count_noun(spec.instances as usize, "instance")
    )
}

impl Client {
    /// Schedules (or replaces) the cron job `job`: `spec`'s instances and config, run at each
    /// trigger of `cron.schedule`. `tier_explicit`: as for [`Client::create_job`].
    pub fn schedule_cron(
        &mut self,
        job: &JobKey,
        spec: &JobSpec,
        tier_explicit: bool,
        cron: &CronSpec,
    ) -> anyhow::Result<()> {
        let response = self.request(|enc, id| {
            enc.schedule_cron_spec(
                id,
                job,
                spec.instances,
                &spec.config,
                tier_explicit,
                cron.schedule.as_str(),
                cron.collision_policy,
            )
            .to_vec()
        })?;
        client::expect_ack(response, "ScheduleCron")
    }

    /// Removes the cron job's schedule.
    pub fn deschedule_cron(&mut self, job: &JobKey) -> anyhow::Result<()> {
        let response = self.request(|enc, id| enc.deschedule_cron(id, job).to_vec())?;
        client::expect_ack(response, "DescheduleCron")
    }

    /// Runs the cron job now.
    pub fn start_cron(&mut self, job: &JobKey) -> anyhow::Result<()> {
        let response = self.request(|enc, id| enc.start_cron(id, job).to_vec())?;
        client::expect_ack(response, "StartCron")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use borealis_core::cron::CollisionPolicy;

    const REPORT: &str = r#"instances = 2
command = "./report"
cron_schedule = "0 3 * * *"
cron_collision_policy = "CANCEL_NEW"
[resources]
cpu = 0.5
ram = "128MiB"
disk = "64MiB"
"#;

    /// `borealis cron ARGS...`, parsed.
    fn parse(args: &[&str]) -> Result<(String, CronCommand), clap::Error> {
        use clap::Parser;
        let argv = ["borealis", "cron"].iter().chain(args).copied();
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Command::Cron {
                scheduler, command, ..
            } => Ok((scheduler, command)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cron_commands_parse() {
        let (scheduler, cmd) = parse(&["schedule", "www/prod/report", "r.toml"]).unwrap();
        assert_eq!(scheduler, crate::client::DEFAULT_SCHEDULER);
        assert!(
            matches!(&cmd, CronCommand::Schedule { job_key, file }
                if job_key == "www/prod/report" && file == &PathBuf::from("r.toml")),
            "{cmd:?}"
        );
        let (scheduler, cmd) =
            parse(&["deschedule", "www/prod/report", "--scheduler", "s:1"]).unwrap();
        assert_eq!(scheduler, "s:1");
        assert!(
            matches!(&cmd, CronCommand::Deschedule { job_key } if job_key == "www/prod/report"),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["start", "www/prod/report"]).unwrap();
        assert!(
            matches!(&cmd, CronCommand::Start { job_key } if job_key == "www/prod/report"),
            "{cmd:?}"
        );
        for args in [
            &["schedule", "www/prod/report"][..],
            &["deschedule"],
            &["start"],
            &["start", "www/prod/report", "extra"],
            &["run", "www/prod/report"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn the_schedule_line_names_schedule_policy_and_instances() {
        let job: JobKey = "www/prod/report".parse().unwrap();
        let spec = borealis_core::jobfile::parse_job_file(job.clone(), REPORT).unwrap();
        let cron = spec.cron.clone().unwrap();
        assert_eq!(cron.collision_policy, CollisionPolicy::CancelNew);
        assert_eq!(
            scheduled_text(&job, &spec, &cron),
            "scheduled cron job www/prod/report (\"0 3 * * *\", CANCEL_NEW) with 2 instances\n"
        );
        // The policy defaults to KILL_EXISTING.
        let text = REPORT.replace("cron_collision_policy = \"CANCEL_NEW\"\n", "");
        let spec = borealis_core::jobfile::parse_job_file(job, &text).unwrap();
        assert_eq!(
            spec.cron.unwrap().collision_policy,
            CollisionPolicy::KillExisting
        );
    }

    #[test]
    fn cron_commands_send_what_was_asked() {
        use crate::client::tests::{fake_scheduler, frame_of};
        use borealis_net::views::OwnedMessage;
        use borealis_net::Encoder;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("report.toml");
        std::fs::write(&file, REPORT).unwrap();
        let job: JobKey = "www/prod/report".parse().unwrap();
        let spec = borealis_core::jobfile::parse_job_file(job.clone(), REPORT).unwrap();
        let ack = |_: &OwnedMessage, id| frame_of(&[Encoder::new().ack(id).to_vec()]);
        let (addr, server) = fake_scheduler(ack);
        run(
            &addr,
            CronCommand::Schedule {
                job_key: "www/prod/report".into(),
                file,
            },
        )
        .unwrap();
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::ScheduleCron {
                job_key: job.clone(),
                instances: 2,
                config: spec.config,
                tier_unset: true,
                schedule: "0 3 * * *".into(),
                collision_policy: CollisionPolicy::CancelNew,
            }
        );
        let (addr, server) = fake_scheduler(ack);
        Client::connect(&addr)
            .unwrap()
            .deschedule_cron(&job)
            .unwrap();
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::DescheduleCron {
                job_key: job.clone()
            }
        );
        let (addr, server) = fake_scheduler(ack);
        Client::connect(&addr).unwrap().start_cron(&job).unwrap();
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::StartCron { job_key: job }
        );
    }

    #[test]
    fn a_file_without_a_schedule_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.toml");
        let text = REPORT
            .replace("cron_schedule = \"0 3 * * *\"\n", "")
            .replace("cron_collision_policy = \"CANCEL_NEW\"\n", "");
        std::fs::write(&plain, text).unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, REPORT.replace("0 3 * * *", "0 3 * *")).unwrap();
        let schedule = |file: &std::path::Path| CronCommand::Schedule {
            job_key: "www/prod/report".into(),
            file: file.to_path_buf(),
        };
        // Nothing listens here: the errors come before connecting.
        let addr = "127.0.0.1:1";
        assert_eq!(
            format!("{:#}", run(addr, schedule(&plain)).unwrap_err()),
            "www/prod/report's file has no cron_schedule: a job that is not a cron job is \
             created with `borealis job create`"
        );
        let error = format!("{:#}", run(addr, schedule(&bad)).unwrap_err());
        assert!(
            error.starts_with(&format!("{}: cron_schedule: ", bad.display())),
            "{error}"
        );
        assert_eq!(
            format!(
                "{:#}",
                run(
                    addr,
                    CronCommand::Start {
                        job_key: "report".into()
                    }
                )
                .unwrap_err()
            ),
            r#"job key "report" must have the form role/environment/name"#
        );
    }
}
