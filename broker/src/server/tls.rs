//! Server TLS: a certificate resolver that reloads the PEM files when they change (cert-manager
//! and Kubernetes secret mounts replace them in place) and keeps the last good pair when the
//! new files are broken.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::config::TlsConfig;
use crate::metrics::Metrics;

/// The one crypto provider: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate and key that could not be loaded. Names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("TLS {what} {file}: {message}")]
pub struct TlsError {
    /// `certificate`, `private key` or `client CA`.
    pub what: &'static str,
    /// The file.
    pub file: PathBuf,
    /// Why.
    pub message: String,
}

/// Modification time and length of a file, to notice replacements.
type Stamp = Option<(SystemTime, u64)>;

fn file_stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Loads a certificate chain and key, checking that they belong together. Returns the key
/// and the leaf's `notAfter` (Unix seconds).
pub fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(CertifiedKey, i64), TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| TlsError {
            what: "certificate",
            file: cert_file.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError {
            what: "certificate",
            file: cert_file.to_path_buf(),
            message: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            what: "certificate",
            file: cert_file.to_path_buf(),
            message: "no CERTIFICATE block found; expected a PEM certificate chain".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError {
        what: "private key",
        file: key_file.to_path_buf(),
        message: format!("cannot read a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError {
            what: "private key",
            file: key_file.to_path_buf(),
            message: format!("unsupported key: {e}"),
        })?;
    let not_after = x509_parser::parse_x509_certificate(&certs[0])
        .map(|(_, c)| c.validity().not_after.timestamp())
        .map_err(|e| TlsError {
            what: "certificate",
            file: cert_file.to_path_buf(),
            message: format!("not a valid X.509 certificate: {e}"),
        })?;
    let ck = CertifiedKey::new(certs, signing_key);
    ck.keys_match().map_err(|e| TlsError {
        what: "private key",
        file: key_file.to_path_buf(),
        message: format!(
            "does not match the certificate in {}: {e}",
            cert_file.display()
        ),
    })?;
    Ok((ck, not_after))
}

/// Serves the current certificate; [`ReloadingCert::reload_if_changed`] swaps it.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    stamps: Mutex<(Stamp, Stamp)>,
    metrics: Metrics,
}

impl ReloadingCert {
    /// Loads the files; fails if they are unusable.
    pub fn new(cert_file: &Path, key_file: &Path, metrics: Metrics) -> Result<Self, TlsError> {
        let stamps = (file_stamp(cert_file), file_stamp(key_file));
        let (ck, not_after) = load_certified_key(cert_file, key_file)?;
        let file_label = cert_file.display().to_string();
        metrics
            .tls_cert_expiry
            .with_label_values(&[&file_label])
            .set(not_after as f64);
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
            stamps: Mutex::new(stamps),
            metrics,
        })
    }

    /// Reloads when either file changed. Returns whether a new pair is now served. A broken
    /// new pair is logged and the old one kept.
    pub fn reload_if_changed(&self) -> bool {
        let now = (file_stamp(&self.cert_file), file_stamp(&self.key_file));
        {
            let mut last = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now {
                return false;
            }
            *last = now;
        }
        match load_certified_key(&self.cert_file, &self.key_file) {
            Ok((ck, not_after)) => {
                self.current.store(Arc::new(ck));
                self.metrics
                    .tls_cert_expiry
                    .with_label_values(&[&self.cert_file.display().to_string()])
                    .set(not_after as f64);
                info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                warn!(error = %e, "TLS certificate change rejected; still serving the previous one");
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads a PEM CA file into a root store.
fn roots(ca_file: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError {
            what: "client CA",
            file: ca_file.to_path_buf(),
            message: format!("cannot read PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            what: "client CA",
            file: ca_file.to_path_buf(),
            message: "no CERTIFICATE block found".into(),
        });
    }
    for c in certs {
        roots.add(c).map_err(|e| TlsError {
            what: "client CA",
            file: ca_file.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn verifier(
    roots: rustls::RootCertStore,
    file: &Path,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError {
            what: "client CA",
            file: file.to_path_buf(),
            message: e.to_string(),
        })
}

/// Which client CAs a connection's certificate chains to: the admin client CA
/// (`tls.admin_client_ca_file`) and the API server's (`gate.admission.client_ca_file`). The
/// handshake accepts a certificate from either; after it, each is checked on its own, so an
/// API-server certificate is never an admin's and the reverse.
#[derive(Debug, Clone, Default)]
pub struct ClientCas {
    admin: Option<Arc<dyn ClientCertVerifier>>,
    admission: Option<Arc<dyn ClientCertVerifier>>,
}

/// What a connection's client certificate proves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientClass {
    /// Signed by the admin client CA.
    pub admin: bool,
    /// Signed by the API server's client CA (`gate.admission.client_ca_file`).
    pub admission: bool,
}

impl ClientCas {
    /// Classifies the chain a client presented (already verified by the handshake against
    /// one of the CAs).
    pub fn classify(&self, chain: Option<&[CertificateDer<'_>]>) -> ClientClass {
        let Some((end, intermediates)) = chain.and_then(<[CertificateDer<'_>]>::split_first) else {
            return ClientClass::default();
        };
        let now = rustls_pki_types::UnixTime::now();
        let ok = |v: &Option<Arc<dyn ClientCertVerifier>>| {
            v.as_ref()
                .is_some_and(|v| v.verify_client_cert(end, intermediates, now).is_ok())
        };
        ClientClass {
            admin: ok(&self.admin),
            admission: ok(&self.admission),
        }
    }
}

/// Builds the rustls server configuration. With `admin_client_ca_file`, client certificates
/// signed by that CA are verified (and mark admin connections); clients without one are
/// still accepted. (The admin CA only; the broker itself uses [`server_setup`].)
pub fn server_config(
    tls: &TlsConfig,
    cert: Arc<ReloadingCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    server_setup(tls, None, cert).map(|(cfg, _)| cfg)
}

/// The rustls server configuration and the client CAs to classify connections by: client
/// certificates signed by the admin client CA or by `admission_ca` (the API server's) are
/// verified in the handshake; clients without one are still accepted.
pub fn server_setup(
    tls: &TlsConfig,
    admission_ca: Option<&Path>,
    cert: Arc<ReloadingCert>,
) -> Result<(rustls::ServerConfig, ClientCas), TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            what: "configuration",
            file: tls.cert_file.clone(),
            message: e.to_string(),
        })?;
    let mut cas = ClientCas::default();
    let mut all = rustls::RootCertStore::empty();
    let mut last_file = None;
    for (file, slot) in [
        (tls.admin_client_ca_file.as_deref(), &mut cas.admin),
        (admission_ca, &mut cas.admission),
    ] {
        let Some(file) = file else { continue };
        let r = roots(file)?;
        all.roots.extend(r.roots.iter().cloned());
        *slot = Some(verifier(r, file)?);
        last_file = Some(file.to_path_buf());
    }
    let builder = match last_file {
        None => builder.with_no_client_auth(),
        Some(file) => builder.with_client_cert_verifier(verifier(all, &file)?),
    };
    let mut cfg = builder.with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((cfg, cas))
}
