//! age recipients and identities, in the formats of the `age` tool: a recipient is a public
//! key (`age1...`, or `age1pq1...` for a post-quantum one), given on the command line, one per
//! line in a recipients file (`#` starts a comment), or listed in a Secret; an identity file
//! holds private keys (`AGE-SECRET-KEY-1...`), one per line, as `age-keygen` writes them.
//!
//! The age crate marks classic X25519 keys deprecated in favour of post-quantum ones; both are
//! taken here, because X25519 keys are what every `age` release (Debian's 1.1 among them) makes
//! and opens, and an operator must be able to open a snapshot with the tool at hand.
#![allow(deprecated)]

use super::{KeyError, read_private_file};
use std::path::Path;

/// The recipients new snapshots are sealed to, checked to work together.
#[derive(Clone)]
pub struct Recipients {
    /// As given (normalised), for the record.
    names: Vec<String>,
    keys: Vec<Recipient>,
}

#[derive(Clone)]
enum Recipient {
    X25519(::age::x25519::Recipient),
    PostQuantum(::age::pq::Recipient),
}

impl Recipient {
    fn as_dyn(&self) -> &dyn ::age::Recipient {
        match self {
            Recipient::X25519(r) => r,
            Recipient::PostQuantum(r) => r,
        }
    }
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.names).finish()
    }
}

impl Recipients {
    /// Parses recipients (blank entries and `#` comments skipped); at least one is needed, and
    /// all of one kind (age cannot mix post-quantum and classic recipients in one file).
    pub fn parse<'a>(given: impl IntoIterator<Item = &'a str>) -> Result<Recipients, KeyError> {
        let mut names = Vec::new();
        let mut keys = Vec::new();
        for entry in given.into_iter().flat_map(|g| g.split([',', '\n'])) {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with('#') || names.iter().any(|n| n == entry) {
                continue;
            }
            let key = if let Ok(r) = entry.parse::<::age::x25519::Recipient>() {
                Recipient::X25519(r)
            } else if let Ok(r) = entry.parse::<::age::pq::Recipient>() {
                Recipient::PostQuantum(r)
            } else {
                return Err(KeyError::Recipient(format!(
                    "{entry:?} is not an age recipient (a public key such as age1..., from age-keygen -y)"
                )));
            };
            names.push(entry.to_string());
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::Recipient("no age recipient given".into()));
        }
        let recipients = Recipients { names, keys };
        recipients.encryptor()?;
        Ok(recipients)
    }

    /// Reads a recipients file (as `age -R` takes it).
    pub fn from_file(path: &Path) -> Result<Recipients, KeyError> {
        let text = super::read_key_file(path, "recipients file")?;
        Recipients::parse([text.as_str()]).map_err(|e| KeyError::Invalid {
            what: "recipients file",
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// The recipients as they are recorded.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A new encryptor to these recipients (a fresh file key each time).
    pub fn encryptor(&self) -> Result<::age::Encryptor, KeyError> {
        ::age::Encryptor::with_recipients(self.keys.iter().map(Recipient::as_dyn))
            .map_err(|e| KeyError::Recipient(format!("cannot encrypt to {}: {e}", self.names.join(", "))))
    }

    /// Seals a small buffer whole (a restore kit).
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        use std::io::Write;
        let encryptor = self.encryptor()?;
        let io = |e: std::io::Error| KeyError::Recipient(format!("sealing: {e}"));
        let mut out = encryptor.wrap_output(Vec::with_capacity(plain.len() + 1024)).map_err(io)?;
        out.write_all(plain).map_err(io)?;
        out.finish().map_err(io)
    }
}

/// The private keys sealed snapshots are opened with, and the recipients they answer to.
pub struct Identity {
    keys: Vec<IdentityKey>,
    /// The public recipient of each key, to match with a record's recipients before reading.
    recipients: Vec<String>,
}

enum IdentityKey {
    X25519(::age::x25519::Identity),
    PostQuantum(::age::pq::Identity),
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("recipients", &self.recipients).finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads an identity file: refused unless only its owner can read it.
    pub fn from_file(path: &Path) -> Result<Identity, KeyError> {
        let text = read_private_file(path, "identity file")?;
        Identity::parse(&text).map_err(|message| KeyError::Invalid {
            what: "identity file",
            path: path.into(),
            message,
        })
    }

    /// Parses an identity file's text. Errors name the line, never its content.
    pub fn parse(text: &str) -> Result<Identity, String> {
        let mut keys = Vec::new();
        let mut recipients = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Ok(k) = line.parse::<::age::x25519::Identity>() {
                recipients.push(k.to_public().to_string());
                keys.push(IdentityKey::X25519(k));
            } else if let Ok(k) = line.parse::<::age::pq::Identity>() {
                recipients.push(k.to_public().to_string());
                keys.push(IdentityKey::PostQuantum(k));
            } else {
                return Err(format!(
                    "line {} is not an age identity (AGE-SECRET-KEY-..., as age-keygen writes it)",
                    n + 1
                ));
            }
        }
        if keys.is_empty() {
            return Err("holds no age identity".into());
        }
        Ok(Identity { keys, recipients })
    }

    /// The public recipients of this identity's keys.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// Whether one of these keys opens what was sealed to `recorded`.
    pub fn opens(&self, recorded: &[String]) -> bool {
        self.recipients.iter().any(|r| recorded.contains(r))
    }

    /// The keys, as age takes them.
    pub fn as_age(&self) -> impl Iterator<Item = &dyn ::age::Identity> {
        self.keys.iter().map(|k| match k {
            IdentityKey::X25519(k) => k as &dyn ::age::Identity,
            IdentityKey::PostQuantum(k) => k as &dyn ::age::Identity,
        })
    }

    /// Opens a small sealed buffer whole (a restore kit), reading at most `limit` bytes of it.
    pub fn open(&self, sealed: &[u8], limit: u64) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let decryptor = ::age::Decryptor::new_buffered(sealed).map_err(|e| format!("not an age file: {e}"))?;
        let reader = decryptor.decrypt(self.as_age()).map_err(|e| e.to_string())?;
        let mut plain = Vec::new();
        reader.take(limit + 1).read_to_end(&mut plain).map_err(|e| format!("damaged: {e}"))?;
        if plain.len() as u64 > limit {
            return Err(format!("larger than the {limit} bytes accepted"));
        }
        Ok(plain)
    }
}

/// The first bytes of every age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ::age::secrecy::ExposeSecret;

    /// A new identity and its recipient, as `age-keygen` would write them.
    pub(crate) fn keypair() -> (String, String) {
        let id = ::age::x25519::Identity::generate();
        (id.to_string().expose_secret().to_string(), id.to_public().to_string())
    }

    #[test]
    fn what_is_sealed_to_a_recipient_opens_with_its_identity_only() {
        let (secret, public) = keypair();
        let (other_secret, other_public) = keypair();
        let recipients = Recipients::parse([format!("# ops\n{public}\n").as_str(), public.as_str()]).unwrap();
        assert_eq!(recipients.names(), std::slice::from_ref(&public));
        let sealed = recipients.seal(b"kit").unwrap();
        assert!(sealed.starts_with(AGE_MAGIC));
        let id = Identity::parse(&format!("# created: now\n{secret}\n")).unwrap();
        assert!(id.opens(std::slice::from_ref(&public)));
        assert_eq!(id.open(&sealed, 10).unwrap(), b"kit");
        assert!(id.open(&sealed, 2).is_err());
        let other = Identity::parse(&other_secret).unwrap();
        assert!(!other.opens(&[public]));
        assert!(other.open(&sealed, 10).is_err());
        assert_eq!(other.recipients(), [other_public]);
    }

    #[test]
    fn bad_keys_are_refused_without_being_echoed() {
        assert!(Recipients::parse(["", "# nothing"]).is_err());
        let err = Recipients::parse(["age1notakey"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("not an age recipient"), "{err}");
        let err = Identity::parse("AGE-SECRET-KEY-1NOTAKEYATALL").unwrap_err();
        assert!(err.contains("line 1") && !err.contains("NOTAKEY"), "{err}");
        assert!(Identity::parse("# empty\n").is_err());
    }
}
