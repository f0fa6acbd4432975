//! The published leadership status: written by the election task, read from any thread.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

/// What this scheduler knows about leadership right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This process leads. `fence_revision` is the etcd create revision of its leader key: it
    /// names the leadership term, and every durable write carries it (see
    /// [`crate::DesiredStore::put_batch`]). A new term (even of the same process) has a new,
    /// larger revision.
    Leader { fence_revision: i64, since: Instant },
    /// Another scheduler leads; `leader` is its advertised client address (`HOST:PORT`).
    Follower { leader: String },
    /// No leader exists, or this process cannot tell (etcd unreachable, lease in doubt).
    Unknown,
}

impl Leadership {
    /// Aurora's `/leaderhealth`: 200 on the leader, 503 on a follower while a leader is known,
    /// 502 when no leader exists or it is unknown.
    pub fn http_status(&self) -> u16 {
        match self {
            Leadership::Leader { .. } => 200,
            Leadership::Follower { .. } => 503,
            Leadership::Unknown => 502,
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { .. })
    }

    /// The fence of the current term, if this process leads.
    pub fn fence_revision(&self) -> Option<i64> {
        match self {
            Leadership::Leader { fence_revision, .. } => Some(*fence_revision),
            _ => None,
        }
    }
}

struct Shared {
    current: ArcSwap<Leadership>,
    /// Bumped on every change, for tasks that wait for one (`subscribe`).
    generation: watch::Sender<u64>,
}

/// A cheap-to-clone handle on the published [`Leadership`]. Reads are lock-free
/// (`arc_swap`), so shards may read it every round from any thread.
#[derive(Clone)]
pub struct LeaderView(Arc<Shared>);

impl Default for LeaderView {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LeaderView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LeaderView").field(&**self.load()).finish()
    }
}

impl LeaderView {
    /// A view that starts `Unknown`.
    pub fn new() -> Self {
        let (generation, _) = watch::channel(0);
        LeaderView(Arc::new(Shared {
            current: ArcSwap::from_pointee(Leadership::Unknown),
            generation,
        }))
    }

    /// The current status, without touching the reference count (cheapest; do not hold the
    /// guard across an `.await` or for long).
    pub fn load(&self) -> Guard<Arc<Leadership>> {
        self.0.current.load()
    }

    /// The current status as an owned `Arc`.
    pub fn get(&self) -> Arc<Leadership> {
        self.0.current.load_full()
    }

    pub fn is_leader(&self) -> bool {
        self.load().is_leader()
    }

    /// `Some(fence)` while this process leads.
    pub fn fence_revision(&self) -> Option<i64> {
        self.load().fence_revision()
    }

    /// `/leaderhealth`'s status code for the current status.
    pub fn http_status(&self) -> u16 {
        self.load().http_status()
    }

    /// A receiver whose `changed()` completes after every change of the status; read the new
    /// status with [`LeaderView::get`]. For control-thread tasks (tokio), not for shards.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.generation.subscribe()
    }

    /// Publishes `next` if it differs from the current status, logging the transition.
    pub(crate) fn publish(&self, next: Leadership, why: &str) {
        let prev = self.0.current.load_full();
        if *prev == next {
            return;
        }
        tracing::info!(from = ?*prev, to = ?next, reason = why, "leadership changed");
        self.0.current.store(Arc::new(next));
        self.0.generation.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_leaderhealth_codes() {
        let view = LeaderView::new();
        assert_eq!(view.http_status(), 502);
        assert_eq!(view.fence_revision(), None);
        let reader = view.clone();
        view.publish(
            Leadership::Follower {
                leader: "h:1".into(),
            },
            "test",
        );
        assert_eq!(reader.http_status(), 503);
        view.publish(
            Leadership::Leader {
                fence_revision: 7,
                since: Instant::now(),
            },
            "test",
        );
        assert_eq!(reader.http_status(), 200);
        assert_eq!(reader.fence_revision(), Some(7));
        assert!(reader.is_leader());
    }

    #[test]
    fn subscribers_see_changes_only() {
        let view = LeaderView::new();
        let rx = view.subscribe();
        view.publish(Leadership::Unknown, "same");
        assert!(!rx.has_changed().unwrap());
        view.publish(Leadership::Follower { leader: "a".into() }, "new");
        assert!(rx.has_changed().unwrap());
    }
}
