//! [`Workload`]: what a pod looks like to the sidecar and the SDK — a temp directory with a
//! projected service-account token file and an empty secrets directory.

use std::path::{Path, PathBuf};

use crate::OidcIssuer;

/// A pod's files.
#[derive(Debug)]
pub struct Workload {
    /// The projected service-account token (re-read on every fetch).
    pub token_file: PathBuf,
    /// The secrets directory (empty).
    pub secrets: PathBuf,
    dir: tempfile::TempDir,
}

impl Workload {
    /// Service account `namespace/service_account` of `issuer`, audience `lanyard`, token
    /// valid for 10 minutes.
    pub fn kubernetes(issuer: &OidcIssuer, namespace: &str, service_account: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("sa-token");
        std::fs::write(
            &token_file,
            issuer.k8s_token(namespace, service_account, "lanyard", 600),
        )
        .expect("write token");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).expect("secrets dir");
        Self {
            token_file,
            secrets,
            dir,
        }
    }

    /// The temp directory holding both.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
