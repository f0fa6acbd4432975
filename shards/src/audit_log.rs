//! The audit log (`--audit-log FILE`): one JSON line for every accepted mutation — who (the
//! principal), what (the action, the role and the target), when, and through which surface.
//!
//! Shards never block on it: they hand an entry to a bounded queue ([`AUDIT_QUEUE_MAX`]) that
//! one writer thread drains into the file (appending, flushed after each batch). A full queue
//! drops the entry and counts it (`borealis_audit_dropped_total`, and a warning once per
//! thousand), so a stalled disk slows nothing but is never silent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use borealis_core::auth::Action;
use crossbeam::channel::{bounded, Receiver, Sender, TrySendError};
use serde::Serialize;

/// Entries queued for the writer; past it they are dropped (and counted).
pub const AUDIT_QUEUE_MAX: usize = 65_536;
/// Entries the writer takes per batch before it flushes.
const WRITE_BATCH_MAX: usize = 1024;

/// One accepted mutation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub unix_ms: u64,
    /// The principal's name; `anonymous` when the scheduler runs without `--auth-file`.
    pub principal: String,
    /// The peer's address, where the surface knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `binary` (the client protocol) or `http`.
    pub surface: &'static str,
    pub action: &'static str,
    /// The role acted on; none for cluster actions (maintenance, admin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// What was acted on: a job key (with instances), hosts, a role's quota, a backup.
    pub target: String,
}

/// A handle to the audit log; clones share its queue and writer.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: Sender<AuditEntry>,
    dropped: Arc<AtomicU64>,
    path: Arc<PathBuf>,
}

impl AuditLog {
    /// Opens (creates or appends to) `path` and starts its writer thread; drops are counted
    /// in `dropped` (the metrics' `audit_dropped_total`). Errors name the file.
    pub fn open(path: &Path, dropped: Arc<AtomicU64>) -> anyhow::Result<AuditLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open audit log {}", path.display()))?;
        let (tx, rx) = bounded(AUDIT_QUEUE_MAX);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(file, rx, &shown))
            .context("cannot start the audit log's writer thread")?;
        Ok(AuditLog {
            tx,
            dropped,
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// Queues one entry, stamped now. Never blocks.
    pub fn record(
        &self,
        principal: &str,
        surface: &'static str,
        action: Action,
        role: Option<&str>,
        target: &str,
    ) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.push(AuditEntry {
            unix_ms,
            principal: principal.to_string(),
            peer: None,
            surface,
            action: action.name(),
            role: role.map(str::to_string),
            target: target.to_string(),
        });
    }

    /// Queues `entry` as it is (the caller stamped it). Never blocks.
    pub fn push(&self, entry: AuditEntry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped % 1000 == 1 {
                    tracing::warn!(
                        dropped,
                        path = %self.path.display(),
                        "audit log queue full or writer gone: entries dropped"
                    );
                }
            }
        }
    }

    /// Entries dropped so far (a full queue or a dead writer).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(file: std::fs::File, rx: Receiver<AuditEntry>, shown: &str) {
    let mut out = std::io::BufWriter::new(file);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < WRITE_BATCH_MAX {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let written = (|| -> std::io::Result<()> {
            for entry in &batch {
                serde_json::to_writer(&mut out, entry)?;
                out.write_all(b"\n")?;
            }
            out.flush()
        })();
        match written {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::error!(path = shown, "cannot write the audit log: {e}");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_json_lines_in_order() {
        let dir = tempfile_dir();
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&path, Arc::default()).unwrap();
        log.record(
            "alice",
            "binary",
            Action::Kill,
            Some("www"),
            "www/prod/web 0-3",
        );
        log.record("ops", "http", Action::Admin, None, "backup");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["principal"], "alice");
        assert_eq!(lines[0]["action"], "kill");
        assert_eq!(lines[0]["role"], "www");
        assert_eq!(lines[0]["target"], "www/prod/web 0-3");
        assert_eq!(lines[0]["surface"], "binary");
        assert!(lines[0]["unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(lines[1]["action"], "admin");
        assert!(lines[1].get("role").is_none());
        assert_eq!(log.dropped(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unwritable_path_is_named() {
        let error =
            AuditLog::open(Path::new("/nonexistent/dir/audit.jsonl"), Arc::default()).unwrap_err();
        assert!(
            format!("{error:#}").starts_with("cannot open audit log /nonexistent/dir/audit.jsonl"),
            "{error:#}"
        );
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "borealis-audit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
