//! Desired-state writes under etcd, one in flight per job.
//!
//! A job's desired state (instances, config, retired instances) is written whole, computed from
//! the job as this shard holds it. Two writes of one job in flight at once would each be
//! computed without the other's change, and the later would undo the earlier (found by the
//! simulation: two kills, or a kill and a retirement, lost a retirement; a create refused with
//! JobExists overwrote the acknowledged job). So a job has at most one write in flight:
//! - a client's create or kill of a job with a write in flight waits (bounded), and is checked
//!   and computed again once that write is applied;
//! - a change without a client (an instance retired, a job pruned) marks the job for one more
//!   write once the one in flight is done;
//! - a terminal status whose instance's retirement is not in etcd yet is acknowledged to its
//!   agent only after a write that includes it succeeded (until then the agent re-reports it,
//!   and a new leader does not start the instance again).
//!
//! A write that fails (etcd refused it) is retried from the sweep.

use super::*;

/// Client requests waiting behind one job's write in flight.
const JOB_WRITE_WAITING_MAX: usize = 256;

/// A client request waiting for its job's write: where to answer, the verified request, and
/// the quota reservation it holds.
pub(super) type WaitingRequest = (ReplyTo, Bytes, Option<(String, u64)>);

/// A terminal status to acknowledge to an agent once its retirement is durable.
pub(super) type Ack = (AgentId, TaskId, TaskState);

/// A job with a write in flight.
#[derive(Default)]
pub(super) struct JobWrites {
    /// Client requests to admit again, in order, once the write is done.
    waiting: VecDeque<WaitingRequest>,
    /// The job changed without a client meanwhile: write it once more.
    resync: bool,
    /// Acknowledgements held until a write including their retirements succeeds.
    acks: Vec<Ack>,
}

impl JobWrites {
    /// The client requests waiting (for a follower to refuse them).
    pub(super) fn waiting_requests(self) -> VecDeque<WaitingRequest> {
        self.waiting
    }
}

impl Shard {
    /// Whether a client's create or kill of `key` must wait for the write in flight; if so it
    /// is queued (or refused when too many wait) and answered later.
    pub(super) fn wait_for_job_write(
        &mut self,
        key: &JobKey,
        reply: ReplyTo,
        bytes: &Bytes,
        settle: &mut Option<(String, u64)>,
    ) -> bool {
        let Some(writes) = self.job_writes.get_mut(key) else {
            return false;
        };
        if writes.waiting.len() >= JOB_WRITE_WAITING_MAX {
            // SAFETY: verified by the reader of the client's connection.
            let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(bytes) };
            let text = format!(
                "job {key}: {JOB_WRITE_WAITING_MAX} changes already wait for its desired-state write; retry"
            );
            let answer = self
                .encoder
                .error(message.request_id(), ErrorCode::Overloaded, &text)
                .to_vec();
            self.reply(reply, answer);
            self.settle_quota(settle.take());
            return true;
        }
        writes
            .waiting
            .push_back((reply, bytes.clone(), settle.take()));
        true
    }

    /// Writes a job's desired state as it now stands (a change without a client): now, or once
    /// the write in flight is done.
    pub(super) fn write_job_desired(&mut self, key: &JobKey) {
        if let Some(writes) = self.job_writes.get_mut(key) {
            writes.resync = true;
            return;
        }
        let desired = self.job_index.get(key).map(|&job| self.desired(job));
        let pending = PendingPersist {
            reply: None,
            request_id: 0,
            bytes: None,
            settle: None,
            key: Some(key.clone()),
        };
        if let Err(e) = self.persist(key, desired, pending) {
            tracing::warn!(shard = %self.id, job = %key, "desired-state write deferred: {e}");
            self.resync_later.entry(key.clone()).or_default();
        }
    }

    /// Acknowledges a terminal status now, or once its job's desired state is durable.
    pub(super) fn ack_terminal(&mut self, job_key: Option<&JobKey>, ack: Ack) {
        if let Some(key) = job_key {
            if let Some(writes) = self.job_writes.get_mut(key) {
                writes.acks.push(ack);
                return;
            }
            if let Some(acks) = self.resync_later.get_mut(key) {
                acks.push(ack);
                return;
            }
        }
        let (agent, task_id, state) = ack;
        self.send(
            agent_home(agent),
            PeerMsg::StatusAck {
                agent,
                task_id,
                state,
            },
        );
    }

    fn send_acks(&mut self, acks: Vec<Ack>) {
        for (agent, task_id, state) in acks {
            self.send(
                agent_home(agent),
                PeerMsg::StatusAck {
                    agent,
                    task_id,
                    state,
                },
            );
        }
    }

    /// A job's write is done (`ok`: etcd has it): release what waited for it.
    pub(super) fn job_write_done(&mut self, key: JobKey, ok: bool) {
        let Some(mut writes) = self.job_writes.remove(&key) else {
            return;
        };
        if ok {
            if let Some(acks) = self.resync_later.remove(&key) {
                writes.acks.extend(acks);
            }
        }
        if writes.resync || !ok {
            // Write the job again (it changed meanwhile, or this write failed): the held
            // acknowledgements wait for that write.
            if ok || writes.resync {
                self.write_job_desired(&key);
            } else {
                self.resync_later.entry(key.clone()).or_default();
            }
            let acks = std::mem::take(&mut writes.acks);
            match self.job_writes.get_mut(&key) {
                Some(next) => next.acks.extend(acks),
                None => self
                    .resync_later
                    .entry(key.clone())
                    .or_default()
                    .extend(acks),
            }
        } else {
            let acks = std::mem::take(&mut writes.acks);
            self.send_acks(acks);
        }
        // The clients that waited, in order: each is checked against the job as it now is.
        while let Some((reply, bytes, settle)) = writes.waiting.pop_front() {
            if let Some(next) = self.job_writes.get_mut(&key) {
                next.waiting.push_back((reply, bytes, settle));
                continue;
            }
            self.admit_client(reply, bytes, settle);
        }
    }

    /// The sweep: jobs whose write failed are written again.
    pub(super) fn retry_job_writes(&mut self) {
        if !matches!(self.mode, Mode::Leader { .. }) {
            return;
        }
        let keys: Vec<JobKey> = self
            .resync_later
            .keys()
            .filter(|k| !self.job_writes.contains_key(*k))
            .cloned()
            .collect();
        for key in keys {
            let acks = self.resync_later.remove(&key).unwrap_or_default();
            self.write_job_desired(&key);
            match self.job_writes.get_mut(&key) {
                Some(writes) => writes.acks.extend(acks),
                None => self.resync_later.entry(key).or_default().extend(acks),
            }
        }
    }
}
