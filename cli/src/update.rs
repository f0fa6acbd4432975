//! `borealis update start|pause|resume|abort|rollback|pulse|list|info` (Aurora's `aurora update`):
//! rolling updates that the scheduler drives. `start` reads a job file (its `instances` is the
//! job's instance count after the update, its `[update]` section the settings); the commands
//! act on the job's active update and print its resulting status; `list` and `info` show
//! updates, `info` with the events, per-instance progress and a unified diff of the old and new
//! configs (each rendered as a job file).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::bail;
use borealis_core::jobfile::JobSpec;
use borealis_core::update::{Command, InstancePhase, Rev, UpdateSettings};
use borealis_core::{JobKey, TaskConfig};
use borealis_net::views::{OwnedMessage, UpdateInfoView};

use crate::client::{self, Client};

/// The `borealis update` commands.
#[derive(clap::Subcommand, Debug)]
pub enum UpdateCommand {
    /// Start a rolling update of a job to the config of a job file. The file's `instances` is
    /// the job's instance count after the update; its `[update]` section says how the update
    /// rolls (default: Aurora's settings).
    Start {
        /// The job's key: role/environment/name.
        job_key: String,
        /// The job file (see examples/hello.toml).
        file: PathBuf,
        /// Instances to update, as numbers and inclusive ranges: "0-3,7" (default: all).
        #[arg(long)]
        instances: Option<String>,
        /// Why: recorded in the update's first event.
        #[arg(long, default_value = "")]
        message: String,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Pause the job's active update: it takes no new instances (those in flight finish).
    Pause(CommandArgs),
    /// Resume the job's paused update.
    Resume(CommandArgs),
    /// Abort the job's active update: instances stay as they are.
    Abort(CommandArgs),
    /// Roll the job's active update back: the instances it changed return to their config.
    Rollback(CommandArgs),
    /// Pulse the job's active update (one with `pulse_interval_secs`): it may go on for that
    /// long.
    Pulse(CommandArgs),
    /// List updates: one job's, or every job's.
    List {
        /// The job's key (default: every job's updates).
        job_key: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show an update in detail: settings, events, per-instance progress and the config diff.
    Info {
        /// The job's key: role/environment/name.
        job_key: String,
        /// The update (default: the job's active update, else its latest).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        update_id: Option<u64>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The arguments of a command on the job's active update.
#[derive(clap::Args, Debug)]
pub struct CommandArgs {
    /// The job's key: role/environment/name.
    pub job_key: String,
    /// Why: recorded in the update's event.
    #[arg(long, default_value = "")]
    pub message: String,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// Runs one update command against the scheduler at `scheduler`, printing its result. Local
/// mistakes (a bad job key, job file or instance list) are reported before anything is sent.
pub fn run(scheduler: &str, cmd: UpdateCommand) -> anyhow::Result<()> {
    let command = |args: CommandArgs, command: Command| -> anyhow::Result<String> {
        let job = client::parse_job_key(&args.job_key)?;
        let info = Client::connect(scheduler)?.update_command(&job, command, &args.message)?;
        Ok(if args.json {
            info_json(&info) + "\n"
        } else {
            format!(
                "update {} of {}: {}\n",
                info.update.id, info.job_key, info.update.status
            )
        })
    };
    let output = match cmd {
        UpdateCommand::Start {
            job_key,
            file,
            instances,
            message,
            json,
        } => {
            let job = client::parse_job_key(&job_key)?;
            let scope = match instances {
                Some(text) => client::parse_instance_ranges(&text)?,
                None => Vec::new(),
            };
            let job_file = client::read_job_file(job.clone(), &file)?;
            if job_file.spec.cron.is_some() {
                bail!(
                    "{job}'s file has a cron_schedule: a cron job is changed with `borealis cron \
                     schedule`"
                );
            }
            let settings = job_file.spec.update.unwrap_or_default();
            let info = Client::connect(scheduler)?.start_update(
                &job,
                &job_file.spec,
                job_file.tier_explicit,
                &settings,
                &scope,
                &message,
            )?;
            if json {
                info_json(&info) + "\n"
            } else {
                format!(
                    "started update {} of {}: {}\n",
                    info.update.id, info.job_key, info.update.status
                )
            }
        }
        UpdateCommand::Pause(args) => command(args, Command::Pause)?,
        UpdateCommand::Resume(args) => command(args, Command::Resume)?,
        UpdateCommand::Abort(args) => command(args, Command::Abort)?,
        UpdateCommand::Rollback(args) => command(args, Command::Rollback)?,
        UpdateCommand::Pulse(args) => command(args, Command::Pulse)?,
        UpdateCommand::List { job_key, json } => {
            let job = job_key.as_deref().map(client::parse_job_key).transpose()?;
            // One job's updates are few: ask for their per-instance progress. Every job's
            // could be too large a message with it; their table shows what summaries carry.
            let details = job.is_some();
            let updates = Client::connect(scheduler)?.query_updates(job.as_ref(), 0, details)?;
            if json {
                list_json(&updates) + "\n"
            } else {
                list_text(&updates)
            }
        }
        UpdateCommand::Info {
            job_key,
            update_id,
            json,
        } => {
            let job = client::parse_job_key(&job_key)?;
            let updates = Client::connect(scheduler)?.query_updates(
                Some(&job),
                update_id.unwrap_or(0),
                true,
            )?;
            let info = pick_update(&job, updates, update_id)?;
            if json {
                info_json(&info) + "\n"
            } else {
                info_text(&info)
            }
        }
    };
    client::write_stdout(&output)
}

/// The update `info` shows: the one asked for, else the job's active update, else its latest.
pub fn pick_update(
    job: &JobKey,
    updates: Vec<UpdateInfoView>,
    update_id: Option<u64>,
) -> anyhow::Result<UpdateInfoView> {
    let mut updates: Vec<UpdateInfoView> = updates
        .into_iter()
        .filter(|u| u.job_key == job.to_string())
        .collect();
    match update_id {
        Some(id) => match updates.into_iter().find(|u| u.update.id == id) {
            Some(u) => Ok(u),
            None => bail!("job {job} has no update {id}"),
        },
        None => {
            updates.sort_by_key(|u| (u.update.status.is_active(), u.update.id));
            match updates.pop() {
                Some(u) => Ok(u),
                None => bail!("job {job} has no updates"),
            }
        }
    }
}

impl Client {
    /// Starts a rolling update of `job` to `spec` (its instances after the update, its
    /// config) over `scope` (empty: every instance); the new update once it is durable.
    pub fn start_update(
        &mut self,
        job: &JobKey,
        spec: &JobSpec,
        tier_explicit: bool,
        settings: &UpdateSettings,
        scope: &[u32],
        message: &str,
    ) -> anyhow::Result<UpdateInfoView> {
        match self.request(|enc, id| {
            enc.start_update_spec(
                id,
                job,
                spec.instances,
                &spec.config,
                tier_explicit,
                settings,
                scope,
                message,
            )
            .to_vec()
        })? {
            OwnedMessage::UpdateInfo(info) => Ok(info),
            other => Err(client::unexpected(other, "StartUpdate")),
        }
    }

    /// A command on the job's active update; the update after it.
    pub fn update_command(
        &mut self,
        job: &JobKey,
        command: Command,
        message: &str,
    ) -> anyhow::Result<UpdateInfoView> {
        match self.request(|enc, id| enc.update_command(id, job, command, message).to_vec())? {
            OwnedMessage::UpdateInfo(info) => Ok(info),
            other => Err(client::unexpected(other, "UpdateCommand")),
        }
    }

    /// One job's updates (every job's with None); `update_id` 0: all of them; `details`: with
    /// per-instance progress, events and configs.
    pub fn query_updates(
        &mut self,
        job: Option<&JobKey>,
        update_id: u64,
        details: bool,
    ) -> anyhow::Result<Vec<UpdateInfoView>> {
        match self.request(|enc, id| enc.query_updates(id, job, update_id, details).to_vec())? {
            OwnedMessage::UpdateList(updates) => Ok(updates),
            other => Err(client::unexpected(other, "QueryUpdates")),
        }
    }
}

// ---------------------------------------------------------------- formatting

/// Unix ms as UTC, to the second: `2023-11-14T22:13:20Z`; `-` for 0 (not known).
pub fn utc_text(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn rev_text(rev: Option<Rev>) -> String {
    rev.map_or_else(|| "-".to_string(), |r| r.to_string())
}

/// How far an update got: `2/4 succeeded, 1 in flight, 1 failed` (without per-instance
/// details, which summaries of every job's updates lack: `1 in flight, 1 failed`).
pub fn progress_text(u: &UpdateInfoView) -> String {
    let tail = format!(
        "{} in flight, {} failed",
        u.in_flight, u.update.failed_instances
    );
    if u.update.instances.is_empty() {
        return tail;
    }
    let succeeded = u
        .update
        .instances
        .iter()
        .filter(|p| p.phase == InstancePhase::Succeeded)
        .count();
    format!("{succeeded}/{} succeeded, {tail}", u.update.instances.len())
}

/// `update list`: a table in job and update order.
pub fn list_text(updates: &[UpdateInfoView]) -> String {
    if updates.is_empty() {
        return "no updates\n".to_string();
    }
    let mut sorted: Vec<&UpdateInfoView> = updates.iter().collect();
    sorted.sort_by(|a, b| (&a.job_key, a.update.id).cmp(&(&b.job_key, b.update.id)));
    let mut rows = vec![[
        "JOB",
        "UPDATE",
        "STATUS",
        "INSTANCES",
        "PROGRESS",
        "CREATED",
        "LAST CHANGE",
    ]
    .map(String::from)
    .to_vec()];
    for u in sorted {
        rows.push(vec![
            u.job_key.clone(),
            u.update.id.to_string(),
            u.update.status.to_string(),
            format!(
                "{} -> {}",
                u.update.instances_before, u.update.instances_after
            ),
            progress_text(u),
            utc_text(u.update.created_unix_ms),
            utc_text(u.update.updated_unix_ms),
        ]);
    }
    client::table_text(&rows)
}

/// The settings on one line, every field named as in a job file's `[update]`.
pub fn settings_text(s: &UpdateSettings) -> String {
    format!(
        "batch_size {}, max_per_instance_failures {}, max_total_failures {}, watch_secs {}, \
         rollback_on_failure {}, wait_for_batch_completion {}, pulse_interval_secs {}, \
         sla_aware {}",
        s.batch_size,
        s.max_per_instance_failures,
        s.max_total_failures,
        s.watch_secs,
        s.rollback_on_failure,
        s.wait_for_batch_completion,
        s.pulse_interval_secs
            .map_or_else(|| "none".to_string(), |p| p.to_string()),
        s.sla_aware
    )
}

/// A revision of an update rendered as its job file: the target with the instances after
/// the update, any other with those before.
pub fn revision_job_file(
    up: &borealis_core::update::JobUpdate,
    rev: Rev,
    config: &TaskConfig,
) -> String {
    let instances = if rev == up.to_rev {
        up.instances_after
    } else {
        up.instances_before
    };
    job_file_text(instances, config)
}

/// A revision's config rendered as the job file that would create it with `instances`.
pub fn job_file_text(instances: u32, config: &TaskConfig) -> String {
    JobSpec {
        instances,
        config: config.clone(),
        update: None,
        cron: None,
    }
    .to_toml()
}

/// The revisions the update moves instances away from (each once, in order), but its target.
fn old_revs(u: &UpdateInfoView) -> Vec<Rev> {
    let revs: BTreeSet<Rev> = u
        .update
        .instances
        .iter()
        .filter_map(|p| p.from)
        .filter(|&r| r != u.update.to_rev)
        .collect();
    revs.into_iter().collect()
}

/// One config diff: from an old revision to the update's target.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigDiff {
    pub from_rev: Rev,
    pub to_rev: Rev,
    /// A unified diff of the two job files (empty: they are the same).
    pub diff: String,
}

/// The unified diff of `old` and `new` (job files), headed `rev FROM` / `rev TO`; empty when
/// they are the same.
pub fn unified_diff(old: &str, new: &str, from_rev: Rev, to_rev: Rev) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("rev {from_rev}"), &format!("rev {to_rev}"))
        .to_string()
}

/// Each old revision's job file against the target's (the old with `instances_before`, the new
/// with `instances_after`). Revisions whose config the answer lacks are left out.
pub fn config_diffs(u: &UpdateInfoView) -> Vec<ConfigDiff> {
    let config = |rev: Rev| u.configs.iter().find(|(r, _)| *r == rev).map(|(_, c)| c);
    let Some(new) = config(u.update.to_rev) else {
        return Vec::new();
    };
    let new_text = job_file_text(u.update.instances_after, new);
    old_revs(u)
        .into_iter()
        .filter_map(|rev| {
            let old_text = job_file_text(u.update.instances_before, config(rev)?);
            Some(ConfigDiff {
                from_rev: rev,
                to_rev: u.update.to_rev,
                diff: unified_diff(&old_text, &new_text, rev, u.update.to_rev),
            })
        })
        .collect()
}

/// `update info`: the update's header and settings, its events, per-instance progress, and
/// the diff of each old config against the new one.
pub fn info_text(u: &UpdateInfoView) -> String {
    let up = &u.update;
    let mut text = format!(
        "update {} of {}: {}\n\
         created {}, last change {}\n\
         instances {} -> {} (to rev {}); {}\n\
         settings: {}\n",
        up.id,
        u.job_key,
        up.status,
        utc_text(up.created_unix_ms),
        utc_text(up.updated_unix_ms),
        up.instances_before,
        up.instances_after,
        up.to_rev,
        progress_text(u),
        settings_text(&up.settings)
    );
    text.push_str("\nevents:\n");
    if up.events.is_empty() {
        text.push_str("none\n");
    } else {
        let mut rows = vec![["TIME", "STATUS", "MESSAGE"].map(String::from).to_vec()];
        for e in &up.events {
            rows.push(vec![
                utc_text(e.unix_ms),
                e.status.to_string(),
                if e.message.is_empty() {
                    "-".to_string()
                } else {
                    e.message.clone()
                },
            ]);
        }
        text.push_str(&client::table_text(&rows));
    }
    text.push_str("\ninstances:\n");
    if up.instances.is_empty() {
        text.push_str("none\n");
    } else {
        let mut rows = vec![["INSTANCE", "REV", "PHASE", "FAILURES", "ROLLBACK"]
            .map(String::from)
            .to_vec()];
        for p in &up.instances {
            rows.push(vec![
                p.instance.to_string(),
                format!("{} -> {}", rev_text(p.from), rev_text(p.to)),
                p.phase.as_str().to_string(),
                p.failures.to_string(),
                if p.in_rollback { "yes" } else { "no" }.to_string(),
            ]);
        }
        text.push_str(&client::table_text(&rows));
    }
    let olds = old_revs(u);
    let diffs = config_diffs(u);
    if olds.is_empty() {
        if !up.instances.is_empty() {
            text.push_str("\nconfig: every instance is new (no older config)\n");
        }
        return text;
    }
    for rev in olds {
        match diffs.iter().find(|d| d.from_rev == rev) {
            Some(d) if d.diff.is_empty() => text.push_str(&format!(
                "\nconfig: rev {rev} -> rev {}: no change\n",
                up.to_rev
            )),
            Some(d) => {
                text.push_str(&format!("\nconfig: rev {rev} -> rev {}:\n", up.to_rev));
                text.push_str(&d.diff);
                if !d.diff.ends_with('\n') {
                    text.push('\n');
                }
            }
            None => text.push_str(&format!(
                "\nconfig: rev {rev} -> rev {}: not known (the scheduler sent no config)\n",
                up.to_rev
            )),
        }
    }
    text
}

// ---------------------------------------------------------------- JSON

#[derive(serde::Serialize)]
struct SettingsJson {
    batch_size: u32,
    max_per_instance_failures: u32,
    max_total_failures: u32,
    watch_secs: u32,
    rollback_on_failure: bool,
    wait_for_batch_completion: bool,
    /// null: no pulse needed.
    pulse_interval_secs: Option<u32>,
    sla_aware: bool,
}

#[derive(serde::Serialize)]
struct InstanceJson {
    instance: u32,
    /// null: the update adds the instance.
    from_rev: Option<Rev>,
    /// null: the update removes it.
    to_rev: Option<Rev>,
    phase: &'static str,
    failures: u32,
    in_rollback: bool,
}

#[derive(serde::Serialize)]
struct EventJson<'a> {
    unix_ms: u64,
    time: String,
    status: &'static str,
    message: &'a str,
}

#[derive(serde::Serialize)]
struct ConfigJson {
    rev: Rev,
    /// The revision's config as a job file (with the update's instances before or after).
    job_file: String,
}

#[derive(serde::Serialize)]
struct UpdateJson<'a> {
    job_key: &'a str,
    update_id: u64,
    status: &'static str,
    settings: SettingsJson,
    instances_before: u32,
    instances_after: u32,
    to_rev: Rev,
    failed_instances: u32,
    in_flight: u32,
    created_unix_ms: u64,
    updated_unix_ms: u64,
    instances: Vec<InstanceJson>,
    events: Vec<EventJson<'a>>,
    configs: Vec<ConfigJson>,
    diffs: Vec<ConfigDiff>,
}

impl<'a> UpdateJson<'a> {
    fn new(u: &'a UpdateInfoView) -> Self {
        let up = &u.update;
        let s = &up.settings;
        UpdateJson {
            job_key: &u.job_key,
            update_id: up.id,
            status: up.status.as_str(),
            settings: SettingsJson {
                batch_size: s.batch_size,
                max_per_instance_failures: s.max_per_instance_failures,
                max_total_failures: s.max_total_failures,
                watch_secs: s.watch_secs,
                rollback_on_failure: s.rollback_on_failure,
                wait_for_batch_completion: s.wait_for_batch_completion,
                pulse_interval_secs: s.pulse_interval_secs,
                sla_aware: s.sla_aware,
            },
            instances_before: up.instances_before,
            instances_after: up.instances_after,
            to_rev: up.to_rev,
            failed_instances: up.failed_instances,
            in_flight: u.in_flight,
            created_unix_ms: up.created_unix_ms,
            updated_unix_ms: up.updated_unix_ms,
            instances: up
                .instances
                .iter()
                .map(|p| InstanceJson {
                    instance: p.instance,
                    from_rev: p.from,
                    to_rev: p.to,
                    phase: p.phase.as_str(),
                    failures: p.failures,
                    in_rollback: p.in_rollback,
                })
                .collect(),
            events: up
                .events
                .iter()
                .map(|e| EventJson {
                    unix_ms: e.unix_ms,
                    time: utc_text(e.unix_ms),
                    status: e.status.as_str(),
                    message: &e.message,
                })
                .collect(),
            configs: u
                .configs
                .iter()
                .map(|(rev, config)| ConfigJson {
                    rev: *rev,
                    job_file: revision_job_file(up, *rev, config),
                })
                .collect(),
            diffs: config_diffs(u),
        }
    }
}

/// `update info --json` (and the other commands' `--json`): one line, `{"job_key",
/// "update_id", "status", "settings": {... "pulse_interval_secs": n or null ...},
/// "instances_before", "instances_after", "to_rev", "failed_instances", "in_flight",
/// "created_unix_ms", "updated_unix_ms", "instances": [{"instance", "from_rev", "to_rev",
/// "phase", "failures", "in_rollback"}], "events": [{"unix_ms", "time", "status", "message"}],
/// "configs": [{"rev", "job_file"}], "diffs": [{"from_rev", "to_rev", "diff"}]}`. Revisions
/// that do not exist (an added or removed instance) are null.
pub fn info_json(u: &UpdateInfoView) -> String {
    serde_json::to_string(&UpdateJson::new(u)).expect("plain data always serializes")
}

/// `update list --json`: one line, an array of `info --json` objects in job and update order
/// (their instances, events, configs and diffs empty for every job's updates).
pub fn list_json(updates: &[UpdateInfoView]) -> String {
    let mut sorted: Vec<&UpdateInfoView> = updates.iter().collect();
    sorted.sort_by(|a, b| (&a.job_key, a.update.id).cmp(&(&b.job_key, b.update.id)));
    let json: Vec<UpdateJson<'_>> = sorted.into_iter().map(UpdateJson::new).collect();
    serde_json::to_string(&json).expect("plain data always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use borealis_core::update::{InstanceProgress, JobUpdate, UpdateEvent, UpdateStatus};
    use serde_json::json;

    fn spec(text: &str) -> JobSpec {
        borealis_core::jobfile::parse_job_file("www/prod/web".parse().unwrap(), text).unwrap()
    }

    const V1: &str = r#"instances = 3
command = "./web --v1"
[resources]
cpu = 0.5
ram = "128MiB"
disk = "64MiB"
"#;

    const V2: &str = r#"instances = 4
command = "./web --v2"
[resources]
cpu = 1
ram = "128MiB"
disk = "64MiB"
"#;

    fn progress(
        instance: u32,
        from: Option<Rev>,
        to: Option<Rev>,
        phase: InstancePhase,
    ) -> InstanceProgress {
        InstanceProgress {
            instance,
            from,
            to,
            phase,
            failures: 0,
            in_rollback: false,
        }
    }

    fn sample() -> UpdateInfoView {
        UpdateInfoView {
            job_key: "www/prod/web".into(),
            update: JobUpdate {
                id: 7,
                job: "www/prod/web".into(),
                settings: UpdateSettings {
                    batch_size: 2,
                    pulse_interval_secs: Some(60),
                    ..UpdateSettings::default()
                },
                status: UpdateStatus::RollingForward,
                instances_before: 3,
                instances_after: 4,
                to_rev: 2,
                instances: vec![
                    progress(0, Some(1), Some(2), InstancePhase::Succeeded),
                    InstanceProgress {
                        failures: 1,
                        ..progress(1, Some(1), Some(2), InstancePhase::InFlight)
                    },
                    progress(2, Some(1), Some(2), InstancePhase::Waiting),
                    progress(3, None, Some(2), InstancePhase::Waiting),
                ],
                failed_instances: 0,
                created_unix_ms: 1_700_000_000_000,
                updated_unix_ms: 1_700_000_060_000,
                events: vec![UpdateEvent {
                    unix_ms: 1_700_000_000_000,
                    status: UpdateStatus::RollingForward,
                    message: "deploy 42".into(),
                }],
                last_pulse_us: None,
                watching: Vec::new(),
            },
            in_flight: 1,
            configs: vec![(1, spec(V1).config), (2, spec(V2).config)],
        }
    }

    #[test]
    fn progress_counts_succeeded_in_flight_and_failed() {
        assert_eq!(
            progress_text(&sample()),
            "1/4 succeeded, 1 in flight, 0 failed"
        );
        let mut summary = sample();
        summary.update.instances.clear();
        assert_eq!(progress_text(&summary), "1 in flight, 0 failed");
    }

    #[test]
    fn the_list_is_a_table_in_job_and_update_order() {
        let mut older = sample();
        older.update.id = 6;
        older.update.status = UpdateStatus::RolledForward;
        older.update.instances.clear();
        older.in_flight = 0;
        older.update.created_unix_ms = 1_699_000_000_000;
        older.update.updated_unix_ms = 1_699_000_100_000;
        let mut other = sample();
        other.job_key = "api/prod/gw".into();
        other.update.id = 1;
        other.update.status = UpdateStatus::RollForwardPaused;
        assert_eq!(
            list_text(&[sample(), older, other]),
            "\
JOB           UPDATE  STATUS               INSTANCES  PROGRESS                              CREATED               LAST CHANGE
api/prod/gw   1       ROLL_FORWARD_PAUSED  3 -> 4     1/4 succeeded, 1 in flight, 0 failed  2023-11-14T22:13:20Z  2023-11-14T22:14:20Z
www/prod/web  6       ROLLED_FORWARD       3 -> 4     0 in flight, 0 failed                 2023-11-03T08:26:40Z  2023-11-03T08:28:20Z
www/prod/web  7       ROLLING_FORWARD      3 -> 4     1/4 succeeded, 1 in flight, 0 failed  2023-11-14T22:13:20Z  2023-11-14T22:14:20Z
"
        );
        assert_eq!(list_text(&[]), "no updates\n");
    }

    #[test]
    fn the_diff_is_unified_between_job_files() {
        let diffs = config_diffs(&sample());
        assert_eq!(diffs.len(), 1);
        assert_eq!((diffs[0].from_rev, diffs[0].to_rev), (1, 2));
        let diff = &diffs[0].diff;
        assert!(diff.starts_with("--- rev 1\n+++ rev 2\n@@ "), "{diff}");
        for line in [
            "-instances = 3",
            "+instances = 4",
            "-command = \"./web --v1\"",
            "+command = \"./web --v2\"",
            "-cpu = 0.5",
            "+cpu = 1.0",
        ] {
            assert!(diff.lines().any(|l| l == line), "{line:?} not in\n{diff}");
        }
        // Unchanged lines are context, not changes.
        assert!(diff.lines().any(|l| l == " ram = \"128MiB\""), "{diff}");
        // Rendered job files read back as the revision's config.
        let text = job_file_text(4, &spec(V2).config);
        assert_eq!(spec(&text).config, spec(V2).config);
        assert_eq!(unified_diff(V1, V1, 1, 2), "");
    }

    #[test]
    fn several_old_revisions_each_diff_against_the_new_one() {
        let mut u = sample();
        u.update.instances[2].from = Some(3);
        let v3 = V1.replace("--v1", "--v1b");
        u.configs.push((3, spec(&v3).config));
        let diffs = config_diffs(&u);
        assert_eq!(
            diffs.iter().map(|d| d.from_rev).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(diffs[1].diff.contains("-command = \"./web --v1b\""));
        let text = info_text(&u);
        assert!(
            text.contains("config: rev 1 -> rev 2:\n--- rev 1\n+++ rev 2\n"),
            "{text}"
        );
        assert!(
            text.contains("config: rev 3 -> rev 2:\n--- rev 3\n+++ rev 2\n"),
            "{text}"
        );
        // A revision whose config was not sent is named, not silently dropped.
        u.configs.retain(|(r, _)| *r != 3);
        let text = info_text(&u);
        assert!(
            text.contains("config: rev 3 -> rev 2: not known (the scheduler sent no config)"),
            "{text}"
        );
    }

    #[test]
    fn info_shows_settings_events_instances_and_the_diff() {
        let text = info_text(&sample());
        let expected_head = "\
update 7 of www/prod/web: ROLLING_FORWARD
created 2023-11-14T22:13:20Z, last change 2023-11-14T22:14:20Z
instances 3 -> 4 (to rev 2); 1/4 succeeded, 1 in flight, 0 failed
settings: batch_size 2, max_per_instance_failures 0, max_total_failures 0, watch_secs 45, rollback_on_failure true, wait_for_batch_completion false, pulse_interval_secs 60, sla_aware false

events:
TIME                  STATUS           MESSAGE
2023-11-14T22:13:20Z  ROLLING_FORWARD  deploy 42

instances:
INSTANCE  REV     PHASE      FAILURES  ROLLBACK
0         1 -> 2  SUCCEEDED  0         no
1         1 -> 2  IN_FLIGHT  1         no
2         1 -> 2  WAITING    0         no
3         - -> 2  WAITING    0         no

config: rev 1 -> rev 2:
--- rev 1
+++ rev 2
";
        assert!(text.starts_with(expected_head), "{text}");
        // Every instance new: nothing to diff.
        let mut fresh = sample();
        for p in &mut fresh.update.instances {
            p.from = None;
        }
        assert!(info_text(&fresh).ends_with("\nconfig: every instance is new (no older config)\n"));
    }

    #[test]
    fn info_json_is_stable() {
        let got: serde_json::Value = serde_json::from_str(&info_json(&sample())).unwrap();
        assert_eq!(got["job_key"], "www/prod/web");
        assert_eq!(got["update_id"], 7);
        assert_eq!(got["status"], "ROLLING_FORWARD");
        assert_eq!(
            got["settings"],
            json!({"batch_size": 2, "max_per_instance_failures": 0, "max_total_failures": 0,
                   "watch_secs": 45, "rollback_on_failure": true,
                   "wait_for_batch_completion": false, "pulse_interval_secs": 60,
                   "sla_aware": false})
        );
        assert_eq!(
            got["instances"][3],
            json!({"instance": 3, "from_rev": null, "to_rev": 2, "phase": "WAITING",
                   "failures": 0, "in_rollback": false})
        );
        assert_eq!(
            got["events"][0],
            json!({"unix_ms": 1_700_000_000_000u64, "time": "2023-11-14T22:13:20Z",
                   "status": "ROLLING_FORWARD", "message": "deploy 42"})
        );
        assert_eq!(got["configs"][0]["rev"], 1);
        assert!(got["configs"][0]["job_file"]
            .as_str()
            .unwrap()
            .starts_with("instances = 3\n"));
        assert!(got["configs"][1]["job_file"]
            .as_str()
            .unwrap()
            .starts_with("instances = 4\n"));
        assert_eq!(got["diffs"][0]["from_rev"], 1);
        assert!(got["diffs"][0]["diff"]
            .as_str()
            .unwrap()
            .starts_with("--- rev 1\n"));
        for key in [
            "instances_before",
            "instances_after",
            "to_rev",
            "failed_instances",
            "in_flight",
            "created_unix_ms",
            "updated_unix_ms",
        ] {
            assert!(got[key].is_u64(), "{key}");
        }
        let text = info_json(&sample());
        assert!(!text.contains('\n'));
        assert!(text.starts_with(r#"{"job_key":"www/prod/web","update_id":7,"status":"#));
        assert_eq!(list_json(&[]), "[]");
        let list: serde_json::Value = serde_json::from_str(&list_json(&[sample()])).unwrap();
        assert_eq!(list[0], got);
    }

    #[test]
    fn info_picks_the_asked_the_active_or_the_latest_update() {
        let job: JobKey = "www/prod/web".parse().unwrap();
        let with = |id, status| {
            let mut u = sample();
            u.update.id = id;
            u.update.status = status;
            u
        };
        let all = vec![
            with(3, UpdateStatus::RollForwardPaused),
            with(4, UpdateStatus::Aborted),
            with(2, UpdateStatus::RolledForward),
        ];
        assert_eq!(pick_update(&job, all.clone(), None).unwrap().update.id, 3);
        assert_eq!(
            pick_update(&job, all.clone(), Some(2)).unwrap().update.id,
            2
        );
        let done = vec![
            with(4, UpdateStatus::Aborted),
            with(5, UpdateStatus::RolledBack),
        ];
        assert_eq!(pick_update(&job, done, None).unwrap().update.id, 5);
        assert_eq!(
            pick_update(&job, all, Some(9)).unwrap_err().to_string(),
            "job www/prod/web has no update 9"
        );
        assert_eq!(
            pick_update(&job, vec![], None).unwrap_err().to_string(),
            "job www/prod/web has no updates"
        );
    }

    /// `borealis update ARGS...`, parsed.
    fn parse(args: &[&str]) -> Result<(String, UpdateCommand), clap::Error> {
        use clap::Parser;
        let argv = ["borealis", "update"].iter().chain(args).copied();
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Command::Update {
                scheduler, command, ..
            } => Ok((scheduler, command)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_commands_parse() {
        let (scheduler, cmd) = parse(&[
            "start",
            "www/prod/web",
            "web.toml",
            "--instances",
            "0-3,7",
            "--message",
            "deploy 42",
            "--json",
            "--scheduler",
            "s:1",
        ])
        .unwrap();
        assert_eq!(scheduler, "s:1");
        match cmd {
            UpdateCommand::Start {
                job_key,
                file,
                instances,
                message,
                json,
            } => {
                assert_eq!(job_key, "www/prod/web");
                assert_eq!(file, PathBuf::from("web.toml"));
                assert_eq!(instances.as_deref(), Some("0-3,7"));
                assert_eq!(message, "deploy 42");
                assert!(json);
            }
            other => panic!("{other:?}"),
        }
        let (scheduler, cmd) = parse(&["start", "www/prod/web", "web.toml"]).unwrap();
        assert_eq!(scheduler, crate::client::DEFAULT_SCHEDULER);
        assert!(
            matches!(&cmd, UpdateCommand::Start { instances: None, message, json: false, .. }
                if message.is_empty()),
            "{cmd:?}"
        );
        for (name, expect) in [
            ("pause", "Pause"),
            ("resume", "Resume"),
            ("abort", "Abort"),
            ("rollback", "Rollback"),
            ("pulse", "Pulse"),
        ] {
            let (_, cmd) = parse(&[name, "www/prod/web", "--message", "why"]).unwrap();
            let text = format!("{cmd:?}");
            assert!(text.starts_with(expect), "{text}");
            assert!(text.contains("job_key: \"www/prod/web\""), "{text}");
            assert!(text.contains("message: \"why\""), "{text}");
        }
        let (_, cmd) = parse(&["pause", "www/prod/web", "--json"]).unwrap();
        assert!(
            matches!(&cmd, UpdateCommand::Pause(a) if a.json && a.message.is_empty()),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["list"]).unwrap();
        assert!(
            matches!(
                cmd,
                UpdateCommand::List {
                    job_key: None,
                    json: false
                }
            ),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["list", "www/prod/web", "--json"]).unwrap();
        assert!(
            matches!(&cmd, UpdateCommand::List { job_key: Some(k), json: true } if k == "www/prod/web"),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["info", "www/prod/web"]).unwrap();
        assert!(
            matches!(
                cmd,
                UpdateCommand::Info {
                    update_id: None,
                    json: false,
                    ..
                }
            ),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["info", "www/prod/web", "7", "--json"]).unwrap();
        assert!(
            matches!(
                cmd,
                UpdateCommand::Info {
                    update_id: Some(7),
                    json: true,
                    ..
                }
            ),
            "{cmd:?}"
        );
        for args in [
            &["start", "www/prod/web"][..],
            &["start"],
            &["pause"],
            &["info"],
            &["info", "www/prod/web", "0"],
            &["info", "www/prod/web", "seven"],
            &["pause", "www/prod/web", "--instances", "1"],
            &["restart", "www/prod/web"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn start_sends_the_file_settings_and_scope_and_commands_send_the_op() {
        use crate::client::tests::{fake_scheduler, frame_of};
        use borealis_net::Encoder;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.toml");
        // No tier named: the scheduler picks it; `[update]` gives the settings.
        std::fs::write(
            &file,
            format!("{V2}[update]\nbatch_size = 2\nwatch_secs = 5\n"),
        )
        .unwrap();
        let (addr, server) =
            fake_scheduler(|_, id| frame_of(&[Encoder::new().update_info(id, &sample()).to_vec()]));
        run(
            &addr,
            UpdateCommand::Start {
                job_key: "www/prod/web".into(),
                file: file.clone(),
                instances: Some("0-2".into()),
                message: "deploy 42".into(),
                json: false,
            },
        )
        .unwrap();
        let expected_settings = UpdateSettings {
            batch_size: 2,
            watch_secs: 5,
            ..UpdateSettings::default()
        };
        match server.join().unwrap() {
            OwnedMessage::StartUpdate {
                job_key,
                instances,
                config,
                tier_unset,
                settings,
                scope,
                message,
            } => {
                assert_eq!(job_key.to_string(), "www/prod/web");
                assert_eq!(instances, 4);
                assert_eq!(config, spec(V2).config);
                assert!(tier_unset);
                assert_eq!(settings, expected_settings);
                assert_eq!(scope, vec![0, 1, 2]);
                assert_eq!(message, "deploy 42");
            }
            other => panic!("{other:?}"),
        }
        // Without `[update]`: Aurora's defaults.
        std::fs::write(&file, V2).unwrap();
        let (addr, server) =
            fake_scheduler(|_, id| frame_of(&[Encoder::new().update_info(id, &sample()).to_vec()]));
        let job: JobKey = "www/prod/web".parse().unwrap();
        let job_file = client::read_job_file(job.clone(), &file).unwrap();
        let info = Client::connect(&addr)
            .unwrap()
            .start_update(
                &job,
                &job_file.spec,
                true,
                &job_file.spec.update.unwrap_or_default(),
                &[],
                "",
            )
            .unwrap();
        assert_eq!(info, sample());
        assert!(matches!(
            server.join().unwrap(),
            OwnedMessage::StartUpdate { settings, scope, tier_unset: false, .. }
                if settings == UpdateSettings::default() && scope.is_empty()
        ));

        let (addr, server) =
            fake_scheduler(|_, id| frame_of(&[Encoder::new().update_info(id, &sample()).to_vec()]));
        let info = Client::connect(&addr)
            .unwrap()
            .update_command(&job, Command::Rollback, "bad build")
            .unwrap();
        assert_eq!(info, sample());
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::UpdateCommand {
                job_key: job.clone(),
                command: Command::Rollback,
                message: "bad build".into(),
            }
        );

        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new().update_list(id, &[sample()]).to_vec()])
        });
        let updates = Client::connect(&addr)
            .unwrap()
            .query_updates(Some(&job), 7, true)
            .unwrap();
        assert_eq!(updates, vec![sample()]);
        assert_eq!(
            server.join().unwrap(),
            OwnedMessage::QueryUpdates {
                job_key: Some(job),
                update_id: 7,
                details: true,
            }
        );

        // A refusal is one line.
        let (addr, server) = fake_scheduler(|_, id| {
            frame_of(&[Encoder::new()
                .error(
                    id,
                    borealis_net::views::ErrorCode::InvalidRequest,
                    "www/prod/web has no active update",
                )
                .to_vec()])
        });
        let error = run(
            &addr,
            UpdateCommand::Pause(CommandArgs {
                job_key: "www/prod/web".into(),
                message: String::new(),
                json: false,
            }),
        )
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "scheduler refused: www/prod/web has no active update"
        );
        server.join().unwrap();
    }

    #[test]
    fn local_mistakes_are_one_line_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let cron = dir.path().join("cron.toml");
        std::fs::write(&cron, format!("cron_schedule = \"0 3 * * *\"\n{V1}")).unwrap();
        let good = dir.path().join("web.toml");
        std::fs::write(&good, V2).unwrap();
        // Nothing listens here: every error below comes before connecting.
        let addr = "127.0.0.1:1";
        let start =
            |job: &str, file: &std::path::Path, instances: Option<&str>| UpdateCommand::Start {
                job_key: job.into(),
                file: file.to_path_buf(),
                instances: instances.map(str::to_string),
                message: String::new(),
                json: false,
            };
        let cases = [
            (
                start("www/prod/web", &cron, None),
                "www/prod/web's file has a cron_schedule: a cron job is changed with \
                 `borealis cron schedule`"
                    .to_string(),
            ),
            (
                start("www/prod/web", &good, Some("3-1")),
                r#"invalid instances "3-1": range "3-1" ends before it starts"#.to_string(),
            ),
            (
                start("www/web", &good, None),
                r#"job key "www/web" must have the form role/environment/name"#.to_string(),
            ),
            (
                start("www/prod/web", &dir.path().join("missing.toml"), None),
                format!(
                    "cannot read job file {}: No such file or directory",
                    dir.path().join("missing.toml").display()
                ),
            ),
        ];
        for (cmd, expected) in cases {
            assert_eq!(format!("{:#}", run(addr, cmd).unwrap_err()), expected);
        }
    }
}
