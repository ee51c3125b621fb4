//! What the sidecar runs with: the broker client and the directory ([`SidecarConfig`]), and
//! everything else `init` and `run` are told ([`Options`]). The command line and the config
//! file become these in `cli` and the spec parser.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lanyard::Client;

use crate::aws::AwsServer;
use crate::notify::Notify;
use crate::target::{OnExpiry, Target};

/// What the sidecar needs: a configured client and the directory to write into.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The broker client (URL, CA, token source, roles, TTL).
    pub client: Client,
    /// The secrets directory.
    pub dir: PathBuf,
}

/// Everything beyond the broker client and the directory: targets, notifications, expiry
/// handling, the `init` deadline, exit conditions and revocation. `Options::default()` is
/// the default layout with no notification.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Where and how each credential is written; empty means the default layout.
    pub targets: Vec<Target>,
    /// What to do after a rotation.
    pub notify: Vec<Notify>,
    /// What to do with the files of an expired credential.
    pub on_expiry: OnExpiry,
    /// `init`: give up after this long (retrying retryable failures with backoff inside
    /// it); `None` tries once.
    pub deadline: Option<Duration>,
    /// `run`: exit 0 once this file exists.
    pub exit_when_file: Option<PathBuf>,
    /// `run`: revoke the held leases when it stops.
    pub revoke_on_shutdown: bool,
    /// `run`: the AWS container-credentials endpoint to hand each fresh AWS credential to
    /// (serving it is the caller's: [`crate::aws::serve`]).
    pub aws: Option<Arc<AwsServer>>,
}
