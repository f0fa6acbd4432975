//! Issue 12 in the simulation: `ListJobs` and `ListAgents` come a page at a time from real
//! shards. Paging a cluster through with a small limit gets every job (agent) exactly once, in
//! order; with an auth file each page holds only what the principal may read, is never short
//! but at the end, and its `next` never names a job the principal may not see.

use std::collections::BTreeSet;
use std::sync::Arc;

use borealis_core::auth::{token_sha256, AuthPolicy};
use borealis_core::Resources;
use borealis_sim::clients::Request;
use borealis_sim::{Event, JobConfig, Reply, Sim};

const WWW: &str = "www-token-0123456789abcdef";
const OPS: &str = "ops-token-0123456789abcdef";

fn policy() -> Arc<AuthPolicy> {
    // www-dev reads www's and db's jobs (and may create only www's); ops reads everything.
    let text = format!(
        "[[principal]]\nname = \"www-dev\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:*\", \"db:read\"]\n\n\
         [[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\npermissions = [\"*\"]\n",
        token_sha256(WWW),
        token_sha256(OPS)
    );
    Arc::new(AuthPolicy::parse(&text).expect("a valid auth file"))
}

fn resources() -> Resources {
    Resources {
        cpu_millis: 4000,
        ram_mib: 4096,
        disk_mib: 10_000,
        ports: 0,
    }
}

/// Sends one request from client 0 and waits for its answer.
fn ask(
    sim: &mut Sim,
    request: Request,
    encode: impl FnOnce(&mut borealis_net::Encoder, u64) -> Vec<u8>,
) -> Reply {
    let world = sim.world();
    let id = world.client_request(0, request, encode);
    for _ in 0..3_000 {
        world
            .apply(&Event::Advance { ms: 0 })
            .expect("invariants hold");
        if let Some(reply) = world.reply(0, id) {
            return reply.clone();
        }
        world.advance(10).expect("invariants hold");
    }
    panic!("no answer to request {id}");
}

/// Every job the client may list, page by page of `limit`, checking each page.
fn list_all(sim: &mut Sim, limit: u32) -> (Vec<String>, usize) {
    let mut keys: Vec<String> = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let request = Request::List {
            acked_before: BTreeSet::new(),
        };
        let page_after = after.clone();
        let reply = ask(sim, request, move |e, id| {
            e.list_jobs_page(id, &page_after, limit).to_vec()
        });
        let Reply::List { jobs, next } = reply else {
            panic!("ListJobs after {after:?}: {reply:?}");
        };
        pages += 1;
        assert!(
            jobs.len() <= limit as usize,
            "{} jobs on a page of {limit}",
            jobs.len()
        );
        let page: Vec<String> = jobs.into_iter().map(|j| j.job_key).collect();
        assert!(page.windows(2).all(|w| w[0] < w[1]), "in order: {page:?}");
        assert!(page.iter().all(|k| *k > after), "after {after:?}: {page:?}");
        if next.is_empty() {
            keys.extend(page);
            return (keys, pages);
        }
        // Not the last page: full, and `next` is its last key.
        assert_eq!(page.len(), limit as usize, "a page before the last is full");
        assert_eq!(page.last(), Some(&next));
        keys.extend(page);
        after = next;
    }
}

fn job_keys() -> Vec<String> {
    let mut keys = Vec::new();
    // Roles whose names extend another's ("www-old" sorts before "www/", "www2" after it):
    // a reader of "www" walks its range alone.
    for role in ["batch", "db", "ops", "www", "www-old", "www2"] {
        for n in 0..5 {
            keys.push(format!("{role}/devel/job{n}"));
        }
    }
    keys
}

#[test]
fn paging_every_job_gets_each_once_in_order() {
    for seed in 0..3 {
        let mut sim = Sim::new(seed).shards(3).agent("a1", resources(), &[]);
        let mut keys = job_keys();
        for key in &keys {
            sim.create_job(key, JobConfig::new(1, 10, 16)).unwrap();
        }
        keys.sort();
        for limit in [1, 4, 7, 30, 1000] {
            let (listed, pages) = list_all(&mut sim, limit);
            assert_eq!(listed, keys, "seed {seed} limit {limit}");
            // No empty last page: a page says there are more only when there are.
            assert_eq!(
                pages,
                keys.len().div_ceil(limit as usize),
                "seed {seed} limit {limit}"
            );
        }
    }
}

#[test]
fn pages_hold_only_what_the_principal_reads_and_next_never_names_the_rest() {
    for seed in 0..3 {
        let mut sim = Sim::new(seed)
            .shards(2)
            .settings(|f| f.security.auth = Some(policy()))
            .agent("a1", resources(), &[]);
        sim.client_token(Some(OPS));
        let mut keys = job_keys();
        for key in &keys {
            sim.create_job(key, JobConfig::new(1, 10, 16)).unwrap();
        }
        keys.sort();
        // ops reads every job.
        for limit in [2, 5] {
            assert_eq!(list_all(&mut sim, limit).0, keys, "seed {seed}");
        }
        // www-dev reads www's and db's only: not www-old's, www2's, batch's or ops'.
        sim.client_token(Some(WWW));
        let readable: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with("www/") || k.starts_with("db/"))
            .cloned()
            .collect();
        for limit in [1, 2, 3, 4, 100] {
            // `list_all` checks every page but the last is full and ends with its `next`: so
            // no `next` names a job www-dev may not read.
            let (listed, _) = list_all(&mut sim, limit);
            assert_eq!(listed, readable, "seed {seed} limit {limit}");
        }
        // A cursor inside an unreadable role's range goes on past it.
        let request = Request::List {
            acked_before: BTreeSet::new(),
        };
        let reply = ask(&mut sim, request, |e, id| {
            e.list_jobs_page(id, "ops/devel/job2", 2).to_vec()
        });
        let Reply::List { jobs, next } = reply else {
            panic!("{reply:?}");
        };
        let page: Vec<&str> = jobs.iter().map(|j| j.job_key.as_str()).collect();
        assert_eq!(page, ["www/devel/job0", "www/devel/job1"], "seed {seed}");
        assert_eq!(next, "www/devel/job1");
    }
}

#[test]
fn agents_page_in_hostname_order_each_once() {
    for seed in 0..3 {
        let mut builder = Sim::new(seed).shards(3);
        let mut expected = Vec::new();
        for i in [5, 3, 9, 1, 7, 2, 8, 4, 6, 0] {
            let name = format!("agent{i}");
            builder = builder.agent(&name, resources(), &[]);
            expected.push(name);
        }
        let mut sim = builder;
        sim.run_until_quiet();
        expected.sort();
        for limit in [1, 3, 4, 10, 50] {
            let mut listed: Vec<String> = Vec::new();
            let mut after: Option<(String, String)> = None;
            loop {
                let a = after.clone();
                let reply = ask(&mut sim, Request::ListAgents, move |e, id| {
                    e.list_agents_page(id, a.as_ref().map(|(h, n)| (h.as_str(), n.as_str())), limit)
                        .to_vec()
                });
                let Reply::Agents { agents, next } = reply else {
                    panic!("ListAgents: {reply:?}");
                };
                assert!(agents.len() <= limit as usize);
                let page: Vec<(String, String)> = agents
                    .iter()
                    .map(|a| (a.hostname.clone(), a.agent_id.clone()))
                    .collect();
                assert!(page.windows(2).all(|w| w[0] < w[1]), "{page:?}");
                assert!(after.as_ref().is_none_or(|a| page.iter().all(|p| p > a)));
                assert!(agents
                    .iter()
                    .all(|a| a.hostname == format!("{}.sim", a.agent_id)));
                listed.extend(agents.into_iter().map(|a| a.agent_id));
                match next {
                    None => break,
                    Some(next) => {
                        assert_eq!(page.len(), limit as usize);
                        assert_eq!(page.last(), Some(&next));
                        after = Some(next);
                    }
                }
            }
            assert_eq!(listed, expected, "seed {seed} limit {limit}");
        }
    }
}
