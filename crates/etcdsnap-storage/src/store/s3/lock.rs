//! S3 Object Lock: the retention etcdsnap puts on each object it writes (`--s3-lock-retention`),
//! and the retention it reads before removing a snapshot, so that a locked snapshot is kept and
//! said to be kept, with its date, instead of failing a prune (or, on AWS, where a versioned
//! bucket takes a DELETE without a version as a delete marker, being hidden while its bytes stay).
//!
//! The lock a save puts is fixed before the record is made ([`S3Store::lock_from_now`], asked
//! by the sink), so the record names the date the `PutObjectRetention` then sends. Without
//! `--s3-lock-retention`, on a bucket with a default retention (read once per store, before the
//! first save: [`S3Store::learn_bucket_lock`]), that lock is the default's period counted from
//! the end of the upload plus [`DEFAULT_LOCK_MARGIN`], in the default's mode: later than the date
//! the bucket itself gives the objects, so the request only extends it, and the record, its
//! signature and the object's lock name the same date.
//!
//! A snapshot's lock date, when it is to be removed, is its own retention (`GetObjectRetention`)
//! or, when it has none, the bucket's default retention counted from the object's last
//! modification: never the record's, which a default retention does not fill in.

use super::S3Store;
use super::list::bucket_url;
use super::request::{self, Call};
use crate::store::StoreError;
use etcdsnap_api::{LockMode, S3Lock};
use jiff::Timestamp;
use serde::Deserialize;

/// How long the question whether the bucket locks objects may take before it counts as no.
const BUCKET_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a save waits for that answer before it goes on without it.
const LEARN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How much later than the bucket's default a save without `--s3-lock-retention` locks its
/// objects: more than the time between the lock being fixed (the stream's end) and the objects
/// being created (their records and the upload's completion), so that the date sent extends
/// the one the bucket gave them (a shorter one would be refused).
const DEFAULT_LOCK_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(5 * 60);

/// The bucket's default retention, read once per store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DefaultRetention {
    days: i64,
    mode: LockMode,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Retention {
    retain_until_date: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LockConfiguration {
    object_lock_enabled: Option<String>,
    rule: Option<LockRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LockRule {
    default_retention: Option<DefaultRetentionXml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DefaultRetentionXml {
    days: Option<i64>,
    years: Option<i64>,
    mode: Option<String>,
}

/// A `GetObjectRetention` answer: the date, or None for an object without one (an empty body
/// is S3's `NoSuchObjectLockConfiguration`).
fn parse_retention(xml: &str) -> Result<Option<Timestamp>, String> {
    if xml.trim().is_empty() {
        return Ok(None);
    }
    let r: Retention = quick_xml::de::from_str(xml).map_err(|e| format!("not a retention document: {e}"))?;
    r.retain_until_date
        .map(|d| d.trim().parse::<Timestamp>().map_err(|e| format!("retain-until date {d:?}: {e}")))
        .transpose()
}

/// A `GetObjectLockConfiguration` answer: whether the bucket locks objects, and its default.
fn parse_configuration(xml: &str) -> Result<(bool, Option<DefaultRetention>), String> {
    if xml.trim().is_empty() {
        return Ok((false, None));
    }
    let c: LockConfiguration =
        quick_xml::de::from_str(xml).map_err(|e| format!("not an object lock configuration: {e}"))?;
    let enabled = c.object_lock_enabled.as_deref() == Some("Enabled");
    let default = c.rule.and_then(|r| r.default_retention).and_then(|d| {
        let mode = match d.mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
            Some("COMPLIANCE") => LockMode::Compliance,
            _ => LockMode::Governance,
        };
        match (d.days, d.years) {
            (Some(days), _) if days > 0 => Some(DefaultRetention { days, mode }),
            (_, Some(years)) if years > 0 => Some(DefaultRetention { days: years.saturating_mul(365), mode }),
            _ => None,
        }
    });
    Ok((enabled, default))
}

/// The `<Retention>` document of `PutObjectRetention`.
fn retention_document(mode: &str, until: Timestamp) -> String {
    format!(
        "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
        until.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
}

impl S3Store {
    fn object_url(&self, key: &str, query: &str) -> Result<url::Url, StoreError> {
        let mut url = bucket_url(&self.config)?;
        {
            let mut segments =
                url.path_segments_mut().map_err(|_| StoreError::Client("S3 URL cannot have a path".into()))?;
            segments.pop_if_empty();
            segments.extend(key.split('/'));
        }
        url.set_query(Some(query));
        Ok(url)
    }

    /// The lock `--s3-lock-retention` asks for an object written now: retained until now plus
    /// the retention, in whole seconds as the retention document carries it, in its mode.
    /// Without it, the bucket's default retention when one is known ([`S3Store::learn_bucket_lock`])
    /// plus [`DEFAULT_LOCK_MARGIN`], in its mode; else None.
    pub(crate) fn lock_from_now(&self) -> Result<Option<S3Lock>, StoreError> {
        let (span, mode) = match (self.config.lock, self.bucket_lock.get()) {
            (Some(lock), _) => {
                (jiff::SignedDuration::try_from(lock.retention).unwrap_or(jiff::SignedDuration::MAX), lock.mode)
            }
            (None, Some((true, Some(default)))) => {
                let days = jiff::SignedDuration::from_hours(default.days.saturating_mul(24));
                (days.saturating_add(DEFAULT_LOCK_MARGIN), default.mode)
            }
            (None, _) => return Ok(None),
        };
        let until =
            crate::clock::now().checked_add(span).and_then(|t| Timestamp::from_second(t.as_second())).map_err(|e| {
                StoreError::S3 {
                    op: "lock",
                    target: self.config.describe(),
                    problem: None,
                    message: format!("retain-until date out of range: {e}"),
                }
            })?;
        Ok(Some(S3Lock { until, mode }))
    }

    /// Puts `lock` on each of `keys`.
    pub(crate) async fn lock_objects(&self, keys: &[String], lock: &S3Lock) -> Result<(), StoreError> {
        let body = retention_document(lock.mode.as_s3(), lock.until);
        let credential = self.credential().await?;
        for key in keys {
            let url = self.object_url(key, "retention=")?;
            let call = Call {
                op: "lock",
                method: reqwest::Method::PUT,
                url: url.as_str(),
                done_if_code: None,
                body: body.as_bytes(),
            };
            self.count(1);
            request::send(&self.http, &self.config, &credential, &call, |_| Ok(())).await?;
        }
        Ok(())
    }

    /// Before a save without `--s3-lock-retention`: learns whether the bucket has a default
    /// retention, so that [`S3Store::lock_from_now`] can name the date (one request per store).
    /// A save waits for the answer at most [`LEARN_WAIT`] (an S3 that does not answer must not
    /// hold up the local copy); without one in time nothing is cached, the save records no lock
    /// of the bucket's, and the next save or removal asks again.
    pub(crate) async fn learn_bucket_lock(&self) {
        if self.config.lock.is_none() && self.bucket_lock.get().is_none() {
            let _ = tokio::time::timeout(LEARN_WAIT, self.bucket_lock()).await;
        }
    }

    /// Whether the bucket locks objects and its default retention: asked once per store.
    async fn bucket_lock(&self) -> (bool, Option<DefaultRetention>) {
        if let Some(known) = self.bucket_lock.get() {
            return *known;
        }
        // A server that answers this call with a retryable error (some answer 501 for what they
        // do not implement) must not hold up every prune for the whole S3 timeout.
        let answer = tokio::time::timeout(BUCKET_LOCK_WAIT, async {
            let credential = self.credential().await?;
            let mut url = bucket_url(&self.config)?;
            url.set_query(Some("object-lock="));
            let call = Call {
                op: "get object lock configuration",
                method: reqwest::Method::GET,
                url: url.as_str(),
                done_if_code: Some("ObjectLockConfigurationNotFoundError"),
                body: &[],
            };
            self.count(1);
            request::send(&self.http, &self.config, &credential, &call, parse_configuration).await.map(|(c, _)| c)
        })
        .await;
        let known = match answer {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // Buckets without Object Lock answer with an error on some servers.
                tracing::debug!(error = %e, "no object lock configuration");
                (false, None)
            }
            Err(_) => {
                tracing::debug!("no answer about the object lock configuration in time: taken as none");
                (false, None)
            }
        };
        *self.bucket_lock.get_or_init(|| known)
    }

    /// Until when the object at `key` is locked, if it is (and the date is known): its own
    /// retention, else the bucket's default counted from `last_modified`. Nothing is asked of a
    /// bucket that does not lock objects.
    pub(crate) async fn locked_until(
        &self,
        key: &str,
        last_modified: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        let (enabled, default) = self.bucket_lock().await;
        if !enabled && self.config.lock.is_none() {
            return Ok(None);
        }
        let credential = self.credential().await?;
        let url = self.object_url(key, "retention=")?;
        let call = Call {
            op: "get retention",
            method: reqwest::Method::GET,
            url: url.as_str(),
            done_if_code: Some("NoSuchObjectLockConfiguration"),
            body: &[],
        };
        self.count(1);
        let (own, _) = request::send(&self.http, &self.config, &credential, &call, parse_retention).await?;
        let by_default =
            default.and_then(|d| last_modified.checked_add(jiff::SignedDuration::from_hours(d.days * 24)).ok());
        Ok(own.or(by_default).filter(|until| *until > crate::clock::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_documents_both_ways() {
        let until: Timestamp = "2026-12-07T08:00:00Z".parse().unwrap();
        let doc = retention_document("GOVERNANCE", until);
        assert!(doc.contains("<Mode>GOVERNANCE</Mode><RetainUntilDate>2026-12-07T08:00:00Z</RetainUntilDate>"));
        assert_eq!(parse_retention(&doc), Ok(Some(until)));
        let theirs = "<?xml version=\"1.0\"?><ObjectLockRetention><Mode>COMPLIANCE</Mode><RetainUntilDate>2026-12-07T08:00:00.123Z</RetainUntilDate></ObjectLockRetention>";
        assert!(parse_retention(theirs).unwrap().is_some());
        assert_eq!(parse_retention(""), Ok(None));
        assert!(parse_retention("<html>").is_err());
    }

    #[test]
    fn bucket_configurations() {
        let with_default = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Days>3</Days><Mode>GOVERNANCE</Mode></DefaultRetention></Rule></ObjectLockConfiguration>";
        let governance = DefaultRetention { days: 3, mode: LockMode::Governance };
        assert_eq!(parse_configuration(with_default), Ok((true, Some(governance))));
        let years = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Years>1</Years><Mode>COMPLIANCE</Mode></DefaultRetention></Rule></ObjectLockConfiguration>";
        let compliance = DefaultRetention { days: 365, mode: LockMode::Compliance };
        assert_eq!(parse_configuration(years), Ok((true, Some(compliance))));
        let bare = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        assert_eq!(parse_configuration(bare), Ok((true, None)));
        assert_eq!(parse_configuration(""), Ok((false, None)));
    }
}
