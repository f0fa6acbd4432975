//! Measuring and watching the disk use of task sandboxes.
//!
//! [`tree_usage`] measures what a directory tree occupies on disk (`st_blocks * 512` of every
//! inode, as `du` counts, each inode once), the way a hostile tree cannot subvert: the walk
//! goes through directory file descriptors only (`openat` with
//! `O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC`, `fstatat` with `AT_SYMLINK_NOFOLLOW`, `readdir` on a
//! fresh descriptor of the directory), so a symlink is never followed, a non-directory (a
//! fifo, a device) is never opened, and a user swapping a directory for a symlink mid-walk
//! cannot redirect it. Other filesystems (another `st_dev`) are skipped. The work is bounded:
//! at most `max_entries` entries, an explicit stack instead of recursion, and at most
//! [`MAX_OPEN_DIRS`] directory descriptors open at once, however deep the tree (a directory
//! whose descriptor was closed is reopened through its child's `..` and checked to be the same
//! directory, by device and inode, so a directory moved mid-walk cannot take the walk outside
//! the tree; if it was moved, the walk stops and says `truncated`).
//!
//! [`DiskWatch`] is a thread ("borealis-disk") that measures every watched sandbox once per
//! interval and reports the usage and the task's limit on the agent's channel; the agent
//! decides that `usage.bytes > limit_bytes` means the disk limit is exceeded.
//!
//! The descriptor-relative helpers here ([`DirStack`], [`open_dir_at`], [`stat_at`],
//! [`for_each_entry`]) are shared with the sandbox garbage collector (`sandbox_gc.rs`).

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most directory descriptors one walk keeps open; deeper directories are reopened
/// through `..` (and checked) when the walk comes back up to them.
pub(crate) const MAX_OPEN_DIRS: usize = 32;

/// The most bytes of subdirectory names one walk of [`tree_usage`] holds while pending; beyond
/// it the walk stops and says `truncated` (a bound on memory whatever `max_entries` is).
const MAX_PENDING_NAME_BYTES: usize = 64 << 20;

/// The longest interval taken (longer ones are clamped, so no deadline overflows).
const MAX_INTERVAL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How often (in entries) a walk looks at its cancel flag.
const CANCEL_CHECK_EVERY: u64 = 1024;

/// What a directory tree occupies on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TreeUsage {
    /// `st_blocks * 512` of the top directory and of every inode under it, each inode once
    /// (hard links within the tree are counted once).
    pub bytes: u64,
    /// The entries seen under the top directory (files, directories, symlinks, anything; each
    /// name counts, so a hard link counts as an entry even though its bytes count once).
    pub entries: u64,
    /// The walk stopped early (`max_entries` reached, too many pending names, the tree moved
    /// under the walk, or the walk was cancelled): `bytes` and `entries` are lower bounds.
    pub truncated: bool,
}

/// The bytes `dir` and everything under it occupy on disk, counting at most `max_entries`
/// entries (then `truncated`). Never follows a symlink (`dir` itself may not be one: its last
/// component is opened with `O_NOFOLLOW`), never opens a non-directory, skips other
/// filesystems and unreadable subdirectories. `dir` missing is an error (`NotFound`).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn tree_usage(dir: &Path, max_entries: u64) -> io::Result<TreeUsage> {
    tree_usage_cancellable(dir, max_entries, &AtomicBool::new(false))
}

/// [`tree_usage`], stopping early (with `truncated`) once `cancel` is set.
pub(crate) fn tree_usage_cancellable(
    dir: &Path,
    max_entries: u64,
    cancel: &AtomicBool,
) -> io::Result<TreeUsage> {
    let path = path_cstring(dir)?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), DIR_FLAGS) })?;
    // SAFETY: `open` just returned this descriptor, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    usage_of_dir(fd, max_entries, cancel)
}

/// [`tree_usage`] of the directory open as `dir`.
pub(crate) fn usage_of_dir(
    dir: OwnedFd,
    max_entries: u64,
    cancel: &AtomicBool,
) -> io::Result<TreeUsage> {
    let top = stat_fd(dir.as_fd())?;
    if !is_dir(&top) {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    let dev = top.st_dev;
    let mut usage = TreeUsage {
        bytes: blocks(&top),
        entries: 0,
        truncated: false,
    };
    let mut linked: HashSet<u64> = HashSet::new();
    let mut pending_bytes = 0usize;
    let mut stack: DirStack<Vec<CString>> = DirStack::new();
    stack.push(dir, &top, Vec::new());
    let mut scan = true;
    while let Some(frame) = stack.top_mut() {
        if cancel.load(Ordering::Relaxed) {
            usage.truncated = true;
            break;
        }
        if scan {
            scan = false;
            let (fd, subdirs) = frame.split();
            // A directory that cannot be read is skipped (its own blocks are counted already).
            let _ = for_each_entry(fd, |name, _| {
                if usage.entries >= max_entries {
                    usage.truncated = true;
                    return ControlFlow::Break(());
                }
                usage.entries += 1;
                if usage.entries.is_multiple_of(CANCEL_CHECK_EVERY)
                    && cancel.load(Ordering::Relaxed)
                {
                    usage.truncated = true;
                    return ControlFlow::Break(());
                }
                let Ok(st) = stat_at(fd, name) else {
                    return ControlFlow::Continue(()); // gone meanwhile
                };
                if st.st_dev != dev {
                    return ControlFlow::Continue(()); // a mount point: another filesystem
                }
                if is_dir(&st) {
                    usage.bytes = usage.bytes.saturating_add(blocks(&st));
                    pending_bytes += name.to_bytes().len();
                    if pending_bytes > MAX_PENDING_NAME_BYTES {
                        usage.truncated = true;
                        return ControlFlow::Break(());
                    }
                    subdirs.push(name.to_owned());
                } else if st.st_nlink <= 1 || linked.insert(st.st_ino) {
                    usage.bytes = usage.bytes.saturating_add(blocks(&st));
                }
                ControlFlow::Continue(())
            });
            if usage.truncated {
                break;
            }
            continue;
        }
        match frame.data.pop() {
            Some(name) => {
                pending_bytes -= name.to_bytes().len();
                // Unreadable (or replaced meanwhile by a non-directory): skipped.
                let Ok(child) = open_dir_at(frame.fd(), &name) else {
                    continue;
                };
                let Ok(st) = stat_fd(child.as_fd()) else {
                    continue;
                };
                if st.st_dev == dev && is_dir(&st) {
                    stack.push(child, &st, Vec::new());
                    scan = true;
                }
            }
            None => {
                if stack.pop().is_err() {
                    // A directory above moved during the walk: stop rather than go elsewhere.
                    usage.truncated = true;
                    break;
                }
            }
        }
    }
    Ok(usage)
}

/// One directory of a walk: its descriptor (closed while deep below it), identity and the
/// walk's own data.
pub(crate) struct Frame<T> {
    fd: Option<OwnedFd>,
    dev: u64,
    ino: u64,
    pub(crate) data: T,
}

impl<T> Frame<T> {
    /// The directory's descriptor. Only for the top frame of a [`DirStack`], whose directory is
    /// always open (and for a frame [`DirStack::pop`] returned).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("the top directory of a walk is open")
            .as_fd()
    }

    /// The directory's descriptor (as [`Frame::fd`]) and the walk's data, together.
    pub(crate) fn split(&mut self) -> (BorrowedFd<'_>, &mut T) {
        let fd = self
            .fd
            .as_ref()
            .expect("the top directory of a walk is open")
            .as_fd();
        (fd, &mut self.data)
    }
}

/// The explicit stack of a depth-first walk by directory descriptors, holding at most
/// [`MAX_OPEN_DIRS`] descriptors: the deepest ones. Popping back to a directory whose
/// descriptor was closed reopens it as the popped directory's `..`, checked to be the same
/// directory (device and inode) or the pop fails.
pub(crate) struct DirStack<T> {
    frames: Vec<Frame<T>>,
    /// `frames[first_open..]` have their descriptor; the frames below do not.
    first_open: usize,
}

impl<T> DirStack<T> {
    pub(crate) fn new() -> Self {
        DirStack {
            frames: Vec::new(),
            first_open: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Pushes the directory open as `fd` (`st`: its `fstat`).
    pub(crate) fn push(&mut self, fd: OwnedFd, st: &libc::stat, data: T) {
        self.push_frame(Frame {
            fd: Some(fd),
            dev: st.st_dev,
            ino: st.st_ino,
            data,
        });
    }

    /// Pushes back a frame [`DirStack::pop`] returned.
    pub(crate) fn push_frame(&mut self, frame: Frame<T>) {
        debug_assert!(frame.fd.is_some());
        self.frames.push(frame);
        while self.frames.len() - self.first_open > MAX_OPEN_DIRS {
            self.frames[self.first_open].fd = None;
            self.first_open += 1;
        }
    }

    pub(crate) fn top_mut(&mut self) -> Option<&mut Frame<T>> {
        self.frames.last_mut()
    }

    /// Pops the top frame, leaving the new top's directory open. Fails (the popped frame is
    /// lost) when the new top had to be reopened and its directory is no longer the popped
    /// one's parent.
    pub(crate) fn pop(&mut self) -> io::Result<Option<Frame<T>>> {
        let Some(frame) = self.frames.pop() else {
            return Ok(None);
        };
        let len = self.frames.len();
        if len == 0 {
            self.first_open = 0;
        } else if self.first_open == len {
            let parent = &mut self.frames[len - 1];
            parent.fd = Some(reopen_parent(frame.fd(), parent.dev, parent.ino)?);
            self.first_open = len - 1;
        }
        Ok(Some(frame))
    }
}

/// Opens `..` of the directory `child` and checks it is the directory `(dev, ino)`.
pub(crate) fn reopen_parent(child: BorrowedFd<'_>, dev: u64, ino: u64) -> io::Result<OwnedFd> {
    let parent = open_dir_at(child, c"..")?;
    let st = stat_fd(parent.as_fd())?;
    if st.st_dev != dev || st.st_ino != ino {
        return Err(io::Error::other("a directory moved during the walk"));
    }
    Ok(parent)
}

/// The flags of every directory open: read (for `readdir`), a directory only (never a fifo or
/// a device), never through a symlink, not inherited by children.
pub(crate) const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// `openat(dir, name, DIR_FLAGS)`.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dir, name, DIR_FLAGS)
}

/// `openat(dir, name, flags)` (`O_CLOEXEC` added).
pub(crate) fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and NUL-terminated name; the result is checked.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: `openat` just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: a symlink's own metadata.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain data, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, name and buffer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `fstat(fd)`.
pub(crate) fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain data, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub(crate) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn blocks(st: &libc::stat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
}

/// Calls `f(name, d_type)` for each entry of the directory `dir` but `.` and `..`, until it
/// breaks. Reads through a descriptor of its own (`openat(dir, ".")`), so `dir`'s offset is
/// untouched and each call reads the directory from its start.
pub(crate) fn for_each_entry(
    dir: BorrowedFd<'_>,
    mut f: impl FnMut(&CStr, u8) -> ControlFlow<()>,
) -> io::Result<()> {
    let fd = open_at(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: a valid descriptor; on success the stream owns it (closed by `closedir`).
    let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error()); // `fd` is closed on drop
    }
    let _ = fd.into_raw_fd();
    let stream = DirStream(stream);
    loop {
        // SAFETY: `readdir` reports an error only through errno, which is thread-local.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid open stream, used by this thread only.
        let entry = unsafe { libc::readdir(stream.0) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: `readdir` returned a valid entry, valid until the next call on the stream.
        let (name, d_type) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if f(name, d_type).is_break() {
            return Ok(());
        }
    }
}

struct DirStream(*mut libc::DIR);

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream is open and closed only here.
        unsafe { libc::closedir(self.0) };
    }
}

pub(crate) fn path_cstring(path: &Path) -> io::Result<CString> {
    cstring(path.as_os_str().as_bytes())
}

pub(crate) fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name holds a NUL byte"))
}

pub(crate) fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A measurement of a watched sandbox, sent once per interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskReport {
    pub task: u64,
    pub usage: TreeUsage,
    pub limit_bytes: u64,
}

enum WatchCommand {
    Watch {
        task: u64,
        sandbox: PathBuf,
        limit_bytes: u64,
    },
    Unwatch(u64),
}

struct WatchShared {
    stop: AtomicBool,
    skipped: AtomicU64,
}

/// The disk watcher thread ("borealis-disk"): measures each watched sandbox with
/// [`tree_usage`] once per interval, the measurements of a round spread evenly over the
/// interval, and sends a [`DiskReport`] for each on the agent's channel (`try_send`: a report
/// that finds the channel full is skipped, and counted in [`DiskWatch::skipped`]). A sandbox
/// that cannot be measured (gone) is not reported. Dropping it stops the thread (a
/// measurement in progress is cancelled) and joins it.
///
/// The commands reach the thread on an unbounded channel: their number is bounded by the
/// agent's tasks (one `watch` and one `unwatch` each). A report measured just before an
/// `unwatch` reached the thread can still arrive after it: the agent ignores reports of tasks
/// that are no longer running.
pub(crate) struct DiskWatch {
    commands: Option<mpsc::Sender<WatchCommand>>,
    shared: Arc<WatchShared>,
    thread: Option<JoinHandle<()>>,
}

impl DiskWatch {
    /// Starts the thread: every `interval`, each watched sandbox is measured (at most
    /// `max_entries` entries each) and reported on `events`.
    pub(crate) fn spawn(
        interval: Duration,
        max_entries: u64,
        events: tokio::sync::mpsc::Sender<DiskReport>,
    ) -> io::Result<DiskWatch> {
        let (commands, receiver) = mpsc::channel();
        let shared = Arc::new(WatchShared {
            stop: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
        });
        let worker = Watcher {
            interval: interval.clamp(Duration::from_millis(1), MAX_INTERVAL),
            max_entries,
            events,
            commands: receiver,
            shared: shared.clone(),
            watched: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("borealis-disk".into())
            .spawn(move || worker.run())?;
        Ok(DiskWatch {
            commands: Some(commands),
            shared,
            thread: Some(thread),
        })
    }

    /// Measures `sandbox` from the next round on, reporting `limit_bytes` with it (replaces an
    /// earlier watch of `task`). Never blocks.
    pub(crate) fn watch(&self, task: u64, sandbox: PathBuf, limit_bytes: u64) {
        self.send(WatchCommand::Watch {
            task,
            sandbox,
            limit_bytes,
        });
    }

    /// Stops measuring `task`'s sandbox. Never blocks.
    pub(crate) fn unwatch(&self, task: u64) {
        self.send(WatchCommand::Unwatch(task));
    }

    /// Reports skipped because the agent's channel was full.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    fn send(&self, command: WatchCommand) {
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|c| c.send(command).is_ok());
        if !sent {
            tracing::warn!("the disk watcher thread is gone; sandbox disk use is not measured");
        }
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.commands.take()); // wakes the thread from its wait
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the disk watcher thread panicked");
            }
        }
    }
}

struct Watched {
    sandbox: PathBuf,
    limit_bytes: u64,
}

struct Watcher {
    interval: Duration,
    max_entries: u64,
    events: tokio::sync::mpsc::Sender<DiskReport>,
    commands: mpsc::Receiver<WatchCommand>,
    shared: Arc<WatchShared>,
    watched: BTreeMap<u64, Watched>,
}

impl Watcher {
    fn run(mut self) {
        let mut round_start = Instant::now();
        loop {
            let tasks: Vec<u64> = self.watched.keys().copied().collect();
            let n = tasks.len();
            for (i, task) in tasks.into_iter().enumerate() {
                let at = round_start + self.interval.mul_f64(i as f64 / n as f64);
                if !self.wait_until(at) {
                    return;
                }
                let Some(watched) = self.watched.get(&task) else {
                    continue; // unwatched meanwhile
                };
                let sandbox = watched.sandbox.clone();
                let usage =
                    match tree_usage_cancellable(&sandbox, self.max_entries, &self.shared.stop) {
                        Ok(usage) => usage,
                        Err(e) => {
                            tracing::debug!(task, sandbox = %sandbox.display(), error = %e,
                                "cannot measure the sandbox's disk use");
                            continue;
                        }
                    };
                // Apply the commands that came during the measurement: no report for a task
                // unwatched (or watched with another sandbox) meanwhile.
                if self.shared.stop.load(Ordering::Relaxed) || !self.drain() {
                    return;
                }
                let limit_bytes = match self.watched.get(&task) {
                    Some(w) if w.sandbox == sandbox => w.limit_bytes,
                    _ => continue,
                };
                let report = DiskReport {
                    task,
                    usage,
                    limit_bytes,
                };
                match self.events.try_send(report) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        self.shared.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            let next = round_start + self.interval;
            let now = Instant::now();
            if now > next {
                tracing::debug!(sandboxes = n, took = ?now - round_start, interval = ?self.interval,
                    "measuring the sandboxes took longer than the interval");
                round_start = now;
            } else {
                if !self.wait_until(next) {
                    return;
                }
                round_start = next;
            }
        }
    }

    /// Applies commands until `deadline`; false when the thread is to stop.
    fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return self.drain();
            }
            match self.commands.recv_timeout(deadline - now) {
                Ok(command) => self.apply(command),
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Applies the commands waiting; false when the thread is to stop.
    fn drain(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.apply(command),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn apply(&mut self, command: WatchCommand) {
        match command {
            WatchCommand::Watch {
                task,
                sandbox,
                limit_bytes,
            } => {
                self.watched.insert(
                    task,
                    Watched {
                        sandbox,
                        limit_bytes,
                    },
                );
            }
            WatchCommand::Unwatch(task) => {
                self.watched.remove(&task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::symlink;

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

    fn write_file(path: &Path, len: usize) {
        let mut f = fs::File::create(path).unwrap();
        f.write_all(&vec![0x5a; len]).unwrap();
        f.sync_all().unwrap();
    }

    fn mkfifo(path: &Path) {
        let c = path_cstring(path).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// `dir/d/d/.../d` (`depth` levels), made fd-relative (the path is far over `PATH_MAX`),
    /// with a file of `len` bytes at the bottom.
    fn deep_chain(dir: &Path, depth: usize, len: usize) {
        let c = path_cstring(dir).unwrap();
        // SAFETY: a valid path.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) }).unwrap();
        // SAFETY: just opened.
        let mut fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for _ in 0..depth {
            // SAFETY: a valid descriptor and name.
            cvt(unsafe { libc::mkdirat(fd.as_raw_fd(), c"d".as_ptr(), 0o755) }).unwrap();
            fd = open_dir_at(fd.as_fd(), c"d").unwrap();
        }
        let file = open_at(fd.as_fd(), c"f", libc::O_WRONLY | libc::O_CREAT).unwrap();
        fs::File::from(file).write_all(&vec![1; len]).unwrap();
    }

    /// Removes `deep_chain(dir, ..)` (too deep for `remove_dir_all`).
    fn remove_chain(dir: &Path) {
        let c = path_cstring(dir).unwrap();
        // SAFETY: a valid path.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) }).unwrap();
        // SAFETY: just opened.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        crate::sandbox_gc::remove_tree_at(fd.as_fd(), c"d", &AtomicBool::new(false)).unwrap();
    }

    #[test]
    fn counts_a_known_tree() {
        let dir = tempdir();
        write_file(&dir.path().join("a"), 10_000);
        write_file(&dir.path().join("b"), 50_000);
        fs::create_dir(dir.path().join("sub")).unwrap();
        write_file(&dir.path().join("sub/c"), 30_000);
        write_file(&dir.path().join("sub/empty"), 0);
        symlink("a", dir.path().join("sub/link")).unwrap();
        let usage = tree_usage(dir.path(), 1000).unwrap();
        assert_eq!(usage.entries, 6);
        assert!(!usage.truncated);
        assert!(usage.bytes >= 90_000, "{usage:?}");
        assert!(usage.bytes < 90_000 + 64 * 4096 + 3 * 65536, "{usage:?}");
    }

    #[test]
    fn does_not_follow_a_symlink_to_a_big_directory() {
        let outside = tempdir();
        write_file(&outside.path().join("big"), 4 << 20);
        let dir = tempdir();
        symlink(outside.path(), dir.path().join("escape")).unwrap();
        symlink(outside.path().join("big"), dir.path().join("file")).unwrap();
        let usage = tree_usage(dir.path(), 1000).unwrap();
        assert_eq!(usage.entries, 2);
        assert!(usage.bytes < 1 << 20, "{usage:?}");
        // The top directory itself may not be a symlink either.
        let link = dir.path().join("escape");
        assert!(tree_usage(&link, 1000).is_err());
    }

    #[test]
    fn skips_a_fifo_without_blocking() {
        let dir = tempdir();
        mkfifo(&dir.path().join("pipe"));
        fs::create_dir(dir.path().join("sub")).unwrap();
        mkfifo(&dir.path().join("sub/pipe"));
        let path = dir.path().to_owned();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(tree_usage(&path, 1000).map(|u| u.entries)));
        let entries = rx.recv_timeout(Duration::from_secs(10)).expect("blocked");
        assert_eq!(entries.unwrap(), 3);
    }

    #[test]
    fn counts_a_hard_linked_file_once() {
        let dir = tempdir();
        write_file(&dir.path().join("a"), 256 << 10);
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("sub/c")).unwrap();
        let usage = tree_usage(dir.path(), 1000).unwrap();
        assert_eq!(usage.entries, 4);
        assert!(usage.bytes >= 256 << 10, "{usage:?}");
        assert!(usage.bytes < 2 * (256 << 10), "{usage:?}");
    }

    #[test]
    fn respects_max_entries() {
        let dir = tempdir();
        for i in 0..100 {
            write_file(&dir.path().join(format!("f{i}")), 1);
        }
        let usage = tree_usage(dir.path(), 10).unwrap();
        assert_eq!(usage.entries, 10);
        assert!(usage.truncated);
        let usage = tree_usage(dir.path(), 100).unwrap();
        assert_eq!(usage.entries, 100);
        assert!(!usage.truncated);
    }

    #[test]
    fn a_missing_directory_is_not_found() {
        let dir = tempdir();
        let e = tree_usage(&dir.path().join("nope"), 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_cancelled_walk_is_truncated() {
        let dir = tempdir();
        write_file(&dir.path().join("a"), 1);
        let usage = tree_usage_cancellable(dir.path(), 10, &AtomicBool::new(true)).unwrap();
        assert!(usage.truncated);
    }

    #[test]
    fn survives_a_10000_deep_tree() {
        let dir = tempdir();
        deep_chain(dir.path(), 10_000, 64 << 10);
        let usage = tree_usage(dir.path(), 1_000_000).unwrap();
        assert!(!usage.truncated, "{usage:?}");
        assert_eq!(usage.entries, 10_001);
        assert!(usage.bytes >= 64 << 10, "{usage:?}");
        remove_chain(dir.path());
    }

    #[test]
    fn a_moved_directory_is_not_taken_for_its_old_parent() {
        let dir = tempdir();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let a = fs::File::open(dir.path().join("a")).unwrap();
        let b = fs::File::open(dir.path().join("a/b")).unwrap();
        let st = stat_fd(a.as_fd()).unwrap();
        assert!(reopen_parent(b.as_fd(), st.st_dev, st.st_ino).is_ok());
        fs::rename(dir.path().join("a/b"), dir.path().join("b")).unwrap();
        assert!(reopen_parent(b.as_fd(), st.st_dev, st.st_ino).is_err());
    }

    async fn next_report(
        rx: &mut tokio::sync::mpsc::Receiver<DiskReport>,
        within: Duration,
    ) -> DiskReport {
        tokio::time::timeout(within, rx.recv())
            .await
            .expect("no report in time")
            .expect("channel open")
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reports_growth_past_the_limit_and_stops_after_unwatch() {
        let interval = Duration::from_millis(50);
        let dir = tempdir();
        write_file(&dir.path().join("small"), 4096);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let watch = DiskWatch::spawn(interval, 100_000, tx).unwrap();
        watch.watch(7, dir.path().to_owned(), 1 << 20);
        watch.watch(8, dir.path().join("missing"), 1 << 20); // never reported
        let first = next_report(&mut rx, Duration::from_secs(2)).await;
        assert_eq!((first.task, first.limit_bytes), (7, 1 << 20));
        assert!(first.usage.bytes <= first.limit_bytes, "{first:?}");
        write_file(&dir.path().join("big"), 2 << 20);
        let grown = Instant::now();
        loop {
            let report = next_report(&mut rx, Duration::from_secs(2)).await;
            assert_eq!(report.task, 7);
            if report.usage.bytes > report.limit_bytes {
                break;
            }
        }
        assert!(grown.elapsed() < interval * 4, "{:?}", grown.elapsed());
        watch.unwatch(7);
        tokio::time::sleep(interval * 2).await;
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(interval * 3).await;
        assert!(rx.try_recv().is_err(), "a report after unwatch");
        assert_eq!(watch.skipped(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn counts_reports_skipped_on_a_full_channel() {
        let dir = tempdir();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let watch = DiskWatch::spawn(Duration::from_millis(10), 1000, tx).unwrap();
        watch.watch(1, dir.path().to_owned(), 1);
        watch.watch(2, dir.path().to_owned(), 1);
        let deadline = Instant::now() + Duration::from_secs(2);
        while watch.skipped() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(watch.skipped() > 0);
    }

    #[test]
    fn drop_is_prompt() {
        let dir = tempdir();
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let watch = DiskWatch::spawn(Duration::from_secs(3600), 1000, tx).unwrap();
        watch.watch(1, dir.path().to_owned(), 1);
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        drop(watch);
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }
}
