//! How to scan: bounds ([`Limits`]), the platforms of an index ([`PlatformChoice`]), registry
//! credentials, timeout and cancellation ([`CancelToken`]), parallelism, the allowlist and a
//! progress sink ([`Progress`]), gathered in [`ScanOptions`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lanyard::Secret;

use crate::allow::Allowlist;

/// Bounds on what one image scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes after decompression, all layers and nested archives together.
    pub max_decompressed_bytes: u64,
    /// Total tar entries, all layers and nested archives together.
    pub max_entries: u64,
    /// Longest path in a tar header.
    pub max_path_bytes: usize,
    /// Bytes scanned per file; beyond, the scan is incomplete.
    pub max_file_scan_bytes: u64,
    /// Archives inside archives opened (a `.tar.gz` in a layer is depth 1).
    pub max_nesting: u32,
    /// Findings kept per image, config and layers together. The next one stops the image's
    /// scan and makes it incomplete (never clean): a small gzip bomb full of key-shaped
    /// strings must not fill memory within the byte budget.
    pub max_findings: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decompressed_bytes: 32 << 30,
            max_entries: 2_000_000,
            max_path_bytes: 4096,
            max_file_scan_bytes: 1 << 30,
            max_nesting: 3,
            max_findings: 10_000,
        }
    }
}

/// Which platforms of an image index to scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformChoice {
    /// `linux/<this machine's architecture>`; an index with a single image is scanned
    /// whatever its platform.
    #[default]
    Host,
    /// `os/arch[/variant]`.
    Exact(String),
    /// Every image in the index (attestation manifests excepted).
    All,
}

impl PlatformChoice {
    /// The host platform string.
    pub fn host() -> String {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        format!("linux/{arch}")
    }
}

/// Receives progress (bytes of layer blobs) for a progress bar.
pub trait Progress: Send + Sync + fmt::Debug {
    /// More work is known: `bytes` of blobs to read.
    fn add_total(&self, bytes: u64);
    /// `bytes` of blobs were read.
    fn advance(&self, bytes: u64);
}

/// Cancels a running scan from another task.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        CancelToken::default()
    }
    /// Stops the scan at the next read; [`scan`](crate::scan) returns
    /// [`ScanError::Cancelled`](crate::error::ScanError::Cancelled).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Has [`CancelToken::cancel`] been called?
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// The flag itself, for the layer readers' budget.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// Registry credentials.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// No credentials (anonymous token flow still works).
    #[default]
    Anonymous,
    /// HTTP basic credentials (also used for the registry's token flow).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: Secret,
    },
    /// A bearer token sent as is.
    Bearer(Secret),
}

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Bounds.
    pub limits: Limits,
    /// Platforms of an image index to scan.
    pub platform: PlatformChoice,
    /// Registry credentials.
    pub auth: RegistryAuth,
    /// Allow plain HTTP to a loopback registry (tests, local registries).
    pub insecure_loopback_registry: bool,
    /// Give up after this long ([`ScanError::Timeout`](crate::error::ScanError::Timeout)).
    pub timeout: Option<Duration>,
    /// Cancel from elsewhere.
    pub cancel: CancelToken,
    /// Layers scanned at once (0: the number of CPUs, at most 4).
    pub parallelism: usize,
    /// Findings accepted on purpose.
    pub allowlist: Option<Arc<Allowlist>>,
    /// Progress sink.
    pub progress: Option<Arc<dyn Progress>>,
}

impl ScanOptions {
    /// Layers scanned at once: [`ScanOptions::parallelism`], or when 0 the number of CPUs, at
    /// most 4 (2 when unknown).
    pub(crate) fn layer_parallelism(&self) -> usize {
        if self.parallelism == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(4)
        } else {
            self.parallelism
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_token_clones_share_the_flag() {
        let t = CancelToken::new();
        let clone = t.clone();
        let flag = t.flag();
        assert!(!clone.is_cancelled() && !flag.load(Ordering::Relaxed));
        t.cancel();
        assert!(clone.is_cancelled() && flag.load(Ordering::Relaxed));
    }

    #[test]
    fn explicit_parallelism_wins_and_the_default_is_bounded() {
        let o = ScanOptions {
            parallelism: 7,
            ..ScanOptions::default()
        };
        assert_eq!(o.layer_parallelism(), 7);
        let auto = ScanOptions::default().layer_parallelism();
        assert!((1..=4).contains(&auto), "{auto}");
    }

    #[test]
    fn host_platform_is_linux_with_an_oci_architecture_name() {
        let h = PlatformChoice::host();
        let (os, arch) = h.split_once('/').expect("os/arch");
        assert_eq!(os, "linux");
        assert!(
            !arch.is_empty() && arch != "x86_64" && arch != "aarch64",
            "{h}"
        );
    }
}
