//! A throwaway PKI for TLS tests: a CA, a server certificate for `localhost`, `127.0.0.1` and
//! `::1`, and client certificates, all ECDSA P-256 generated with rcgen (aws-lc-rs).

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA and a server certificate written as PEM files into a directory:
/// `ca.pem`, `cert.pem` (server certificate) and `key.pem` (server key, PKCS#8).
pub struct TestPki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM), valid for `localhost`, `127.0.0.1` and `::1`.
    pub cert_pem: String,
    /// The server private key (PEM).
    pub key_pem: String,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl TestPki {
    /// Generates a CA and a server certificate and writes `ca.pem`, `cert.pem` and `key.pem`
    /// into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        ca_params.distinguished_name = name("lanyard test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key generation");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-signed CA");

        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("valid SANs");
        params.distinguished_name = name("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("server key generation");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        let pki = Self {
            dir: dir.to_path_buf(),
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca,
        };
        write(&pki.ca_path(), &pki.ca_pem);
        write(&pki.cert_path(), &pki.cert_pem);
        write(&pki.key_path(), &pki.key_pem);
        pki
    }

    /// The directory the files were written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `ca.pem`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Path of `cert.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// Path of `key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Issues a client certificate (extended key usage `clientAuth`) with common name `cn`,
    /// signed by this CA, writes `<stem>.pem` and `<stem>-key.pem` into the directory and
    /// returns their paths (certificate, key).
    pub fn client_cert(&self, cn: &str, stem: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("client key generation");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("client certificate");
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}-key.pem"));
        write(&cert_path, &cert.pem());
        write(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }
}

/// A rustls server configuration (aws-lc-rs) serving the PKI's server certificate.
pub(crate) fn server_config(pki: &TestPki) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("generated certificate PEM parses");
    let key =
        PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("generated key PEM parses");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports the default TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("generated certificate and key match");
    std::sync::Arc::new(config)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::generate(dir.path());
        for p in [pki.ca_path(), pki.cert_path(), pki.key_path()] {
            let s = std::fs::read_to_string(&p).expect("read pem");
            assert!(s.starts_with("-----BEGIN "), "{}", p.display());
        }
        assert_ne!(pki.ca_pem, pki.cert_pem);
        let (c, k) = pki.client_cert("admin", "client");
        assert!(c.exists() && k.exists());
    }
}
