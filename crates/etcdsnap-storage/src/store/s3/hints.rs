//! S3 failures an operator can fix, each with the one sentence that says how. Both kinds of S3
//! call (object_store's and the hand-written listing calls) explain their errors through this
//! table, so a missing bucket reads the same whichever request found it.

use crate::describe_error;

/// A failure with a known remedy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Problem {
    /// The bucket does not exist.
    NoSuchBucket,
    /// The credentials were refused (wrong key, wrong secret, or a policy that denies).
    AccessRefused,
    /// No credentials could be found at all.
    NoCredentials,
}

impl S3Problem {
    /// From S3's error code, the `<Code>` of an error answer.
    pub fn from_code(code: &str) -> Option<S3Problem> {
        match code {
            "NoSuchBucket" => Some(S3Problem::NoSuchBucket),
            "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken" => {
                Some(S3Problem::AccessRefused)
            }
            _ => None,
        }
    }

    /// From an object_store error: its kind first (401/403 are always about access); for a
    /// 404, S3's code in the answer it carries says whether the bucket itself is missing.
    pub fn of_object_store(e: &object_store::Error) -> Option<S3Problem> {
        match e {
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                Some(S3Problem::AccessRefused)
            }
            object_store::Error::NotFound { .. } | object_store::Error::Generic { .. } => {
                error_code(&describe_error(e)).as_deref().and_then(S3Problem::from_code)
            }
            _ => None,
        }
    }

    /// What to do about it.
    pub fn remedy(self, bucket: &str) -> String {
        match self {
            S3Problem::NoSuchBucket => format!("bucket {bucket} does not exist (create it, or fix --s3-bucket)"),
            S3Problem::AccessRefused => {
                "access refused: check --s3-access-key/--s3-secret-key (or the AWS_* variables) and the bucket policy"
                    .to_string()
            }
            S3Problem::NoCredentials => {
                "no credentials: set --s3-access-key/--s3-secret-key or the AWS_* variables".to_string()
            }
        }
    }
}

/// The `<Code>` of an S3 error answer (XML), wherever it appears in `text`.
pub fn error_code(text: &str) -> Option<String> {
    xml_field(text, "Code")
}

/// The text of the first `<name>...</name>` element.
pub fn xml_field(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].to_string())
}

/// An object_store error in words, with the remedy first when one is known.
pub fn explain(e: &object_store::Error, bucket: &str) -> String {
    let text = describe_error(e);
    match S3Problem::of_object_store(e) {
        Some(problem) => format!("{}: {text}", problem.remedy(bucket)),
        None => text,
    }
}

/// An S3 error answer in words: the status, S3's code and message, and the remedy when known.
pub fn explain_status(status: u16, body: &str, bucket: &str) -> String {
    let code = error_code(body).unwrap_or_default();
    let message = xml_field(body, "Message").unwrap_or_default();
    let remedy = S3Problem::from_code(&code).map(|p| format!(": {}", p.remedy(bucket))).unwrap_or_default();
    match (code.is_empty(), message.is_empty()) {
        (true, _) => format!("HTTP {status}{remedy}"),
        (false, true) => format!("HTTP {status} {code}{remedy}"),
        (false, false) => format!("HTTP {status} {code}: {message}{remedy}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_remedies() {
        let body = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        let text = explain_status(404, body, "snaps");
        assert!(text.contains("NoSuchBucket") && text.contains("bucket snaps does not exist"), "{text}");
        assert!(
            explain_status(403, "<Error><Code>SignatureDoesNotMatch</Code></Error>", "b").contains("--s3-secret-key")
        );
        assert_eq!(explain_status(502, "", "b"), "HTTP 502");
        assert_eq!(S3Problem::from_code("SlowDown"), None);
    }

    #[test]
    fn object_store_errors_are_sorted_by_kind() {
        let denied = object_store::Error::PermissionDenied { path: "k".into(), source: "no".into() };
        assert_eq!(S3Problem::of_object_store(&denied), Some(S3Problem::AccessRefused));
        let missing = object_store::Error::NotFound {
            path: "k".into(),
            source: "404 Not Found: <Error><Code>NoSuchBucket</Code></Error>".into(),
        };
        assert_eq!(S3Problem::of_object_store(&missing), Some(S3Problem::NoSuchBucket));
        assert!(explain(&missing, "snaps").starts_with("bucket snaps does not exist"));
        let key = object_store::Error::NotFound { path: "k".into(), source: "<Code>NoSuchKey</Code>".into() };
        assert_eq!(S3Problem::of_object_store(&key), None);
    }
}
