//! Messages from other shards (and from this shard to itself): one handler per `PeerMsg`.

use super::*;

impl Shard {
    pub(super) fn handle_peer(&mut self, from: ShardId, msg: PeerMsg) {
        match msg {
            PeerMsg::Client { reply, bytes } => self.handle_client(reply, bytes),
            PeerMsg::ClientReply { conn, bytes } => self.write_conn(conn, &bytes),
            PeerMsg::Gather {
                reply,
                request_id,
                of,
            } => self.gather_part(reply, request_id, of),
            PeerMsg::GatherPart {
                conn,
                request_id,
                part,
                refused,
            } => self.gather_arrived(conn, request_id, part, refused),
            PeerMsg::Status { agent, bytes } => {
                // SAFETY: verified by the reader of the agent's connection.
                let message = unsafe { flatbuffers::root_unchecked::<wire::Message>(&bytes) };
                let s = message
                    .payload_as_task_status()
                    .expect("routed as TaskStatus");
                match state_from_wire(s.state()) {
                    Ok(state) => {
                        self.on_status(&Report {
                            agent,
                            task_id: TaskId(s.task_id()),
                            state,
                            exit_code: s.exit_code(),
                            message: s.message().unwrap_or_default(),
                            sandbox: s.sandbox().unwrap_or_default(),
                            adopting: false,
                            usage: s.usage().map(usage_from_wire),
                        });
                    }
                    Err(e) => tracing::warn!("ignoring status: {e}"),
                }
            }
            PeerMsg::Adopt {
                agent,
                report,
                agent_name,
                hostname,
                attributes,
            } => {
                self.agent_names.insert(
                    agent,
                    Arc::new(AgentNames {
                        name: agent_name,
                        hostname,
                    }),
                );
                if !self.agent_attr_ids.contains_key(&agent) {
                    let ids = self.index.intern_attributes(&attributes);
                    self.agent_attr_ids.insert(agent, ids);
                }
                if self.is_ha() {
                    self.adopt_unknown(agent, &report);
                }
                let running = self.tasks.get(&report.task_id).map(|t| {
                    preemption::RunningTask::of(
                        self.id,
                        self.jobs[t.job].config_of(t.rev),
                        &self.tiers,
                    )
                });
                let adopted = self.on_status(&Report {
                    agent,
                    task_id: report.task_id,
                    state: report.state,
                    exit_code: report.exit_code,
                    message: &report.message,
                    sandbox: &report.sandbox,
                    adopting: true,
                    usage: report.usage,
                });
                let (adopted, killed) = match adopted {
                    task_lifecycle::AdoptOutcome::Adopted { resources, ports } => {
                        (Some((resources, ports)), None)
                    }
                    task_lifecycle::AdoptOutcome::Killed { resources } => (None, Some(resources)),
                    task_lifecycle::AdoptOutcome::Nothing => (None, None),
                };
                self.send(
                    from,
                    PeerMsg::AdoptReply {
                        agent,
                        task_id: report.task_id,
                        running: running.filter(|_| adopted.is_some()),
                        adopted,
                        killed,
                    },
                );
            }
            PeerMsg::AdoptReply {
                agent,
                task_id,
                adopted,
                running,
                killed,
            } => {
                if let Some(a) = self.home_agents.get_mut(&agent) {
                    if let Some(running) = running {
                        a.running.insert(task_id, running);
                    }
                    if let OfferWhere::Adopting { waiting, used } = &mut a.offer {
                        *waiting -= 1;
                        if let Some((resources, ports)) = adopted {
                            *used = used.plus(&resources);
                            a.ports_in_use.insert(task_id, ports);
                        }
                        if let Some(resources) = killed {
                            // Still running there until the agent reports its end.
                            *used = used.plus(&resources);
                            a.dying.insert(task_id, resources);
                        }
                    }
                    self.maybe_offer_adopted(agent);
                }
            }
            PeerMsg::Launch {
                agent,
                task_id,
                instance,
                config,
            } => self.home_launch(from, agent, task_id, instance, &config),
            PeerMsg::PortsAssigned { task_id, ports } => {
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.ports = ports;
                    self.log_task(task_id);
                }
            }
            PeerMsg::StatusAck {
                agent,
                task_id,
                state,
            } => {
                if let Some(conn) = self.home_agents.get(&agent).map(|a| a.conn) {
                    self.pending_acks
                        .entry(conn)
                        .or_default()
                        .push((task_id, state));
                }
            }
            PeerMsg::LaunchFailed { task_id } => {
                // The task may have been killed or ended meanwhile.
                if self.may_transition(task_id, TaskState::Lost) {
                    self.transition(task_id, TaskState::Lost, "agent gone before launch");
                }
            }
            PeerMsg::Kill {
                agent,
                task_id,
                job_key,
            } => {
                if let Some(conn) = self.home_agents.get(&agent).map(|a| a.conn) {
                    let bytes = self.encoder.kill_task(task_id, &job_key);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        // A kill is a task id and a job key (bounded): it always fits.
                        if let Err(e) = c.writer.push(bytes) {
                            tracing::error!(shard = %self.id, %task_id, "kill not sent: {e}");
                        }
                    }
                }
            }
            PeerMsg::Release {
                agent,
                task_id,
                resources,
            } => self.home_release(agent, task_id, resources),
            PeerMsg::AgentLost { agent } => self.on_agent_lost(agent),
            PeerMsg::Borrow { demand } => self.lend(from, demand),
            PeerMsg::Explain {
                job_key,
                epoch,
                config,
                spread,
            } => self.explain_for_peer(from, job_key, epoch, &config, &spread),
            PeerMsg::QuotaCheck {
                role,
                token,
                demand,
            } => self.quota_check(from, role, token, demand),
            PeerMsg::QuotaVerdict { token, result } => self.quota_verdict(token, result),
            PeerMsg::QuotaUsage {
                role,
                used,
                settled,
            } => self.quota_usage(from, &role, used, &settled),
            PeerMsg::UsageSnapshot { usage } => {
                if self.acting() {
                    self.usage_snapshot(from, usage);
                }
            }
            PeerMsg::UsageRequest => {
                if self.acting() {
                    self.send_usage_snapshot(Some(from));
                }
            }
            PeerMsg::SetHostModes {
                reply,
                request_id,
                op,
                hosts,
                drain_deadline_unix_ms,
            } => self.set_host_modes(reply, request_id, op, hosts, drain_deadline_unix_ms),
            PeerMsg::HostModesSet {
                conn,
                request_id,
                refusal,
            } => self.host_modes_set(conn, request_id, refusal),
            PeerMsg::HostUpdate { host, state, ack } => self.host_update(from, host, state, ack),
            PeerMsg::HostUpdateApplied { token } => self.host_update_applied(token),
            PeerMsg::HostProgress {
                host,
                epoch,
                active,
                blocked,
            } => self.host_progress(from, host, epoch, active, blocked),
            PeerMsg::Explained {
                job_key,
                epoch,
                reasons,
            } => self.explained(&job_key, epoch, reasons),
            PeerMsg::Lend {
                offers,
                reserved_for: Some(preemptor),
            } => {
                for o in offers {
                    self.take_lent_offer(&o);
                }
                self.place_preemptor(preemptor);
            }
            PeerMsg::SlotSearch(query) => self.find_slot(from, query),
            PeerMsg::SlotFound { token, slot, fits } => self.slot_found(token, slot, fits),
            PeerMsg::SlotClaim {
                agent,
                task_id,
                demand,
                victims,
                hold_ms,
            } => self.claim_slot(from, agent, task_id, demand, victims, hold_ms),
            PeerMsg::Preempt { task_id, preemptor } => self.preempt(task_id, preemptor),
            PeerMsg::Lend {
                offers,
                reserved_for: None,
            } => {
                self.borrow_outstanding = false;
                let got = offers.len();
                for o in offers {
                    self.take_lent_offer(&o);
                    self.retry_blocked_lent(o.free);
                }
                self.placed_since_lend = 0;
                self.metrics().offers_borrowed_total.add(got as u64);
                if got == 0 {
                    // This peer had nothing that fits: ask the next one, after a pause.
                    self.next_lender = self.next_peer(self.next_lender);
                    self.next_borrow_at_us = self.now_us + us(BORROW_BACKOFF);
                }
            }
            PeerMsg::Return { agent, free } => {
                if let Some(a) = self.home_agents.get_mut(&agent) {
                    let free = free.plus(&a.released_while_lent);
                    a.released_while_lent = Resources::ZERO;
                    self.lent_out -= 1;
                    self.offer_home(agent, free);
                }
            }
        }
    }

    /// An offer a peer lent is placed against here until the round ends (`return_borrowed`).
    fn take_lent_offer(&mut self, o: &LentOffer) {
        if !self.host_schedulable(&o.hostname) {
            // Lent before its host went into maintenance: straight back.
            self.send(
                agent_home(o.agent),
                PeerMsg::Return {
                    agent: o.agent,
                    free: o.free,
                },
            );
            return;
        }
        self.agent_names.insert(
            o.agent,
            Arc::new(AgentNames {
                name: o.agent_name.clone(),
                hostname: o.hostname.clone(),
            }),
        );
        self.upsert_offer(o.agent, &o.attributes, o.total, o.free);
        self.borrowed.insert(o.agent);
    }
}
