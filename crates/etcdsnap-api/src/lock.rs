//! S3 Object Lock as a record tells it: the retention mode and the date until which etcdsnap
//! locked a snapshot's S3 object (`--s3-lock-retention`), in the record's `s3Lock` field and the
//! `etcdsnap.io/s3-locked-until` annotation.

use serde::{Deserialize, Serialize};

/// S3 Object Lock's retention modes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// A user with `s3:BypassGovernanceRetention` may still delete or shorten it.
    #[default]
    Governance,
    /// Nobody, the root account included, deletes the object before its date.
    Compliance,
}

impl std::str::FromStr for LockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            other => Err(format!("unknown lock mode {other:?} (expected governance or compliance)")),
        }
    }
}

impl std::fmt::Display for LockMode {
    /// The record's and the annotation's spelling: `governance`, `compliance`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

impl LockMode {
    /// S3's spelling (`GOVERNANCE`, `COMPLIANCE`).
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// The retention etcdsnap asked S3 to put on a snapshot's object when it wrote it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct S3Lock {
    /// The object's retain-until date, in whole seconds, as sent in `PutObjectRetention`.
    pub until: jiff::Timestamp,
    pub mode: LockMode,
}

impl S3Lock {
    /// `<RFC 3339 date> <mode>`, the form of the `etcdsnap.io/s3-locked-until` annotation.
    pub fn to_annotation(&self) -> String {
        format!("{} {}", self.until, self.mode)
    }

    /// The annotation's form read back; None for anything else.
    pub fn from_annotation(value: &str) -> Option<S3Lock> {
        let (until, mode) = value.split_once(' ')?;
        Some(S3Lock { until: until.parse().ok()?, mode: mode.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_round_trip_and_refuse_anything_else() {
        let lock = S3Lock { until: "2026-12-07T08:00:00Z".parse().unwrap(), mode: LockMode::Compliance };
        assert_eq!(lock.to_annotation(), "2026-12-07T08:00:00Z compliance");
        assert_eq!(S3Lock::from_annotation("2026-12-07T08:00:00Z compliance"), Some(lock));
        for bad in ["", "2026-12-07T08:00:00Z", "2026-12-07T08:00:00Z strict", "soon governance", " governance"] {
            assert_eq!(S3Lock::from_annotation(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_spell_the_mode_in_lowercase() {
        let lock = S3Lock { until: "2026-12-07T08:00:00Z".parse().unwrap(), mode: LockMode::Governance };
        let json = serde_json::to_string(&lock).unwrap();
        assert_eq!(json, r#"{"until":"2026-12-07T08:00:00Z","mode":"governance"}"#);
        assert_eq!(serde_json::from_str::<S3Lock>(&json).unwrap(), lock);
    }
}
