//! minisign signatures of records, in the formats of the `minisign` tool: a save signs the
//! bytes of each record it writes with `--sign-key` (a minisign secret key, made with
//! `minisign -G -W`, or protected by a password in `$ETCDSNAP_SIGN_KEY_PASSWORD`), and stores the
//! detached signature beside the record; `minisign -Vm <record> -p <key.pub>` checks it, and so
//! does etcdsnap with `--verify-key`.
//!
//! A record holds the stored bytes' sha256, the revision, the HashKV, the cluster ID and the
//! kit's digest, so a good signature vouches for all of them: someone who can write to the
//! bucket can replace a snapshot and its record, but cannot sign the new record.
//!
//! A restore drill writes its verdict into the record after the save. A drill run with the
//! signing key signs the record again; otherwise the signature still covers the record as it
//! was signed, which is the record without its `drill` field: [`VerifyKey::verify_record`]
//! accepts that form too (the verdict itself is then not vouched for).

use super::{KeyError, read_key_file, read_private_file};
use etcdsnap_api::{MetadataDocument, StoredMetadata, parse_stored_metadata};
use std::io::Cursor;
use std::path::Path;

/// The environment variable holding the password of a password-protected signing key.
pub const SIGN_KEY_PASSWORD_ENV: &str = "ETCDSNAP_SIGN_KEY_PASSWORD";

/// The untrusted comment of etcdsnap's signatures.
const UNTRUSTED_COMMENT: &str = "signature from etcdsnap secret key";

/// A minisign secret key: signs records.
pub struct SigningKey {
    secret: minisign::SecretKey,
    public: minisign::PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Reads a secret key file (refused unless only its owner can read it). A key protected
    /// by a password needs the password in [`SIGN_KEY_PASSWORD_ENV`].
    pub fn from_file(path: &Path) -> Result<SigningKey, KeyError> {
        let text = read_private_file(path, "signing key")?;
        let invalid = |message: String| KeyError::Invalid { what: "signing key", path: path.into(), message };
        let boxed = minisign::SecretKeyBox::from_string(&text).map_err(|e| invalid(e.to_string()))?;
        let secret = match boxed.clone().into_unencrypted_secret_key() {
            Ok(k) => k,
            Err(_) if let Some(k) = without_checksum(&text) => k,
            Err(_) => match std::env::var(SIGN_KEY_PASSWORD_ENV) {
                Ok(password) => boxed.into_secret_key(Some(password)).map_err(|e| invalid(e.to_string()))?,
                Err(_) => {
                    return Err(invalid(format!(
                        "not a minisign secret key, or protected by a password: set ${SIGN_KEY_PASSWORD_ENV}, or make a key without one (minisign -G -W)"
                    )));
                }
            },
        };
        let public = minisign::PublicKey::from_secret_key(&secret).map_err(|e| invalid(e.to_string()))?;
        let key = SigningKey { secret, public };
        // A damaged key signs what its own public key does not verify: refused now, not at the
        // first save.
        key.sign("probe", b"probe").map_err(|_| invalid("the key is damaged: its signatures do not verify".into()))?;
        Ok(key)
    }

    /// The signature of `bytes`, the record of snapshot `name`, as the text of a `.minisig` file.
    pub fn sign(&self, name: &str, bytes: &[u8]) -> Result<String, SignatureError> {
        let trusted = format!(
            "timestamp:{}\tfile:{name}{}",
            crate::clock::now().as_second(),
            etcdsnap_api::consts::RECORD_SUFFIX
        );
        minisign::sign(Some(&self.public), &self.secret, Cursor::new(bytes), Some(&trusted), Some(UNTRUSTED_COMMENT))
            .map(|b| b.into_string())
            .map_err(|e| SignatureError::Sign(e.to_string()))
    }

    /// The matching public key, to check what this key signed.
    pub fn verify_key(&self) -> VerifyKey {
        let id = self.public.keynum().iter().rev().map(|b| format!("{b:02X}")).collect();
        VerifyKey { key: self.public.clone(), id }
    }

    /// The matching public key, as `minisign -G` writes it to its `.pub` file.
    pub fn public_key_file(&self) -> String {
        self.public.to_box().map(|b| b.into_string()).unwrap_or_default()
    }
}

/// A password-less secret key whose checksum is zero: the `minisign` tool up to 0.11 (Debian's)
/// writes such keys with `-G -W`. The crate refuses them as corrupted; the key itself is whole,
/// which the caller proves by signing with it and verifying with its public key.
fn without_checksum(text: &str) -> Option<minisign::SecretKey> {
    use base64::Engine as _;
    const KDF_NONE: [u8; 2] = [0, 0];
    let line = text.lines().nth(1)?.trim();
    let bytes = base64::engine::general_purpose::STANDARD.decode(line).ok()?;
    let checksum = bytes.get(bytes.len().checked_sub(32)?..)?;
    (bytes.get(2..4)? == KDF_NONE && checksum.iter().all(|b| *b == 0)).then_some(())?;
    minisign::SecretKey::from_bytes(&bytes).ok()
}

/// A minisign public key: checks records' signatures.
pub struct VerifyKey {
    key: minisign::PublicKey,
    id: String,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({})", self.id)
    }
}

/// Why a record's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the record is not signed (no {0} beside it)")]
    Unsigned(String),
    #[error("the snapshot has no record to check a signature of")]
    NoRecord,
    #[error("the record's signature is not a minisign signature: {0}")]
    Malformed(String),
    #[error(
        "the record's signature does not verify with the given key ({0}): the record was changed, or signed by another key"
    )]
    Bad(String),
    #[error("the signed record is not the record of {expected}: {problem}")]
    WrongRecord { expected: String, problem: String },
    #[error("signing the record failed: {0}")]
    Sign(String),
}

impl VerifyKey {
    /// Reads a public key file (`minisign -G`'s `.pub`), or a file holding the bare key line.
    pub fn from_file(path: &Path) -> Result<VerifyKey, KeyError> {
        let text = read_key_file(path, "verify key")?;
        VerifyKey::parse(&text).map_err(|message| KeyError::Invalid { what: "verify key", path: path.into(), message })
    }

    pub fn parse(text: &str) -> Result<VerifyKey, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or("holds no minisign public key")?;
        let key = minisign::PublicKey::from_base64(line).map_err(|e| format!("not a minisign public key: {e}"))?;
        let id = key.keynum().iter().rev().map(|b| format!("{b:02X}")).collect();
        Ok(VerifyKey { key, id })
    }

    /// The key's id, as minisign prints it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Checks the signature of `record` (the stored bytes of snapshot `name`'s record) and
    /// returns the record it vouches for: the bytes as signed, or, when a drill's verdict was
    /// written since, the same record with that verdict (which the signature does not cover).
    pub fn verify_record(
        &self,
        name: &str,
        record: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<MetadataDocument, SignatureError> {
        let signature =
            signature.ok_or_else(|| SignatureError::Unsigned(etcdsnap_api::seal::signature_file_name(name)))?;
        let text = std::str::from_utf8(signature).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let boxed = minisign::SignatureBox::from_string(text).map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let document = match parse_stored_metadata(record, name) {
            Ok(StoredMetadata::Document(d)) => *d,
            Ok(StoredMetadata::ExtraMetadata(_)) => {
                return Err(SignatureError::WrongRecord {
                    expected: name.into(),
                    problem: "not an etcdsnap record".into(),
                });
            }
            Err(e) => return Err(SignatureError::WrongRecord { expected: name.into(), problem: e.to_string() }),
        };
        let check = |bytes: &[u8]| minisign::verify(&self.key, &boxed, Cursor::new(bytes), true, false, false);
        match check(record) {
            Ok(()) => Ok(document),
            Err(first) if document.drill.is_some() => {
                let signed = MetadataDocument { drill: None, ..document.clone() }.to_json();
                check(&signed).map(|()| document).map_err(|_| SignatureError::Bad(first.to_string()))
            }
            Err(e) => Err(SignatureError::Bad(e.to_string())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A new key pair in `dir`: the secret key file (0600) and the public key file.
    pub(crate) fn keypair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let (sk, pk) = (dir.join("key.sec"), dir.join("key.pub"));
        std::fs::write(&sk, pair.sk.to_box(None).unwrap().into_string()).unwrap();
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&pk, pair.pk.to_box().unwrap().into_string()).unwrap();
        (sk, pk)
    }

    #[test]
    fn signed_records_verify_and_changed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = keypair(dir.path());
        let key = SigningKey::from_file(&sk).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
        let verify = VerifyKey::from_file(&pk).unwrap();
        let mut record = crate::record::test_record("s-n-1700000000", "n");
        record.sha256 = Some("ab".repeat(32));
        let bytes = record.to_document().to_json();
        let signature = key.sign("s-n-1700000000", &bytes).unwrap();
        assert!(signature.starts_with("untrusted comment: "), "{signature}");
        let ok = verify.verify_record("s-n-1700000000", &bytes, Some(signature.as_bytes()));
        assert_eq!(ok.map(|d| d.sha256), Ok("ab".repeat(32)));

        // A drill's verdict written since: the signature still covers the rest.
        record.drill = Some(etcdsnap_api::DrillResult { at: jiff::Timestamp::UNIX_EPOCH, result: "passed".into() });
        let drilled = record.to_document().to_json();
        assert!(verify.verify_record("s-n-1700000000", &drilled, Some(signature.as_bytes())).is_ok());

        // Another sha256, consistently rewritten: refused.
        record.sha256 = Some("cd".repeat(32));
        let forged = record.to_document().to_json();
        let err = verify.verify_record("s-n-1700000000", &forged, Some(signature.as_bytes()));
        assert!(matches!(err, Err(SignatureError::Bad(_))), "{err:?}");
        // Unsigned, or the record of another snapshot.
        assert!(matches!(verify.verify_record("s-n-1700000000", &bytes, None), Err(SignatureError::Unsigned(_))));
        let err = verify.verify_record("other-n-1", &bytes, Some(signature.as_bytes()));
        assert!(matches!(err, Err(SignatureError::WrongRecord { .. })), "{err:?}");
        // Another key.
        let other = tempfile::tempdir().unwrap();
        let (_, other_pk) = keypair(other.path());
        let err = VerifyKey::from_file(&other_pk).unwrap().verify_record(
            "s-n-1700000000",
            &bytes,
            Some(signature.as_bytes()),
        );
        assert!(matches!(err, Err(SignatureError::Bad(_))), "{err:?}");
    }

    #[test]
    fn a_password_less_key_with_a_zero_checksum_signs() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = keypair(dir.path());
        let text = std::fs::read_to_string(&sk).unwrap();
        let mut lines = text.lines();
        let comment = lines.next().unwrap();
        let engine = base64::engine::general_purpose::STANDARD;
        let mut bytes = engine.decode(lines.next().unwrap()).unwrap();
        let n = bytes.len();
        bytes[n - 32..].fill(0);
        std::fs::write(&sk, format!("{comment}\n{}\n", engine.encode(&bytes))).unwrap();
        let key = SigningKey::from_file(&sk).unwrap();
        let signature = key.sign("s-n-1", b"{}").unwrap();
        let verify = VerifyKey::from_file(&pk).unwrap();
        let boxed = minisign::SignatureBox::from_string(&signature).unwrap();
        assert!(minisign::verify(&verify.key, &boxed, Cursor::new(b"{}"), true, false, false).is_ok());
        // A damaged key is refused.
        // A flipped bit of the secret seed (bytes 62.. hold the Ed25519 key).
        bytes[70] ^= 1;
        std::fs::write(&sk, format!("{comment}\n{}\n", engine.encode(&bytes))).unwrap();
        assert!(SigningKey::from_file(&sk).is_err());
    }

    #[test]
    fn an_exposed_signing_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, _) = keypair(dir.path());
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(SigningKey::from_file(&sk), Err(KeyError::Exposed { .. })));
    }
}
