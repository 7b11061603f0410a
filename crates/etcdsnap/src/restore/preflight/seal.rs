//! Sealed snapshots and signed records, checked before a byte of the snapshot is read: the
//! record's signature (with `--verify-key`), whether the identity opens what the snapshot is
//! sealed to, the server token from the restore kit when none is given, and the
//! EncryptionConfiguration recorded against this host's.
//!
//! [`gather`] does what needs storage (the signed record, the kit) before the cheap checks run;
//! the checks themselves only read what it found.

use super::report::{Check, CheckStatus, PreflightReport, SealSummary};
use crate::restore::source::SnapshotSource;
use etcdsnap_api::TokenHash;
use etcdsnap_storage::seal::OpenKeys;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where the current token came from when the kit supplied it.
pub const FROM_KIT: &str = "the snapshot's restore kit";

/// What storage said about sealing, before the checks.
#[derive(Debug, Clone, Default)]
pub struct SealFacts {
    /// With a verify key: Ok(key id) when the record's signature verified, else why not.
    pub signature: Option<Result<String, String>>,
    /// The token's hash from the kit (no token given, an identity, and a kit recorded).
    pub kit_token: Option<Result<Option<TokenHash>, String>>,
    /// This host's EncryptionConfiguration: where, and its sha256 (or why it could not be read).
    pub host_encryption_config: Option<(PathBuf, Result<String, String>)>,
}

/// Checks the signature (applying the signed record to the source, so every later check uses
/// what the signature vouches for), reads the kit's token when it is needed, and hashes this
/// host's EncryptionConfiguration.
pub(crate) async fn gather(
    source: &mut SnapshotSource,
    keys: &OpenKeys,
    token_given: bool,
    encryption_config: Option<&Path>,
) -> SealFacts {
    let mut facts = SealFacts::default();
    if let Some(key) = &keys.verify_key {
        let checked = match source.companions() {
            Ok(store) => {
                crate::seal::check_signature(keys, store.as_ref(), &source.record.name).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        facts.signature = Some(match checked {
            Ok(Some(doc)) => {
                source.recorded_size = Some(doc.size);
                source.record.apply_document(doc);
                Ok(key.id().to_string())
            }
            Ok(None) => Err("no verify key".into()),
            Err(e) => Err(e),
        });
    }
    let kit = source.record.sealed.as_ref().and_then(|s| s.kit.clone());
    if let (false, Some(_), Some(kit)) = (token_given, &keys.identity, kit) {
        let token = match source.companions() {
            Ok(store) => {
                crate::seal::kit_token(keys, store.as_ref(), &source.record.name, &kit).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        facts.kit_token = Some(token);
    }
    if let Some(path) = encryption_config {
        let hashed = std::fs::read(path).map(|b| hex::encode(Sha256::digest(&b))).map_err(|e| e.to_string());
        facts.host_encryption_config = Some((path.to_path_buf(), hashed));
    }
    facts
}

/// The summary and the checks of sealing and signature.
pub(super) fn check_sealing(report: &mut PreflightReport, source: &SnapshotSource, keys: &OpenKeys, facts: &SealFacts) {
    let recorded = source.record.sealed.clone().unwrap_or_default();
    report.seal = SealSummary {
        sealed: source.sealed,
        recipients: recorded.recipients.clone(),
        kit: recorded.kit.as_ref().map(|k| k.entries.clone()),
        signature_key: facts.signature.as_ref().and_then(|s| s.as_ref().ok().cloned()),
        ..Default::default()
    };
    for check in sealing_checks(source, keys, facts) {
        report.push(&check.name, check.status, check.detail, check.fix);
    }
}

/// The signature's and the sealing's checks alone: what every reader of a snapshot's bytes
/// (a restore, a prepared file) must pass before it writes anything.
pub(crate) fn sealing_checks(source: &SnapshotSource, keys: &OpenKeys, facts: &SealFacts) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |name: &str, status: CheckStatus, detail: String, fix: Option<String>| {
        checks.push(Check { name: name.into(), status, detail, fix });
    };
    match &facts.signature {
        Some(Ok(id)) => push(
            "signature",
            CheckStatus::Pass,
            format!("the record's minisign signature verifies with key {id}"),
            None,
        ),
        Some(Err(e)) => push(
            "signature",
            CheckStatus::Fail,
            e.clone(),
            Some("restore a snapshot whose record is signed by your key, or check who wrote this one".into()),
        ),
        None => {}
    }
    if !source.sealed {
        return checks;
    }
    let recorded = source.record.sealed.clone().unwrap_or_default();
    let named = match recorded.recipients.is_empty() {
        true => "recipients not recorded".to_string(),
        false => recorded.recipients.join(", "),
    };
    match &keys.identity {
        None => push(
            "sealed",
            CheckStatus::Fail,
            format!("the snapshot is sealed with age to {named}, and no identity was given"),
            Some("pass --decrypt-identity with the age identity file of one of these recipients".into()),
        ),
        Some(id) if !recorded.recipients.is_empty() && !id.opens(&recorded.recipients) => push(
            "sealed",
            CheckStatus::Fail,
            format!(
                "the snapshot is sealed with age to {named}; the identity given is for {}",
                id.recipients().join(", ")
            ),
            Some("pass --decrypt-identity with the age identity file of one of the recipients".into()),
        ),
        Some(_) => push(
            "sealed",
            if recorded.recipients.is_empty() { CheckStatus::Warn } else { CheckStatus::Pass },
            format!("sealed with age to {named}; the identity given opens it"),
            None,
        ),
    }
    checks
}

/// The recorded EncryptionConfiguration against this host's: a restore under another
/// encryption key reads every encrypted Secret as garbage.
pub(super) fn check_encryption_config(report: &mut PreflightReport, source: &SnapshotSource, facts: &SealFacts) {
    let recorded = source.record.encryption_config_sha256.clone();
    report.seal.encryption_config_recorded = recorded.clone();
    let Some(recorded) = recorded else { return };
    let fix = "start the API server with the EncryptionConfiguration the snapshot was taken under (`etcdsnap kit NAME --decrypt-identity FILE --out DIR` writes it back from sealed snapshots' kits)";
    match &facts.host_encryption_config {
        Some((path, Ok(host))) => {
            report.seal.encryption_config_host = Some(host.clone());
            if *host == recorded {
                report.push(
                    "encryption config",
                    CheckStatus::Pass,
                    format!("{} is the EncryptionConfiguration recorded (sha256 {recorded})", path.display()),
                    None,
                );
            } else {
                report.push(
                    "encryption config",
                    CheckStatus::Warn,
                    format!(
                        "{} hashes to {host}, the snapshot was taken under {recorded}: unless its keys still read the old data, Secrets will not decrypt",
                        path.display()
                    ),
                    Some(fix.into()),
                );
            }
        }
        Some((path, Err(e))) => report.push(
            "encryption config",
            CheckStatus::Warn,
            format!("cannot read {}: {e}; the snapshot was taken under EncryptionConfiguration sha256 {recorded}", path.display()),
            Some(fix.into()),
        ),
        None => report.push(
            "encryption config",
            CheckStatus::Warn,
            format!("the snapshot was taken under EncryptionConfiguration sha256 {recorded}; this host's was not given (--encryption-config)"),
            Some(fix.into()),
        ),
    }
}

/// The kit's token, as the current token for the token check, when none was given.
pub(super) fn kit_token(report: &mut PreflightReport, facts: &SealFacts) {
    match &facts.kit_token {
        Some(Ok(Some(hash))) => {
            report.token.current = Some(hash.to_string());
            report.token.current_from = Some(FROM_KIT.into());
            report.token.recoverable = true;
        }
        Some(Ok(None)) => report.push("kit", CheckStatus::Warn, "the restore kit holds no server token", None),
        Some(Err(e)) => report.push("kit", CheckStatus::Warn, format!("the restore kit cannot be read: {e}"), None),
        None => {}
    }
}
