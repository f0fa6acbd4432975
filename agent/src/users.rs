//! Which user a task runs as (Aurora's `--executor-user` semantics).
//!
//! - The agent runs as root and `--executor-user` is `root` (the default): a task runs as the
//!   user its job's role names, with that user's primary group and supplementary groups. A
//!   role with no such user on the agent fails the task with a reason naming the role.
//! - `--executor-user` names another user: every task runs as that user ("the executor will
//!   ignore the role setting", as Aurora says), which must exist when the agent starts.
//! - The agent does not run as root: it cannot switch users, so every task runs as the
//!   agent's own user; an `--executor-user` other than `root` or that user is refused at
//!   startup.
//!
//! Lookups go through the system's user database (`getpwnam_r`, `getgrouplist`: NSS, so LDAP
//! too) on the launcher threads, never on the event loop, and are cached for
//! [`CACHE_TTL`] (a user created later is found within it; a bounded number of roles).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use crate::spawn::Credentials;

/// How long a lookup (found or not) is reused.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most roles cached at once (the cache is cleared beyond it).
const CACHE_MAX: usize = 10_000;
/// Most supplementary groups read for a user.
const GROUPS_MAX: usize = 1024;

/// A user from the user database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    pub name: String,
    pub credentials: Credentials,
}

/// Looks `name` up: Ok(None) when there is no such user.
pub(crate) fn lookup(name: &str) -> Result<Option<User>, String> {
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd filled by getpwnam_r, whose strings point into `buf`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // SAFETY: buffers valid for the call.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "cannot look up user {name:?}: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        break;
    }
    if result.is_null() {
        return Ok(None);
    }
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `groups` holds `count` entries.
        let rc = unsafe {
            libc::getgrouplist(c_name.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut count)
        };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            break;
        }
        if groups.len() >= GROUPS_MAX {
            groups.truncate(GROUPS_MAX);
            break;
        }
        groups.resize(
            (count.max(0) as usize).clamp(groups.len() * 2, GROUPS_MAX),
            0,
        );
    }
    Ok(Some(User {
        name: name.to_string(),
        credentials: Credentials {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            groups,
        },
    }))
}

/// The process's effective user (its uid as the name when the user database has none).
pub(crate) fn effective_user() -> User {
    // SAFETY: plain system calls.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // SAFETY: a zeroed passwd filled by getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers valid for the call.
    let rc = unsafe {
        libc::getpwuid_r(
            euid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    let name = if rc == 0 && !result.is_null() {
        // SAFETY: getpwuid_r succeeded: a valid C string in `buf`.
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned()
    } else {
        euid.to_string()
    };
    User {
        name,
        credentials: Credentials {
            uid: euid,
            gid: egid,
            groups: Vec::new(),
        },
    }
}

/// The name of the user this process runs as (`borealis up` names its sample job's role
/// after it).
pub fn current_user_name() -> String {
    effective_user().name
}

/// Who the agent's tasks run as (see the module documentation).
#[derive(Clone, Debug)]
pub(crate) enum RunAs {
    /// The role's user.
    Role,
    /// Every task as this user.
    Forced(User),
    /// The agent's own user (not root): no switching.
    Agent(User),
}

impl RunAs {
    /// Resolves `--executor-user` at startup.
    pub fn resolve(executor_user: &str) -> Result<RunAs, String> {
        // SAFETY: plain system call.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            let me = effective_user();
            if executor_user != "root" && executor_user != me.name {
                return Err(format!(
                    "--executor-user {executor_user}: the agent runs as {} (not root), so it \
                     cannot run tasks as another user",
                    me.name
                ));
            }
            return Ok(RunAs::Agent(me));
        }
        if executor_user == "root" {
            return Ok(RunAs::Role);
        }
        match lookup(executor_user)? {
            Some(user) => Ok(RunAs::Forced(user)),
            None => Err(format!(
                "--executor-user {executor_user}: no such user on this machine"
            )),
        }
    }

    /// Whether tasks may run as users other than the agent's (so sandboxes must be reachable).
    pub fn switches_users(&self) -> bool {
        !matches!(self, RunAs::Agent(_))
    }

    /// For the startup log.
    pub fn describe(&self) -> String {
        match self {
            RunAs::Role => "their role's user".to_string(),
            RunAs::Forced(u) => format!("user {} (--executor-user)", u.name),
            RunAs::Agent(u) => format!("the agent's user {} (not root)", u.name),
        }
    }
}

/// Role → user lookups, cached (see the module documentation).
pub(crate) struct Users {
    run_as: RunAs,
    cache: HashMap<String, (Instant, Option<User>)>,
}

impl Users {
    pub fn new(run_as: RunAs) -> Users {
        Users {
            run_as,
            cache: HashMap::new(),
        }
    }

    /// The user a task of `role` runs as, and whether the agent must switch to it; the error is
    /// the task's failure reason.
    pub fn for_role(&mut self, role: &str, host: &str) -> Result<(User, bool), String> {
        match &self.run_as {
            RunAs::Forced(user) => return Ok((user.clone(), true)),
            RunAs::Agent(user) => return Ok((user.clone(), false)),
            RunAs::Role => {}
        }
        let now = Instant::now();
        let fresh = self
            .cache
            .get(role)
            .filter(|(at, _)| now.duration_since(*at) < CACHE_TTL)
            .map(|(_, user)| user.clone());
        let user = match fresh {
            Some(user) => user,
            None => {
                let user = lookup(role)?;
                if self.cache.len() >= CACHE_MAX {
                    self.cache.clear();
                }
                self.cache.insert(role.to_string(), (now, user.clone()));
                user
            }
        };
        match user {
            Some(user) => Ok((user, true)),
            None => Err(format!(
                "no user {role:?} on agent {host} for role {role} (tasks run as their role's \
                 user; create it, or run every task as one user with --executor-user)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_and_a_missing_user_is_none() {
        let root = lookup("root").unwrap().unwrap();
        assert_eq!(root.credentials.uid, 0);
        assert!(lookup("no-such-user-borealis").unwrap().is_none());
    }

    #[test]
    fn a_role_without_a_user_fails_with_its_name() {
        let mut users = Users::new(RunAs::Role);
        let err = users.for_role("no-such-role-x", "h1").unwrap_err();
        assert!(
            err.starts_with("no user \"no-such-role-x\" on agent h1"),
            "{err}"
        );
        assert_eq!(users.for_role("root", "h1").unwrap().0.credentials.uid, 0);
    }
}
