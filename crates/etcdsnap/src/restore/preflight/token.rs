//! The server token: the recorded hash against the current token's.

use super::report::{CheckStatus, PreflightReport, TokenResult};

/// Why a token mismatch matters, for the message that stops the restore.
pub const TOKEN_MISMATCH_FIX: &str = "K3s and RKE2 encrypt their bootstrap data (CA certificates and keys) in etcd with the server token, so a datastore restored from this snapshot can only be decrypted with the token that was current when it was taken. Pass that old token with --token or --token-file (and roll the server's token back to it before starting the cluster), or pass --ignore-token-mismatch if this datastore holds no K3s/RKE2 bootstrap data.";

pub(super) fn check_token(report: &mut PreflightReport, ignore_mismatch: bool) {
    use CheckStatus::*;
    let t = &report.token;
    let (result, status, detail, fix) = match (&t.recorded, &t.current) {
        (Some(r), Some(c)) if r == c && t.recoverable => (
            TokenResult::Match,
            Pass,
            format!(
                "token recoverable: {} holds the server token, which hashes to {r} as recorded; `etcdsnap kit` writes it back",
                super::FROM_KIT
            ),
            None,
        ),
        (Some(r), Some(c)) if r == c => (
            TokenResult::Match,
            Pass,
            format!("current token ({}) matches the recorded hash {r}", t.current_from.as_deref().unwrap_or("")),
            None,
        ),
        (Some(r), Some(c)) => (
            TokenResult::Mismatch,
            if ignore_mismatch { Warn } else { Fail },
            format!(
                "the snapshot was taken with token hash {r}, the current token ({}) hashes to {c}{}",
                t.current_from.as_deref().unwrap_or(""),
                if ignore_mismatch { "; ignored (--ignore-token-mismatch)" } else { "" }
            ),
            Some(TOKEN_MISMATCH_FIX.to_string()),
        ),
        (Some(r), None) => (
            TokenResult::Unknown,
            Warn,
            format!("recorded hash {r}; no --token or --token-file given to compare with"),
            Some("pass --token-file (e.g. /var/lib/rancher/k3s/server/token) to check it".into()),
        ),
        (None, _) => (
            TokenResult::Unknown,
            Warn,
            "the snapshot records no token hash (K3s records none for local snapshots)".to_string(),
            Some(
                "make sure the cluster will start with the server token that was in use when the snapshot was taken"
                    .into(),
            ),
        ),
    };
    report.token.result = result;
    report.push("token", status, detail, fix);
}
