//! Cluster-wide questions a client asks one shard: every shard's jobs (`ListJobs`), active
//! updates (a cluster-wide `QueryUpdates`), agents (`ListAgents`), or the one task of an id
//! (`QueryTask`). The connection's shard scatters the question to every shard (itself
//! included), gathers the parts, and answers once all are in.
//!
//! Lists are paged (issue 12): no answer grows with the cluster. A `ListJobs` asks for the
//! jobs whose keys sort after `after`, at most `limit` (`codec::page_limit`: 1,000 unless
//! asked, at most 10,000). Each shard answers with its first `limit` such jobs from its key
//! index (`JobSlab::by_key`: no sort per request), filtered to what the connection's principal
//! may read before the limit applies, so a page is only short at the end and `next` (the last
//! key of the page) never names a job the reader may not see. The gatherer merges the parts
//! as they come, keeping the first `limit`; the page ends early past `LIST_PAGE_BYTES_MAX`
//! encoded bytes. `ListAgents` pages the same way on (hostname, agent id). A cluster-wide
//! `QueryUpdates` lists active updates (at most one a job) and refuses past
//! `UPDATES_LIST_MAX`, pointing at one job's.
//!
//! Gathers in flight are bounded: [`GATHERS_MAX`] on a shard, [`GATHERS_PER_CONN_MAX`] per
//! connection; past either a request is refused at once (`Overloaded`, naming the limit).

use std::collections::BTreeMap;

use borealis_core::HostMode;
use borealis_net::codec::{
    agent_info_bytes, job_summary_bytes, page_limit, LIST_PAGE_BYTES_MAX, UPDATES_LIST_MAX,
};
use borealis_net::views::{AgentInfoView, UpdateInfoView};

use super::*;

/// Cluster-wide requests one shard gathers at once, all its connections together.
pub(super) const GATHERS_MAX: usize = 4_096;
/// Cluster-wide requests one connection may have in flight: a client that pipelines them
/// without reading the answers is refused past it, rather than holding the shard's memory.
pub(super) const GATHERS_PER_CONN_MAX: usize = 16;

/// A scatter-gather in progress on this (the connection's) shard.
pub(super) struct Gather {
    of: GatherAsk,
    waiting: usize,
    /// What came so far; a list is kept merged, in order, and at most its page's limit long.
    part: GatherPart,
    refused: bool,
}

/// The paging a `ListJobs` or `ListAgents` asked for (`Shard::paging_of`).
pub(super) enum Paging {
    Jobs {
        after: Option<Arc<str>>,
        limit: u32,
    },
    Agents {
        after: Option<(Arc<str>, Arc<str>)>,
        limit: u32,
    },
}

/// The gathers in flight on this shard, by connection and request id (in that order, so a
/// connection's are counted by a range).
#[derive(Default)]
pub(super) struct Gathers {
    by_request: BTreeMap<(ConnId, u64), Gather>,
}

impl Gathers {
    pub(super) fn len(&self) -> usize {
        self.by_request.len()
    }

    pub(super) fn retain(&mut self, keep: impl FnMut(&(ConnId, u64), &mut Gather) -> bool) {
        self.by_request.retain(keep);
    }

    pub(super) fn clear(&mut self) {
        self.by_request.clear();
    }

    /// The connection's gathers in flight (counted up to `cap`).
    fn of_conn(&self, conn: ConnId, cap: usize) -> usize {
        self.by_request
            .range((conn, 0)..=(conn, u64::MAX))
            .take(cap)
            .count()
    }
}

/// Merges a shard's page into what came so far (both in `order`) and keeps the first
/// `limit`; true when it dropped some.
fn merge_page<T>(
    page: &mut Vec<T>,
    more: Vec<T>,
    limit: usize,
    order: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> bool {
    if more.is_empty() {
        return false;
    }
    page.extend(more);
    page.sort_by(order);
    let cut = page.len() > limit;
    page.truncate(limit);
    cut
}

/// How many of a page's entries (of these encoded sizes) go in one message: every one up to
/// [`LIST_PAGE_BYTES_MAX`] bytes, and always the first.
fn fitting(sizes: impl Iterator<Item = usize>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for size in sizes {
        bytes += size;
        if n > 0 && bytes > LIST_PAGE_BYTES_MAX {
            break;
        }
        n += 1;
    }
    n
}

fn agent_key(a: &AgentInfoView) -> (&str, &str) {
    (a.hostname.as_str(), a.agent_id.as_str())
}

impl Shard {
    /// The paging a `ListJobs` or `ListAgents` asks for (`None` for other messages).
    pub(super) fn paging_of(message: &wire::Message<'_>) -> Option<Paging> {
        Some(match message.payload_type() {
            wire::Payload::ListJobs => {
                let l = message.payload_as_list_jobs()?;
                Paging::Jobs {
                    after: l.after().filter(|a| !a.is_empty()).map(Arc::from),
                    limit: l.limit(),
                }
            }
            wire::Payload::ListAgents => {
                let l = message.payload_as_list_agents()?;
                Paging::Agents {
                    after: l
                        .after_agent_id()
                        .map(|id| (Arc::from(l.after_hostname().unwrap_or_default()), id.into())),
                    limit: l.limit(),
                }
            }
            _ => return None,
        })
    }

    /// What the connection's principal may see of cluster-wide lists.
    fn read_scope(&self, conn: ConnId) -> ReadScope {
        if self.config.security.auth.is_none() {
            return ReadScope::All;
        }
        match self.conns.get(&conn).and_then(|c| c.principal.clone()) {
            Some(p) => ReadScope::Principal(p),
            // Refused before it gets here; a principal of no permissions reads nothing.
            None => ReadScope::Principal(Arc::new(borealis_core::auth::Principal {
                name: "anonymous".into(),
                permissions: Vec::new(),
            })),
        }
    }

    /// Why a new gather of `conn` must be refused (code and message), if it must.
    fn gather_refusal(&self, conn: ConnId, request_id: u64) -> Option<(ErrorCode, String)> {
        if self.gathers.by_request.contains_key(&(conn, request_id)) {
            return Some((
                ErrorCode::InvalidRequest,
                format!(
                    "request {request_id} is already being answered on this connection: give \
                     each request its own id"
                ),
            ));
        }
        if self.gathers.of_conn(conn, GATHERS_PER_CONN_MAX) >= GATHERS_PER_CONN_MAX {
            return Some((
                ErrorCode::Overloaded,
                format!(
                    "too many cluster-wide requests in flight on this connection: at most \
                     {GATHERS_PER_CONN_MAX} at once (GATHERS_PER_CONN_MAX); read their answers \
                     before sending more"
                ),
            ));
        }
        if self.gathers.len() >= GATHERS_MAX {
            return Some((
                ErrorCode::Overloaded,
                format!(
                    "this scheduler shard is gathering {GATHERS_MAX} cluster-wide requests, its \
                     most at once (GATHERS_MAX): try again"
                ),
            ));
        }
        None
    }

    /// Starts a scatter-gather of `of` over every shard (with the paging a list asked for), or
    /// refuses it at the limits.
    pub(super) fn gather(
        &mut self,
        conn: ConnId,
        request_id: u64,
        of: GatherOf,
        paging: Option<Paging>,
    ) {
        if let Some((code, why)) = self.gather_refusal(conn, request_id) {
            self.metrics().gathers_refused_total.inc();
            let bytes = self.encoder.error(request_id, code, &why).to_vec();
            return self.write_conn(conn, &bytes);
        }
        let ask = match of {
            GatherOf::Jobs => {
                let (after, limit) = match paging {
                    Some(Paging::Jobs { after, limit }) => (after, limit),
                    _ => (None, 0),
                };
                GatherAsk::Jobs {
                    after,
                    limit: page_limit(limit),
                    scope: self.read_scope(conn),
                }
            }
            GatherOf::Agents => {
                let (after, limit) = match paging {
                    Some(Paging::Agents { after, limit }) => (after, limit),
                    _ => (None, 0),
                };
                GatherAsk::Agents {
                    after,
                    limit: page_limit(limit),
                }
            }
            GatherOf::Updates => GatherAsk::Updates {
                scope: self.read_scope(conn),
            },
            GatherOf::Task(id) => GatherAsk::Task(id),
        };
        self.gathers.by_request.insert(
            (conn, request_id),
            Gather {
                of: ask.clone(),
                waiting: self.shard_count,
                part: GatherPart::default(),
                refused: false,
            },
        );
        let reply = ReplyTo {
            shard: self.id,
            conn,
        };
        for shard in ShardId::all(self.shard_count) {
            self.send(
                shard,
                PeerMsg::Gather {
                    reply,
                    request_id,
                    of: ask.clone(),
                },
            );
        }
    }

    /// This shard's part of a scatter-gather.
    pub(super) fn gather_part(&mut self, reply: ReplyTo, request_id: u64, of: GatherAsk) {
        let part = match of {
            GatherAsk::Jobs {
                after,
                limit,
                scope,
            } => {
                let (jobs, more) = self.job_summaries(after.as_deref(), limit, &scope);
                GatherPart {
                    jobs,
                    more,
                    ..GatherPart::default()
                }
            }
            GatherAsk::Updates { scope } => {
                let (updates, more) = self.active_updates_in(&scope);
                GatherPart {
                    updates,
                    more,
                    ..GatherPart::default()
                }
            }
            GatherAsk::Agents { after, limit } => {
                let (agents, more) = self.agent_views(after.as_ref(), limit);
                GatherPart {
                    agents,
                    more,
                    ..GatherPart::default()
                }
            }
            GatherAsk::Task(id) => GatherPart {
                task: self.task_status(id),
                ..GatherPart::default()
            },
        };
        let refused = !self.acting();
        self.send(
            reply.shard,
            PeerMsg::GatherPart {
                conn: reply.conn,
                request_id,
                part,
                refused,
            },
        );
    }

    /// A part arrived; answers once every shard's is in.
    pub(super) fn gather_arrived(
        &mut self,
        conn: ConnId,
        request_id: u64,
        part: GatherPart,
        refused: bool,
    ) {
        let Some(g) = self.gathers.by_request.get_mut(&(conn, request_id)) else {
            return;
        };
        let mut more = part.more;
        match &g.of {
            GatherAsk::Jobs { limit, .. } => {
                more |= merge_page(&mut g.part.jobs, part.jobs, *limit, |a, b| {
                    a.job_key.cmp(&b.job_key)
                });
            }
            GatherAsk::Agents { limit, .. } => {
                more |= merge_page(&mut g.part.agents, part.agents, *limit, |a, b| {
                    agent_key(a).cmp(&agent_key(b))
                });
            }
            GatherAsk::Updates { .. } => {
                g.part.updates.extend(part.updates);
                if g.part.updates.len() > UPDATES_LIST_MAX {
                    // Refused in the end: what is kept need not grow.
                    g.part.updates.truncate(UPDATES_LIST_MAX);
                    more = true;
                }
            }
            GatherAsk::Task(_) => {
                if part.task.is_some() {
                    g.part.task = part.task;
                }
            }
        }
        g.part.more |= more;
        g.refused |= refused;
        g.waiting -= 1;
        if g.waiting > 0 {
            return;
        }
        let Gather {
            of,
            mut part,
            refused,
            ..
        } = self
            .gathers
            .by_request
            .remove(&(conn, request_id))
            .expect("present");
        let bytes = if refused {
            // A shard still taking (or leaving) the lead: no partial answers.
            self.not_leader(request_id)
        } else {
            match of {
                GatherAsk::Jobs { .. } => {
                    let n = fitting(part.jobs.iter().map(job_summary_bytes));
                    let more = part.more || n < part.jobs.len();
                    let next = match n.checked_sub(1) {
                        Some(last) if more => part.jobs[last].job_key.as_str(),
                        _ => "",
                    };
                    self.encoder
                        .job_list_page(request_id, &part.jobs[..n], next)
                        .to_vec()
                }
                GatherAsk::Agents { .. } => {
                    let n = fitting(part.agents.iter().map(agent_info_bytes));
                    let more = part.more || n < part.agents.len();
                    let next = match n.checked_sub(1) {
                        Some(last) if more => Some(agent_key(&part.agents[last])),
                        _ => None,
                    };
                    self.encoder
                        .agent_list_page(request_id, &part.agents[..n], next)
                        .to_vec()
                }
                GatherAsk::Updates { .. } if part.more => {
                    let why = format!(
                        "more than {UPDATES_LIST_MAX} jobs have an active update, more than a \
                         cluster-wide update list shows (UPDATES_LIST_MAX): list one job's \
                         (`borealis update list ROLE/ENV/NAME`)"
                    );
                    self.encoder
                        .error(request_id, ErrorCode::InvalidRequest, &why)
                        .to_vec()
                }
                GatherAsk::Updates { .. } => {
                    part.updates.sort_by(|a, b| a.job_key.cmp(&b.job_key));
                    self.encoder.update_list(request_id, &part.updates).to_vec()
                }
                GatherAsk::Task(id) => match part.task {
                    None => self
                        .encoder
                        .error(
                            request_id,
                            ErrorCode::UnknownJob,
                            &format!("unknown task {id} (no job of this scheduler has it)"),
                        )
                        .to_vec(),
                    Some(status) => {
                        let role = super::access::role_of(&status.job.job_key).to_string();
                        if self.may_read(conn, &role) {
                            let parts = self.encoder.job_status_parts(
                                request_id,
                                &status.job,
                                &status.tasks,
                                borealis_net::codec::JOB_STATUS_PART_BYTES,
                            );
                            return self.reply_parts(
                                ReplyTo {
                                    shard: self.id,
                                    conn,
                                },
                                parts,
                            );
                        }
                        let why = self.read_denied(conn, &role);
                        self.encoder
                            .error(request_id, ErrorCode::PermissionDenied, &why)
                            .to_vec()
                    }
                },
            }
        };
        self.write_conn(conn, &bytes);
    }

    /// This shard's active updates that `scope` shows, and whether there were more than a
    /// cluster-wide list holds (then only that many come).
    fn active_updates_in(&self, scope: &ReadScope) -> (Vec<UpdateInfoView>, bool) {
        let mut updates = self.active_update_views();
        updates.retain(|u| scope.allows(super::access::role_of(&u.job_key)));
        let more = updates.len() > UPDATES_LIST_MAX;
        updates.truncate(UPDATES_LIST_MAX);
        (updates, more)
    }

    /// This shard's first `limit` home agents after `after` in (hostname, agent id) order, as
    /// `ListAgents` shows them, and whether it has more. The agents are selected (not sorted)
    /// first: only those on the page are sorted and viewed.
    fn agent_views(
        &self,
        after: Option<&(Arc<str>, Arc<str>)>,
        limit: usize,
    ) -> (Vec<AgentInfoView>, bool) {
        let mut chosen: Vec<&HomeAgent> = self
            .home_agents
            .values()
            .filter(|a| {
                after.is_none_or(|(host, id)| {
                    (a.hostname.as_ref(), a.name.as_ref()) > (host.as_ref(), id.as_ref())
                })
            })
            .collect();
        let order = |a: &&HomeAgent, b: &&HomeAgent| {
            (a.hostname.as_ref(), a.name.as_ref()).cmp(&(b.hostname.as_ref(), b.name.as_ref()))
        };
        let more = chosen.len() > limit;
        if more {
            chosen.select_nth_unstable_by(limit, order);
            chosen.truncate(limit);
        }
        chosen.sort_by(order);
        let views = chosen
            .into_iter()
            .map(|a| {
                let mut used = Resources::ZERO;
                for r in a.running.values() {
                    used = used.plus(&r.config.resources);
                }
                for r in a.dying.values() {
                    used = used.plus(r);
                }
                let mode = self
                    .hosts
                    .get(a.hostname.as_ref())
                    .map_or(HostMode::None, |h| h.mode);
                AgentInfoView {
                    agent_id: a.name.to_string(),
                    hostname: a.hostname.to_string(),
                    total: a.total,
                    used,
                    active_tasks: a.running.len() as u32,
                    connected: true,
                    mode,
                    attributes: a.attributes.iter().cloned().collect(),
                    log_address: a.log_address.map(|s| s.to_string()).unwrap_or_default(),
                }
            })
            .collect();
        (views, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_merge_in_order_and_keep_the_limit() {
        let mut page = vec![1, 4, 7];
        assert!(!merge_page(&mut page, vec![], 3, Ord::cmp));
        assert!(merge_page(&mut page, vec![2, 3, 9], 4, Ord::cmp));
        assert_eq!(page, vec![1, 2, 3, 4]);
        assert!(!merge_page(&mut page, vec![0], 5, Ord::cmp));
        assert_eq!(page, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_page_ends_past_its_bytes_but_holds_one_at_least() {
        assert_eq!(fitting([10, 20, 30].into_iter()), 3);
        assert_eq!(fitting([LIST_PAGE_BYTES_MAX + 1, 1].into_iter()), 1);
        assert_eq!(
            fitting([LIST_PAGE_BYTES_MAX / 2, LIST_PAGE_BYTES_MAX / 2, 1].into_iter()),
            2
        );
        assert_eq!(fitting(std::iter::empty()), 0);
    }
}
