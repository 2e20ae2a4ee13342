//! The errors of the filesystem core and the one place they become errno values.
//!
//! Each error keeps what caused it (an [`ApiError`] or a [`MediaError`]) as its source, so a
//! log line prints the whole chain once; the FUSE adapter only needs [`FsError::to_errno`], an
//! exhaustive match: a new variant forces a decision.

use crate::api::ApiError;
use crate::media::MediaError;

/// Errors of the filesystem core, each mapped to one errno by [`FsError::to_errno`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    /// Listed, but the media host does not have it (yet): the call ended moments ago.
    #[error("recording {id} is not available yet")]
    NotYet {
        id: String,
        #[source]
        source: MediaError,
    },
    /// The call log or the recording metadata could not be read.
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        source: ApiError,
    },
    /// The recording's media could not be read.
    #[error("recording {id}")]
    Media {
        id: String,
        #[source]
        source: MediaError,
    },
    #[error("timed out waiting for the API")]
    TimedOut,
    /// The API is known to be unreachable (a probe is waiting for it to come back).
    #[error("the API is unreachable")]
    Offline,
    #[error("bad file handle")]
    BadHandle,
    /// No extended attribute of that name.
    #[error("no such attribute")]
    NoData,
}

impl FsError {
    pub fn to_errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotYet { .. } => libc::EAGAIN,
            FsError::Api { .. } | FsError::Media { .. } | FsError::TimedOut | FsError::Offline => {
                libc::EIO
            }
            FsError::BadHandle => libc::EBADF,
            FsError::NoData => libc::ENODATA,
        }
    }

    /// A failed read or open of recording `id`. The media layer has logged the cause once, when
    /// its download failed; a timeout is logged here, where the waiting ended.
    pub(crate) fn media(id: &str, e: MediaError) -> FsError {
        match e {
            MediaError::TimedOut => {
                tracing::warn!("recording {id}: timed out waiting for the media host");
                FsError::TimedOut
            }
            e @ MediaError::NotAvailable(_) => FsError::NotYet {
                id: id.to_string(),
                source: e,
            },
            e @ (MediaError::Failed(_) | MediaError::Transient(_)) => FsError::Media {
                id: id.to_string(),
                source: e,
            },
        }
    }

    /// A failed API request, logged once with its whole chain of causes.
    pub(crate) fn api(what: String, e: ApiError) -> FsError {
        tracing::warn!("{what}: {}", crate::api::chain(&e));
        FsError::Api { what, source: e }
    }
}
