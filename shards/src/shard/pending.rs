//! Why pending: the reason a job's PENDING tasks are not placed, computed from the last failed
//! attempt over the whole cluster.
//!
//! The job's owner explains the attempt against the offers it holds at once (core's
//! `PlacementIndex::explain`), and asks every other shard to explain it against theirs (each
//! shard holds its home agents' offers). The answers are merged into one count per reason
//! (`insufficient ram on 812 agents; limit rack:2 reached on 40 agents`). One request per job
//! is in flight at a time, and a job asks again only after its next failed attempt, which the
//! schedule penalty spaces out: the traffic is bounded by the penalty, not by the load.

use borealis_core::placement::PendingReasons;

use super::*;

/// A job's explanation being gathered from the shards.
#[derive(Debug, Default)]
pub(super) struct Explaining {
    /// Identifies the request, so a late answer to an older one is ignored.
    pub(super) epoch: u64,
    /// Shards that have not answered yet.
    pub(super) waiting: usize,
    /// What the answers so far add up to.
    pub(super) reasons: PendingReasons,
}

impl Job {
    /// Publishes an explanation (job status shows it, the metric counts its kind).
    pub(super) fn show_reasons(&mut self, reasons: &PendingReasons) {
        self.pending_reason = Some(reasons.to_string());
        self.pending_kind = reasons.kind();
    }
}

impl Shard {
    /// Explains a job's failed attempt: this shard's offers now, the other shards' by message.
    pub(super) fn explain_pending(&mut self, job: JobIdx) {
        let j = &self.jobs[job];
        let local = self.index.explain(&j.compiled, &j.spread);
        if self.shard_count == 1 {
            self.jobs[job].show_reasons(&local);
            return;
        }
        if self.jobs[job].explaining.waiting > 0 {
            // A request is in flight: its answer comes with the next reason.
            return;
        }
        self.next_explain_epoch += 1;
        let epoch = self.next_explain_epoch;
        let j = &mut self.jobs[job];
        if j.pending_reason.is_none() {
            // Until the other shards answer, say what this shard knows.
            j.show_reasons(&local);
        }
        j.explaining = Explaining {
            epoch,
            waiting: self.shard_count - 1,
            reasons: local,
        };
        let spread = self.index.spread_named(&j.spread);
        let (job_key, config) = (j.key_text.clone(), j.config.clone());
        for peer in ShardId::all(self.shard_count) {
            if peer != self.id {
                self.send(
                    peer,
                    PeerMsg::Explain {
                        job_key: job_key.clone(),
                        epoch,
                        config: config.clone(),
                        spread: spread.clone(),
                    },
                );
            }
        }
    }

    /// A peer asks why a job of its own does not fit the offers this shard holds.
    pub(super) fn explain_for_peer(
        &mut self,
        from: ShardId,
        job_key: Arc<str>,
        epoch: u64,
        config: &TaskConfig,
        spread: &[(String, String, u32)],
    ) {
        let compiled = self.index.compile(config);
        let spread = self.index.spread_from_named(&compiled, spread);
        let reasons = self.index.explain(&compiled, &spread);
        self.send(
            from,
            PeerMsg::Explained {
                job_key,
                epoch,
                reasons,
            },
        );
    }

    /// A peer's part of an explanation this shard asked for.
    pub(super) fn explained(&mut self, job_key: &str, epoch: u64, reasons: PendingReasons) {
        let Ok(key) = job_key.parse::<JobKey>() else {
            return;
        };
        let Some(&job) = self.job_index.get(&key) else {
            return; // the job is gone
        };
        let j = &mut self.jobs[job];
        if j.explaining.epoch != epoch || j.explaining.waiting == 0 {
            return;
        }
        j.explaining.reasons.merge(&reasons);
        j.explaining.waiting -= 1;
        if j.explaining.waiting == 0 {
            // Still blocked: show it; placed meanwhile: the reason was cleared and stays so.
            if j.blocked_due_us != 0 {
                let reasons = std::mem::take(&mut j.explaining.reasons);
                j.show_reasons(&reasons);
            }
        }
    }
}
