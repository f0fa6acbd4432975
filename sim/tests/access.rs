//! Issue 10's authorization rules in the simulation: with an auth file, a client without a
//! token is refused; a principal allowed for role `www` may create and kill `www`'s jobs and
//! nothing of role `db` (each refusal one line naming principal, action and role), and a
//! refused request changes nothing on any shard — while every invariant holds at each step.

use std::sync::Arc;

use borealis_core::auth::{token_sha256, AuthPolicy};
use borealis_core::Resources;
use borealis_net::views::ErrorCode;
use borealis_sim::{JobConfig, Reply, Sim};

const WWW: &str = "www-token-0123456789abcdef";
const OPS: &str = "ops-token-0123456789abcdef";

fn policy() -> Arc<AuthPolicy> {
    let text = format!(
        "[[principal]]\nname = \"www-dev\"\ntoken_sha256 = \"{}\"\npermissions = [\"www:*\", \"db:read\"]\n\n\
         [[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\npermissions = [\"*\"]\n",
        token_sha256(WWW),
        token_sha256(OPS)
    );
    Arc::new(AuthPolicy::parse(&text).expect("a valid auth file"))
}

fn refused(reply: Reply, code: ErrorCode, text: &str) {
    match reply {
        Reply::Error { code: got, message } => {
            assert_eq!(got, code, "{message}");
            assert_eq!(message, text);
        }
        other => panic!("expected {code:?} {text:?}, got {other:?}"),
    }
}

#[test]
fn principals_act_only_on_their_roles_and_refusals_change_nothing() {
    for seed in 0..4 {
        let mut sim = Sim::new(seed)
            .shards(2)
            .settings(|f| f.security.auth = Some(policy()))
            .agent(
                "a1",
                Resources {
                    cpu_millis: 4000,
                    ram_mib: 4096,
                    disk_mib: 10_000,
                    ports: 0,
                },
                &[],
            );
        sim.run_until_quiet();
        let job = JobConfig::new(2, 100, 64);

        // No token at all.
        refused(
            sim.create_job_reply("www/devel/web", job.clone()),
            ErrorCode::Unauthenticated,
            "authentication required: this scheduler runs with --auth-file; give a token \
             (--token or BOREALIS_TOKEN)",
        );

        // www-dev: its own role yes, db's no (it may only read db).
        sim.client_token(Some(WWW));
        refused(
            sim.create_job_reply("db/devel/store", job.clone()),
            ErrorCode::PermissionDenied,
            "permission denied: principal \"www-dev\" may not create jobs of role \"db\"",
        );
        sim.create_job("www/devel/web", job.clone())
            .expect("www-dev creates www's job");
        sim.run_until_quiet();
        assert!(
            sim.job_status("db/devel/store").is_err(),
            "seed {seed}: the refused create left nothing"
        );

        // ops creates db's job; www-dev may read it but not kill it.
        sim.client_token(Some(OPS));
        sim.create_job("db/devel/store", job.clone())
            .expect("ops creates db's job");
        sim.run_until_quiet();
        sim.client_token(Some(WWW));
        let before = sim.job_states("db/devel/store");
        assert_eq!(before.len(), 2, "seed {seed}: {before:?}");
        let reply = sim.kill_job("db/devel/store", &[]);
        assert_eq!(
            reply,
            Err(format!(
                "{:?}",
                Reply::Error {
                    code: ErrorCode::PermissionDenied,
                    message: "permission denied: principal \"www-dev\" may not kill jobs of \
                              role \"db\""
                        .into()
                }
            )),
            "seed {seed}"
        );
        sim.advance(2_000);
        assert_eq!(
            sim.job_states("db/devel/store"),
            before,
            "seed {seed}: the refused kill changed nothing"
        );
        // Its own job it may kill.
        sim.kill_job("www/devel/web", &[])
            .expect("www-dev kills www's job");
        sim.run_until_quiet();
        assert!(
            sim.job_states("www/devel/web")
                .iter()
                .all(|(_, s)| s.is_terminal()),
            "seed {seed}"
        );
        // An unknown token: refused, and the connection closed.
        sim.client_token(Some("no-such-token-0123456789"));
        let reply = sim.create_job_reply("www/devel/other", job.clone());
        assert!(
            matches!(reply, Reply::Lost | Reply::Error { .. }),
            "seed {seed}: {reply:?}"
        );
        sim.client_token(Some(OPS));
        assert!(sim.job_status("www/devel/other").is_err(), "seed {seed}");
    }
}
