//! Per-role production quota across shards (Aurora's `QuotaManager`).
//!
//! A role's quota has one owner: shard `route_hash_str(role) % shards` (its `SetQuota` and
//! `GetQuota` route there, and it logs `QuotaSet`). A role's jobs are spread over every shard,
//! so the owner keeps a ledger of what each shard's production jobs of the role hold, as the
//! shards report it (`QuotaUsage`), plus the reservations it granted and that are not settled.
//!
//! A production `CreateJob` is admitted in two steps, by message, and no shard blocks:
//! 1. the job's owner checks everything else, then asks the quota owner (`QuotaCheck`) for the
//!    job's demand; the quota owner admits it when reported use + reservations + demand stay
//!    within the quota (core's `check_quota`), and reserves the demand;
//! 2. the job's owner creates the job (or finds it cannot any more) and reports its new use of
//!    the role with the reservation settled (`QuotaUsage`), in the same round.
//!
//! The ledger is derived state: after a restart (or a new leader) every shard sends the quota
//! owners its use of their roles (`UsageSnapshot`, also on request), and a quota owner admits
//! nothing until every shard has reported, so concurrent creates can never over-admit.

use borealis_core::quota;

use super::*;

/// Creates waiting for the quota owner's verdict, per shard.
pub(super) const QUOTA_WAITS_MAX: usize = 1024;
/// Checks a quota owner holds back until every shard reported its use.
const DEFERRED_CHECKS_MAX: usize = 1024;

/// A client's create waiting for its quota verdict.
pub(super) struct QuotaWait {
    pub(super) reply: ReplyTo,
    pub(super) bytes: Bytes,
    pub(super) role: Arc<str>,
}

/// What a quota owner knows of one role.
#[derive(Debug)]
pub(super) struct RoleBook {
    pub(super) quota: Option<Resources>,
    /// Reported use per shard.
    pub(super) used: Vec<Resources>,
    /// Admitted but not yet settled: (asking shard, token) → demand.
    pub(super) reserved: BTreeMap<(ShardId, u64), Resources>,
}

impl RoleBook {
    fn new(shards: usize) -> RoleBook {
        RoleBook {
            quota: None,
            used: vec![Resources::ZERO; shards],
            reserved: BTreeMap::new(),
        }
    }

    /// Reported use of every shard (ports are not metered).
    pub(super) fn used_total(&self) -> Resources {
        let mut total = self.used.iter().fold(Resources::ZERO, |a, b| a.plus(b));
        total.ports = 0;
        total
    }

    fn committed(&self) -> Resources {
        self.reserved
            .values()
            .fold(self.used_total(), |a, b| a.plus(b))
    }
}

/// Adds per dimension, saturating (quota sums are compared with `u64` in core).
fn plus(a: Resources, b: Resources) -> Resources {
    a.plus(&b)
}

fn minus_saturating(a: Resources, b: Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_sub(b.cpu_millis),
        ram_mib: a.ram_mib.saturating_sub(b.ram_mib),
        disk_mib: a.disk_mib.saturating_sub(b.disk_mib),
        ports: 0,
    }
}

impl Shard {
    fn quota_owner(&self, role: &str) -> ShardId {
        ShardId((borealis_core::route_hash_str(role) % self.shard_count as u64) as usize)
    }

    /// What one job holds against its role's quota: its resources times its instances that
    /// are not retired (killed, or ad-hoc and ended for good), when it is production work.
    /// Counting desired instances rather than running tasks keeps the use exact across a
    /// restart or a failover, before agents have reported their tasks.
    pub(super) fn job_quota_use(&self, job: JobIdx) -> Resources {
        let j = &self.jobs[job];
        if !j.counts_quota {
            return Resources::ZERO;
        }
        let mut demand = quota::job_demand(&j.config.resources, j.unretired);
        demand.ports = 0;
        demand
    }

    /// Retires an instance for good (it must not run again), keeping the job's role's use.
    /// Returns false when it was retired already.
    pub(super) fn retire_instance(&mut self, job: JobIdx, instance: u32) -> bool {
        let j = &mut self.jobs[job];
        let Some(retired) = j.retired.get_mut(instance as usize) else {
            return false;
        };
        if *retired {
            return false;
        }
        *retired = true;
        let before = self.job_quota_use(job);
        self.jobs[job].unretired -= 1;
        if self.jobs[job].counts_quota {
            let after = self.job_quota_use(job);
            let role = self.jobs[job].key.role.clone();
            let usage = self.role_usage.entry(role.clone()).or_default();
            *usage = plus(minus_saturating(*usage, before), after);
            self.dirty_roles.insert(role);
        }
        true
    }

    /// Undoes `retire_instance` (an update adds the instance back): it holds quota again.
    /// Returns whether it was retired.
    pub(super) fn unretire_instance(&mut self, job: JobIdx, instance: u32) -> bool {
        let j = &mut self.jobs[job];
        let Some(retired) = j.retired.get_mut(instance as usize) else {
            return false;
        };
        if !*retired {
            return false;
        }
        *retired = false;
        let before = self.job_quota_use(job);
        self.jobs[job].unretired += 1;
        if self.jobs[job].counts_quota {
            let after = self.job_quota_use(job);
            let role = self.jobs[job].key.role.clone();
            let usage = self.role_usage.entry(role.clone()).or_default();
            *usage = plus(minus_saturating(*usage, before), after);
            self.dirty_roles.insert(role);
        }
        true
    }

    /// Adds a new job's contribution to its role's use.
    pub(super) fn count_job_quota_use(&mut self, job: JobIdx) {
        if !self.jobs[job].counts_quota {
            return;
        }
        let used = self.job_quota_use(job);
        let role = self.jobs[job].key.role.clone();
        let usage = self.role_usage.entry(role.clone()).or_default();
        *usage = plus(*usage, used);
        self.dirty_roles.insert(role);
    }

    /// Removes a job's whole contribution to its role's use (the job is dropped).
    pub(super) fn forget_job_quota_use(&mut self, job: JobIdx) {
        if !self.jobs[job].counts_quota {
            return;
        }
        let before = self.job_quota_use(job);
        let role = self.jobs[job].key.role.clone();
        let usage = self.role_usage.entry(role.clone()).or_default();
        *usage = minus_saturating(*usage, before);
        self.dirty_roles.insert(role);
    }

    /// Step 1 of a production create: ask the quota owner (the request waits for its verdict;
    /// it is refused at once when too many already wait).
    pub(super) fn request_quota(
        &mut self,
        reply: ReplyTo,
        bytes: Bytes,
        request_id: u64,
        role: &str,
        demand: Resources,
    ) {
        if self.quota_waits.len() >= QUOTA_WAITS_MAX {
            let text = format!(
                "too many job creates waiting for a quota check (limit {QUOTA_WAITS_MAX}); retry"
            );
            let bytes = self
                .encoder
                .error(request_id, ErrorCode::Overloaded, &text)
                .to_vec();
            return self.reply(reply, bytes);
        }
        self.next_quota_token += 1;
        let token = self.next_quota_token;
        let role: Arc<str> = role.into();
        self.quota_waits.insert(
            token,
            QuotaWait {
                reply,
                bytes,
                role: role.clone(),
            },
        );
        let owner = self.quota_owner(&role);
        self.send(
            owner,
            PeerMsg::QuotaCheck {
                role,
                token,
                demand,
            },
        );
    }

    /// Step 2: the quota owner's verdict on a create this shard asked for.
    pub(super) fn quota_verdict(&mut self, token: u64, result: Result<(), String>) {
        let Some(wait) = self.quota_waits.remove(&token) else {
            return;
        };
        let settle = (wait.role.to_string(), token);
        match result {
            Ok(()) => self.admit_client(wait.reply, wait.bytes, Some(settle)),
            Err(text) => {
                // Refused: nothing was reserved.
                // SAFETY: verified by the reader of the client's connection.
                let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&wait.bytes) };
                let bytes = self
                    .encoder
                    .error(message.request_id(), ErrorCode::QuotaExceeded, &text)
                    .to_vec();
                self.reply(wait.reply, bytes);
            }
        }
    }

    /// A reservation is done with (the job was created, or turned out not to be): its role's
    /// use goes to the quota owner with the reservation settled, at the end of the round.
    pub(super) fn settle_quota(&mut self, settle: Option<(String, u64)>) {
        if let Some((role, token)) = settle {
            self.dirty_roles.insert(role.clone());
            self.quota_settles.push((role, token));
        }
    }

    /// End of round: each changed role's use (with its settled reservations) to its quota
    /// owner, and the full snapshot when one is due.
    pub(super) fn flush_quota_usage(&mut self) {
        if !self.acting() {
            return;
        }
        if std::mem::take(&mut self.usage_snapshot_due) {
            self.send_usage_snapshot(None);
        }
        if self.dirty_roles.is_empty() {
            return;
        }
        let mut settles: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (role, token) in self.quota_settles.drain(..) {
            settles.entry(role).or_default().push(token);
        }
        let dirty = std::mem::take(&mut self.dirty_roles);
        for role in dirty {
            let used = self.role_usage.get(&role).copied().unwrap_or_default();
            if used == Resources::ZERO {
                self.role_usage.remove(&role);
            }
            let owner = self.quota_owner(&role);
            let settled = settles.remove(&role).unwrap_or_default();
            self.send(
                owner,
                PeerMsg::QuotaUsage {
                    role: role.into(),
                    used,
                    settled,
                },
            );
        }
    }

    /// This shard's use of every role, to each role's quota owner (`to`: one shard only).
    pub(super) fn send_usage_snapshot(&mut self, to: Option<ShardId>) {
        let mut parts: Vec<Vec<(Arc<str>, Resources)>> = vec![Vec::new(); self.shard_count];
        for (role, used) in &self.role_usage {
            parts[self.quota_owner(role).0].push((role.as_str().into(), *used));
        }
        for (shard, usage) in parts.into_iter().enumerate() {
            let shard = ShardId(shard);
            if to.is_none_or(|t| t == shard) {
                self.send(shard, PeerMsg::UsageSnapshot { usage });
            }
        }
    }

    /// Recomputes this shard's use of every role from its jobs (after a restore or taking
    /// the lead) and asks every shard for theirs.
    pub(super) fn rebuild_quota_ledger(&mut self) {
        self.role_usage.clear();
        let jobs: Vec<JobIdx> = self.job_index.values().copied().collect();
        for job in jobs {
            let used = self.job_quota_use(job);
            if used != Resources::ZERO {
                let role = self.jobs[job].key.role.clone();
                let usage = self.role_usage.entry(role).or_default();
                *usage = plus(*usage, used);
            }
        }
        for book in self.quota_book.values_mut() {
            book.used = vec![Resources::ZERO; self.shard_count];
            book.reserved.clear();
        }
        self.usage_reported = vec![false; self.shard_count];
        self.usage_snapshot_due = true;
        for shard in ShardId::all(self.shard_count) {
            self.send(shard, PeerMsg::UsageRequest);
        }
    }

    // ---------------------------------------------------------------- quota owner side

    pub(super) fn book(&mut self, role: &str) -> &mut RoleBook {
        let shards = self.shard_count;
        self.quota_book
            .entry(role.to_string())
            .or_insert_with(|| RoleBook::new(shards))
    }

    /// A shard asks to admit `demand` for `role`.
    pub(super) fn quota_check(
        &mut self,
        from: ShardId,
        role: Arc<str>,
        token: u64,
        demand: Resources,
    ) {
        if !self.usage_reported.iter().all(|r| *r) {
            // The ledger is being rebuilt: answer once every shard has reported.
            if self.deferred_checks.len() >= DEFERRED_CHECKS_MAX {
                let text = "the quota ledger is being rebuilt after a restart; retry".to_string();
                return self.send(
                    from,
                    PeerMsg::QuotaVerdict {
                        token,
                        result: Err(text),
                    },
                );
            }
            self.deferred_checks.push_back((from, role, token, demand));
            return;
        }
        let book = self.book(&role);
        let result = quota::check_quota(&role, book.quota.as_ref(), &book.committed(), &demand)
            .map_err(|e| e.to_string());
        if result.is_ok() {
            book.reserved.insert((from, token), demand);
        }
        self.send(from, PeerMsg::QuotaVerdict { token, result });
    }

    /// A shard's new use of a role, with the reservations it settled.
    pub(super) fn quota_usage(
        &mut self,
        from: ShardId,
        role: &str,
        used: Resources,
        settled: &[u64],
    ) {
        let book = self.book(role);
        book.used[from.0] = used;
        for token in settled {
            book.reserved.remove(&(from, *token));
        }
    }

    /// A shard's use of every role this shard owns (after a restart or a new lead).
    pub(super) fn usage_snapshot(&mut self, from: ShardId, usage: Vec<(Arc<str>, Resources)>) {
        // Reservations stay: they are settled by the shard that holds them (a quota owner that
        // restarted dropped all of its own in `rebuild_quota_ledger`).
        for book in self.quota_book.values_mut() {
            book.used[from.0] = Resources::ZERO;
        }
        for (role, used) in usage {
            self.book(&role).used[from.0] = used;
        }
        self.usage_reported[from.0] = true;
        if self.usage_reported.iter().all(|r| *r) {
            let deferred = std::mem::take(&mut self.deferred_checks);
            for (from, role, token, demand) in deferred {
                self.quota_check(from, role, token, demand);
            }
        }
    }

    /// `SetQuota` on the quota owner: replaces the role's quota (Aurora allows a quota below
    /// the current use: it refuses further production work only). Durable in its log in
    /// embedded mode; under etcd leadership there is no log (`log` does nothing): the quota
    /// was written to etcd before this runs (`admit_client`).
    pub(super) fn set_quota(&mut self, q: wire::SetQuota<'_>) -> Result<Vec<u8>, ClientError> {
        let (role, quota) = quota_from_wire(q)?;
        self.book(role).quota = Some(quota);
        self.log(&LogRecord::QuotaSet {
            role: role.to_string(),
            quota,
        });
        tracing::info!(shard = %self.id, role, ?quota, "quota set");
        Ok(Vec::new())
    }

    /// `GetQuota` on the quota owner.
    pub(super) fn get_quota(&mut self, request_id: u64, role: &str) -> Vec<u8> {
        let (quota, used) = match self.quota_book.get(role) {
            Some(book) => (book.quota, book.used_total()),
            None => (None, Resources::ZERO),
        };
        let view = borealis_net::views::QuotaView {
            role: role.to_string(),
            quota: quota.unwrap_or_default(),
            used,
            quota_set: quota.is_some(),
        };
        self.encoder.quota_info(request_id, &view).to_vec()
    }
}

/// The role and quota a `SetQuota` names, after every check `set_quota` makes.
pub(super) fn quota_from_wire<'a>(
    q: wire::SetQuota<'a>,
) -> Result<(&'a str, Resources), ClientError> {
    let role = q.role();
    JobKey::new(role, "x", "x").map_err(|_| {
        ClientError::InvalidRequest(format!(
            "role {role:?} must be 1..={} characters of [A-Za-z0-9_.-]",
            borealis_core::JOB_KEY_PART_LEN_MAX
        ))
    })?;
    let quota = Resources {
        cpu_millis: q.cpu_millis(),
        ram_mib: q.ram_mib(),
        disk_mib: q.disk_mib(),
        ports: 0,
    };
    Ok((role, quota))
}
