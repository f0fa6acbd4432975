//! No task outlives its agent.
//!
//! Once an agent is gone the scheduler reschedules its tasks elsewhere, so a survivor would run
//! an instance twice. How the agent makes sure, whatever kills it (SIGKILL, a crash, the OOM
//! killer, a clean exit):
//!
//! - The [`Lifeline`]: a pipe whose write end only the agent process holds (close-on-exec,
//!   never written). The kernel closes it exactly when the agent process dies, and whoever
//!   reads the other end sees end-of-file.
//! - With cgroups, one **reaper** per agent (not per task): `/bin/sh` running [`REAPER_SCRIPT`]
//!   in a session of its own, ignoring the signals a process group or session may be sent,
//!   with the lifeline as its stdin. Its `read` returns when the agent dies; it then kills
//!   every task cgroup of the agent's subtree (v2 `cgroup.kill`; v1 freeze, SIGKILL each
//!   process, thaw, repeated until none is left), so processes that left their task's process
//!   group or session (`setsid`, double forks) die too, then removes the emptied cgroups and
//!   the agent's subtree (a clean shutdown ends the lifeline too, so this is the cleanup). The
//!   agent watches its reaper and starts a new one if it dies (someone SIGKILLed it); and a
//!   restarted agent kills whatever its subtree still holds before it registers
//!   (`Cgroups::sweep`), which covers an agent and a reaper killed together.
//! - Every task's process also has `PR_SET_PDEATHSIG` = SIGKILL, tied to the launcher thread
//!   that spawned it (which lives as long as the agent).
//! - Without cgroups (`--isolation none`), each task gets a **guard** in its process group
//!   instead (the design before cgroups): `sh` reading the lifeline, ignoring the group's
//!   signals, then `kill -KILL 0` on end-of-file. That costs a second process per task and
//!   cannot see processes that leave the group (`setsid`); `--isolation none` says so.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use crate::cgroup::Cgroups;
use crate::spawn::{self, Child, Group, Spawner, Spec};

/// The per-agent reaper (see the module documentation). `$1` is `v1` or `v2`, `$2` the
/// directory whose `task-*` cgroups list the tasks' processes, the rest every hierarchy's
/// subtree (to remove the emptied cgroups).
pub(crate) const REAPER_SCRIPT: &str = r#"trap '' HUP INT QUIT TERM USR1 USR2 ALRM PIPE TSTP
read line
mode=$1; procs=$2; shift 2
pass=0
while [ "$pass" -lt 50 ]; do
  left=0
  for d in "$procs"/task-*; do
    [ -d "$d" ] || continue
    if [ "$mode" = v2 ]; then echo 1 2>/dev/null >"$d/cgroup.kill"
    else echo FROZEN 2>/dev/null >"$d/freezer.state"; fi
    while read p; do kill -KILL "$p" 2>/dev/null; left=1; done <"$d/cgroup.procs"
    [ "$mode" = v2 ] || echo THAWED 2>/dev/null >"$d/freezer.state"
  done
  [ "$left" = 0 ] && break
  pass=$((pass + 1))
  sleep 0.05
done
for dir in "$@"; do for d in "$dir"/task-*; do rmdir "$d" 2>/dev/null; done; rmdir "$dir" 2>/dev/null; done
"#;
/// `$0` of the reaper, what `ps` shows.
const REAPER_NAME: &str = "borealis-reaper";

/// The guard of one task without cgroups: it ignores the group's signals, waits for the
/// lifeline to end, then kills its whole process group (the task's).
const GUARD_SCRIPT: &str =
    "trap '' HUP INT QUIT TERM USR1 USR2 ALRM PIPE TSTP; read line; kill -KILL 0";
const GUARD_NAME: &str = "borealis-task-guard";

/// The signals the reaper and the guards ignore from the moment they start (their scripts'
/// `trap` comes a moment later; ignored dispositions survive exec).
pub(crate) const IGNORED_SIGNALS: [libc::c_int; 9] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGPIPE,
    libc::SIGTSTP,
];

/// A pipe whose write end only the agent holds (see the module documentation). Dropping it
/// has the effect of the agent's death: it must live as long as the agent's tasks should.
pub(crate) struct Lifeline {
    read: OwnedFd,
    /// Never written; held so the pipe ends when the agent does.
    _write: OwnedFd,
}

impl Lifeline {
    pub fn new() -> io::Result<Lifeline> {
        let mut fds = [-1; 2];
        // SAFETY: plain system call filling `fds`; both ends close-on-exec.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Lifeline {
            read,
            _write: write,
        })
    }
}

fn cstrings(parts: &[&[u8]]) -> Result<Vec<CString>, String> {
    parts
        .iter()
        .map(|p| spawn::c_string(p, "an argument"))
        .collect()
}

/// Common spawn of the reaper and the guards: the script with `lifeline` as stdin, `/dev/null`
/// for output, in `/`, with a minimal environment.
fn spawn_script(
    spawner: &mut Spawner,
    lifeline: &Lifeline,
    argv: &[CString],
    group: Group,
) -> Result<Child, String> {
    let env = cstrings(&[b"PATH=/usr/sbin:/usr/bin:/sbin:/bin"])?;
    let root = std::fs::File::open("/").map_err(|e| format!("cannot open /: {e}"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("cannot open /dev/null: {e}"))?;
    spawner.spawn(&Spec {
        argv,
        env: &env,
        cwd: root.as_fd(),
        stdin: lifeline.read.as_fd(),
        stdout: null.as_fd(),
        stderr: null.as_fd(),
        cgroup_procs: &[],
        credentials: None,
        group,
        ignored_signals: &IGNORED_SIGNALS,
        // The reaper must outlive the agent; a guard dies by its own `kill -KILL 0`.
        die_with_parent: false,
    })
}

/// Starts the agent's reaper for `cgroups` (see the module documentation).
pub(crate) fn start_reaper(
    spawner: &mut Spawner,
    lifeline: &Lifeline,
    cgroups: &Cgroups,
) -> Result<Child, String> {
    use std::os::unix::ffi::OsStrExt;
    let (mode, dirs) = cgroups.reaper_args();
    let mut argv: Vec<&[u8]> = vec![
        b"/bin/sh",
        b"-c",
        REAPER_SCRIPT.as_bytes(),
        REAPER_NAME.as_bytes(),
        mode.as_bytes(),
    ];
    argv.extend(dirs.iter().map(|d| d.as_bytes()));
    let argv = cstrings(&argv)?;
    spawn_script(spawner, lifeline, &argv, Group::NewSession)
        .map_err(|e| format!("cannot start the agent's reaper: {e}"))
}

/// Starts the guard of the task whose process group is `pgid` (`--isolation none`).
pub(crate) fn start_guard(
    spawner: &mut Spawner,
    lifeline: &Lifeline,
    pgid: i32,
) -> Result<Child, String> {
    let argv = cstrings(&[
        b"/bin/sh",
        b"-c",
        GUARD_SCRIPT.as_bytes(),
        GUARD_NAME.as_bytes(),
    ])?;
    spawn_script(spawner, lifeline, &argv, Group::Join(pgid))
        .map_err(|e| format!("cannot start the task's guard: {e}"))
}
