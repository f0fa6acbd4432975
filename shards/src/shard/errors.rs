//! What a client's request can be refused for: one enum, mapped onto the wire's `ErrorCode` and
//! message only where the answer is encoded.

use borealis_core::JobKey;
use borealis_net::views::ErrorCode;

/// A refused client request. Each message names what was wrong (the job, the field, the limit).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Malformed or out of bounds: the message says which field and why.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown job {0}")]
    UnknownJob(JobKey),
    #[error("job {0} already exists")]
    JobExists(JobKey),
    #[error("job {key}: {instances} instances exceed --max-tasks-per-job {max}")]
    TooManyTasks {
        key: JobKey,
        instances: u32,
        max: u32,
    },
    /// The role's quota would be exceeded (core's `QuotaError` text: resource, quota, use and
    /// request).
    #[error("{0}")]
    QuotaExceeded(String),
    /// The job has an active update, which must end (or be aborted) first.
    #[error(
        "job {key} has update {id} in {status}: wait for it to finish, or abort it with \
         `borealis update abort {key}`"
    )]
    UpdateActive {
        key: JobKey,
        id: u64,
        status: borealis_core::update::UpdateStatus,
    },
    /// The job's shard holds its share of `--max-jobs`.
    #[error(
        "job {key}: the scheduler holds its limit of jobs (--max-jobs {max}: {share} on this \
         job's shard); kill finished jobs or raise --max-jobs"
    )]
    JobLimit {
        key: JobKey,
        max: usize,
        share: usize,
    },
    /// A bounded queue is full: retry.
    #[error("{0}")]
    Overloaded(String),
    /// The change could not be made durable.
    #[error("{0}")]
    Internal(String),
}

impl ClientError {
    /// The wire's code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            ClientError::UnknownJob(_) => ErrorCode::UnknownJob,
            ClientError::JobExists(_) => ErrorCode::JobExists,
            ClientError::TooManyTasks { .. } => ErrorCode::TooManyTasks,
            ClientError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            ClientError::UpdateActive { .. } => ErrorCode::InvalidRequest,
            ClientError::Overloaded(_) | ClientError::JobLimit { .. } => ErrorCode::Overloaded,
            ClientError::Internal(_) => ErrorCode::Internal,
        }
    }
}
