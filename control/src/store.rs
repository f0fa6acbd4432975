//! The desired state in etcd (`{prefix}/jobs/…`, `{prefix}/quotas/…` and `{prefix}/hosts/…`),
//! written only by the current leader.
//!
//! Every write is a txn guarded by the leader's fence: the create revision of its election key.
//! The guard holds exactly while that key exists and no other key in the election is older —
//! i.e. while that incarnation of that candidate is etcd's leader — so a deposed leader's write
//! is refused by etcd itself ([`StoreError::Fenced`]), however late it arrives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use tokio::time::timeout;

use crate::election::election_name;

/// etcd's default `--max-txn-ops`: a txn with more operations is refused.
pub const MAX_TXN_OPS: usize = 128;
/// Bytes of keys and values per txn, below etcd's default 1.5 MiB request limit.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Keys per page in `load_all`.
const LOAD_PAGE: i64 = 128;
/// Largest response accepted (a page of 128 values up to etcd's 1.5 MiB request limit each).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// `(key relative to {prefix}/jobs/, Some(value) to put | None to delete)`.
pub type StoreOp = (String, Option<Vec<u8>>);

/// The parts of the desired state, each under its own key prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// `{prefix}/jobs/{job key}`
    Jobs,
    /// `{prefix}/quotas/{role}`
    Quotas,
    /// `{prefix}/hosts/{host}`: a host's maintenance state; a host without a key is in service.
    Hosts,
}

/// `(space, key relative to that space's prefix, Some(value) to put | None to delete)`.
pub type SpaceOp = (Space, String, Option<Vec<u8>>);

/// Everything in the desired state, read at one revision: `(key relative to its space's
/// prefix, value)` in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredSnapshot {
    pub jobs: Vec<(String, Vec<u8>)>,
    pub quotas: Vec<(String, Vec<u8>)>,
    /// Hosts in maintenance: `(host, value)`.
    pub hosts: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The leadership term `fence_revision` is over (or never was): nothing from the txn
    /// that failed on, or after it, was written. `committed` operations of the batch (whole
    /// earlier txns) were written before.
    #[error(
        "fenced: the leadership term of revision {fence_revision} is over \
         ({committed} operations of the batch were committed before)"
    )]
    Fenced {
        fence_revision: i64,
        committed: usize,
    },
    /// etcd refused or failed the call. The outcome of a failed write is unknown; repeating
    /// the batch is safe (puts and deletes are idempotent, and the fence still applies).
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd did not answer in time. The outcome of a timed-out write is unknown.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("invalid key {0:?}")]
    InvalidKey(String),
}

/// The desired-state store: opaque values under `{prefix}/jobs/`, `{prefix}/quotas/` and
/// `{prefix}/hosts/`.
pub struct DesiredStore {
    client: Client,
    /// `{prefix}/jobs/`
    jobs: String,
    /// `{prefix}/quotas/`
    quotas: String,
    /// `{prefix}/hosts/`
    hosts: String,
    /// `{prefix}/election/`
    election: String,
    /// The election key whose create revision is the fence last asked about.
    fence_key: Mutex<Option<(i64, Vec<u8>)>>,
    timeout: Duration,
}

impl DesiredStore {
    /// A store over an existing client. `prefix` is the one given to the election.
    pub fn new(client: Client, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        DesiredStore {
            client,
            jobs: format!("{prefix}/jobs/"),
            quotas: format!("{prefix}/quotas/"),
            hosts: format!("{prefix}/hosts/"),
            election: format!("{}/", election_name(prefix)),
            fence_key: Mutex::new(None),
            timeout: DEFAULT_STORE_TIMEOUT,
        }
    }

    /// Connects (lazily: an unreachable etcd shows up as errors of later calls).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let opts = ConnectOptions::new().with_connect_timeout(DEFAULT_STORE_TIMEOUT);
        let client = timeout(
            DEFAULT_STORE_TIMEOUT,
            Client::connect(endpoints, Some(opts)),
        )
        .await
        .map_err(|_| StoreError::Timeout(DEFAULT_STORE_TIMEOUT))??;
        Ok(Self::new(client, prefix))
    }

    /// Bound on each etcd call (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Writes `ops` (`key` relative to `{prefix}/jobs/`; `None` deletes) as the leader of term
    /// `fence_revision`, in txns of at most [`MAX_TXN_OPS`] operations (and
    /// [`MAX_TXN_BYTES`]), each guarded by the fence. Txns are applied in order; each is
    /// atomic, the batch as a whole is not. When a key appears more than once, its last
    /// operation wins (etcd refuses a txn that names a key twice).
    pub async fn put_batch(
        &self,
        fence_revision: i64,
        ops: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let ops = ops.into_iter().map(|(k, v)| (Space::Jobs, k, v)).collect();
        self.write(fence_revision, ops).await
    }

    /// Writes (or, with `None`, deletes) the quota of `role` as the leader of term
    /// `fence_revision`, guarded by the fence like [`Self::put_batch`].
    pub async fn put_quota(
        &self,
        fence_revision: i64,
        role: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.write(
            fence_revision,
            vec![(Space::Quotas, role.to_string(), value)],
        )
        .await
    }

    /// Writes host `host`'s maintenance state (`{prefix}/hosts/{host}`) as the leader of term
    /// `fence_revision`, guarded by the fence like [`Self::put_batch`]. `None` deletes the key:
    /// the host is back in service (mode NONE), which is what a missing key means.
    pub async fn put_host_mode(
        &self,
        fence_revision: i64,
        host: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.write(
            fence_revision,
            vec![(Space::Hosts, host.to_string(), value)],
        )
        .await
    }

    /// [`Self::put_batch`] over any spaces: jobs, quotas and hosts may share txns (at most
    /// [`MAX_TXN_OPS`] operations each, all guarded by the fence, applied in order).
    pub async fn write(&self, fence_revision: i64, ops: Vec<SpaceOp>) -> Result<(), StoreError> {
        if let Some((_, k, _)) = ops.iter().find(|(_, k, _)| k.is_empty()) {
            return Err(StoreError::InvalidKey(k.clone()));
        }
        let ops: Vec<StoreOp> = ops
            .into_iter()
            .map(|(space, k, v)| (format!("{}{k}", self.space_prefix(space)), v))
            .collect();
        let ops = last_op_per_key(ops);
        if ops.is_empty() {
            return Ok(());
        }
        let fenced = |committed| StoreError::Fenced {
            fence_revision,
            committed,
        };
        let Some(leader_key) = self.leader_key(fence_revision).await? else {
            return Err(fenced(0));
        };
        let guard = [
            // This incarnation of the leader's key still exists…
            Compare::create_revision(leader_key, CompareOp::Equal, fence_revision),
            // …and no key in the election is older: it is etcd's leader.
            Compare::create_revision(
                self.election.clone(),
                CompareOp::Greater,
                fence_revision - 1,
            )
            .with_prefix(),
        ];
        let mut kv = self.client.kv_client();
        let mut committed = 0;
        for chunk in chunks(&ops) {
            let txn_ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, v)| match v {
                    Some(v) => TxnOp::put(key.clone(), v.clone(), None),
                    None => TxnOp::delete(key.clone(), None),
                })
                .collect();
            let txn = Txn::new().when(guard.to_vec()).and_then(txn_ops);
            let resp = timeout(self.timeout, kv.txn(txn))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))??;
            if !resp.succeeded() {
                return Err(fenced(committed));
            }
            committed += chunk.len();
        }
        Ok(())
    }

    /// Every `(key relative to {prefix}/jobs/, value)`, in key order, read at one revision
    /// (a consistent snapshot even across pages).
    pub async fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.load_space(Space::Jobs, 0).await?.0)
    }

    /// Every `(role, value)` under `{prefix}/quotas/`, in key order, read at one revision.
    pub async fn load_quotas(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.load_space(Space::Quotas, 0).await?.0)
    }

    /// Every `(host, value)` under `{prefix}/hosts/`, in key order, read at one revision.
    pub async fn load_hosts(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.load_space(Space::Hosts, 0).await?.0)
    }

    /// The jobs, the quotas and the hosts in maintenance, all read at one revision (what a new
    /// leader loads).
    pub async fn load_desired(&self) -> Result<DesiredSnapshot, StoreError> {
        let (jobs, revision) = self.load_space(Space::Jobs, 0).await?;
        let (quotas, _) = self.load_space(Space::Quotas, revision).await?;
        let (hosts, _) = self.load_space(Space::Hosts, revision).await?;
        Ok(DesiredSnapshot {
            jobs,
            quotas,
            hosts,
        })
    }

    fn space_prefix(&self, space: Space) -> &str {
        match space {
            Space::Jobs => &self.jobs,
            Space::Quotas => &self.quotas,
            Space::Hosts => &self.hosts,
        }
    }

    /// Every `(key relative to the space's prefix, value)` in key order, read at `revision`
    /// (0: the current one), and the revision read at.
    async fn load_space(
        &self,
        space: Space,
        mut revision: i64,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64), StoreError> {
        let prefix = self.space_prefix(space);
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LOAD_PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut resp = timeout(self.timeout, kv.get(from.clone(), Some(opts)))
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))??;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            for pair in kvs {
                let key = pair.key()[prefix.len()..].to_vec();
                let key = String::from_utf8(key).map_err(|e| {
                    StoreError::InvalidKey(String::from_utf8_lossy(e.as_bytes()).into())
                })?;
                out.push((key, pair.value().to_vec()));
            }
            if !more {
                return Ok((out, revision));
            }
        }
    }

    /// The election key created at `fence_revision`, if it still exists.
    async fn leader_key(&self, fence_revision: i64) -> Result<Option<Vec<u8>>, StoreError> {
        if fence_revision <= 0 {
            return Ok(None);
        }
        if let Some((rev, key)) = &*self.fence_key.lock().expect("fence cache") {
            if *rev == fence_revision {
                return Ok(Some(key.clone()));
            }
        }
        let opts = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_min_create_revision(fence_revision)
            .with_max_create_revision(fence_revision);
        let mut kv = self.client.kv_client();
        let resp = timeout(self.timeout, kv.get(self.election.clone(), Some(opts)))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        let Some(found) = resp.kvs().first() else {
            return Ok(None);
        };
        let key = found.key().to_vec();
        // A key's name and create revision identify one incarnation forever: safe to cache.
        *self.fence_key.lock().expect("fence cache") = Some((fence_revision, key.clone()));
        Ok(Some(key))
    }
}

/// Keeps the last operation for each key, in the order of those last operations.
fn last_op_per_key(ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(ops.len());
    for (i, (k, _)) in ops.iter().enumerate() {
        last.insert(k.as_str(), i);
    }
    if last.len() == ops.len() {
        return ops;
    }
    let keep: Vec<bool> = (0..ops.len())
        .map(|i| last[ops[i].0.as_str()] == i)
        .collect();
    ops.into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect()
}

/// Splits `ops` into runs of at most `MAX_TXN_OPS` operations and (unless one operation alone
/// is larger) `MAX_TXN_BYTES` bytes.
fn chunks(ops: &[StoreOp]) -> Vec<&[StoreOp]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (k, v)) in ops.iter().enumerate() {
        let size = k.len() + v.as_ref().map_or(0, Vec::len) + 64;
        if i > start && (i - start == MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES) {
            out.push(&ops[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < ops.len() {
        out.push(&ops[start..]);
    }
    out
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(k: &str, v: Option<usize>) -> StoreOp {
        (k.to_string(), v.map(|n| vec![7; n]))
    }

    #[test]
    fn chunks_respect_op_and_byte_limits() {
        let ops: Vec<_> = (0..300).map(|i| op(&format!("k{i}"), Some(10))).collect();
        let sizes: Vec<usize> = chunks(&ops).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![128, 128, 44]);

        let big: Vec<_> = (0..5)
            .map(|i| op(&format!("b{i}"), Some(400_000)))
            .collect();
        let sizes: Vec<usize> = chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);

        let huge = vec![op("h", Some(2 * MAX_TXN_BYTES)), op("s", Some(1))];
        let sizes: Vec<usize> = chunks(&huge).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1, 1]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn last_operation_per_key_wins_in_order() {
        let ops = vec![
            op("a", Some(1)),
            op("b", Some(1)),
            op("a", None),
            op("c", Some(2)),
        ];
        let kept = last_op_per_key(ops);
        assert_eq!(
            kept,
            vec![op("b", Some(1)), op("a", None), op("c", Some(2))]
        );
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"p/jobs/"), b"p/jobs0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
