//! Sealed snapshots in the service layer: what a save seals, signs and keeps in the restore kit
//! ([`Sealing`], prepared once per save by [`Sealing::prepare`]), and the checks every reader of
//! a sealed snapshot makes before it reads a byte ([`check_signature`], [`kit_token`]).
//!
//! The formats are the standard tools' (`etcdsnap_storage::seal`): `age -d` opens a snapshot
//! and its kit, `minisign -V` checks a record's signature.

use etcdsnap_api::{KitRef, MetadataDocument, Sealed, SnapshotName, TokenHash};
use etcdsnap_storage::seal::{
    KeyError, KitContents, KitError, KitSpec, OpenKeys, Recipients, SignatureError, SigningKey,
};
use etcdsnap_storage::store::{Companions, SnapshotStore, StoreError};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// How a node seals and signs its new snapshots, and what it keeps in their restore kits.
#[derive(Debug, Clone, Default)]
pub struct Sealing {
    /// Seal snapshots (and their kits) to these recipients; None: snapshots are stored in the
    /// clear, and no kit is made.
    pub recipients: Option<Arc<Recipients>>,
    /// Sign every record.
    pub signing_key: Option<Arc<SigningKey>>,
    /// The server token and the files of the restore kit.
    pub kit: KitSpec,
    /// The API server's EncryptionConfiguration: its sha256 is recorded (and, when sealed, the
    /// file goes into the kit).
    pub encryption_config: Option<PathBuf>,
    /// Why the configured sealing cannot be used (recipients in a Secret that do not parse):
    /// every save is refused until it is fixed.
    pub invalid: Option<String>,
}

/// Why sealing could not be set up or prepared. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Kit(#[from] KitError),
    #[error("EncryptionConfiguration {}: {source}", path.display())]
    EncryptionConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--kit-file needs --encrypt-to: a restore kit holds keys and is only ever stored sealed")]
    KitNotSealed,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// What one save records and stores because of [`Sealing`], made before the stream starts.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub sealed: Option<Sealed>,
    pub kit: Option<Arc<Vec<u8>>>,
    pub encryption_config_sha256: Option<String>,
}

impl Sealing {
    /// Whether new snapshots are sealed.
    pub fn seals(&self) -> bool {
        self.recipients.is_some()
    }

    /// Checks what can be checked before any save: kit files without recipients.
    pub fn check(&self) -> Result<(), SealError> {
        if let Some(problem) = &self.invalid {
            return Err(SealError::Invalid(problem.clone()));
        }
        if self.recipients.is_none() && !self.kit.files.is_empty() {
            return Err(SealError::KitNotSealed);
        }
        Ok(())
    }

    /// Reads the EncryptionConfiguration and the kit's files now and seals the kit: a save
    /// calls it once, before it streams. A file that cannot be read fails the save.
    pub async fn prepare(&self) -> Result<Prepared, SealError> {
        self.check()?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.prepare_blocking())
            .await
            .map_err(|e| SealError::Kit(KitError::Seal(e.to_string())))?
    }

    fn prepare_blocking(&self) -> Result<Prepared, SealError> {
        let encryption_config_sha256 = match &self.encryption_config {
            Some(path) => {
                let bytes =
                    std::fs::read(path).map_err(|source| SealError::EncryptionConfig { path: path.clone(), source })?;
                Some(hex::encode(Sha256::digest(&bytes)))
            }
            None => None,
        };
        let Some(recipients) = &self.recipients else {
            return Ok(Prepared { sealed: None, kit: None, encryption_config_sha256 });
        };
        let mut spec = self.kit.clone();
        spec.files.extend(self.encryption_config.iter().cloned());
        let (kit, kit_ref) = match spec.is_empty() {
            true => (None, None),
            false => {
                let (bytes, kit_ref) = spec.gather()?.seal(recipients)?;
                (Some(Arc::new(bytes)), Some(kit_ref))
            }
        };
        let sealed = Sealed { recipients: recipients.names().to_vec(), kit: kit_ref };
        Ok(Prepared { sealed: Some(sealed), kit, encryption_config_sha256 })
    }

    /// The companions of a record about to be written: its signature (when signing) and the kit.
    pub fn companions(&self, doc: &MetadataDocument, prepared: &Prepared) -> Result<Companions, SealError> {
        let signature = match &self.signing_key {
            Some(key) => Some(key.sign(&doc.name, &doc.to_json())?),
            None => None,
        };
        Ok(Companions { signature, kit: prepared.kit.clone() })
    }
}

/// Checks the signature of a stored snapshot's record with the verify key, when there is one:
/// Ok(None) without a key, Ok(document signed) when it verifies.
pub async fn check_signature(
    keys: &OpenKeys,
    store: &dyn SnapshotStore,
    name: &SnapshotName,
) -> Result<Option<MetadataDocument>, SignatureCheckError> {
    let Some(key) = &keys.verify_key else { return Ok(None) };
    let signed = store.signed_record(name).await?;
    let record = signed.record.ok_or(SignatureError::NoRecord)?;
    Ok(Some(key.verify_record(name.as_str(), &record, signed.signature.as_deref())?))
}

/// Why a signature could not be checked or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureCheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// Opens a snapshot's restore kit with the identity: checked against its record's digest.
pub async fn open_kit(
    keys: &OpenKeys,
    store: &dyn SnapshotStore,
    name: &SnapshotName,
    kit: &KitRef,
) -> Result<KitContents, KitOpenError> {
    let identity = keys.identity.clone().ok_or(KitOpenError::NoIdentity)?;
    let sealed = store.kit(name).await?.ok_or_else(|| KitOpenError::Missing(name.to_string()))?;
    let kit = kit.clone();
    tokio::task::spawn_blocking(move || KitContents::open(&sealed, &identity, Some(&kit)))
        .await
        .map_err(|e| KitOpenError::Kit(KitError::Open(e.to_string())))?
        .map_err(KitOpenError::Kit)
}

/// Why a kit could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum KitOpenError {
    #[error("no --decrypt-identity to open the restore kit with")]
    NoIdentity,
    #[error("the restore kit of {0} is missing from storage")]
    Missing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kit(#[from] KitError),
}

/// The hash of the server token kept in a snapshot's kit.
pub async fn kit_token(
    keys: &OpenKeys,
    store: &dyn SnapshotStore,
    name: &SnapshotName,
    kit: &KitRef,
) -> Result<Option<TokenHash>, KitOpenError> {
    let contents = open_kit(keys, store, name, kit).await?;
    Ok(contents.token().and_then(|t| TokenHash::of_token(&t).ok()))
}
