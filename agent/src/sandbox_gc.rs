//! Garbage collection of ended tasks' sandboxes, after Mesos' `--gc_delay` and
//! `--gc_disk_headroom`.
//!
//! Sandboxes live at `<root>/<role>/<env>/<name>/<instance>/<task>` (`root` is
//! `<work_dir>/sandboxes`); the `<role>/<env>/<name>/<instance>` directory is the sandbox's
//! *instance*. A thread ("borealis-gc") removes the sandboxes of ended tasks:
//!
//! - The agent tells it a task's sandbox is collectable with [`SandboxGc::ended`] (and the end
//!   time). At start, the thread scans `root` for sandboxes left by an earlier run of the agent:
//!   directories at exactly five levels (symlinks and files at any level are ignored and never
//!   followed); those for which `live(path)` is false are collectable, their end time being
//!   their directory's mtime. (One whose mtime is after the scan began was made by this run:
//!   left alone.) Nothing else is ever removed: the sandboxes of running tasks are not touched.
//! - Policy, checked every `check_interval` (and on [`SandboxGc::collect_now`]): a collectable
//!   sandbox is removed once the time since its task ended is at least the effective delay,
//!   `delay × max(0, 1 − disk_headroom − used)`, where `used` is the fraction of the sandboxes'
//!   filesystem in use (`1 − f_bavail / f_blocks` of `statvfs(root)`, re-read at every check):
//!   disk pressure shortens the delay, as in Mesos. Exception, for debugging: the newest ended
//!   sandbox of each instance (among those waiting) is kept for the full `delay` whatever the
//!   pressure; pressure shortens the delay only for its older sandboxes.
//! - Bounds: at most [`MAX_PER_CHECK`] removals per check (oldest end first; the next check
//!   then comes at once, commands and shutdown being looked at in between); at most
//!   [`MAX_PENDING`] sandboxes waiting: beyond it, the oldest-ended are removed at the next
//!   check (which comes at once) whatever their age.
//! - Removal never follows a symlink and never leaves the sandbox: the path's directories are
//!   opened one by one from `root` with `O_NOFOLLOW | O_DIRECTORY` (a symlinked component is a
//!   failure), and the tree is removed with `unlinkat` relative to directory descriptors (see
//!   [`remove_tree_at`]), on trees with mode-000 directories, read-only files, fifos, symlinks
//!   and any depth. Other filesystems mounted inside are not crossed (a failure). A failure is
//!   logged (`warn`), counted, and retried at a later check with exponential backoff (from
//!   `check_interval`, at most [`MAX_BACKOFF`]); never fatal.
//! - The now-empty instance, name, env and role directories are NOT removed: the agent makes a
//!   new sandbox's parents with `mkdirat` and then opens them, and an `rmdir` of an empty parent
//!   between the two would fail that launch. Empty parents are left (they are few: one per
//!   instance ever run here).
//! - Counters (removed, bytes freed, failures, checks, waiting) for metrics and tests. Bytes
//!   freed are measured with [`disk::usage_of_dir`] before removal, at most
//!   [`MAX_MEASURE_ENTRIES`] entries per sandbox (a lower bound beyond).
//! - Dropping the [`SandboxGc`] stops the thread (a removal in progress stops between entries,
//!   to be finished by the next agent run) and joins it.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::disk::{self, DirStack};

/// The most sandboxes removed by one check.
pub(crate) const MAX_PER_CHECK: usize = 10_000;
/// The most sandboxes waiting for collection; beyond, the oldest-ended are removed at once.
pub(crate) const MAX_PENDING: usize = 1_000_000;
/// The longest wait before retrying a sandbox that could not be removed.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The most entries counted when measuring a sandbox's bytes before its removal.
pub(crate) const MAX_MEASURE_ENTRIES: u64 = 1_000_000;
/// The most subdirectory names of one directory held at once while removing it (the
/// directory is read again for the rest).
const SUBDIR_BATCH: usize = 65_536;
/// The longest delay or check interval taken (longer ones are clamped: no deadline overflows).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Depth of a task sandbox below the root: role, env, name, instance, task.
const SANDBOX_DEPTH: usize = 5;

/// How the collector chooses what to remove and when.
#[derive(Clone, Debug)]
pub(crate) struct GcSettings {
    /// How long an ended task's sandbox is kept without disk pressure (Mesos `--gc_delay`).
    pub delay: Duration,
    /// The fraction of the disk to keep free (Mesos `--gc_disk_headroom`), in `[0, 1]`.
    pub disk_headroom: f64,
    /// How often the sandboxes are checked (and the disk use re-read).
    pub check_interval: Duration,
    /// The fraction in use of the filesystem holding the given directory (the sandboxes'
    /// root): [`statvfs_used_fraction`] but in tests, which simulate disk pressure.
    pub used_fraction: fn(&Path) -> io::Result<f64>,
}

impl Default for GcSettings {
    /// Mesos' defaults: a week, 10% headroom; a check a minute.
    fn default() -> Self {
        GcSettings {
            delay: Duration::from_secs(7 * 24 * 3600),
            disk_headroom: 0.1,
            check_interval: Duration::from_secs(60),
            used_fraction: statvfs_used_fraction,
        }
    }
}

/// `1 − f_bavail / f_blocks` of `statvfs(path)`: the fraction of the filesystem not available
/// to unprivileged users.
pub(crate) fn statvfs_used_fraction(path: &Path) -> io::Result<f64> {
    let c = disk::path_cstring(path)?;
    // SAFETY: `statvfs` is plain data, filled in by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and buffer.
    disk::cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    if st.f_blocks == 0 {
        return Ok(0.0);
    }
    Ok(1.0 - st.f_bavail as f64 / st.f_blocks as f64)
}

enum Command {
    Ended(PathBuf, SystemTime),
    #[cfg_attr(not(test), allow(dead_code))]
    CollectNow,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    removed: AtomicU64,
    bytes_freed: AtomicU64,
    failures: AtomicU64,
    checks: AtomicU64,
    pending: AtomicU64,
}

/// The sandbox garbage collector thread (see the module documentation).
pub(crate) struct SandboxGc {
    commands: Option<mpsc::Sender<Command>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SandboxGc {
    /// Starts the thread ("borealis-gc") collecting the sandboxes under `root`. It first scans
    /// `root` for sandboxes of an earlier run and takes those for which `live(path)` is false
    /// (`live` must be true for every sandbox of a task this agent runs or is launching), then
    /// checks at once and every `settings.check_interval`.
    pub(crate) fn spawn(
        root: PathBuf,
        settings: GcSettings,
        live: impl Fn(&Path) -> bool + Send + 'static,
    ) -> io::Result<SandboxGc> {
        let (commands, receiver) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let headroom = if settings.disk_headroom.is_nan() {
            0.0
        } else {
            settings.disk_headroom.clamp(0.0, 1.0)
        };
        let worker = Worker {
            root,
            settings: GcSettings {
                delay: settings.delay.min(MAX_DURATION),
                disk_headroom: headroom,
                check_interval: settings
                    .check_interval
                    .clamp(Duration::from_millis(1), MAX_DURATION),
                ..settings
            },
            live,
            commands: receiver,
            shared: shared.clone(),
            queue: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("borealis-gc".into())
            .spawn(move || worker.run())?;
        Ok(SandboxGc {
            commands: Some(commands),
            shared,
            thread: Some(thread),
        })
    }

    /// `sandbox` (`<root>/<role>/<env>/<name>/<instance>/<task>`; any other path is refused
    /// with a warning) is collectable: its task ended at `ended`. Never blocks.
    pub(crate) fn ended(&self, sandbox: PathBuf, ended: SystemTime) {
        self.send(Command::Ended(sandbox, ended));
    }

    /// Checks at once (for tests, and for the agent under disk pressure). Never blocks.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn collect_now(&self) {
        self.send(Command::CollectNow);
    }

    /// Sandboxes removed.
    pub(crate) fn removed(&self) -> u64 {
        self.shared.removed.load(Ordering::Relaxed)
    }

    /// Bytes the removed sandboxes occupied (as measured just before removal).
    pub(crate) fn bytes_freed(&self) -> u64 {
        self.shared.bytes_freed.load(Ordering::Relaxed)
    }

    /// Failed removals (each retried later).
    pub(crate) fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Checks completed.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn checks(&self) -> u64 {
        self.shared.checks.load(Ordering::Relaxed)
    }

    /// Sandboxes waiting for collection, as of the last check.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn pending(&self) -> u64 {
        self.shared.pending.load(Ordering::Relaxed)
    }

    fn send(&self, command: Command) {
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|c| c.send(command).is_ok());
        if !sent {
            tracing::warn!("the sandbox collector thread is gone; sandboxes are not collected");
        }
    }
}

impl Drop for SandboxGc {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.commands.take()); // wakes the thread from its wait
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the sandbox collector thread panicked");
            }
        }
    }
}

struct Pending {
    ended: SystemTime,
    failures: u32,
    retry_at: Option<Instant>,
}

struct Worker<F> {
    root: PathBuf,
    settings: GcSettings,
    live: F,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    queue: HashMap<PathBuf, Pending>,
}

impl<F: Fn(&Path) -> bool> Worker<F> {
    fn run(mut self) {
        self.scan();
        let mut next_check = Instant::now();
        loop {
            if self.stopping() {
                return;
            }
            let wait = next_check.saturating_duration_since(Instant::now());
            match self.commands.recv_timeout(wait) {
                Ok(command) => self.apply(command, &mut next_check),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() < next_check {
                continue;
            }
            // Take in what is waiting (bounded, so a flood cannot hold the check off) first.
            for _ in 0..MAX_PER_CHECK {
                match self.commands.try_recv() {
                    Ok(command) => self.apply(command, &mut next_check),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            next_check = self.check();
            self.shared
                .pending
                .store(self.queue.len() as u64, Ordering::Relaxed);
            self.shared.checks.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn apply(&mut self, command: Command, next_check: &mut Instant) {
        match command {
            Command::Ended(sandbox, ended) => {
                if let Err(e) = sandbox_components(&self.root, &sandbox) {
                    tracing::warn!(sandbox = %sandbox.display(), root = %self.root.display(),
                        error = %e, "not a task sandbox: not collected");
                    return;
                }
                self.enqueue(sandbox, ended);
                if self.queue.len() > MAX_PENDING {
                    *next_check = Instant::now();
                }
            }
            Command::CollectNow => *next_check = Instant::now(),
        }
    }

    fn enqueue(&mut self, sandbox: PathBuf, ended: SystemTime) {
        self.queue.insert(
            sandbox,
            Pending {
                ended,
                failures: 0,
                retry_at: None,
            },
        );
    }

    /// One check: removes what is due; returns when to check next.
    fn check(&mut self) -> Instant {
        let now = Instant::now();
        let wall = SystemTime::now();
        let used = match (self.settings.used_fraction)(&self.root) {
            Ok(used) if used.is_finite() => used.clamp(0.0, 1.0),
            Ok(_) => 0.0,
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e,
                    "cannot read the sandboxes' disk use; collecting without disk pressure");
                0.0
            }
        };
        let delay = self.settings.delay;
        let factor = (1.0 - self.settings.disk_headroom - used).clamp(0.0, 1.0);
        let pressured = delay.mul_f64(factor);

        let mut next = now + self.settings.check_interval;
        let mut due: Vec<(SystemTime, PathBuf)> = Vec::new();
        {
            // The newest ended sandbox of each instance (ties: the greatest path).
            let mut newest: HashMap<&Path, (SystemTime, &Path)> = HashMap::new();
            for (path, p) in &self.queue {
                let instance = path.parent().unwrap_or(path);
                let candidate = (p.ended, path.as_path());
                newest
                    .entry(instance)
                    .and_modify(|n| *n = (*n).max(candidate))
                    .or_insert(candidate);
            }
            for (path, p) in &self.queue {
                if let Some(at) = p.retry_at {
                    if at > now {
                        next = next.min(at);
                        continue;
                    }
                }
                let instance = path.parent().unwrap_or(path);
                let is_newest = newest.get(instance).is_none_or(|n| n.1 == path.as_path());
                let keep = if is_newest { delay } else { pressured };
                let age = wall.duration_since(p.ended).unwrap_or(Duration::ZERO);
                if age >= keep {
                    due.push((p.ended, path.clone()));
                } else {
                    next = next.min(now + (keep - age) + Duration::from_millis(1));
                }
            }
            if self.queue.len() > MAX_PENDING {
                let excess = self.queue.len() - MAX_PENDING;
                let mut all: Vec<(SystemTime, &PathBuf)> =
                    self.queue.iter().map(|(path, p)| (p.ended, path)).collect();
                all.sort_unstable();
                tracing::warn!(
                    waiting = self.queue.len(),
                    bound = MAX_PENDING,
                    "too many sandboxes waiting: removing the oldest now"
                );
                let seen: HashSet<PathBuf> = due.iter().map(|d| d.1.clone()).collect();
                due.extend(
                    all.into_iter()
                        .take(excess)
                        .filter(|(_, path)| !seen.contains(*path))
                        .map(|(ended, path)| (ended, path.clone())),
                );
            }
        }
        due.sort_unstable();
        if due.len() > MAX_PER_CHECK {
            due.truncate(MAX_PER_CHECK);
            next = now; // the rest at the next check, right away
        }
        for (_, path) in due {
            if self.stopping() {
                break;
            }
            self.collect(path);
        }
        next
    }

    fn collect(&mut self, path: PathBuf) {
        match remove_sandbox(&self.root, &path, &self.shared.stop) {
            Ok(Some(bytes)) => {
                self.queue.remove(&path);
                self.shared.removed.fetch_add(1, Ordering::Relaxed);
                self.shared.bytes_freed.fetch_add(bytes, Ordering::Relaxed);
                tracing::debug!(sandbox = %path.display(), bytes, "removed an ended task's sandbox");
            }
            Ok(None) => {
                self.queue.remove(&path);
                tracing::debug!(sandbox = %path.display(), "an ended task's sandbox is already gone");
            }
            Err(_) if self.stopping() => {} // the next run of the agent finishes it
            Err(e) => {
                self.shared.failures.fetch_add(1, Ordering::Relaxed);
                let interval = self.settings.check_interval;
                if let Some(p) = self.queue.get_mut(&path) {
                    p.failures = p.failures.saturating_add(1);
                    let backoff = interval
                        .saturating_mul(1 << (p.failures - 1).min(20))
                        .min(MAX_BACKOFF.max(interval));
                    p.retry_at = Some(Instant::now() + backoff);
                    tracing::warn!(sandbox = %path.display(), error = %e, failures = p.failures,
                        retry_in = ?backoff, "cannot remove an ended task's sandbox");
                }
            }
        }
    }

    /// Takes in the sandboxes of an earlier run: directories at exactly five levels under the
    /// root, not live, with their mtime as their end time.
    fn scan(&mut self) {
        let started = SystemTime::now();
        let root = match open_root(&self.root) {
            Ok(fd) => fd,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(root = %self.root.display(), error = %e,
                        "cannot scan the sandboxes of an earlier run");
                }
                return;
            }
        };
        let mut found = Vec::new();
        let root_path = self.root.clone();
        self.scan_level(root.as_fd(), &root_path, 1, started, &mut found);
        let taken = found.len();
        for (path, mtime) in found {
            self.enqueue(path, mtime);
        }
        if taken > 0 {
            tracing::info!(sandboxes = taken, "sandboxes of an earlier run to collect");
        }
    }

    fn scan_level(
        &self,
        dir: BorrowedFd<'_>,
        path: &Path,
        depth: usize,
        started: SystemTime,
        found: &mut Vec<(PathBuf, SystemTime)>,
    ) {
        let mut names = Vec::new();
        let read = disk::for_each_entry(dir, |name, _| {
            names.push(name.to_owned());
            ControlFlow::Continue(())
        });
        if let Err(e) = read {
            tracing::warn!(dir = %path.display(), error = %e, "cannot read a sandbox directory");
        }
        for name in names {
            if self.stopping() {
                return;
            }
            // Only directories, never through a symlink.
            let Ok(st) = disk::stat_at(dir, &name) else {
                continue;
            };
            if !disk::is_dir(&st) {
                continue;
            }
            let child = path.join(OsStr::from_bytes(name.to_bytes()));
            if depth < SANDBOX_DEPTH {
                match disk::open_dir_at(dir, &name) {
                    Ok(fd) => self.scan_level(fd.as_fd(), &child, depth + 1, started, found),
                    Err(e) => {
                        tracing::warn!(dir = %child.display(), error = %e,
                            "cannot open a sandbox directory");
                    }
                }
                continue;
            }
            let mtime = mtime(&st);
            if mtime >= started || (self.live)(&child) {
                continue;
            }
            found.push((child, mtime));
        }
    }
}

fn mtime(st: &libc::stat) -> SystemTime {
    match (u64::try_from(st.st_mtime), u32::try_from(st.st_mtime_nsec)) {
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => UNIX_EPOCH + Duration::new(secs, nanos),
        _ => UNIX_EPOCH,
    }
}

/// The five names of `sandbox` below `root`, or an error when it is not exactly there.
fn sandbox_components(root: &Path, sandbox: &Path) -> io::Result<Vec<CString>> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "not <root>/<5 names>");
    let relative = sandbox.strip_prefix(root).map_err(|_| invalid())?;
    let mut names = Vec::with_capacity(SANDBOX_DEPTH);
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(disk::cstring(name.as_bytes())?),
            _ => return Err(invalid()),
        }
    }
    if names.len() != SANDBOX_DEPTH {
        return Err(invalid());
    }
    Ok(names)
}

/// Opens the sandboxes' root (which may be reached through symlinks: the agent's own
/// configuration).
fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = disk::path_cstring(root)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: a valid path; the result is checked.
    let fd = disk::cvt(unsafe { libc::open(c.as_ptr(), flags) })?;
    // SAFETY: `open` just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes the sandbox `path` (`<root>/<5 names>`), its directories opened one by one from
/// the root without following symlinks. `Ok(Some(bytes))`: removed; `Ok(None)`: not there.
fn remove_sandbox(root: &Path, path: &Path, stop: &AtomicBool) -> io::Result<Option<u64>> {
    let names = sandbox_components(root, path)?;
    let mut dir = match open_root(root) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (task, parents) = names.split_last().expect("five names");
    for name in parents {
        dir = match disk::open_dir_at(dir.as_fd(), name) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
    }
    let bytes = match disk::open_dir_at(dir.as_fd(), task) {
        Ok(fd) => disk::usage_of_dir(fd, MAX_MEASURE_ENTRIES, stop).map_or(0, |u| u.bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) => 0, // not a directory, or unreadable: removed all the same
    };
    match remove_tree_at(dir.as_fd(), task, stop) {
        Ok(()) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

struct Removal {
    /// The directory's name in its parent.
    name: CString,
    /// Subdirectories still to empty and remove.
    subdirs: Vec<CString>,
    /// The directory must be read (again).
    scan: bool,
    /// The last read stopped at [`SUBDIR_BATCH`] subdirectories.
    batched: bool,
    /// Reads after the first.
    rescans: u32,
}

impl Removal {
    fn new(name: CString) -> Self {
        Removal {
            name,
            subdirs: Vec::new(),
            scan: true,
            batched: false,
            rescans: 0,
        }
    }
}

/// Removes `name` in the directory `parent` and, if it is a directory, everything under it.
///
/// Never follows a symlink (symlinks are unlinked, their targets untouched) and never opens a
/// non-directory (fifos are unlinked unopened): every operation is relative to a directory
/// descriptor opened with `O_DIRECTORY | O_NOFOLLOW`, at most [`disk::MAX_OPEN_DIRS`] open at
/// once whatever the depth (a directory above is reopened through `..` and checked to be the
/// same one, or the removal fails). A directory that cannot be opened or written (mode 000, or
/// read-only, when not root) is made `u+rwx` first (by a descriptor, never by path). Another
/// filesystem mounted inside makes it fail. Stops (`Interrupted`) once `stop` is set.
pub(crate) fn remove_tree_at(
    parent: BorrowedFd<'_>,
    name: &CStr,
    stop: &AtomicBool,
) -> io::Result<()> {
    let st = disk::stat_at(parent, name)?;
    if !disk::is_dir(&st) {
        return unlink_in(parent, name, 0);
    }
    let top = open_for_removal(parent, name)?;
    let top_st = disk::stat_fd(top.as_fd())?;
    let dev = top_st.st_dev;
    let mut stack = DirStack::new();
    stack.push(top, &top_st, Removal::new(name.to_owned()));
    let mut since_stop_check = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
        }
        let frame = stack
            .top_mut()
            .expect("the stack holds the directory being emptied");
        if frame.data.scan {
            frame.data.scan = false;
            let (fd, removal) = frame.split();
            removal.batched = false;
            let mut failure = None;
            disk::for_each_entry(fd, |entry, d_type| {
                since_stop_check += 1;
                if since_stop_check >= 1024 {
                    since_stop_check = 0;
                    if stop.load(Ordering::Relaxed) {
                        return ControlFlow::Break(());
                    }
                }
                if d_type == libc::DT_DIR || d_type == libc::DT_UNKNOWN {
                    if removal.subdirs.len() >= SUBDIR_BATCH {
                        removal.batched = true;
                    } else {
                        removal.subdirs.push(entry.to_owned());
                    }
                    return ControlFlow::Continue(());
                }
                match unlink_in(fd, entry, 0) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // Replaced by a directory since it was read.
                    Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                        if removal.subdirs.len() < SUBDIR_BATCH {
                            removal.subdirs.push(entry.to_owned());
                        } else {
                            removal.batched = true;
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })?;
            if let Some(e) = failure {
                return Err(e);
            }
            continue;
        }
        if let Some(child) = frame.data.subdirs.pop() {
            let fd = frame.fd();
            let st = match disk::stat_at(fd, &child) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !disk::is_dir(&st) {
                // `DT_UNKNOWN` or replaced meanwhile: not a directory after all.
                match unlink_in(fd, &child, 0) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => continue,
                }
            }
            if st.st_dev != dev {
                return Err(io::Error::other(
                    "another filesystem is mounted in the sandbox",
                ));
            }
            let child_fd = open_for_removal(fd, &child)?;
            let child_st = disk::stat_fd(child_fd.as_fd())?;
            if child_st.st_dev != dev || !disk::is_dir(&child_st) {
                return Err(io::Error::other("a directory changed during removal"));
            }
            stack.push(child_fd, &child_st, Removal::new(child));
            continue;
        }
        // Everything read is gone: remove the directory itself from its parent.
        let mut done = stack
            .pop()?
            .expect("the stack holds the directory being emptied");
        let parent_fd = match stack.top_mut() {
            Some(up) => up.fd(),
            None => parent,
        };
        match unlink_in(parent_fd, &done.data.name, libc::AT_REMOVEDIR) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST))
                    && (done.data.batched || done.data.rescans < 3) =>
            {
                // More than a batch of subdirectories, or entries made meanwhile (or missed by
                // a read during unlinks): read it again.
                done.data.rescans += 1;
                done.data.scan = true;
                stack.push_frame(done);
                continue;
            }
            Err(e) => return Err(e),
        }
        if stack.is_empty() {
            return Ok(());
        }
    }
}

/// `unlinkat(dir, name, flags)`; when `dir` is not writable (not root), it is made `u+rwx`
/// (through its descriptor) and the unlink tried again.
fn unlink_in(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    let unlink = || {
        // SAFETY: a valid descriptor and name.
        disk::cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
    };
    match unlink() {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let st = disk::stat_fd(dir)?;
            // SAFETY: a valid descriptor.
            disk::cvt(unsafe { libc::fchmod(dir.as_raw_fd(), (st.st_mode & 0o7777) | 0o700) })?;
            unlink()
        }
        other => other,
    }
}

/// Opens the directory `name` in `parent` for reading (`O_NOFOLLOW`); if permission is
/// denied (mode 000, not root), makes it `u+rwx` through an `O_PATH` descriptor of that very
/// directory (`chmod` of `/proc/self/fd/N`, which names the inode, not a path) and opens it
/// through that descriptor.
fn open_for_removal(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    match disk::open_dir_at(parent, name) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let handle = disk::open_at(parent, name, flags)?;
            let st = disk::stat_fd(handle.as_fd())?;
            let proc = disk::cstring(format!("/proc/self/fd/{}", handle.as_raw_fd()).as_bytes())?;
            // SAFETY: a valid path.
            disk::cvt(unsafe { libc::chmod(proc.as_ptr(), (st.st_mode & 0o7777) | 0o700) })?;
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
            // SAFETY: a valid path; the result is checked.
            let fd = disk::cvt(unsafe { libc::open(proc.as_ptr(), flags) })?;
            // SAFETY: `open` just returned this descriptor, owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const SECOND: Duration = Duration::from_secs(1);

    /// A temporary directory, on tmpfs where there is one (the deep trees are slow to make on a
    /// busy disk).
    fn tempdir() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            if let Ok(dir) = tempfile::Builder::new().tempdir_in(shm) {
                return dir;
            }
        }
        tempfile::tempdir().unwrap()
    }

    fn no_pressure(_: &Path) -> io::Result<f64> {
        Ok(0.0)
    }

    fn full_disk(_: &Path) -> io::Result<f64> {
        Ok(0.95)
    }

    fn settings(delay: Duration, used_fraction: fn(&Path) -> io::Result<f64>) -> GcSettings {
        GcSettings {
            delay,
            disk_headroom: 0.1,
            check_interval: Duration::from_millis(20),
            used_fraction,
        }
    }

    /// `<root>/www/prod/web/<instance>/<task>` with an 8 KiB file.
    fn sandbox(root: &Path, instance: &str, task: &str) -> PathBuf {
        let path = root.join("www/prod/web").join(instance).join(task);
        fs::create_dir_all(&path).unwrap();
        fs::File::create(path.join("stdout"))
            .unwrap()
            .write_all(&[7; 8192])
            .unwrap();
        path
    }

    fn set_mtime(path: &Path, time: SystemTime) {
        fs::File::open(path).unwrap().set_modified(time).unwrap();
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + 3 * SECOND;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for two checks after now to complete (so a full check ran after the call).
    fn settle(gc: &SandboxGc) {
        let checks = gc.checks();
        gc.collect_now();
        wait_for("two checks", || gc.checks() >= checks + 2);
    }

    #[test]
    fn removes_an_ended_sandbox_after_the_delay() {
        let root = tempdir();
        let path = sandbox(root.path(), "0", "t1");
        let mut s = settings(Duration::from_millis(200), no_pressure);
        s.disk_headroom = 0.0;
        let gc = SandboxGc::spawn(root.path().to_owned(), s, |_| true).unwrap();
        let start = Instant::now();
        gc.ended(path.clone(), SystemTime::now());
        wait_for("the removal", || !path.exists());
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
        wait_for("the count", || gc.removed() == 1);
        assert!(gc.bytes_freed() >= 8192, "{}", gc.bytes_freed());
        assert_eq!(gc.failures(), 0);
        // The parents stay (the agent may be making a new sandbox in them).
        assert!(path.parent().unwrap().is_dir());
    }

    #[test]
    fn disk_pressure_removes_older_sandboxes_but_keeps_the_newest_of_each_instance() {
        let root = tempdir();
        let now = SystemTime::now();
        let a = sandbox(root.path(), "0", "a");
        let b = sandbox(root.path(), "0", "b");
        let c = sandbox(root.path(), "0", "c");
        let d = sandbox(root.path(), "1", "d");
        let gc = SandboxGc::spawn(
            root.path().to_owned(),
            settings(3600 * SECOND, full_disk),
            |_| true,
        )
        .unwrap();
        gc.ended(a.clone(), now - 30 * SECOND);
        gc.ended(b.clone(), now - 20 * SECOND);
        gc.ended(c.clone(), now - 10 * SECOND);
        gc.ended(d.clone(), now - 40 * SECOND);
        wait_for("two removals", || gc.removed() == 2);
        settle(&gc);
        assert!(!a.exists() && !b.exists());
        assert!(c.exists() && d.exists());
        assert_eq!((gc.removed(), gc.pending(), gc.failures()), (2, 2, 0));
    }

    #[test]
    fn no_pressure_keeps_them_all_for_the_delay() {
        let root = tempdir();
        let now = SystemTime::now();
        let a = sandbox(root.path(), "0", "a");
        let b = sandbox(root.path(), "0", "b");
        let gc = SandboxGc::spawn(
            root.path().to_owned(),
            settings(3600 * SECOND, no_pressure),
            |_| true,
        )
        .unwrap();
        gc.ended(a.clone(), now - 30 * SECOND);
        gc.ended(b.clone(), now - 20 * SECOND);
        settle(&gc);
        assert!(a.exists() && b.exists());
        assert_eq!((gc.removed(), gc.pending()), (0, 2));
    }

    #[test]
    fn the_startup_scan_never_removes_a_live_sandbox_nor_follows_symlinks() {
        let root = tempdir();
        let outside = tempdir();
        let hour_ago = SystemTime::now() - 3600 * SECOND;
        let live = sandbox(root.path(), "0", "live");
        let dead = sandbox(root.path(), "0", "dead");
        let dead2 = sandbox(root.path(), "1", "dead2");
        let future = sandbox(root.path(), "1", "future");
        for path in [&live, &dead, &dead2] {
            set_mtime(path, hour_ago);
        }
        set_mtime(&future, SystemTime::now() + 3600 * SECOND);
        // Not sandboxes: a file at the task level, a directory at the instance level only, a
        // symlink at the name level to a tree that looks like sandboxes, a symlink at the task
        // level to a directory, a directory at a sixth level (content of a sandbox).
        fs::write(root.path().join("www/prod/web/0/file"), b"x").unwrap();
        fs::create_dir_all(root.path().join("www/prod/other/9")).unwrap();
        let decoy = outside.path().join("0/t");
        fs::create_dir_all(&decoy).unwrap();
        set_mtime(&decoy, hour_ago);
        symlink(outside.path(), root.path().join("www/prod/linked")).unwrap();
        symlink(outside.path(), root.path().join("www/prod/web/1/link")).unwrap();
        let gc = SandboxGc::spawn(
            root.path().to_owned(),
            settings(Duration::ZERO, no_pressure),
            |p: &Path| p.ends_with("live"),
        )
        .unwrap();
        wait_for("two removals", || gc.removed() == 2);
        settle(&gc);
        assert!(!dead.exists() && !dead2.exists());
        assert!(live.join("stdout").exists() && future.exists());
        assert!(root.path().join("www/prod/web/0/file").exists());
        assert!(root.path().join("www/prod/other/9").is_dir());
        assert!(decoy.is_dir());
        assert!(fs::symlink_metadata(root.path().join("www/prod/web/1/link")).is_ok());
        assert_eq!((gc.removed(), gc.failures(), gc.pending()), (2, 0, 0));
    }

    /// A sandbox holding what a hostile task may leave; returns the files outside it that must
    /// survive its removal.
    fn hostile_tree(sandbox: &Path, outside: &Path) -> Vec<PathBuf> {
        let keep = outside.join("keep");
        fs::write(&keep, b"precious").unwrap();
        let linked = outside.join("linked");
        fs::write(&linked, b"hard").unwrap();
        fs::create_dir_all(outside.join("dir/sub")).unwrap();
        let deep_keep = outside.join("dir/sub/file");
        fs::write(&deep_keep, b"x").unwrap();

        fs::create_dir_all(sandbox.join("locked/inner")).unwrap();
        fs::write(sandbox.join("locked/inner/file"), b"x").unwrap();
        symlink(outside, sandbox.join("locked/inner/escape")).unwrap();
        fs::set_permissions(
            sandbox.join("locked/inner"),
            fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        fs::set_permissions(sandbox.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::create_dir(sandbox.join("ro")).unwrap();
        fs::write(sandbox.join("ro/file"), b"x").unwrap();
        fs::set_permissions(sandbox.join("ro/file"), fs::Permissions::from_mode(0o400)).unwrap();
        fs::set_permissions(sandbox.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
        let fifo = disk::path_cstring(&sandbox.join("pipe")).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        symlink(outside, sandbox.join("etc")).unwrap();
        symlink(outside.join("dir"), sandbox.join("dirlink")).unwrap();
        symlink(&keep, sandbox.join("filelink")).unwrap();
        fs::hard_link(&linked, sandbox.join("hardlink")).unwrap();
        vec![keep, linked, deep_keep, outside.join("dir/sub")]
    }

    #[test]
    fn removes_a_hostile_tree_without_touching_what_it_points_to() {
        let root = tempdir();
        let outside = tempdir();
        let path = sandbox(root.path(), "0", "t");
        let survivors = hostile_tree(&path, outside.path());
        let gc = SandboxGc::spawn(
            root.path().to_owned(),
            settings(Duration::ZERO, no_pressure),
            |_| true,
        )
        .unwrap();
        gc.ended(path.clone(), SystemTime::now());
        wait_for("the removal", || gc.removed() == 1);
        assert!(fs::symlink_metadata(&path).is_err());
        for survivor in survivors {
            assert!(survivor.exists(), "{}", survivor.display());
        }
        assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"precious");
        assert_eq!(gc.failures(), 0);
    }

    #[test]
    fn removes_a_10000_deep_tree() {
        let dir = tempdir();
        let top = dir.path().join("top");
        fs::create_dir(&top).unwrap();
        let mut fd = disk::open_dir_at(open_root(&top).unwrap().as_fd(), c".").unwrap();
        for i in 0..10_000 {
            // SAFETY: a valid descriptor and name.
            disk::cvt(unsafe { libc::mkdirat(fd.as_raw_fd(), c"d".as_ptr(), 0o755) }).unwrap();
            if i % 1000 == 0 {
                let file = disk::open_at(fd.as_fd(), c"f", libc::O_WRONLY | libc::O_CREAT);
                drop(file.unwrap());
                // SAFETY: a valid descriptor and name.
                disk::cvt(unsafe { libc::mkfifoat(fd.as_raw_fd(), c"p".as_ptr(), 0o600) }).unwrap();
            }
            fd = disk::open_dir_at(fd.as_fd(), c"d").unwrap();
        }
        drop(fd);
        let parent = open_root(dir.path()).unwrap();
        remove_tree_at(parent.as_fd(), c"top", &AtomicBool::new(false)).unwrap();
        assert!(!top.exists());
    }

    #[test]
    fn a_removal_stops_when_asked() {
        let dir = tempdir();
        fs::create_dir_all(dir.path().join("top/a")).unwrap();
        let parent = open_root(dir.path()).unwrap();
        let e = remove_tree_at(parent.as_fd(), c"top", &AtomicBool::new(true)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(dir.path().join("top").exists());
    }

    #[test]
    fn refuses_paths_that_are_not_sandboxes() {
        let root = tempdir();
        let outside = tempdir();
        let path = sandbox(root.path(), "0", "t");
        let instance = path.parent().unwrap().to_owned();
        let gc = SandboxGc::spawn(
            root.path().join("."),
            settings(Duration::ZERO, no_pressure),
            |_| true,
        )
        .unwrap();
        gc.ended(instance.clone(), SystemTime::now());
        gc.ended(path.join("stdout"), SystemTime::now());
        gc.ended(outside.path().to_owned(), SystemTime::now());
        gc.ended(instance.join("../0/t"), SystemTime::now());
        settle(&gc);
        assert!(path.join("stdout").exists() && outside.path().exists());
        assert_eq!((gc.removed(), gc.pending()), (0, 0));
    }

    #[test]
    fn a_symlink_in_the_path_is_a_failure_retried_with_backoff() {
        let root = tempdir();
        let outside = tempdir();
        fs::create_dir_all(root.path().join("www/prod/web")).unwrap();
        fs::create_dir_all(outside.path().join("t")).unwrap();
        symlink(outside.path(), root.path().join("www/prod/web/0")).unwrap();
        let gc = SandboxGc::spawn(
            root.path().to_owned(),
            settings(Duration::ZERO, no_pressure),
            |_| true,
        )
        .unwrap();
        gc.ended(root.path().join("www/prod/web/0/t"), SystemTime::now());
        wait_for("a failure", || gc.failures() >= 1);
        std::thread::sleep(Duration::from_millis(300));
        // Retries after 20, 40, 80, 160 ms...: a handful, not one per 20 ms check.
        assert!(gc.failures() <= 6, "{}", gc.failures());
        assert!(outside.path().join("t").is_dir());
        assert_eq!((gc.removed(), gc.pending()), (0, 1));
    }

    #[test]
    fn drop_is_prompt() {
        let root = tempdir();
        let path = sandbox(root.path(), "0", "t");
        let mut s = settings(3600 * SECOND, no_pressure);
        s.check_interval = 3600 * SECOND;
        let gc = SandboxGc::spawn(root.path().to_owned(), s, |_| true).unwrap();
        gc.ended(path.clone(), SystemTime::now());
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        drop(gc);
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        assert!(path.exists());
    }

    #[test]
    fn the_default_settings_are_mesos_and_statvfs_reads_a_fraction() {
        let s = GcSettings::default();
        assert_eq!(s.delay, Duration::from_secs(604_800));
        assert_eq!(s.disk_headroom, 0.1);
        let used = (s.used_fraction)(Path::new("/")).unwrap();
        assert!((0.0..=1.0).contains(&used), "{used}");
    }
}
