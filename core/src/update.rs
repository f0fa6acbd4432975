//! Rolling job updates (Aurora's `JobUpdate`): settings, statuses, and the pure state machine
//! that decides, from what each instance is doing, which instances to take down next.
//!
//! The updater never touches tasks itself. Each step the shard tells it what every instance in
//! the update's scope is doing ([`InstanceView`]); the updater answers with the instances whose
//! desired configuration changes ([`Action`]) and keeps its own per-instance progress. The shard
//! then kills the instance's current task (if it runs the other configuration) and starts the
//! replacement on the desired configuration once the old one is gone.
//!
//! Rules (Aurora's `UpdateConfig`, tested below and in the simulation):
//! - instances are taken in increasing order; at most `batch_size` are in flight at once. With
//!   `wait_for_batch_completion` a batch must settle entirely before the next starts (Aurora's
//!   batch strategy); without it a new instance starts as soon as one settles (queue strategy);
//! - an instance in flight succeeds once its task on the desired configuration has been RUNNING
//!   (healthy, for a job with a health check: the agent reports RUNNING only then) for
//!   `watch_secs` without interruption; an instance already on the desired configuration and
//!   RUNNING needs no action and succeeds at once; an instance removed by the update succeeds
//!   once its task ended;
//! - each time an in-flight instance's task fails (ends, or leaves RUNNING) counts a failure of
//!   that instance; more than `max_per_instance_failures` makes the instance FAILED, and more
//!   than `max_total_failures` failed instances fail the update: it rolls back when
//!   `rollback_on_failure`, else ends FAILED. A rollback that fails the same way ends FAILED;
//! - rolling back returns every instance the update touched to its configuration before the
//!   update (or removes it, when the update added it), in decreasing order, under the same
//!   batch rules;
//! - with `pulse_interval_secs`, the update progresses only while a pulse arrived within the
//!   interval; otherwise it waits in `*_AWAITING_PULSE`, starting nothing new. A paused update
//!   starts nothing new either. In-flight instances finish on their own in both cases.

use serde::{Deserialize, Serialize};

/// Most instances one update may cover (bounded like a job's instances).
pub const UPDATE_INSTANCES_MAX: u32 = 1 << 20;
/// Longest `watch_secs` and `pulse_interval_secs` accepted (one day).
pub const UPDATE_SECS_MAX: u32 = 86_400;

/// A job file's `[update]` section (Aurora's `UpdateConfig`). Defaults are Aurora's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSettings {
    /// Instances updated at once (Aurora `update_group_size`), >= 1. Default 1.
    pub batch_size: u32,
    /// Failures an instance may have during the update before it counts as failed. Default 0.
    pub max_per_instance_failures: u32,
    /// Failed instances tolerated before the update fails. Default 0.
    pub max_total_failures: u32,
    /// How long a new instance must stay RUNNING (and healthy) to count as updated. Default 45.
    pub watch_secs: u32,
    /// Roll back when the update fails. Default true.
    pub rollback_on_failure: bool,
    /// A batch settles entirely before the next starts. Default false.
    pub wait_for_batch_completion: bool,
    /// When set, the update progresses only within this many seconds of the last pulse.
    pub pulse_interval_secs: Option<u32>,
    /// Instances are taken down only as the job's SLA policy allows. Default false.
    pub sla_aware: bool,
}

impl Default for UpdateSettings {
    fn default() -> Self {
        UpdateSettings {
            batch_size: 1,
            max_per_instance_failures: 0,
            max_total_failures: 0,
            watch_secs: 45,
            rollback_on_failure: true,
            wait_for_batch_completion: false,
            pulse_interval_secs: None,
            sla_aware: false,
        }
    }
}

/// Why update settings were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("update.{field}: {reason}")]
pub struct UpdateSettingsError {
    pub field: &'static str,
    pub reason: String,
}

impl UpdateSettings {
    /// The bounds every update is held to, wherever its settings come from (file or wire).
    /// `max_update_instance_failures` is `--max-update-instance-failures`: the cap on
    /// `max_per_instance_failures` × instances, which bounds what the update may record.
    pub fn validate(
        &self,
        instances: u32,
        max_update_instance_failures: u32,
    ) -> Result<(), UpdateSettingsError> {
        let err = |field, reason: String| Err(UpdateSettingsError { field, reason });
        if self.batch_size == 0 {
            return err("batch_size", "must be at least 1".into());
        }
        if self.watch_secs > UPDATE_SECS_MAX {
            return err("watch_secs", format!("must be at most {UPDATE_SECS_MAX}"));
        }
        match self.pulse_interval_secs {
            Some(0) => return err("pulse_interval_secs", "must be at least 1".into()),
            Some(p) if p > UPDATE_SECS_MAX => {
                return err(
                    "pulse_interval_secs",
                    format!("must be at most {UPDATE_SECS_MAX}"),
                )
            }
            _ => {}
        }
        if instances > 0 && self.max_total_failures >= instances {
            return err(
                "max_total_failures",
                format!(
                    "{} must be less than the {instances} instances the update covers",
                    self.max_total_failures
                ),
            );
        }
        let recorded = u64::from(self.max_per_instance_failures) * u64::from(instances);
        if recorded > u64::from(max_update_instance_failures) {
            return err(
                "max_per_instance_failures",
                format!(
                    "{} failures per instance over {instances} instances exceeds \
                     --max-update-instance-failures ({max_update_instance_failures})",
                    self.max_per_instance_failures
                ),
            );
        }
        Ok(())
    }
}

/// Aurora's `JobUpdateStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UpdateStatus {
    RollingForward,
    RollingBack,
    RollForwardPaused,
    RollBackPaused,
    RollForwardAwaitingPulse,
    RollBackAwaitingPulse,
    RolledForward,
    RolledBack,
    Aborted,
    Error,
    Failed,
}

impl UpdateStatus {
    pub const ALL: [UpdateStatus; 11] = [
        UpdateStatus::RollingForward,
        UpdateStatus::RollingBack,
        UpdateStatus::RollForwardPaused,
        UpdateStatus::RollBackPaused,
        UpdateStatus::RollForwardAwaitingPulse,
        UpdateStatus::RollBackAwaitingPulse,
        UpdateStatus::RolledForward,
        UpdateStatus::RolledBack,
        UpdateStatus::Aborted,
        UpdateStatus::Error,
        UpdateStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStatus::RollingForward => "ROLLING_FORWARD",
            UpdateStatus::RollingBack => "ROLLING_BACK",
            UpdateStatus::RollForwardPaused => "ROLL_FORWARD_PAUSED",
            UpdateStatus::RollBackPaused => "ROLL_BACK_PAUSED",
            UpdateStatus::RollForwardAwaitingPulse => "ROLL_FORWARD_AWAITING_PULSE",
            UpdateStatus::RollBackAwaitingPulse => "ROLL_BACK_AWAITING_PULSE",
            UpdateStatus::RolledForward => "ROLLED_FORWARD",
            UpdateStatus::RolledBack => "ROLLED_BACK",
            UpdateStatus::Aborted => "ABORTED",
            UpdateStatus::Error => "ERROR",
            UpdateStatus::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<UpdateStatus> {
        UpdateStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Not yet in a final state: the job's one active update.
    pub fn is_active(self) -> bool {
        !self.is_terminal()
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            UpdateStatus::RolledForward
                | UpdateStatus::RolledBack
                | UpdateStatus::Aborted
                | UpdateStatus::Error
                | UpdateStatus::Failed
        )
    }

    /// Going back to the configuration before the update.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateStatus::RollingBack
                | UpdateStatus::RollBackPaused
                | UpdateStatus::RollBackAwaitingPulse
        )
    }

    /// Starting new instance updates.
    pub fn is_progressing(self) -> bool {
        matches!(
            self,
            UpdateStatus::RollingForward | UpdateStatus::RollingBack
        )
    }
}

impl std::fmt::Display for UpdateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration revision of a job: each distinct config a job's instances run has one.
pub type Rev = u32;

/// Where an instance is in the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstancePhase {
    /// Not taken yet (in this direction).
    Waiting,
    /// Taken: its desired configuration changed, its task is being replaced or watched.
    InFlight,
    /// Done: on its target configuration and watched (or removed).
    Succeeded,
    /// Failed more often than `max_per_instance_failures`.
    Failed,
}

impl InstancePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            InstancePhase::Waiting => "WAITING",
            InstancePhase::InFlight => "IN_FLIGHT",
            InstancePhase::Succeeded => "SUCCEEDED",
            InstancePhase::Failed => "FAILED",
        }
    }
}

/// One instance of an update's scope: what it ran before, what it runs after, and progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceProgress {
    pub instance: u32,
    /// Its revision before the update (None: the update adds it).
    pub from: Option<Rev>,
    /// Its revision after the update (None: the update removes it).
    pub to: Option<Rev>,
    /// Progress in the current direction (forward, or back once rolling back).
    pub phase: InstancePhase,
    /// Failures in the current direction.
    pub failures: u32,
    /// The rollback covers it (it was taken while rolling forward).
    pub in_rollback: bool,
}

impl InstanceProgress {
    /// The revision the update wants the instance on now (None: it must not run). Before
    /// the update takes it, that is what it ran; rolling back, what it ran before.
    pub fn desired(&self, status: UpdateStatus) -> Option<Rev> {
        let taken = self.phase != InstancePhase::Waiting;
        if status.is_rollback() || (status.is_terminal() && self.in_rollback) {
            // Rolling back: instances the rollback took go back; the others stay forward
            // until it takes them (or, had the forward pass not taken them, were never moved).
            if self.in_rollback && !taken {
                self.to
            } else {
                self.from
            }
        } else if taken {
            self.to
        } else {
            self.from
        }
    }
}

/// A status change, with who asked for it and why (the update's audit trail).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateEvent {
    pub unix_ms: u64,
    pub status: UpdateStatus,
    pub message: String,
}

/// Events kept per update; the first (its creation) and the latest are kept.
pub const UPDATE_EVENTS_MAX: usize = 32;

/// What an instance is doing, as the shard sees it, for one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InstanceView {
    /// The revision of its current live (not terminal) task; None: no live task.
    pub live_rev: Option<Rev>,
    /// That task is RUNNING, since this instant (shard µs).
    pub running_since_us: Option<u64>,
}

/// A change the shard must apply: instance `instance` must now run `rev` (None: not run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    pub instance: u32,
    pub rev: Option<Rev>,
}

/// Why a command does not apply to an update in its status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("update {id} of {job} is {status}: cannot {command}")]
pub struct CommandError {
    pub id: u64,
    pub job: String,
    pub status: UpdateStatus,
    pub command: &'static str,
}

/// An operator's command on an active update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    Abort,
    Rollback,
    Pulse,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Abort => "abort",
            Command::Rollback => "rollback",
            Command::Pulse => "pulse",
        }
    }
}

/// One job update: its settings, status, scope and per-instance progress. The durable part of
/// the updater; `last_pulse_us` is not durable (a restarted scheduler waits for a new pulse).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUpdate {
    /// Increasing per job (1, 2, ...).
    pub id: u64,
    pub job: String,
    pub settings: UpdateSettings,
    pub status: UpdateStatus,
    /// The job's instance count before and after.
    pub instances_before: u32,
    pub instances_after: u32,
    /// The revision the update rolls to.
    pub to_rev: Rev,
    /// The scope, in increasing instance order.
    pub instances: Vec<InstanceProgress>,
    /// Instances that failed in the current direction.
    pub failed_instances: u32,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    pub events: Vec<UpdateEvent>,
    /// When the last pulse arrived (shard µs; None: none since start or restart).
    #[serde(skip)]
    pub last_pulse_us: Option<u64>,
    /// When each in-flight instance's task was first seen RUNNING on its target (shard µs);
    /// not durable: a restarted scheduler watches again from when it sees it.
    #[serde(skip)]
    pub watching: Vec<Option<u64>>,
}

impl JobUpdate {
    /// A new update in ROLLING_FORWARD (or awaiting its first pulse).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        job: String,
        settings: UpdateSettings,
        instances_before: u32,
        instances_after: u32,
        to_rev: Rev,
        scope: impl IntoIterator<Item = (u32, Option<Rev>)>,
        unix_ms: u64,
        message: String,
    ) -> JobUpdate {
        let instances: Vec<InstanceProgress> = scope
            .into_iter()
            .map(|(instance, from)| InstanceProgress {
                instance,
                from,
                to: (instance < instances_after).then_some(to_rev),
                phase: InstancePhase::Waiting,
                failures: 0,
                in_rollback: false,
            })
            .collect();
        debug_assert!(instances.windows(2).all(|w| w[0].instance < w[1].instance));
        let status = if settings.pulse_interval_secs.is_some() {
            UpdateStatus::RollForwardAwaitingPulse
        } else {
            UpdateStatus::RollingForward
        };
        let watching = vec![None; instances.len()];
        JobUpdate {
            id,
            job,
            settings,
            status,
            instances_before,
            instances_after,
            to_rev,
            instances,
            failed_instances: 0,
            created_unix_ms: unix_ms,
            updated_unix_ms: unix_ms,
            events: vec![UpdateEvent {
                unix_ms,
                status,
                message,
            }],
            last_pulse_us: None,
            watching,
        }
    }

    /// Restores the transient parts after a restart (`watching` sized to the scope).
    pub fn restored(mut self) -> JobUpdate {
        self.watching = vec![None; self.instances.len()];
        self.last_pulse_us = None;
        if self.settings.pulse_interval_secs.is_some() {
            self.status = match self.status {
                UpdateStatus::RollingForward => UpdateStatus::RollForwardAwaitingPulse,
                UpdateStatus::RollingBack => UpdateStatus::RollBackAwaitingPulse,
                other => other,
            };
        }
        self
    }

    /// After a failover whose new leader cannot tell which revision an in-flight instance's
    /// task runs: every in-flight instance is taken again (its desired revision goes back to
    /// what it was before it was taken, so the next take replaces whatever runs).
    pub fn retake_in_flight(&mut self) {
        for p in &mut self.instances {
            if p.phase == InstancePhase::InFlight {
                p.phase = InstancePhase::Waiting;
            }
        }
        self.watching = vec![None; self.instances.len()];
    }

    /// The progress of `instance`, if the update covers it.
    pub fn progress(&self, instance: u32) -> Option<&InstanceProgress> {
        self.position(instance).map(|i| &self.instances[i])
    }

    fn position(&self, instance: u32) -> Option<usize> {
        self.instances
            .binary_search_by_key(&instance, |p| p.instance)
            .ok()
    }

    /// The revision the update wants `instance` on (Some(None): it must not run); None when
    /// the update does not cover it.
    pub fn desired(&self, instance: u32) -> Option<Option<Rev>> {
        self.progress(instance).map(|p| p.desired(self.status))
    }

    /// Instances taken and not settled.
    pub fn in_flight(&self) -> usize {
        self.instances
            .iter()
            .filter(|p| p.phase == InstancePhase::InFlight)
            .count()
    }

    fn set_status(&mut self, status: UpdateStatus, unix_ms: u64, message: String) {
        if self.status == status {
            return;
        }
        self.status = status;
        self.updated_unix_ms = unix_ms;
        if self.events.len() >= UPDATE_EVENTS_MAX {
            // Keep the first (creation); drop the oldest after it.
            self.events.remove(1);
        }
        self.events.push(UpdateEvent {
            unix_ms,
            status,
            message,
        });
    }

    /// Applies an operator's command. Returns the actions it implies (none but for a
    /// rollback, whose instances change direction in later steps).
    pub fn command(
        &mut self,
        command: Command,
        now_us: u64,
        unix_ms: u64,
        message: String,
    ) -> Result<(), CommandError> {
        use UpdateStatus::*;
        let refuse = |u: &JobUpdate| CommandError {
            id: u.id,
            job: u.job.clone(),
            status: u.status,
            command: command.as_str(),
        };
        if self.status.is_terminal() {
            return Err(refuse(self));
        }
        let awaiting = |back: bool, u: &JobUpdate| {
            let fresh = u.pulse_fresh(now_us);
            match (back, fresh) {
                (false, true) => RollingForward,
                (false, false) => RollForwardAwaitingPulse,
                (true, true) => RollingBack,
                (true, false) => RollBackAwaitingPulse,
            }
        };
        let next = match (command, self.status) {
            (Command::Pause, RollingForward | RollForwardAwaitingPulse) => RollForwardPaused,
            (Command::Pause, RollingBack | RollBackAwaitingPulse) => RollBackPaused,
            (Command::Resume, RollForwardPaused) => awaiting(false, self),
            (Command::Resume, RollBackPaused) => awaiting(true, self),
            (Command::Abort, _) => Aborted,
            (Command::Rollback, RollingForward | RollForwardPaused | RollForwardAwaitingPulse) => {
                self.begin_rollback();
                awaiting(true, self)
            }
            (Command::Pulse, _) if self.settings.pulse_interval_secs.is_some() => {
                self.last_pulse_us = Some(now_us);
                match self.status {
                    RollForwardAwaitingPulse => RollingForward,
                    RollBackAwaitingPulse => RollingBack,
                    other => other,
                }
            }
            _ => return Err(refuse(self)),
        };
        let message = if message.is_empty() {
            format!("{} by operator", command.as_str())
        } else {
            message
        };
        if command == Command::Pulse && next == self.status {
            return Ok(()); // a pulse of a running update only refreshes it
        }
        self.set_status(next, unix_ms, message);
        Ok(())
    }

    fn pulse_fresh(&self, now_us: u64) -> bool {
        match self.settings.pulse_interval_secs {
            None => true,
            Some(secs) => self
                .last_pulse_us
                .is_some_and(|at| now_us.saturating_sub(at) < u64::from(secs) * 1_000_000),
        }
    }

    /// Turns the update around: instances the forward pass took go back, newest first.
    fn begin_rollback(&mut self) {
        for p in &mut self.instances {
            if p.phase != InstancePhase::Waiting {
                p.in_rollback = true;
                p.phase = InstancePhase::Waiting;
                p.failures = 0;
            }
        }
        for w in &mut self.watching {
            *w = None;
        }
        self.failed_instances = 0;
    }

    /// A task of `instance` failed (ended, or left RUNNING) while the update watched it on
    /// its target. Counts the failure; may fail the instance and then the update.
    pub fn task_failed(&mut self, instance: u32, now_us: u64, unix_ms: u64) {
        let Some(i) = self.position(instance) else {
            return;
        };
        if self.status.is_terminal() || self.instances[i].phase != InstancePhase::InFlight {
            return;
        }
        self.watching[i] = None;
        let p = &mut self.instances[i];
        p.failures += 1;
        if p.failures <= self.settings.max_per_instance_failures {
            return;
        }
        p.phase = InstancePhase::Failed;
        self.failed_instances += 1;
        if self.failed_instances <= self.settings.max_total_failures {
            return;
        }
        let back = self.status.is_rollback();
        let failures = self.instances[i].failures;
        if !back && self.settings.rollback_on_failure {
            let message = format!(
                "rolling back: instance {instance} failed {failures} times; {} failed instances \
                 exceed max_total_failures {}",
                self.failed_instances, self.settings.max_total_failures
            );
            self.begin_rollback();
            // A paused update that fails rolls back paused; a pulsed one keeps its pulse.
            let next = match self.status {
                UpdateStatus::RollForwardPaused => UpdateStatus::RollBackPaused,
                _ if self.pulse_fresh(now_us) => UpdateStatus::RollingBack,
                _ => UpdateStatus::RollBackAwaitingPulse,
            };
            self.set_status(next, unix_ms, message);
        } else {
            let message = format!(
                "failed: instance {instance} failed; {} failed instances exceed \
                 max_total_failures {}{}",
                self.failed_instances,
                self.settings.max_total_failures,
                if back { " while rolling back" } else { "" }
            );
            self.set_status(UpdateStatus::Failed, unix_ms, message);
        }
    }

    /// Ends the update in ERROR (it cannot go on: say why).
    pub fn error(&mut self, unix_ms: u64, message: String) {
        if !self.status.is_terminal() {
            self.set_status(UpdateStatus::Error, unix_ms, message);
        }
    }

    /// One step: settles in-flight instances from what they do, expires the pulse, takes
    /// new instances up to the batch rules (each only if `may_take` allows: the SLA check of
    /// an SLA-aware update), and ends the update when every instance settled. The actions
    /// are the instances whose desired revision changed; `view` answers for every instance
    /// of the scope.
    pub fn step(
        &mut self,
        now_us: u64,
        unix_ms: u64,
        view: &mut dyn FnMut(u32) -> InstanceView,
        may_take: &mut dyn FnMut(u32) -> bool,
        actions: &mut Vec<Action>,
    ) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        let status_before = self.status;
        let phases_before = self.phase_counts();
        let watch_us = u64::from(self.settings.watch_secs) * 1_000_000;
        // Settle what is in flight.
        for i in 0..self.instances.len() {
            if self.instances[i].phase != InstancePhase::InFlight {
                continue;
            }
            let p = &self.instances[i];
            let target = p.desired(self.status);
            let v = view(p.instance);
            if self.settled(i, target, v, now_us, watch_us) {
                self.instances[i].phase = InstancePhase::Succeeded;
                self.watching[i] = None;
            }
        }
        // The pulse.
        if !self.pulse_fresh(now_us) {
            let next = match self.status {
                UpdateStatus::RollingForward => Some(UpdateStatus::RollForwardAwaitingPulse),
                UpdateStatus::RollingBack => Some(UpdateStatus::RollBackAwaitingPulse),
                _ => None,
            };
            if let Some(next) = next {
                let message = format!(
                    "no pulse within pulse_interval_secs {}",
                    self.settings.pulse_interval_secs.unwrap_or(0)
                );
                self.set_status(next, unix_ms, message);
            }
        }
        // Take new instances.
        if self.status.is_progressing() {
            self.take(view, may_take, actions);
        }
        // Done?
        let back = self.status.is_rollback();
        let open = self.instances.iter().any(|p| {
            (!back || p.in_rollback)
                && matches!(p.phase, InstancePhase::Waiting | InstancePhase::InFlight)
        });
        if !open && !self.status.is_terminal() {
            let (status, message) = if back {
                (
                    UpdateStatus::RolledBack,
                    "every instance rolled back".to_string(),
                )
            } else {
                (
                    UpdateStatus::RolledForward,
                    format!(
                        "every instance updated ({} failed, max_total_failures {})",
                        self.failed_instances, self.settings.max_total_failures
                    ),
                )
            };
            self.set_status(status, unix_ms, message);
        }
        !actions.is_empty() || self.status != status_before || self.phase_counts() != phases_before
    }

    /// How many instances are in each phase (cheap change detection).
    fn phase_counts(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for p in &self.instances {
            counts[p.phase as usize] += 1;
        }
        counts
    }

    /// A task of `instance` on its target finished successfully (an ad-hoc job's task ran to
    /// completion): the instance is updated.
    pub fn task_finished(&mut self, instance: u32) {
        let Some(i) = self.position(instance) else {
            return;
        };
        if !self.status.is_terminal() && self.instances[i].phase == InstancePhase::InFlight {
            self.instances[i].phase = InstancePhase::Succeeded;
            self.watching[i] = None;
        }
    }

    /// Whether in-flight instance `i` is done: on `target` and RUNNING for the watch (or, for
    /// a removal, without a live task).
    fn settled(
        &mut self,
        i: usize,
        target: Option<Rev>,
        v: InstanceView,
        now_us: u64,
        watch_us: u64,
    ) -> bool {
        match target {
            None => v.live_rev.is_none(),
            Some(rev) => {
                if v.live_rev != Some(rev) {
                    self.watching[i] = None;
                    return false;
                }
                let Some(since) = v.running_since_us else {
                    self.watching[i] = None;
                    return false;
                };
                // Watched from when this scheduler saw it running (at the earliest, when it
                // started running).
                let from = *self.watching[i].get_or_insert(since);
                now_us.saturating_sub(from) >= watch_us
            }
        }
    }

    fn take(
        &mut self,
        view: &mut dyn FnMut(u32) -> InstanceView,
        may_take: &mut dyn FnMut(u32) -> bool,
        actions: &mut Vec<Action>,
    ) {
        let back = self.status.is_rollback();
        let batch = self.settings.batch_size as usize;
        let mut in_flight = self.in_flight();
        if self.settings.wait_for_batch_completion && in_flight > 0 {
            return;
        }
        let order: Vec<usize> = if back {
            (0..self.instances.len()).rev().collect()
        } else {
            (0..self.instances.len()).collect()
        };
        for i in order {
            if in_flight >= batch {
                break;
            }
            let p = &self.instances[i];
            if p.phase != InstancePhase::Waiting || (back && !p.in_rollback) {
                continue;
            }
            let instance = p.instance;
            let before = p.desired(self.status);
            let target = if back { p.from } else { p.to };
            let v = view(instance);
            // Already where it should be: nothing to take down or watch.
            let already = match target {
                None => v.live_rev.is_none(),
                Some(rev) => {
                    before == Some(rev) && v.live_rev == Some(rev) && v.running_since_us.is_some()
                }
            };
            // Taking an instance down needs the SLA's leave (adding one takes nothing down).
            if !already && v.live_rev.is_some() && !may_take(instance) {
                break;
            }
            if before != target {
                actions.push(Action {
                    instance,
                    rev: target,
                });
            }
            self.watching[i] = None;
            if already {
                self.instances[i].phase = InstancePhase::Succeeded;
            } else {
                self.instances[i].phase = InstancePhase::InFlight;
                in_flight += 1;
            }
        }
    }
}
