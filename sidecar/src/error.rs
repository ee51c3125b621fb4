//! [`SidecarError`]: every way `init`, `run` and the writer fail, with the exit code and
//! whether trying again may help.

use std::io;
use std::path::PathBuf;

/// Errors of the sidecar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// Fetching from the broker failed (unreachable, refused, bad answer, token file). The
    /// broker's message, which never holds a secret, is part of it.
    #[error(transparent)]
    Fetch(#[from] lanyard::Error),
    /// The broker's answer cannot be written safely (bad role or field name, bad times), or
    /// a target cannot be rendered from it (missing role or field, template error).
    #[error("the sidecar will not write this credential: {0}")]
    Invalid(String),
    /// Writing a file or creating a directory failed.
    #[error("cannot write {path}: {source}; check that the directory is writable by this user")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A path in the secrets directory is unsafe to write (a symbolic link, or not a
    /// directory where one is needed); nothing was written.
    #[error("refusing to write {path}: {why}; remove it and restart")]
    Refused {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// `init` ran out of time.
    #[error(
        "gave up after {attempts} attempt(s) in {seconds} s (--deadline-seconds); last error: {last}"
    )]
    Deadline {
        /// Attempts made.
        attempts: u32,
        /// The deadline, in seconds.
        seconds: u64,
        /// The last failure.
        last: Box<SidecarError>,
    },
    /// The command line or configuration is wrong.
    #[error("{0}")]
    Usage(String),
}

impl SidecarError {
    /// The process exit code for this error: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Whether trying again later may succeed (the broker was unreachable or answered with
    /// a retryable error). Refusals, unsafe paths and bad targets are not retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Fetch(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether the broker refused the fetch: asking again gets the same answer until
    /// someone fixes the cause (401, 403, an upstream's refusal such as STS `AccessDenied`,
    /// a spent bootstrap token). `init` fails at once with it; `run` keeps the last good
    /// files and asks again only minutes later.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Fetch(e) if !e.is_retryable())
    }
}

#[cfg(test)]
mod tests {
    use lanyard::wire::ErrorCode;

    use super::*;

    fn broker(status: u16, code: ErrorCode, retryable: bool) -> SidecarError {
        SidecarError::Fetch(lanyard::Error::Broker {
            status,
            code,
            message: "m".into(),
            retryable,
        })
    }

    #[test]
    fn refusals_are_fetches_a_retry_cannot_fix() {
        let refused = broker(502, ErrorCode::UpstreamRefused, false);
        assert!(refused.is_refusal() && !refused.is_retryable());
        assert!(broker(403, ErrorCode::Forbidden, false).is_refusal());
        let down = broker(503, ErrorCode::UpstreamUnavailable, true);
        assert!(!down.is_refusal() && down.is_retryable());
        let unreachable = SidecarError::Fetch(lanyard::Error::Transport("x".into()));
        assert!(!unreachable.is_refusal());
        // Local failures are neither: the loop keeps backing off on them as before.
        let local = SidecarError::Invalid("target needs role db".into());
        assert!(!local.is_refusal() && !local.is_retryable());
        assert_eq!(refused.exit_code(), 1);
    }
}
