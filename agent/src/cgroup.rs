//! Task cgroups: detecting the hierarchy, creating a task's cgroup with its limits, killing
//! everything in it, reading what it used, removing it.
//!
//! # Layout
//!
//! The agent keeps its tasks in a subtree of its own cgroup, so that a delegated cgroup
//! (systemd's `Delegate=yes`, a container's namespace) is enough and nothing outside it is
//! touched: `<the agent's cgroup>/borealis-<agent id>-<hash of the work dir>/task-<task id>`,
//! in every hierarchy used. The subtree's name is stable across restarts of the same agent
//! (same id, same work dir), so a restarted agent finds and kills what an earlier run left
//! (see [`Cgroups::sweep`]), and two agents on one machine never share one.
//!
//! # Which hierarchy
//!
//! Detected, never assumed, from `/proc/self/mountinfo` and `/proc/self/cgroup`:
//! - cgroup v2 when the unified hierarchy's cgroup of the agent offers the `cpu`, `memory` and
//!   `pids` controllers (`cgroup.controllers`). Freezing and killing are v2 built-ins
//!   (`cgroup.kill`). The controllers are enabled for the subtree through `subtree_control`;
//!   because v2 lets a cgroup with processes delegate no controllers, an agent that sits in
//!   a non-root cgroup moves itself into a leaf `borealis-agent-<hash>` beside the subtree
//!   first.
//! - cgroup v1 otherwise, when `cpu`, `memory`, `pids` and `freezer` hierarchies are mounted
//!   (`cpuacct`, for the CPU time, where mounted; co-mounted hierarchies such as `cpu,cpuacct`
//!   are one directory). A machine can mount v1 controllers with a unified hierarchy beside
//!   them that has none (this project's CI machines do): that is v1.
//! - neither: [`Cgroups::detect`] says what is missing, and the agent refuses to start unless
//!   `--isolation none`.
//!
//! # Limits
//!
//! - cpu: shares (v1 `cpu.shares` = 1024 per cpu, at least 2; v2 `cpu.weight`, the same
//!   mapping systemd uses) and a hard quota of the task's cpus per 100 ms period
//!   (`cpu.cfs_quota_us` / `cpu.max`, at least 1 ms);
//! - ram: a hard memory limit (`memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes`
//!   where swap is accounted, so swap cannot extend it; v2 `memory.max`, `memory.swap.max` 0).
//!   Past it the kernel's OOM killer kills in the task's cgroup only, which
//!   [`Usage::oom_kills`] counts;
//! - pids: `pids.max`, `--pids-limit`.
//!
//! # Reuse
//!
//! Creating and removing a cgroup in five v1 hierarchies costs more kernel time than starting
//! a small task's process, so on v1 a task's cgroup is reused: once a task's cgroup is empty and
//! holds (almost) no memory charge — at most [`REUSE_CHARGE_MAX`], so no page cache or tmpfs
//! page of one task counts against the next — its peak memory and CPU time are reset and it
//! waits in a bounded pool ([`POOL_MAX`]) for the next task, which sets its own limits. The
//! OOM-kill count cannot be reset: each use remembers it at the start. Anything else (a busy
//! cgroup, a charged one, a full pool, v2, whose `memory.peak` cannot be reset before Linux
//! 6.12) is removed as before. Pooled cgroups are named `task-<n>` like any other, so the reaper
//! and the startup sweep treat them alike.
//!
//! Every operation here is blocking file IO on cgroupfs: the agent runs them on its launcher
//! and janitor threads (`launcher.rs`), never on its event loop.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

/// The cpu period of the hard cpu limit (the kernel's default period).
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts.
const CPU_QUOTA_MIN_US: u64 = 1_000;
/// Longest a v1 freeze may take before the kill goes on anyway.
const FREEZE_WAIT: Duration = Duration::from_secs(1);
/// Kill passes (freeze, kill, thaw) before a cgroup that still has processes is given up on.
const KILL_PASSES: u32 = 20;
/// The prefix of a task's cgroup name.
const TASK_PREFIX: &str = "task-";
/// Most empty cgroups kept for reuse.
pub(crate) const POOL_MAX: usize = 1024;
/// Most memory still charged to an empty cgroup that is reused.
pub(crate) const REUSE_CHARGE_MAX: u64 = 1 << 20;

/// The limits of one task's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub cpu_millis: u32,
    pub ram_mib: u32,
    pub pids_max: u32,
}

/// What a task's cgroup used, read before it is removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub cpu_time_ms: u64,
    pub peak_memory_bytes: u64,
    /// Processes of the task the OOM killer killed.
    pub oom_kills: u64,
}

#[derive(Debug)]
enum Kind {
    V1 {
        /// The subtree's directory in each distinct hierarchy used.
        dirs: Vec<PathBuf>,
        cpu: PathBuf,
        cpuacct: Option<PathBuf>,
        memory: PathBuf,
        pids: PathBuf,
        freezer: PathBuf,
        /// Swap is accounted (`memory.memsw.*` exists).
        memsw: bool,
    },
    V2 {
        subtree: PathBuf,
        /// `memory.swap.max` exists.
        swap: bool,
    },
}

/// The agent's cgroup subtree (see the module documentation).
#[derive(Debug)]
pub(crate) struct Cgroups {
    kind: Kind,
    /// Empty, reset cgroups waiting for a task (see "Reuse").
    pool: crossbeam::queue::ArrayQueue<TaskCgroup>,
    /// The number of the next new cgroup (unique within the subtree for this run).
    next: AtomicU64,
    /// A random-enough start for `next`, so a restarted agent does not collide with leftovers.
    run: u64,
}

/// One task's cgroup: its name in the subtree of every hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaskCgroup {
    name: String,
    /// OOM kills counted before this use (a reused cgroup's count cannot be reset).
    oom_base: u64,
    /// The limits it has (a reused cgroup whose next task has the same needs no writes).
    limits: Option<Limits>,
}

impl TaskCgroup {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One line of `/proc/self/mountinfo` that mounts a cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CgroupMount {
    /// The root of the mount within its hierarchy.
    root: String,
    mount_point: PathBuf,
    /// v1: the controllers bound to it (`name=` hierarchies are skipped); v2: empty.
    controllers: Vec<String>,
    v2: bool,
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mount_point) = (unescape(left[3]), PathBuf::from(unescape(left[4])));
        match right[0] {
            "cgroup2" => mounts.push(CgroupMount {
                root,
                mount_point,
                controllers: Vec::new(),
                v2: true,
            }),
            "cgroup" => {
                let controllers: Vec<String> = right[2]
                    .split(',')
                    .filter(|o| {
                        matches!(
                            *o,
                            "cpu"
                                | "cpuacct"
                                | "memory"
                                | "pids"
                                | "freezer"
                                | "cpuset"
                                | "blkio"
                                | "devices"
                                | "net_cls"
                                | "net_prio"
                                | "perf_event"
                                | "hugetlb"
                                | "rdma"
                                | "misc"
                        )
                    })
                    .map(str::to_string)
                    .collect();
                if !controllers.is_empty() {
                    mounts.push(CgroupMount {
                        root,
                        mount_point,
                        controllers,
                        v2: false,
                    });
                }
            }
            _ => {}
        }
    }
    mounts
}

/// `/proc/self/cgroup`: (hierarchy id, controllers, path). v2's line is `0::/path`.
fn parse_proc_cgroup(text: &str) -> Vec<(String, Vec<String>, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.to_string();
            let controllers = parts
                .next()?
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let path = parts.next()?.to_string();
            Some((id, controllers, path))
        })
        .collect()
}

/// The directory of cgroup `path` (as `/proc/self/cgroup` names it) under `mount`.
fn dir_in(mount: &CgroupMount, path: &str) -> PathBuf {
    let relative = if mount.root != "/" && path.starts_with(&mount.root) {
        &path[mount.root.len()..]
    } else {
        path
    };
    mount.mount_point.join(relative.trim_start_matches('/'))
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

fn write_named(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    write_file(&dir.join(file), value).map_err(|e| {
        format!(
            "cannot write {value:?} to {}: {e}",
            dir.join(file).display()
        )
    })
}

fn mkdir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// The pids listed in a `cgroup.procs` file.
fn read_pids(path: &Path) -> io::Result<Vec<i32>> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// A `key value` line of a flat keyed file (`memory.events`, `cpu.stat`, `oom_control`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn kill_pid(pid: i32, signal: libc::c_int) {
    if pid > 1 {
        // SAFETY: plain system call; a pid that is gone already is fine.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Cgroups {
    /// Finds the hierarchy (see the module documentation) and creates the agent's subtree
    /// `name` in it. The error says what is missing or not writable.
    pub fn detect(name: &str) -> Result<Cgroups, String> {
        let mountinfo = fs::read_to_string(Path::new("/proc/self/mountinfo"))
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = fs::read_to_string(Path::new("/proc/self/cgroup"))
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        Cgroups::detect_from(&parse_mountinfo(&mountinfo), &parse_proc_cgroup(&own), name)
    }

    fn detect_from(
        mounts: &[CgroupMount],
        own: &[(String, Vec<String>, String)],
        name: &str,
    ) -> Result<Cgroups, String> {
        let mut v2_problem = None;
        if let (Some(mount), Some((_, _, path))) = (
            mounts.iter().find(|m| m.v2),
            own.iter().find(|(id, c, _)| id == "0" && c.is_empty()),
        ) {
            let own_dir = dir_in(mount, path);
            let controllers = fs::read_to_string(own_dir.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>();
            let missing: Vec<&str> = ["cpu", "memory", "pids"]
                .into_iter()
                .filter(|c| !controllers.iter().any(|have| have == c))
                .collect();
            if missing.is_empty() {
                return Cgroups::setup_v2(&own_dir, name);
            }
            v2_problem = Some(format!(
                "the cgroup v2 hierarchy at {} offers {} no {}",
                mount.mount_point.display(),
                own_dir.display(),
                missing.join(", ")
            ));
        }
        // v1: one hierarchy per needed controller.
        let found = |controller: &str| -> Option<PathBuf> {
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
            let (_, _, path) = own
                .iter()
                .find(|(_, cs, _)| cs.iter().any(|c| c == controller))?;
            Some(dir_in(mount, path).join(name))
        };
        let (cpu, cpuacct, memory, pids, freezer) = (
            found("cpu"),
            found("cpuacct"),
            found("memory"),
            found("pids"),
            found("freezer"),
        );
        let missing: Vec<&str> = [
            ("cpu", &cpu),
            ("memory", &memory),
            ("pids", &pids),
            ("freezer", &freezer),
        ]
        .into_iter()
        .filter(|(_, dir)| dir.is_none())
        .map(|(c, _)| c)
        .collect();
        if !missing.is_empty() {
            let v1 = format!("no cgroup v1 hierarchy of {}", missing.join(", "));
            return Err(match v2_problem {
                Some(v2) => format!("{v2}, and {v1}"),
                None => format!("no cgroup v2 hierarchy is mounted, and {v1}"),
            });
        }
        let (cpu, memory, pids, freezer) = (
            cpu.expect("checked"),
            memory.expect("checked"),
            pids.expect("checked"),
            freezer.expect("checked"),
        );
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in [
            Some(&cpu),
            cpuacct.as_ref(),
            Some(&memory),
            Some(&pids),
            Some(&freezer),
        ]
        .into_iter()
        .flatten()
        {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        for dir in &dirs {
            mkdir(dir).map_err(|e| {
                format!(
                    "cannot create the agent's cgroup {}: {e} (the agent needs root or a \
                     delegated cgroup)",
                    dir.display()
                )
            })?;
        }
        let memsw = memory.join("memory.memsw.limit_in_bytes").exists();
        let cpuacct = cpuacct.filter(|d| *d != cpu || d.join("cpuacct.usage").exists());
        Ok(Cgroups::with(Kind::V1 {
            dirs,
            cpu,
            cpuacct,
            memory,
            pids,
            freezer,
            memsw,
        }))
    }

    fn setup_v2(own_dir: &Path, name: &str) -> Result<Cgroups, String> {
        const ENABLE: &str = "+cpu +memory +pids";
        let enable = |dir: &Path| write_file(&dir.join("cgroup.subtree_control"), ENABLE);
        if let Err(first) = enable(own_dir) {
            // A cgroup with processes delegates no controllers: move the agent into a leaf
            // beside its subtree, then try again.
            let leaf = own_dir.join(format!("{name}-agent"));
            mkdir(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
            write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())
                .map_err(|e| format!("cannot move the agent into {}: {e}", leaf.display()))?;
            enable(own_dir).map_err(|e| {
                format!(
                    "cannot enable {ENABLE} in {}/cgroup.subtree_control: {e} (first try: \
                     {first}); run the agent in a delegated cgroup of its own",
                    own_dir.display()
                )
            })?;
        }
        let subtree = own_dir.join(name);
        mkdir(&subtree).map_err(|e| {
            format!(
                "cannot create the agent's cgroup {}: {e} (the agent needs root or a delegated \
                 cgroup)",
                subtree.display()
            )
        })?;
        enable(&subtree).map_err(|e| {
            format!(
                "cannot enable {ENABLE} in {}/cgroup.subtree_control: {e}",
                subtree.display()
            )
        })?;
        let swap =
            subtree.join("memory.swap.max").exists() || own_dir.join("memory.swap.max").exists();
        Ok(Cgroups::with(Kind::V2 { subtree, swap }))
    }

    fn with(kind: Kind) -> Cgroups {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Cgroups {
            kind,
            pool: crossbeam::queue::ArrayQueue::new(POOL_MAX),
            next: AtomicU64::new(0),
            run,
        }
    }

    /// A cgroup for a task, with its limits: a pooled one, else a new one.
    pub fn acquire(&self, limits: &Limits) -> Result<TaskCgroup, String> {
        if let Some(mut cg) = self.pool.pop() {
            if cg.limits == Some(*limits) || self.set_limits(&cg, limits).is_ok() {
                cg.limits = Some(*limits);
                return Ok(cg);
            }
            // It cannot take these limits (say, the memory limit below what it still holds):
            // a new one instead.
            let _ = self.remove(&cg);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let cg = TaskCgroup {
            name: format!("{TASK_PREFIX}{:x}-{n:x}", self.run),
            oom_base: 0,
            limits: Some(*limits),
        };
        self.create(&cg, limits)?;
        Ok(cg)
    }

    /// The task is done with its cgroup, whose `usage` was just read and which is `empty` (no
    /// process left): reset and pooled when it can be reused (see
    /// "Reuse"), else removed (an error: still busy, retry later).
    pub fn release(&self, mut cg: TaskCgroup, usage: &Usage, empty: bool) -> io::Result<()> {
        if let Kind::V1 {
            cpuacct, memory, ..
        } = &self.kind
        {
            let memory = memory.join(&cg.name);
            let charged = read_u64(&memory.join("memory.usage_in_bytes")).unwrap_or(u64::MAX);
            if empty && charged <= REUSE_CHARGE_MAX {
                let reset =
                    write_file(&memory.join("memory.max_usage_in_bytes"), "0").and_then(|()| {
                        match cpuacct {
                            Some(d) => write_file(&d.join(&cg.name).join("cpuacct.usage"), "0"),
                            None => Ok(()),
                        }
                    });
                if reset.is_ok() {
                    // The OOM-kill count cannot be reset: the next use starts from it.
                    cg.oom_base += usage.oom_kills;
                    match self.pool.push(cg) {
                        Ok(()) => return Ok(()),
                        Err(cg) => return self.remove(&cg),
                    }
                }
            }
        }
        self.remove(&cg)
    }

    /// `"cgroup v2 at <dir>"` or `"cgroup v1 (<dirs>)"`, for the startup log.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::V1 { dirs, .. } => format!(
                "cgroup v1 ({})",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::V2 { subtree, .. } => format!("cgroup v2 ({})", subtree.display()),
        }
    }

    /// Makes the subtree directory `dir` again (v2: with its controllers enabled).
    fn recreate_subtree(&self, dir: &Path) -> io::Result<()> {
        mkdir(dir)?;
        if let Kind::V2 { .. } = &self.kind {
            write_file(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids")?;
        }
        Ok(())
    }

    /// The directories a task's cgroup has, one per hierarchy.
    fn task_dirs(&self, cg: &TaskCgroup) -> Vec<PathBuf> {
        match &self.kind {
            Kind::V1 { dirs, .. } => dirs.iter().map(|d| d.join(&cg.name)).collect(),
            Kind::V2 { subtree, .. } => vec![subtree.join(&cg.name)],
        }
    }

    /// The directory whose `cgroup.procs` lists the task's processes.
    fn procs_dir(&self, cg: &TaskCgroup) -> PathBuf {
        match &self.kind {
            Kind::V1 { freezer, .. } => freezer.join(&cg.name),
            Kind::V2 { subtree, .. } => subtree.join(&cg.name),
        }
    }

    /// Creates the task's cgroup with its limits. A leftover of the same name is killed and
    /// replaced. Nothing is left behind on an error.
    fn create(&self, cg: &TaskCgroup, limits: &Limits) -> Result<(), String> {
        let dirs = self.task_dirs(cg);
        if dirs.iter().any(|d| d.exists()) {
            self.kill_all(cg);
            let _ = self.remove(cg);
        }
        let mut made = Vec::with_capacity(dirs.len());
        for dir in &dirs {
            let mut result = fs::create_dir(dir);
            if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                // The subtree went (the reaper of an earlier run of this agent removes it once
                // empty): make it again.
                if let Some(parent) = dir.parent() {
                    let _ = self.recreate_subtree(parent);
                }
                result = fs::create_dir(dir);
            }
            if let Err(e) = result {
                for d in made.iter().rev() {
                    let _ = fs::remove_dir(d);
                }
                return Err(format!("cannot create cgroup {}: {e}", dir.display()));
            }
            made.push(dir.clone());
        }
        if let Err(e) = self.set_limits(cg, limits) {
            let _ = self.remove(cg);
            return Err(e);
        }
        Ok(())
    }

    fn set_limits(&self, cg: &TaskCgroup, limits: &Limits) -> Result<(), String> {
        let cpu_millis = u64::from(limits.cpu_millis.max(1));
        let shares = (cpu_millis * 1024 / 1000).max(2);
        let quota = (cpu_millis * CPU_PERIOD_US / 1000).max(CPU_QUOTA_MIN_US);
        let ram_bytes = (u64::from(limits.ram_mib.max(1)) << 20).to_string();
        let pids = limits.pids_max.max(1).to_string();
        match &self.kind {
            Kind::V1 {
                cpu,
                memory,
                pids: pids_dir,
                memsw,
                ..
            } => {
                let cpu = cpu.join(&cg.name);
                write_named(&cpu, "cpu.shares", &shares.to_string())?;
                write_named(&cpu, "cpu.cfs_quota_us", &quota.to_string())?;
                let memory = memory.join(&cg.name);
                // memsw may never be below the memory limit: lowering goes memory first,
                // raising (a reused cgroup) memsw first.
                if write_named(&memory, "memory.limit_in_bytes", &ram_bytes).is_err() && *memsw {
                    write_named(&memory, "memory.memsw.limit_in_bytes", &ram_bytes)?;
                    write_named(&memory, "memory.limit_in_bytes", &ram_bytes)?;
                } else if *memsw {
                    write_named(&memory, "memory.memsw.limit_in_bytes", &ram_bytes)?;
                }
                write_named(&pids_dir.join(&cg.name), "pids.max", &pids)?;
            }
            Kind::V2 { subtree, swap } => {
                let dir = subtree.join(&cg.name);
                // systemd's and crun's mapping of shares [2, 262144] to weight [1, 10000].
                let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9_999 / 262_142;
                write_named(&dir, "cpu.weight", &weight.to_string())?;
                write_named(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                write_named(&dir, "memory.max", &ram_bytes)?;
                if *swap {
                    write_named(&dir, "memory.swap.max", "0")?;
                }
                write_named(&dir, "pids.max", &pids)?;
            }
        }
        Ok(())
    }

    /// Write ends of the task's `cgroup.procs` files, one per hierarchy, for the child to join
    /// its cgroup before it execs (writing `0` moves the writer).
    pub fn join_files(&self, cg: &TaskCgroup) -> Result<Vec<OwnedFd>, String> {
        self.task_dirs(cg)
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))
            })
            .collect()
    }

    /// The task's processes.
    pub fn pids(&self, cg: &TaskCgroup) -> io::Result<Vec<i32>> {
        read_pids(&self.procs_dir(cg).join("cgroup.procs"))
    }

    /// Whether the task's cgroup has no process left (a missing cgroup has none).
    pub fn is_empty(&self, cg: &TaskCgroup) -> bool {
        match self.pids(cg) {
            Ok(pids) => pids.is_empty(),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
    }

    /// Sends `signal` to every process of the task (the SIGTERM of a kill: processes that left
    /// the task's process group get it too).
    pub fn signal_all(&self, cg: &TaskCgroup, signal: libc::c_int) {
        if let Ok(pids) = self.pids(cg) {
            for pid in pids {
                kill_pid(pid, signal);
            }
        }
    }

    /// SIGKILLs every process of the task, so that none escapes by forking meanwhile: v2
    /// writes `cgroup.kill`; v1 freezes the cgroup, kills what it holds, thaws it (a frozen
    /// process cannot fork; the killed ones die once thawed), and repeats until it is empty
    /// (bounded). True when the cgroup is empty at the end.
    pub fn kill_all(&self, cg: &TaskCgroup) -> bool {
        match &self.kind {
            Kind::V2 { subtree, .. } => {
                let dir = subtree.join(&cg.name);
                if write_file(&dir.join("cgroup.kill"), "1").is_err() {
                    // Before Linux 5.14: kill the processes one by one.
                    for _ in 0..KILL_PASSES {
                        let pids = self.pids(cg).unwrap_or_default();
                        if pids.is_empty() {
                            break;
                        }
                        for pid in pids {
                            kill_pid(pid, libc::SIGKILL);
                        }
                    }
                }
                self.wait_empty(cg, Duration::from_secs(2))
            }
            Kind::V1 { freezer, .. } => {
                let dir = freezer.join(&cg.name);
                for _ in 0..KILL_PASSES {
                    if self.is_empty(cg) {
                        return true;
                    }
                    let frozen = write_file(&dir.join("freezer.state"), "FROZEN").is_ok();
                    if frozen {
                        let start = Instant::now();
                        while fs::read_to_string(dir.join("freezer.state"))
                            .map(|s| s.trim() == "FREEZING")
                            .unwrap_or(false)
                            && start.elapsed() < FREEZE_WAIT
                        {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    for pid in self.pids(cg).unwrap_or_default() {
                        kill_pid(pid, libc::SIGKILL);
                    }
                    if frozen {
                        let _ = write_file(&dir.join("freezer.state"), "THAWED");
                    }
                    if self.wait_empty(cg, Duration::from_millis(200)) {
                        return true;
                    }
                }
                self.is_empty(cg)
            }
        }
    }

    /// Waits (polling) up to `wait` for the task's cgroup to be empty.
    fn wait_empty(&self, cg: &TaskCgroup, wait: Duration) -> bool {
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            if self.is_empty(cg) {
                return true;
            }
            if start.elapsed() >= wait {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// What the task used: CPU time, peak memory, OOM kills. Fields it cannot read are 0.
    pub fn usage(&self, cg: &TaskCgroup) -> Usage {
        match &self.kind {
            Kind::V1 {
                cpuacct, memory, ..
            } => {
                let memory = memory.join(&cg.name);
                Usage {
                    cpu_time_ms: cpuacct
                        .as_ref()
                        .and_then(|d| read_u64(&d.join(&cg.name).join("cpuacct.usage")))
                        .map_or(0, |ns| ns / 1_000_000),
                    peak_memory_bytes: read_u64(&memory.join("memory.max_usage_in_bytes"))
                        .unwrap_or(0),
                    oom_kills: fs::read_to_string(memory.join("memory.oom_control"))
                        .ok()
                        .and_then(|t| keyed(&t, "oom_kill"))
                        .unwrap_or(0)
                        .saturating_sub(cg.oom_base),
                }
            }
            Kind::V2 { subtree, .. } => {
                let dir = subtree.join(&cg.name);
                let events = fs::read_to_string(dir.join("memory.events")).unwrap_or_default();
                Usage {
                    cpu_time_ms: fs::read_to_string(dir.join("cpu.stat"))
                        .ok()
                        .and_then(|t| keyed(&t, "usage_usec"))
                        .map_or(0, |us| us / 1_000),
                    peak_memory_bytes: read_u64(&dir.join("memory.peak")).unwrap_or(0),
                    oom_kills: keyed(&events, "oom_kill")
                        .unwrap_or(0)
                        .saturating_sub(cg.oom_base),
                }
            }
        }
    }

    /// Removes the task's cgroup (every hierarchy); fails (EBUSY) while it has processes.
    pub fn remove(&self, cg: &TaskCgroup) -> io::Result<()> {
        let mut result = Ok(());
        for dir in self.task_dirs(cg) {
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => result = Err(e),
                Ok(()) => {}
            }
        }
        result
    }

    /// The task cgroups in the subtree (left by an earlier run, at startup).
    fn existing(&self) -> Vec<TaskCgroup> {
        let dir = match &self.kind {
            Kind::V1 { freezer, .. } => freezer.clone(),
            Kind::V2 { subtree, .. } => subtree.clone(),
        };
        let mut names: Vec<String> = Vec::new();
        let mut scan = |dir: &Path| {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    if name.starts_with(TASK_PREFIX) && !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
            }
        };
        scan(&dir);
        if let Kind::V1 { dirs, .. } = &self.kind {
            for d in dirs {
                scan(d);
            }
        }
        names
            .into_iter()
            .map(|name| TaskCgroup {
                name,
                oom_base: 0,
                limits: None,
            })
            .collect()
    }

    /// Kills and removes every task cgroup an earlier run of this agent left (its reaper
    /// killed as well, or it was never started). Returns how many there were.
    pub fn sweep(&self) -> usize {
        let leftovers = self.existing();
        for cg in &leftovers {
            let pids = self.pids(cg).map(|p| p.len()).unwrap_or(0);
            if pids > 0 {
                tracing::warn!(cgroup = %cg.name, processes = pids,
                    "killing what an earlier run of this agent left running");
            }
            self.kill_all(cg);
            if let Err(e) = self.remove(cg) {
                tracing::warn!(cgroup = %cg.name, error = %e, "cannot remove a leftover cgroup");
            }
        }
        leftovers.len()
    }

    /// The reaper's arguments: how it kills and where the task cgroups are (`reaper.rs`).
    pub fn reaper_args(&self) -> (&'static str, Vec<&OsStr>) {
        match &self.kind {
            Kind::V1 { freezer, dirs, .. } => (
                "v1",
                std::iter::once(freezer.as_os_str())
                    .chain(dirs.iter().map(|d| d.as_os_str()))
                    .collect(),
            ),
            Kind::V2 { subtree, .. } => ("v2", vec![subtree.as_os_str()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
30 25 0:27 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
31 25 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
32 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 25 0:30 /docker/x /sys/fs/cgroup/cpu\\040acct rw - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn mountinfo_lists_hierarchies() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 7, "{mounts:?}");
        assert_eq!(mounts[0].controllers, ["cpu"]);
        assert!(mounts
            .iter()
            .any(|m| m.v2 && m.mount_point == Path::new("/sys/fs/cgroup/unified")));
        let co = mounts.last().unwrap();
        assert_eq!(co.controllers, ["cpu", "cpuacct"]);
        assert_eq!(co.mount_point, Path::new("/sys/fs/cgroup/cpu acct"));
        assert_eq!(co.root, "/docker/x");
        assert_eq!(
            dir_in(co, "/docker/x/sub"),
            Path::new("/sys/fs/cgroup/cpu acct/sub")
        );
    }

    #[test]
    fn proc_cgroup_lines() {
        let own = parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/\n1:name=systemd:/\n");
        assert_eq!(own[0], ("4".into(), vec!["memory".into()], "/a/b".into()));
        assert_eq!(own[1].1, ["cpu", "cpuacct"]);
        assert_eq!(own[2], ("0".into(), vec![], "/".into()));
    }

    #[test]
    fn missing_controllers_are_named() {
        let mounts: Vec<CgroupMount> = parse_mountinfo(MOUNTINFO)
            .into_iter()
            .filter(|m| !m.controllers.iter().any(|c| c == "pids" || c == "freezer"))
            .filter(|m| !m.v2)
            .collect();
        let own = parse_proc_cgroup("1:cpu:/\n2:memory:/\n");
        let err = Cgroups::detect_from(&mounts, &own, "x").unwrap_err();
        assert_eq!(
            err,
            "no cgroup v2 hierarchy is mounted, and no cgroup v1 hierarchy of pids, freezer"
        );
    }

    #[test]
    fn keyed_files() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(text, "oom_kill"), Some(3));
        assert_eq!(keyed(text, "missing"), None);
    }
}
