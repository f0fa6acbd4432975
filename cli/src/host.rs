//! `borealis host maintenance start|drain|status|end HOST...` (Aurora's `host_maintenance_start`,
//! `host_drain`, `host_status`, `host_activate`): host names are checked before anything is sent;
//! the answer is each host's status, as a table or (`--json`) one JSON object.

use std::time::Duration;

use borealis_core::maintenance::validate_hostname;
use borealis_core::MaintenanceOp;
use borealis_net::views::{HostStatusView, OwnedMessage};

use crate::client::Client;

/// The `borealis host` commands.
#[derive(clap::Subcommand, Debug)]
pub enum HostCommand {
    /// Host maintenance: announce it, drain hosts under their jobs' SLAs, show it, end it.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Announce maintenance: the hosts get no new tasks (SCHEDULED); running ones stay.
    Start {
        #[arg(required = true)]
        hosts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Drain the hosts: their tasks leave as their jobs' SLAs allow and are replaced
    /// elsewhere (DRAINING, then DRAINED).
    Drain {
        #[arg(required = true)]
        hosts: Vec<String>,
        /// Stop waiting for SLAs after this long (e.g. 30min); default: wait for ever.
        #[arg(long, value_parser = crate::parse_duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Show the hosts' maintenance (no host: every host under maintenance).
    Status {
        hosts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// End maintenance: the hosts are back in service (NONE).
    End {
        #[arg(required = true)]
        hosts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(scheduler: &str, cmd: HostCommand) -> anyhow::Result<()> {
    let HostCommand::Maintenance(cmd) = cmd;
    let (op, hosts, timeout, json) = match cmd {
        MaintenanceCommand::Start { hosts, json } => (MaintenanceOp::Start, hosts, None, json),
        MaintenanceCommand::Drain {
            hosts,
            timeout,
            json,
        } => (MaintenanceOp::Drain, hosts, timeout, json),
        MaintenanceCommand::Status { hosts, json } => (MaintenanceOp::Status, hosts, None, json),
        MaintenanceCommand::End { hosts, json } => (MaintenanceOp::End, hosts, None, json),
    };
    for host in &hosts {
        validate_hostname(host).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let timeout_secs = timeout.map_or(0, |t| t.as_secs().max(1));
    let status = Client::connect(scheduler)?.host_maintenance(op, &hosts, timeout_secs)?;
    let out = if json {
        status_json(&status) + "\n"
    } else {
        status_text(&status)
    };
    print!("{out}");
    Ok(())
}

impl Client {
    /// A maintenance request and the hosts' statuses once it is applied everywhere.
    pub fn host_maintenance(
        &mut self,
        op: MaintenanceOp,
        hosts: &[String],
        drain_timeout_secs: u64,
    ) -> anyhow::Result<Vec<HostStatusView>> {
        match self.request(|enc, id| {
            enc.host_maintenance(id, op, hosts, drain_timeout_secs)
                .to_vec()
        })? {
            OwnedMessage::HostStatusList(status) => Ok(status),
            other => Err(crate::client::unexpected(other, "HostMaintenance")),
        }
    }
}

#[derive(serde::Serialize)]
struct BlockerJson<'a> {
    task_id: String,
    job: &'a str,
    instance: u32,
    reason: &'a str,
}

#[derive(serde::Serialize)]
struct HostJson<'a> {
    host: &'a str,
    mode: &'static str,
    active_tasks: u32,
    drain_deadline_ms: u64,
    forced: bool,
    blocked: Vec<BlockerJson<'a>>,
}

/// `{"hosts":[{"host","mode","active_tasks","drain_deadline_ms","forced","blocked":[{"task_id",
/// "job","instance","reason"}]}]}`.
pub fn status_json(status: &[HostStatusView]) -> String {
    let hosts: Vec<HostJson<'_>> = status
        .iter()
        .map(|h| HostJson {
            host: &h.host,
            mode: h.mode.as_str(),
            active_tasks: h.active_tasks,
            drain_deadline_ms: h.drain_deadline_ms,
            forced: h.forced,
            blocked: h
                .blocked
                .iter()
                .map(|b| BlockerJson {
                    task_id: b.task_id.to_string(),
                    job: &b.job_key,
                    instance: b.instance,
                    reason: &b.reason,
                })
                .collect(),
        })
        .collect();
    serde_json::json!({ "hosts": hosts }).to_string()
}

/// One line per host: `HOST  MODE  ACTIVE  DEADLINE  NOTE`.
pub fn status_text(status: &[HostStatusView]) -> String {
    if status.is_empty() {
        return "no host is under maintenance\n".to_string();
    }
    let mut rows = vec![vec![
        "HOST".to_string(),
        "MODE".into(),
        "ACTIVE".into(),
        "DEADLINE".into(),
        "NOTE".into(),
    ]];
    for h in status {
        let deadline = if h.drain_deadline_ms == 0 {
            "-".to_string()
        } else {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(h.drain_deadline_ms),
            )
            .to_string()
        };
        let note = if h.forced {
            "forced (timeout passed)".to_string()
        } else if let Some(b) = h.blocked.first() {
            let more = if h.blocked.len() > 1 {
                format!(" (+{} more)", h.blocked.len() - 1)
            } else {
                String::new()
            };
            format!("{}/{} waits: {}{more}", b.job_key, b.instance, b.reason)
        } else {
            "-".to_string()
        };
        rows.push(vec![
            h.host.clone(),
            h.mode.as_str().to_string(),
            h.active_tasks.to_string(),
            deadline,
            note,
        ]);
    }
    crate::client::table_text(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use borealis_core::{HostMode, TaskId};
    use borealis_net::views::HostBlockerView;

    fn draining() -> HostStatusView {
        HostStatusView {
            host: "h1".into(),
            mode: HostMode::Draining,
            active_tasks: 2,
            blocked: vec![
                HostBlockerView {
                    task_id: TaskId(0xab),
                    job_key: "www/prod/web".into(),
                    instance: 3,
                    reason: "SLA count 2 per 60s: 1 other instance active".into(),
                },
                HostBlockerView {
                    task_id: TaskId(0xac),
                    job_key: "www/prod/web".into(),
                    instance: 4,
                    reason: "the job's coordinator said no".into(),
                },
            ],
            drain_deadline_ms: 0,
            forced: false,
        }
    }

    #[test]
    fn the_table_shows_mode_progress_and_the_first_blocker() {
        let text = status_text(&[draining()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("HOST"));
        assert!(lines[1].contains("DRAINING"), "{text}");
        assert!(lines[1].contains(
            "www/prod/web/3 waits: SLA count 2 per 60s: 1 other instance active (+1 more)"
        ));
        assert_eq!(status_text(&[]), "no host is under maintenance\n");
    }

    #[test]
    fn json_names_every_field() {
        let json: serde_json::Value = serde_json::from_str(&status_json(&[draining()])).unwrap();
        let h = &json["hosts"][0];
        assert_eq!(h["mode"], "DRAINING");
        assert_eq!(h["active_tasks"], 2);
        assert_eq!(h["blocked"][0]["task_id"], "00000000000000ab");
        assert_eq!(h["blocked"][1]["reason"], "the job's coordinator said no");
        assert_eq!(h["blocked"][0]["job"], "www/prod/web");
        assert_eq!(h["blocked"][0]["instance"], 3);
        assert_eq!(h["host"], "h1");
        assert_eq!(h["drain_deadline_ms"], 0);
        assert_eq!(h["forced"], false);
        assert_eq!(status_json(&[]), r#"{"hosts":[]}"#);
    }

    #[test]
    fn the_table_aligns_columns_and_shows_deadlines_and_forced_drains() {
        let mut forced = draining();
        forced.host = "host-two".into();
        forced.mode = HostMode::Drained;
        forced.active_tasks = 0;
        forced.drain_deadline_ms = 1_700_000_000_000;
        forced.forced = true;
        let mut none = draining();
        none.host = "h3".into();
        none.mode = HostMode::None;
        none.active_tasks = 0;
        none.blocked.clear();
        let mut one = draining();
        one.blocked.truncate(1);
        assert_eq!(
            status_text(&[one, forced, none]),
            "\
HOST      MODE      ACTIVE  DEADLINE              NOTE
h1        DRAINING  2       -                     www/prod/web/3 waits: SLA count 2 per 60s: 1 other instance active
host-two  DRAINED   0       2023-11-14T22:13:20Z  forced (timeout passed)
h3        NONE      0       -                     -
"
        );
    }

    /// `borealis host maintenance ARGS...`, parsed.
    fn parse(args: &[&str]) -> Result<(String, MaintenanceCommand), clap::Error> {
        use clap::Parser;
        let argv = ["borealis", "host", "maintenance"]
            .iter()
            .chain(args)
            .copied();
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Command::Host {
                scheduler,
                command: HostCommand::Maintenance(cmd),
                ..
            } => Ok((scheduler, cmd)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn maintenance_commands_parse() {
        let (scheduler, cmd) = parse(&["start", "h1", "h2", "--scheduler", "s:1"]).unwrap();
        assert_eq!(scheduler, "s:1");
        assert!(
            matches!(&cmd, MaintenanceCommand::Start { hosts, json: false } if hosts == &["h1", "h2"]),
            "{cmd:?}"
        );
        let (scheduler, cmd) = parse(&["drain", "h1", "--timeout", "10min", "--json"]).unwrap();
        assert_eq!(scheduler, crate::client::DEFAULT_SCHEDULER);
        assert!(
            matches!(&cmd, MaintenanceCommand::Drain { hosts, timeout: Some(t), json: true }
                if hosts == &["h1"] && *t == Duration::from_secs(600)),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["drain", "h1"]).unwrap();
        assert!(
            matches!(cmd, MaintenanceCommand::Drain { timeout: None, .. }),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["status"]).unwrap();
        assert!(
            matches!(&cmd, MaintenanceCommand::Status { hosts, json: false } if hosts.is_empty()),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["status", "h1", "--json"]).unwrap();
        assert!(
            matches!(&cmd, MaintenanceCommand::Status { hosts, json: true } if hosts == &["h1"]),
            "{cmd:?}"
        );
        let (_, cmd) = parse(&["end", "h3"]).unwrap();
        assert!(
            matches!(&cmd, MaintenanceCommand::End { hosts, .. } if hosts == &["h3"]),
            "{cmd:?}"
        );
        // start, drain and end need a host; only drain takes a timeout, and a duration.
        for args in [
            &["start"][..],
            &["drain"],
            &["end"],
            &["drain", "--timeout", "10min"],
            &["start", "h1", "--timeout", "1min"],
            &["drain", "h1", "--timeout", "soon"],
            &["pause", "h1"],
        ] {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }
}
