//! Signing keys encrypted at rest: an envelope under a key-encryption key (KEK) from a file.
//!
//! With `signing.kek_file` set, the private half of every signing key is stored sealed:
//! a fresh 256-bit data key encrypts the PKCS#8 document (AES-256-GCM, the key's `kid` as
//! associated data, so a sealed key cannot be moved to another row), and the KEK encrypts
//! the data key (AES-256-GCM, associated data naming the purpose and the `kid`). The stored
//! text is [`Envelope`]'s:
//!
//! ```text
//! lk1.<KEK id: 16 hex>.<base64url(nonce ‖ wrapped data key ‖ tag)>.<base64url(nonce ‖ ciphertext ‖ tag)>
//! ```
//!
//! The KEK id (the first 8 bytes of the KEK's SHA-256) says which KEK opens it, so the KEK can
//! be rotated: `signing.other_kek_files` lists KEKs that open keys but never seal, and each
//! broker re-seals, at start, every key sealed under another KEK (or stored in the clear by a
//! broker without a KEK) under `signing.kek_file` — one conditional update per key, so
//! replicas starting together re-seal each key once (docs/OPERATIONS.md, "Rotate the
//! key-encryption key"). Only the small wrapped data key would need to change for a
//! rotation; the whole envelope is rewritten because it is one column.
//!
//! The envelope parser ([`Envelope::parse`]) bounds its input before reading it (it comes
//! from the database) and has a fuzz target (`fuzz/fuzz_targets/kek_envelope.rs`).

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use lanyard::Secret;
use zeroize::Zeroizing;

/// What a sealed key's stored text begins with.
pub const PREFIX: &str = "lk1.";

/// Longest stored envelope read, in bytes (a PKCS#8 key is under 200 bytes).
pub const MAX_ENVELOPE_BYTES: usize = 4096;

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// Why a KEK could not be loaded, or a key sealed or opened. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// The KEK file cannot be used.
    #[error("{field} {path}: {problem}")]
    File {
        /// The config field naming it.
        field: &'static str,
        /// Its path.
        path: String,
        /// What is wrong, and the fix.
        problem: String,
    },
    /// The stored text is not an envelope.
    #[error("not a sealed signing key: {0}")]
    Malformed(String),
    /// Sealed under a KEK this broker does not have.
    #[error(
        "sealed under key-encryption key {0}, which is neither `signing.kek_file` nor in `signing.other_kek_files`"
    )]
    UnknownKek(String),
    /// Sealed, but this broker has no KEK at all.
    #[error(
        "sealed under key-encryption key {0}, and `signing.kek_file` is not set: give the broker its KEK"
    )]
    NoKek(String),
    /// The envelope does not open: altered, moved to another `kid`, or a wrong KEK with a
    /// colliding id.
    #[error("does not decrypt (altered, or moved from another key's row)")]
    Decrypt,
    /// Encryption failed (the random number generator).
    #[error("sealing failed: {0}")]
    Seal(&'static str),
}

/// One key-encryption key: 32 bytes, and its id.
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("key", &"** redacted **")
            .finish()
    }
}

impl Kek {
    /// A KEK from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "a key-encryption key is {KEY_LEN} bytes, not {}",
                bytes.len()
            ));
        }
        let id = hex::encode(&digest::digest(&digest::SHA256, bytes).as_ref()[..8]);
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| "AES-256-GCM refused the key".to_owned())?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }

    /// Reads a KEK file: base64 of 32 random bytes (`head -c 32 /dev/urandom | base64`),
    /// surrounding white space ignored (read as every secret file is:
    /// [`crate::secret_file`], bounded).
    pub async fn read(field: &'static str, path: &Path) -> Result<Self, KekError> {
        let err = |problem: String| KekError::File {
            field,
            path: path.display().to_string(),
            problem,
        };
        let text = crate::secret_file::read_secret_file(path)
            .await
            .map_err(|e| err(e.to_string()))?;
        let bytes = Zeroizing::new(STANDARD.decode(text.expose()).map_err(|_| {
            err("not base64: write the key as base64 (head -c 32 /dev/urandom | base64)".into())
        })?);
        Self::from_bytes(&bytes).map_err(err)
    }

    /// The KEK's id: the first 8 bytes of its SHA-256, in hex (safe to show).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A parsed envelope (bounded, not yet opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The id of the KEK that seals it.
    pub kek_id: String,
    /// nonce ‖ wrapped data key ‖ tag.
    pub wrapped_key: Vec<u8>,
    /// nonce ‖ ciphertext ‖ tag.
    pub sealed: Vec<u8>,
}

impl Envelope {
    /// Parses stored text as an envelope (`None`: not one — a key stored in the clear).
    /// Bounded: text over [`MAX_ENVELOPE_BYTES`] is refused before it is split.
    pub fn parse(text: &str) -> Option<Result<Self, KekError>> {
        let rest = text.strip_prefix(PREFIX)?;
        Some(Self::parse_body(text.len(), rest))
    }

    fn parse_body(len: usize, rest: &str) -> Result<Self, KekError> {
        if len > MAX_ENVELOPE_BYTES {
            return Err(KekError::Malformed(format!(
                "{len} bytes, over the {MAX_ENVELOPE_BYTES} byte limit"
            )));
        }
        let mut parts = rest.splitn(4, '.');
        let (Some(id), Some(wrapped), Some(sealed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KekError::Malformed(
                "expected four dot-separated parts".into(),
            ));
        };
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KekError::Malformed(
                "the KEK id is not 16 hex digits".into(),
            ));
        }
        let decode = |what: &str, s: &str| {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| KekError::Malformed(format!("the {what} is not base64url")))
        };
        let wrapped_key = decode("wrapped data key", wrapped)?;
        let sealed = decode("ciphertext", sealed)?;
        if wrapped_key.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
            return Err(KekError::Malformed(format!(
                "the wrapped data key is {} bytes",
                wrapped_key.len()
            )));
        }
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(KekError::Malformed("the ciphertext is too short".into()));
        }
        Ok(Self {
            kek_id: id.to_ascii_lowercase(),
            wrapped_key,
            sealed,
        })
    }

    fn text(&self) -> String {
        format!(
            "{PREFIX}{}.{}.{}",
            self.kek_id,
            URL_SAFE_NO_PAD.encode(&self.wrapped_key),
            URL_SAFE_NO_PAD.encode(&self.sealed)
        )
    }
}

fn wrap_aad(kid: &str) -> Vec<u8> {
    format!("lanyard signing key data key\0{kid}").into_bytes()
}

/// nonce ‖ AES-256-GCM(key, plaintext, aad) ‖ tag, with a random nonce.
fn encrypt(key: &LessSafeKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KekError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KekError::Seal("no random nonce"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| KekError::Seal("AES-256-GCM"))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens nonce ‖ ciphertext ‖ tag.
fn decrypt(key: &LessSafeKey, data: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
    let (nonce, body) = data.split_at_checked(NONCE_LEN).ok_or(KekError::Decrypt)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Decrypt)?;
    let mut body = Zeroizing::new(body.to_vec());
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .map_err(|_| KekError::Decrypt)?
        .len();
    body.truncate(plain);
    Ok(body)
}

/// The broker's KEKs: the one that seals (`signing.kek_file`), and others that only open
/// (`signing.other_kek_files`, during a rotation). Empty: keys are stored in the clear.
#[derive(Debug, Default)]
pub struct Keks {
    current: Option<Kek>,
    others: Vec<Kek>,
}

/// A stored key opened: its PKCS#8 text, and whether it should be sealed again (stored in
/// the clear, or under another KEK than the current one).
#[derive(Debug)]
pub struct Opened {
    /// The PKCS#8 document, base64 (as [`crate::store::SigningKeyRecord::pkcs8`] holds it in
    /// the clear).
    pub pkcs8: Secret,
    /// Not sealed under the current KEK (or sealed while there is none).
    pub reseal: bool,
}

impl Keks {
    /// KEKs as given.
    pub fn new(current: Option<Kek>, others: Vec<Kek>) -> Self {
        Self { current, others }
    }

    /// Reads `signing.kek_file` and `signing.other_kek_files`.
    pub async fn from_config(config: &crate::config::SigningConfig) -> Result<Self, KekError> {
        let current = match &config.kek_file {
            Some(p) => Some(Kek::read("signing.kek_file", p).await?),
            None => None,
        };
        let mut others = Vec::with_capacity(config.other_kek_files.len());
        for p in &config.other_kek_files {
            others.push(Kek::read("signing.other_kek_files", p).await?);
        }
        Ok(Self { current, others })
    }

    /// Whether keys are sealed.
    pub fn seals(&self) -> bool {
        self.current.is_some()
    }

    /// The stored text for `pkcs8` (base64 PKCS#8) of key `kid`: an envelope under the
    /// current KEK, or the text itself when there is none.
    pub fn seal(&self, kid: &str, pkcs8: &Secret) -> Result<Secret, KekError> {
        let Some(kek) = &self.current else {
            return Ok(pkcs8.clone());
        };
        let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut data_key[..]).map_err(|_| KekError::Seal("no data key"))?;
        let dek = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &data_key[..]).map_err(|_| KekError::Seal("data key"))?,
        );
        let sealed = encrypt(&dek, pkcs8.expose().as_bytes(), kid.as_bytes())?;
        let wrapped_key = encrypt(&kek.key, &data_key[..], &wrap_aad(kid))?;
        let text = Envelope {
            kek_id: kek.id.clone(),
            wrapped_key,
            sealed,
        }
        .text();
        // What `open` would refuse is never stored: the broker could not start again.
        if text.len() > MAX_ENVELOPE_BYTES {
            return Err(KekError::Seal(
                "the key is too long to seal (its envelope would be over the limit)",
            ));
        }
        Ok(Secret::new(text))
    }

    /// Opens the stored text of key `kid`: an envelope under a KEK this broker has, or a key
    /// stored in the clear.
    pub fn open(&self, kid: &str, stored: &Secret) -> Result<Opened, KekError> {
        let Some(envelope) = Envelope::parse(stored.expose()) else {
            return Ok(Opened {
                pkcs8: stored.clone(),
                reseal: self.current.is_some(),
            });
        };
        let envelope = envelope?;
        let kek = self
            .current
            .iter()
            .chain(&self.others)
            .find(|k| k.id == envelope.kek_id)
            .ok_or_else(|| {
                if self.current.is_none() && self.others.is_empty() {
                    KekError::NoKek(envelope.kek_id.clone())
                } else {
                    KekError::UnknownKek(envelope.kek_id.clone())
                }
            })?;
        let data_key = decrypt(&kek.key, &envelope.wrapped_key, &wrap_aad(kid))?;
        let dek = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &data_key).map_err(|_| KekError::Decrypt)?,
        );
        let plain = decrypt(&dek, &envelope.sealed, kid.as_bytes())?;
        let text = std::str::from_utf8(&plain).map_err(|_| KekError::Decrypt)?;
        Ok(Opened {
            pkcs8: Secret::new(text),
            reseal: self.current.as_ref().is_none_or(|c| c.id != kek.id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> Kek {
        Kek::from_bytes(&[byte; 32]).expect("kek")
    }

    #[test]
    fn a_sealed_key_opens_under_its_kek_only_and_only_in_its_own_row() {
        let keks = Keks::new(Some(kek(1)), Vec::new());
        let pkcs8 = Secret::new("TUlHSEFnRUFNQk1HQnlxR1NNNDlBZ0VHQ0NxR1NNNDlBd0VIQkcwd2F3SUJBUVFn");
        let stored = keks.seal("kid-a", &pkcs8).expect("seal");
        assert!(stored.expose().starts_with(PREFIX));
        assert!(!stored.expose().contains(pkcs8.expose()));
        let opened = keks.open("kid-a", &stored).expect("open");
        assert_eq!(opened.pkcs8.expose(), pkcs8.expose());
        assert!(!opened.reseal);
        // Moved to another row: refused.
        assert_eq!(
            keks.open("kid-b", &stored).expect_err("other kid"),
            KekError::Decrypt
        );
        // Another KEK, or none.
        let other = Keks::new(Some(kek(2)), Vec::new());
        assert!(matches!(
            other.open("kid-a", &stored),
            Err(KekError::UnknownKek(_))
        ));
        assert!(matches!(
            Keks::default().open("kid-a", &stored),
            Err(KekError::NoKek(_))
        ));
        // One bit flipped anywhere in the ciphertext: refused.
        let mut text = stored.expose().to_owned();
        let last = text.pop().expect("char");
        text.push(if last == 'A' { 'B' } else { 'A' });
        assert!(keks.open("kid-a", &Secret::new(text)).is_err());
    }

    #[test]
    fn rotation_opens_under_the_old_kek_and_asks_for_a_reseal() {
        let old = Keks::new(Some(kek(1)), Vec::new());
        let pkcs8 = Secret::new("cGtjczg=");
        let stored = old.seal("k", &pkcs8).expect("seal");
        let rotated = Keks::new(Some(kek(2)), vec![kek(1)]);
        let opened = rotated.open("k", &stored).expect("open with the old KEK");
        assert!(opened.reseal);
        let resealed = rotated.seal("k", &opened.pkcs8).expect("seal");
        assert!(resealed.expose().contains(kek(2).id()));
        assert!(!rotated.open("k", &resealed).expect("open").reseal);
        // A key in the clear opens as it is, and is sealed once there is a KEK.
        assert!(!Keks::default().open("k", &pkcs8).expect("clear").reseal);
        assert!(rotated.open("k", &pkcs8).expect("clear").reseal);
    }

    #[test]
    fn envelopes_are_bounded_and_malformed_ones_refused() {
        // Sealing refuses what opening would: a key whose envelope would be over the limit.
        let keks = Keks::new(Some(Kek::from_bytes(&[7; 32]).expect("kek")), Vec::new());
        let huge = Secret::new("A".repeat(MAX_ENVELOPE_BYTES));
        assert!(matches!(keks.seal("kid", &huge), Err(KekError::Seal(_))));
        let long = format!("{PREFIX}{}", "a".repeat(MAX_ENVELOPE_BYTES));
        assert!(matches!(
            Envelope::parse(&long),
            Some(Err(KekError::Malformed(_)))
        ));
        for bad in [
            "lk1.",
            "lk1.0011223344556677.AA",
            "lk1.zz11223344556677.AA.AA",
            "lk1.0011223344556677.!!.AA",
            "lk1.0011223344556677.AA.AA.AA",
        ] {
            assert!(
                matches!(Envelope::parse(bad), Some(Err(KekError::Malformed(_)))),
                "{bad}"
            );
        }
        assert!(Envelope::parse("MIGHAgEA").is_none());
    }

    #[tokio::test]
    async fn a_kek_file_is_base64_of_32_bytes_and_never_shown() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("kek");
        std::fs::write(&path, format!("{}\n", STANDARD.encode([7u8; 32]))).expect("write");
        let k = Kek::read("signing.kek_file", &path).await.expect("read");
        assert_eq!(k.id().len(), 16);
        let shown = format!("{k:?}");
        assert!(
            shown.contains("redacted") && !shown.contains("BwcH"),
            "{shown}"
        );
        std::fs::write(&path, STANDARD.encode([7u8; 16])).expect("write");
        let e = Kek::read("signing.kek_file", &path)
            .await
            .expect_err("short");
        assert!(e.to_string().contains("32 bytes"), "{e}");
        std::fs::write(&path, "not base64!").expect("write");
        let e = Kek::read("signing.kek_file", &path)
            .await
            .expect_err("text");
        assert!(
            e.to_string().contains("signing.kek_file") && e.to_string().contains("base64"),
            "{e}"
        );
    }
}
