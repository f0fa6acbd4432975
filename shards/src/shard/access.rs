//! Who a connection is and what it may do: authentication (a client's token, an agent's TLS
//! certificate), authorization of each request per role and action (`core::auth`), and the
//! audit log of accepted mutations.
//!
//! Decided on the connection's shard, before a request is routed to the job's owner: a
//! refused request is answered here and reaches no other shard, so nothing changes. A request
//! that mutates is remembered (by connection and request id) until its answer passes through
//! [`Shard::write_conn`]; an answer that is not an `Error` means it was accepted, and only then
//! is it written to the audit log.

use borealis_core::auth::{Action, AuthPolicy, Principal};
use borealis_net::tls::PeerIdentity;

use crate::audit_log::AuditEntry;

use super::*;

/// Mutations of all this shard's connections awaiting their answer, for the audit log. Past it
/// a mutation is refused as `Overloaded` rather than applied unaudited.
pub(super) const AUDIT_PENDING_MAX: usize = 65_536;
/// Longest audit target text (a kill of many instances, many hosts).
const AUDIT_TARGET_MAX: usize = 512;

/// What a client request asks, for authorization and the audit log.
pub(super) struct Ask {
    pub action: Action,
    /// The role it concerns; `None` for cluster-wide requests.
    pub role: Option<String>,
    /// Whether any authenticated principal may ask it (lists filtered to what it may read,
    /// host status, the cluster's agents).
    pub any_principal: bool,
    pub target: String,
}

/// The role of a job key (its first segment; the whole text when it has none).
pub(super) fn role_of(job_key: &str) -> &str {
    job_key.split('/').next().unwrap_or(job_key)
}

fn ask(action: Action, role: Option<&str>, target: String) -> Ask {
    Ask {
        action,
        role: role.map(str::to_string),
        any_principal: false,
        target,
    }
}

fn anyone(target: &str) -> Ask {
    Ask {
        action: Action::Read,
        role: None,
        any_principal: true,
        target: target.to_string(),
    }
}

fn instances_text(instances: Option<flatbuffers::Vector<'_, u32>>) -> String {
    match instances {
        Some(list) if !list.is_empty() => {
            let mut text = String::from(" instances ");
            for (i, n) in list.iter().enumerate() {
                if text.len() > AUDIT_TARGET_MAX {
                    text.push_str(&format!("... ({} in all)", list.len()));
                    break;
                }
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&n.to_string());
            }
            text
        }
        _ => String::new(),
    }
}

/// The action, role and target of a client's request; `None` for messages that are not a
/// client's (agents', or unknown ones the dispatcher refuses).
pub(super) fn ask_of(message: &wire::Message<'_>) -> Option<Ask> {
    use wire::Payload as P;
    let job = |key: &str, action: Action, more: String| {
        ask(action, Some(role_of(key)), format!("{key}{more}"))
    };
    Some(match message.payload_type() {
        P::CreateJob => {
            let key = message.payload_as_create_job()?.job_key();
            job(key, Action::Create, String::new())
        }
        P::KillJob => {
            let m = message.payload_as_kill_job()?;
            job(m.job_key(), Action::Kill, instances_text(m.instances()))
        }
        P::RestartJob => {
            let m = message.payload_as_restart_job()?;
            job(m.job_key(), Action::Restart, instances_text(m.instances()))
        }
        P::QueryJob => job(
            message.payload_as_query_job()?.job_key(),
            Action::Read,
            String::new(),
        ),
        P::SetQuota => {
            let m = message.payload_as_set_quota()?;
            ask(
                Action::Quota,
                Some(m.role()),
                format!(
                    "quota of {}: cpu {}m ram {} MiB disk {} MiB",
                    m.role(),
                    m.cpu_millis(),
                    m.ram_mib(),
                    m.disk_mib()
                ),
            )
        }
        P::GetQuota => {
            let role = message.payload_as_get_quota()?.role();
            ask(Action::Read, Some(role), format!("quota of {role}"))
        }
        P::StartUpdate => job(
            message.payload_as_start_update()?.job_key(),
            Action::Update,
            " update start".into(),
        ),
        P::UpdateCommand => {
            let m = message.payload_as_update_command()?;
            let op = m.op().variant_name().unwrap_or("?").to_ascii_lowercase();
            job(m.job_key(), Action::Update, format!(" update {op}"))
        }
        P::QueryUpdates => match message.payload_as_query_updates()?.job_key() {
            Some(key) if !key.is_empty() => job(key, Action::Read, String::new()),
            _ => anyone("updates"),
        },
        P::ScheduleCron => job(
            message.payload_as_schedule_cron()?.job_key(),
            Action::Create,
            " cron schedule".into(),
        ),
        P::DescheduleCron => job(
            message.payload_as_deschedule_cron()?.job_key(),
            Action::Kill,
            " cron deschedule".into(),
        ),
        P::StartCron => job(
            message.payload_as_start_cron()?.job_key(),
            Action::Create,
            " cron start".into(),
        ),
        P::HostMaintenance => {
            let m = message.payload_as_host_maintenance()?;
            let op = m.op().variant_name().unwrap_or("?").to_ascii_lowercase();
            if m.op() == wire::MaintenanceOp::Status {
                anyone("host status")
            } else {
                let mut target = format!("hosts {op}:");
                let hosts = m.hosts();
                for h in hosts.iter().flatten() {
                    if target.len() > AUDIT_TARGET_MAX {
                        target.push_str(&format!(" ... ({} in all)", hosts.map_or(0, |l| l.len())));
                        break;
                    }
                    target.push(' ');
                    target.push_str(h);
                }
                ask(Action::Maintenance, None, target)
            }
        }
        P::ListJobs => anyone("jobs"),
        P::ListAgents => anyone("agents"),
        P::QueryTask => anyone("task"),
        _ => return None,
    })
}

impl Shard {
    fn policy(&self) -> Option<&Arc<AuthPolicy>> {
        self.config.security.auth.as_ref()
    }

    fn refuse(&mut self, conn: ConnId, request_id: u64, code: ErrorCode, why: &str) {
        self.metrics().auth_refusals_total.inc();
        if let Some(c) = self.conns.get(&conn) {
            tracing::info!(shard = %self.id, peer = %c.peer, "refused: {why}");
        }
        let bytes = self.encoder.error(request_id, code, why).to_vec();
        self.write_conn(conn, &bytes);
    }

    /// `Authenticate`: a client's token. Without `--auth-file` any token is accepted (and
    /// ignored). An unknown token is refused and the connection closed.
    pub(super) fn authenticate(&mut self, conn: ConnId, request_id: u64, token: &str) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.identity == PeerIdentity::Certified || c.agent.is_some() {
            self.refuse(
                conn,
                request_id,
                ErrorCode::PermissionDenied,
                "an agent (a peer with a certificate of the cluster CA) cannot authenticate as a client",
            );
            return self.close_conn(conn);
        }
        let principal = match self.policy() {
            None => None,
            Some(policy) => match policy.authenticate(token) {
                Some(p) => Some(p),
                None => {
                    self.refuse(
                        conn,
                        request_id,
                        ErrorCode::Unauthenticated,
                        "unknown token: no principal of this scheduler's --auth-file has it",
                    );
                    return self.close_conn(conn);
                }
            },
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.principal = principal;
        }
        let ack = self.encoder.ack(request_id).to_vec();
        self.write_conn(conn, &ack);
    }

    /// May this connection register as an agent? Refuses (and closes) otherwise.
    pub(super) fn admit_agent(&mut self, conn: ConnId, request_id: u64) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        let refusal = if let Some(p) = &c.principal {
            Some((
                ErrorCode::PermissionDenied,
                format!(
                    "agent registration refused: the connection authenticated as client \
                     principal {:?}; a client token cannot register an agent",
                    p.name
                ),
            ))
        } else if self.config.security.tls.is_some() && c.identity != PeerIdentity::Certified {
            Some((
                ErrorCode::Unauthenticated,
                "agent registration refused: the peer presented no certificate of the cluster \
                 CA (start the agent with --tls-cert, --tls-key and --tls-ca)"
                    .to_string(),
            ))
        } else {
            None
        };
        match refusal {
            None => true,
            Some((code, why)) => {
                self.refuse(conn, request_id, code, &why);
                self.close_conn(conn);
                false
            }
        }
    }

    /// Authorizes a client's request; on refusal answers it (nothing else happens) and returns
    /// false. On acceptance of a mutation, remembers it for the audit log.
    pub(super) fn authorize(&mut self, conn: ConnId, message: &wire::Message<'_>) -> bool {
        let request_id = message.request_id();
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        if c.identity == PeerIdentity::Certified || c.agent.is_some() {
            let why = "an agent (a peer with a certificate of the cluster CA, or a registered \
                       agent's connection) cannot act as a client";
            self.refuse(conn, request_id, ErrorCode::PermissionDenied, why);
            self.close_conn(conn);
            return false;
        }
        // Without an auth file or an audit log there is nothing to decide or record.
        if self.policy().is_none() && self.config.security.audit.is_none() {
            return true;
        }
        let Some(ask) = ask_of(message) else {
            // Not a client request: the dispatcher refuses it as unexpected.
            return true;
        };
        let principal: Option<Arc<Principal>> = c.principal.clone();
        let peer = c.peer;
        if self.policy().is_some() {
            let Some(p) = &principal else {
                self.refuse(
                    conn,
                    request_id,
                    ErrorCode::Unauthenticated,
                    "authentication required: this scheduler runs with --auth-file; give a \
                     token (--token or BOREALIS_TOKEN)",
                );
                return false;
            };
            if !ask.any_principal {
                if let Err(denied) = AuthPolicy::check(p, ask.action, ask.role.as_deref()) {
                    self.refuse(
                        conn,
                        request_id,
                        ErrorCode::PermissionDenied,
                        &denied.to_string(),
                    );
                    return false;
                }
            }
        }
        if ask.action.is_mutation() && self.config.security.audit.is_some() {
            if self.pending_audits.len() >= AUDIT_PENDING_MAX {
                self.refuse(
                    conn,
                    request_id,
                    ErrorCode::Overloaded,
                    "too many mutations awaiting their answer: try again",
                );
                return false;
            }
            let name = principal.as_ref().map_or("anonymous", |p| p.name.as_str());
            self.pending_audits.insert(
                (conn, request_id),
                AuditEntry {
                    unix_ms: 0,
                    principal: name.to_string(),
                    peer: Some(peer.to_string()),
                    surface: "binary",
                    action: ask.action.name(),
                    role: ask.role,
                    target: ask.target,
                },
            );
        }
        true
    }

    /// Whether the connection's principal may read `role`'s jobs (always, without auth).
    pub(super) fn may_read(&self, conn: ConnId, role: &str) -> bool {
        if self.policy().is_none() {
            return true;
        }
        self.conns
            .get(&conn)
            .and_then(|c| c.principal.as_ref())
            .is_some_and(|p| p.may_read(role))
    }

    /// The refusal of a read of `role` by the connection's principal.
    pub(super) fn read_denied(&self, conn: ConnId, role: &str) -> String {
        let name = self
            .conns
            .get(&conn)
            .and_then(|c| c.principal.as_ref())
            .map_or("anonymous", |p| p.name.as_str());
        borealis_core::auth::Denied {
            principal: name.to_string(),
            action: Action::Read,
            role: Some(role.to_string()),
        }
        .to_string()
    }

    /// An answer on its way to `conn`: completes the audit of the request it answers.
    pub(super) fn audit_answer(&mut self, conn: ConnId, answer: &[u8]) {
        // Agents' connections (launches, kills: per task) never carry an answer to audit.
        if self.conns.get(&conn).is_none_or(|c| c.agent.is_some()) {
            return;
        }
        let Ok(message) = flatbuffers::root::<wire::Message>(answer) else {
            return;
        };
        let Some(mut entry) = self.pending_audits.remove(&(conn, message.request_id())) else {
            return;
        };
        if message.payload_type() == wire::Payload::Error {
            return;
        }
        let Some(audit) = &self.config.security.audit else {
            return;
        };
        entry.unix_ms = self.unix_ms;
        audit.push(entry);
    }
}
