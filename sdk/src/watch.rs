//! [`CredentialWatch`]: background refresh with the sidecar's math, as a [`Stream`] of
//! updates.
//!
//! [`Client::watch`] starts a task that fetches at once, then again at about 70% of the
//! shortest lifetime it holds (±10% jitter, never sooner than a second). After a failure a
//! retry may fix (broker unreachable, 5xx, 429) it backs off from 1 s doubling to 60 s with
//! jitter. After a refusal (an error that is not [retryable](Error::is_retryable): 401, 403,
//! an upstream's refusal, a spent bootstrap token) it does not retry: it asks again only
//! after 4 to 5 minutes ([`REFUSED_RECHECK`](crate::refresh::REFUSED_RECHECK)), so a fix is
//! picked up without hammering the broker. Every outcome is published: `Ok` with the new
//! credentials, `Err` with the failure and the broker's reason (the last good credentials
//! stay available from [`CredentialWatch::current`]). The task stops when the watch is
//! dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::client::{Client, Error};
use crate::refresh::{Backoff, issued_at, parse_times, refresh_delay, refused_delay};
use crate::wire::CredentialResponse;

/// First wait after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest wait after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Shortest wait after a success.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);
/// Wait after a success that granted nothing (or only unparseable times).
pub const EMPTY_RECHECK: Duration = BACKOFF_MAX;

/// One outcome of the background refresh: new credentials, or why a refresh failed.
pub type WatchItem = Result<Arc<CredentialResponse>, Arc<Error>>;

/// How long to wait after a successful fetch: the earliest refresh point of the
/// credentials, at least [`MIN_REFRESH_DELAY`]. `jitter` is uniform in `[0, 1)`.
pub fn next_refresh(
    resp: &CredentialResponse,
    now: std::time::SystemTime,
    jitter: f64,
) -> Duration {
    resp.credentials
        .iter()
        .filter_map(|c| {
            let (_, expires) = parse_times(c)?;
            Some(refresh_delay(
                issued_at(expires, c.ttl_seconds),
                expires,
                now,
                jitter,
            ))
        })
        .min()
        .map_or(EMPTY_RECHECK, |d| d.max(MIN_REFRESH_DELAY))
}

/// How long to wait after a failed fetch: the next step of `backoff` when a retry may fix
/// it, else (a refusal) [`refused_delay`], leaving the backoff where it was. `jitter` is
/// uniform in `[0, 1)`.
pub fn failure_delay(error: &Error, backoff: &mut Backoff, jitter: f64) -> Duration {
    if error.is_retryable() {
        backoff.next_delay(jitter)
    } else {
        refused_delay(jitter)
    }
}

/// A stream of credential updates from a background refresh task. Dropping it stops the
/// task.
#[derive(Debug)]
pub struct CredentialWatch {
    stream: WatchStream<Option<WatchItem>>,
    last_good: watch::Receiver<Option<Arc<CredentialResponse>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CredentialWatch {
    /// The last good credentials, if any fetch has succeeded yet.
    pub fn current(&self) -> Option<Arc<CredentialResponse>> {
        self.last_good.borrow().clone()
    }

    /// Waits for the next update and returns it (`None` once the task has ended).
    pub async fn next_update(&mut self) -> Option<WatchItem> {
        futures_util::StreamExt::next(self).await
    }
}

impl Drop for CredentialWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for CredentialWatch {
    type Item = WatchItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        loop {
            match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Ready(Some(Some(item))) => return Poll::Ready(Some(item)),
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Client {
    /// Starts refreshing in the background and returns the stream of updates. The first
    /// item is the outcome of the first fetch. Needs a Tokio runtime.
    pub fn watch(&self) -> CredentialWatch {
        let (tx, rx) = watch::channel(None);
        let (good_tx, good_rx) = watch::channel(None);
        let client = self.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
            loop {
                let wait = match client.fetch().await {
                    Ok(resp) => {
                        backoff.reset();
                        let wait = next_refresh(&resp, client.now(), fastrand::f64());
                        let resp = Arc::new(resp);
                        good_tx.send_replace(Some(resp.clone()));
                        tx.send_replace(Some(Ok(resp)));
                        tracing::debug!(wait_seconds = wait.as_secs_f64(), "credentials refreshed");
                        wait
                    }
                    Err(e) => {
                        let wait = failure_delay(&e, &mut backoff, fastrand::f64());
                        if e.is_retryable() {
                            tracing::warn!(error = %e, failures = backoff.attempts(), retry_in_seconds = wait.as_secs_f64(), "credential refresh failed; keeping the last good credentials");
                        } else {
                            tracing::error!(error = %e, ask_again_in_seconds = wait.as_secs_f64(), "credential refresh refused; not retrying, keeping the last good credentials");
                        }
                        tx.send_replace(Some(Err(Arc::new(e))));
                        wait
                    }
                };
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        });
        CredentialWatch {
            stream: WatchStream::new(rx),
            last_good: good_rx,
            task,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use super::*;
    use crate::clock::rfc3339;
    use crate::refresh::REFUSED_RECHECK;
    use crate::wire::Credential;

    fn resp(ttls: &[u64], now: SystemTime) -> CredentialResponse {
        CredentialResponse {
            request_id: "r".into(),
            identity: "i".into(),
            credentials: ttls
                .iter()
                .enumerate()
                .map(|(i, ttl)| Credential {
                    role: format!("r{i}"),
                    kind: "jwt".into(),
                    data: BTreeMap::new(),
                    expires_at: rfc3339(now + Duration::from_secs(*ttl)),
                    refresh_after: rfc3339(now),
                    ttl_seconds: *ttl,
                    lease_id: "l".into(),
                    ttl_clamped: false,
                })
                .collect(),
            session: None,
            admitted_at: None,
        }
    }

    #[test]
    fn refusals_are_not_retried_on_the_backoff() {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        let down = Error::Transport("at http://127.0.0.1:1: connection refused".into());
        let refused = Error::Broker {
            status: 502,
            code: crate::wire::ErrorCode::UpstreamRefused,
            message: "aws-sts upstream refused: AccessDenied (HTTP 403)".into(),
            retryable: false,
        };
        assert_eq!(failure_delay(&down, &mut backoff, 1.0), BACKOFF_BASE);
        assert_eq!(failure_delay(&refused, &mut backoff, 1.0), REFUSED_RECHECK);
        assert_eq!(
            failure_delay(&refused, &mut backoff, 0.0),
            Duration::from_secs(240)
        );
        // The refusals left the backoff where it was: the next retryable failure doubles.
        assert_eq!(backoff.attempts(), 1);
        assert_eq!(failure_delay(&down, &mut backoff, 1.0), BACKOFF_BASE * 2);
    }

    #[test]
    fn refreshes_at_seventy_percent_of_the_shortest_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        assert_eq!(
            next_refresh(&resp(&[3_600, 600], now), now, 0.5).as_secs(),
            420
        );
        assert_eq!(next_refresh(&resp(&[600], now), now, 0.0).as_secs(), 360);
        assert_eq!(next_refresh(&resp(&[600], now), now, 1.0).as_secs(), 480);
        assert_eq!(next_refresh(&resp(&[1], now), now, 0.5), MIN_REFRESH_DELAY);
        assert_eq!(next_refresh(&resp(&[], now), now, 0.5), EMPTY_RECHECK);
    }
}
