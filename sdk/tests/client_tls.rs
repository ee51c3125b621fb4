//! The client trusts exactly the CA it is given: a broker certificate from that CA is
//! accepted, one from another CA is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use lanyard::{Client, Error, Secret, TokenSource};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = r#"{"request_id":"r1","identity":"id","credentials":[]}"#;

/// A CA: its PEM and an issuer to sign leaves with.
fn ca() -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), Issuer::new(params, key))
}

/// A one-answer-per-connection HTTPS server on loopback with a leaf signed by `issuer`.
async fn tls_server(issuer: &Issuer<'static, KeyPair>) -> SocketAddr {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    let leaf = params.signed_by(&key, issuer).expect("leaf");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                // Read the head and the body the Content-Length announces, then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn client(addr: SocketAddr, ca_pem: &str) -> Client {
    Client::builder()
        .broker_url(format!("https://{addr}"))
        .ca_pem(ca_pem.as_bytes().to_vec())
        .token_source(TokenSource::Static(Secret::new("eyJcaller")))
        .build()
        .expect("client")
}

#[tokio::test]
async fn trusts_the_given_ca() {
    let (ca_pem, issuer) = ca();
    let addr = tls_server(&issuer).await;
    let resp = client(addr, &ca_pem).fetch().await.expect("fetch over TLS");
    assert_eq!(resp.request_id, "r1");
}

#[tokio::test]
async fn refuses_a_certificate_from_another_ca() {
    let (_, issuer) = ca();
    let (other_ca_pem, _) = ca();
    let addr = tls_server(&issuer).await;
    let e = client(addr, &other_ca_pem)
        .fetch()
        .await
        .expect_err("wrong CA");
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn ca_file_is_read_at_build() {
    let (ca_pem, issuer) = ca();
    let addr = tls_server(&issuer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &ca_pem).expect("write");
    let c = Client::builder()
        .broker_url(format!("https://{addr}"))
        .ca_file(&path)
        .token_source(TokenSource::Static(Secret::new("eyJcaller")))
        .build()
        .expect("client");
    c.fetch().await.expect("fetch");
}
