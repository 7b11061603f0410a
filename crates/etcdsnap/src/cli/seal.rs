//! The sealing flags, in one place so that every command that seals, signs, opens or checks
//! snapshots takes them alike, under one help heading: how new snapshots are sealed and signed
//! ([`SealArgs`]: `save`, the agent), the keys that open and check stored ones ([`UnsealArgs`]:
//! `restore`, `drill`, `verify`, `kit`, the agent), and the API server's EncryptionConfiguration
//! ([`EncryptionConfigArg`]: recorded by saves, compared by restores). What they mean once
//! parsed is here too ([`sealing`], [`open_keys`]): keys are read, their modes checked, and a bad
//! one is an error before anything runs.

use super::presets::Preset;
use anyhow::Context as _;
use clap::Args;
use etcdsnap::seal::Sealing;
use etcdsnap_storage::seal::kit::KitSpec;
use etcdsnap_storage::seal::{Identity, OpenKeys, Recipients, SigningKey, VerifyKey};
use std::path::PathBuf;
use std::sync::Arc;

/// The help heading of every sealing flag.
pub const HEADING: &str = "Sealing";

/// How new snapshots are sealed (age) and their records signed (minisign).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = HEADING)]
pub struct SealArgs {
    /// Seal new snapshots, and their restore kits, with age to this recipient (a public key,
    /// age1..., from `age-keygen -y`); repeatable. `age -d -i IDENTITY` opens them. [default:
    /// the S3 config Secret's etcdsnap-encrypt-to, when S3 comes from it]
    #[arg(long, env = "ETCDSNAP_ENCRYPT_TO", value_delimiter = ',', value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// A file of age recipients, one per line (as `age -R` takes it); with --encrypt-to, both.
    #[arg(long, env = "ETCDSNAP_ENCRYPT_TO_FILE", value_name = "FILE")]
    pub encrypt_to_file: Option<PathBuf>,
    /// Sign each snapshot's record with this minisign secret key (mode 0600; `minisign -G -W`
    /// makes one; a password-protected key reads its password from
    /// $ETCDSNAP_SIGN_KEY_PASSWORD). The signature is stored beside the record.
    #[arg(long, env = "ETCDSNAP_SIGN_KEY", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Keep this file, or every file under this directory, in each snapshot's restore kit,
    /// beside the server token (e.g. /etc/kubernetes/pki/etcd, or K3s's server/cred and
    /// server/tls); repeatable. Needs --encrypt-to: a kit is only ever stored sealed.
    #[arg(long, env = "ETCDSNAP_KIT_FILE", value_delimiter = ',', value_name = "PATH")]
    pub kit_file: Vec<PathBuf>,
}

/// The keys that open and check stored snapshots.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = HEADING)]
pub struct UnsealArgs {
    /// age identity file (mode 0600, as age-keygen writes it) that opens sealed snapshots and
    /// their restore kits; without it a sealed snapshot is refused before anything is written.
    #[arg(long, env = "ETCDSNAP_DECRYPT_IDENTITY", value_name = "FILE")]
    pub decrypt_identity: Option<PathBuf>,
    /// minisign public key (`minisign -G`'s .pub): only snapshots whose record carries a
    /// signature it verifies are read; unsigned or changed ones are refused.
    #[arg(long, env = "ETCDSNAP_VERIFY_KEY", value_name = "FILE")]
    pub verify_key: Option<PathBuf>,
}

/// The API server's EncryptionConfiguration.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = HEADING)]
pub struct EncryptionConfigArg {
    /// The API server's EncryptionConfiguration (--encryption-provider-config): saves record
    /// its sha256 (and keep the file in sealed snapshots' kits); a restore compares it with the
    /// recorded one [default: a K3s/RKE2 server's server/cred/encryption-config.json, when
    /// present]
    #[arg(long, env = "ETCDSNAP_ENCRYPTION_CONFIG", value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
}

impl EncryptionConfigArg {
    /// The file: the flag, else the K3s/RKE2 server's own when it exists.
    pub fn resolve(&self, preset: Option<&Preset>) -> Option<PathBuf> {
        self.encryption_config
            .clone()
            .or_else(|| preset.map(|p| p.data_dir.join("server/cred/encryption-config.json")).filter(|p| p.is_file()))
    }
}

/// What the save-side flags configure. `token` is the server token's text (for the kit);
/// `preset` supplies the EncryptionConfiguration's default.
pub fn sealing(
    args: &SealArgs,
    encryption: &EncryptionConfigArg,
    token: Option<String>,
    preset: Option<&Preset>,
) -> anyhow::Result<Sealing> {
    let mut given: Vec<String> = args.encrypt_to.clone();
    if let Some(file) = &args.encrypt_to_file {
        let text = etcdsnap_storage::seal::read_key_file(file, "recipients file")?;
        given.push(text);
    }
    let recipients = match given.is_empty() {
        true => None,
        false => Some(Arc::new(
            Recipients::parse(given.iter().map(String::as_str)).context("--encrypt-to/--encrypt-to-file")?,
        )),
    };
    let signing_key = match &args.sign_key {
        Some(path) => Some(Arc::new(SigningKey::from_file(path).context("--sign-key")?)),
        None => None,
    };
    let files = args
        .kit_file
        .iter()
        .map(|p| std::path::absolute(p).with_context(|| format!("--kit-file {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sealing = Sealing {
        kit: KitSpec { token: token.filter(|_| recipients.is_some()), files },
        recipients,
        signing_key,
        encryption_config: encryption.resolve(preset),
        invalid: None,
    };
    sealing.check()?;
    if let Some(r) = &sealing.recipients {
        tracing::info!(recipients = ?r, signed = sealing.signing_key.is_some(), "new snapshots are sealed");
    }
    Ok(sealing)
}

/// The keys of the read-side flags, read and checked now.
pub fn open_keys(args: &UnsealArgs) -> anyhow::Result<OpenKeys> {
    let identity = match &args.decrypt_identity {
        Some(path) => Some(Arc::new(Identity::from_file(path).context("--decrypt-identity")?)),
        None => None,
    };
    let verify_key = match &args.verify_key {
        Some(path) => Some(Arc::new(VerifyKey::from_file(path).context("--verify-key")?)),
        None => None,
    };
    Ok(OpenKeys { identity, verify_key })
}
