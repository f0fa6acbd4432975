//! A task's sandbox directory: where it is, and creating it without following symlinks.
//!
//! `<work_dir>/sandboxes/<role>/<env>/<name>/<instance>/<task id>`: each part of the job key
//! is a directory of its own, so no two jobs share one (joining them with dots would map
//! `a.b/c/d` and `a/b.c/d` to the same place). Job key parts are `[A-Za-z0-9_.-]+`, which
//! allows `.` and `..`: a part that starts with a dot is written with a `%` before it (`%..`),
//! and since no part can start with `%`, the mapping stays one to one.
//!
//! Creation opens each directory relative to its parent's descriptor with `O_NOFOLLOW |
//! O_DIRECTORY`, so a symlink anywhere on the path (planted by a task user, who owns only its
//! own task directory) fails the launch instead of being followed. The parents belong to the
//! agent (mode 0755); the task directory, its `stdout` and `stderr` belong to the task's
//! user (0750, 0640), so one task's user cannot read or write another's sandbox, nor
//! create anything beside its own.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use borealis_core::{JobKey, TaskId};
use borealis_net::views::LaunchView;

use crate::spawn::Credentials;

/// The directory under the work dir that holds every sandbox.
pub(crate) const SANDBOXES: &str = "sandboxes";

/// A job key part as a directory name (see the module documentation).
fn part(text: &str) -> String {
    if text.starts_with('.') {
        format!("%{text}")
    } else {
        text.to_string()
    }
}

/// Which task a sandbox is for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Of<'a> {
    pub job: &'a JobKey,
    pub instance: u32,
    pub task_id: TaskId,
}

impl<'a> Of<'a> {
    pub fn launch(launch: &'a LaunchView) -> Of<'a> {
        Of {
            job: &launch.job_key,
            instance: launch.instance,
            task_id: launch.task_id,
        }
    }
}

/// The sandbox's path components below the work dir.
fn components(of: Of<'_>) -> [String; 6] {
    [
        SANDBOXES.to_string(),
        part(&of.job.role),
        part(&of.job.environment),
        part(&of.job.name),
        of.instance.to_string(),
        of.task_id.to_string(),
    ]
}

/// The sandbox's path.
pub(crate) fn path(work_dir: &Path, of: Of<'_>) -> PathBuf {
    let mut path = work_dir.to_path_buf();
    for c in components(of) {
        path.push(c);
    }
    path
}

/// `<work_dir>/sandboxes`, held open by a launcher so that creating a sandbox does not walk
/// the work dir's path again for every task.
pub(crate) struct Root {
    work_dir: PathBuf,
    sandboxes: OwnedFd,
}

impl Root {
    /// Opens (making it if needed) the sandboxes directory of `work_dir`, which is the
    /// operator's and may be reached through symlinks.
    pub fn open(work_dir: &Path) -> io::Result<Root> {
        let dir = work_dir.join(SANDBOXES);
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::File::open(&dir)?;
        if !file.metadata()?.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        Ok(Root {
            work_dir: work_dir.to_path_buf(),
            sandboxes: file.into(),
        })
    }
}

/// An open, freshly created sandbox.
pub(crate) struct Sandbox {
    pub path: PathBuf,
    /// The task directory itself (the child's working directory).
    pub dir: OwnedFd,
    pub stdout: File,
    pub stderr: File,
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn os_error<T>(what: impl FnOnce() -> String) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{}: {e}", what())))
}

/// Opens the directory `name` under `parent` without following a symlink.
fn open_dir(parent: RawFd, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the new descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            parent,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat` (an existing directory is fine) then [`open_dir`].
fn make_dir(parent: RawFd, name: &str, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: plain system call.
    if unsafe { libc::mkdirat(parent, c.as_ptr(), mode) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    open_dir(parent, &c)
}

fn chown(fd: RawFd, owner: Option<&Credentials>) -> io::Result<()> {
    let Some(owner) = owner else { return Ok(()) };
    // SAFETY: plain system call.
    if unsafe { libc::fchown(fd, owner.uid, owner.gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates the file `name` in `dir` (it must not exist; never through a symlink).
fn create_file(dir: RawFd, name: &str, owner: Option<&Credentials>) -> io::Result<File> {
    let c = cstr(name)?;
    // SAFETY: plain system call; the new descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o640 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    chown(file.as_raw_fd(), owner)?;
    Ok(file)
}

/// Creates the task's sandbox under `work_dir` (see the module documentation): the parents as
/// needed, the task directory new (an existing one is an error: a task id is never reused),
/// with `stdout` and `stderr`, owned by `owner` (None: the agent's user).
pub(crate) fn create(root: &Root, of: Of<'_>, owner: Option<&Credentials>) -> io::Result<Sandbox> {
    let path = path(&root.work_dir, of);
    let parts = components(of);
    // Below `sandboxes`, which `root` holds open.
    let (task, parents) = parts[1..].split_last().expect("six components");
    let mut so_far = root.work_dir.join(SANDBOXES);
    let mut dir: Option<OwnedFd> = None;
    for name in parents {
        so_far.push(name);
        let parent = dir
            .as_ref()
            .map_or(root.sandboxes.as_raw_fd(), |d| d.as_raw_fd());
        dir = Some(make_dir(parent, name, 0o755).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", so_far.display()))
        })?);
    }
    let dir = dir.expect("four parent directories");
    let c = cstr(task)?;
    // SAFETY: plain system call.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o750) } != 0 {
        return os_error(|| format!("cannot create {}", path.display()));
    }
    let task_dir = open_dir(dir.as_raw_fd(), &c)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    let fail = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    chown(task_dir.as_raw_fd(), owner).map_err(fail)?;
    let stdout = create_file(task_dir.as_raw_fd(), "stdout", owner).map_err(fail)?;
    let stderr = create_file(task_dir.as_raw_fd(), "stderr", owner).map_err(fail)?;
    Ok(Sandbox {
        path,
        dir: task_dir,
        stdout,
        stderr,
    })
}

/// Whether every directory from `/` down to `dir` may be entered by any user (mode o+x), so
/// that tasks running as other users reach their sandboxes. The error names the first that
/// may not.
pub(crate) fn check_searchable(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mut path = PathBuf::new();
    for component in dir.components() {
        path.push(component);
        let meta =
            std::fs::metadata(&path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:o}) may not be entered by other users, so tasks running as their \
                 role's user could not reach their sandboxes; make it and its parents \
                 searchable (chmod o+x) or choose another --work-dir",
                path.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(work: &Path, role: &str, env: &str, name: &str) -> PathBuf {
        let job = JobKey::new(role, env, name).unwrap();
        path(
            work,
            Of {
                job: &job,
                instance: 3,
                task_id: TaskId(0xabc),
            },
        )
    }

    fn make(work: &Path, role: &str, env: &str, name: &str) -> io::Result<Sandbox> {
        let job = JobKey::new(role, env, name).unwrap();
        create(
            &Root::open(work)?,
            Of {
                job: &job,
                instance: 3,
                task_id: TaskId(0xabc),
            },
            None,
        )
    }

    #[test]
    fn paths_do_not_collide_and_dots_cannot_climb() {
        let a = at(Path::new("/w"), "a.b", "c", "d");
        let b = at(Path::new("/w"), "a", "b.c", "d");
        assert_ne!(a, b);
        assert_eq!(
            a,
            Path::new("/w/sandboxes/a.b/c/d/3").join(TaskId(0xabc).to_string())
        );
        let dots = at(Path::new("/w"), "..", ".", ".x");
        assert!(dots.starts_with("/w/sandboxes/%../%./%.x/3"), "{dots:?}");
    }

    #[test]
    fn creates_the_sandbox_and_refuses_symlinks_and_reuse() {
        let work = tempfile::tempdir().unwrap();
        let sandbox = make(work.path(), "r", "e", "n").unwrap();
        assert!(sandbox.path.join("stdout").is_file());
        // The same task again: refused, nothing overwritten.
        assert!(make(work.path(), "r", "e", "n").is_err());
        // A symlink planted where a parent goes is not followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(work.path().join("sandboxes/r/e")).unwrap();
        std::os::unix::fs::symlink(outside.path(), work.path().join("sandboxes/r/e/evil")).unwrap();
        let err = make(work.path(), "r", "e", "evil").err().expect("refused");
        assert!(err.to_string().contains("evil"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
