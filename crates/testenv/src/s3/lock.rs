//! S3 Object Lock on the test server: lock-enabled buckets with or without a default
//! retention, an object's retention, and deletions a lock refuses.

use super::{REGION, S3Server, SIGN_FOR};
use crate::{Error, Result};
use rusty_s3::Method;

impl S3Server {
    /// A signed request on `bucket` (and `key`, when not empty) with a sub-resource query such
    /// as `retention`, headers that are signed with it, and a body (with the
    /// `x-amz-checksum-sha256` Object Lock calls require).
    async fn signed(
        &self,
        method: Method,
        bucket: &str,
        key: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<reqwest::Response> {
        use base64::Engine as _;
        let what = &format!("{method:?} s3://{bucket}/{key}?{query}");
        use sha2::Digest as _;
        let mut url = self.bucket(bucket)?.base_url().clone();
        if !key.is_empty() {
            url = url.join(key).map_err(|e| Error::other(what, e))?;
        }
        let checksum = body.as_ref().map(|b| base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b)));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(c) = &checksum {
            all.push(("x-amz-checksum-sha256", c));
        }
        // rusty-s3 merges these with the host header in order.
        all.sort();
        #[allow(clippy::disallowed_methods, reason = "a signature needs the true time, not etcdsnap's clock")]
        let signed = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            method,
            url,
            &self.access_key,
            &self.secret_key,
            None,
            REGION,
            SIGN_FOR.as_secs(),
            [(query, "")].into_iter().filter(|(q, _)| !q.is_empty()),
            all.clone().into_iter(),
        );
        let mut req = match method {
            Method::Get => self.http.get(signed),
            Method::Put => self.http.put(signed),
            Method::Delete => self.http.delete(signed),
            _ => return Err(Error::other(what, "method not supported here")),
        };
        for (k, v) in &all {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.map_err(|e| Error::other(what, e))
    }

    /// Creates a bucket with S3 Object Lock enabled and, when `default` is `(mode, days)`
    /// (`GOVERNANCE` or `COMPLIANCE`), that default retention for every new object.
    pub async fn create_lock_bucket(&self, name: &str, default: Option<(&str, u32)>) -> Result<()> {
        let what = format!("create lock-enabled bucket {name}");
        let resp =
            self.signed(Method::Put, name, "", "", &[("x-amz-bucket-object-lock-enabled", "true")], None).await?;
        expect_success(&what, resp).await?;
        if let Some((mode, days)) = default {
            let body = format!(
                "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
            );
            let what = format!("default retention of {name}");
            let resp = self.signed(Method::Put, name, "", "object-lock", &[], Some(body)).await?;
            expect_success(&what, resp).await?;
        }
        Ok(())
    }

    /// The object's own Object Lock retention (`GetObjectRetention`) as `(mode, retain until)`,
    /// None when it has none.
    pub async fn object_retention(&self, bucket: &str, key: &str) -> Result<Option<(String, jiff::Timestamp)>> {
        let what = format!("retention of s3://{bucket}/{key}");
        let resp = self.signed(Method::Get, bucket, key, "retention", &[], None).await?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Error::other(&what, e))?;
        if text.contains("NoSuchObjectLockConfiguration") {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Error::other(what, format!("{status}: {text}")));
        }
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = text.find(&open)? + open.len();
            let end = start + text[start..].find('<')?;
            Some(text[start..end].to_string())
        };
        let (mode, until) =
            field("Mode").zip(field("RetainUntilDate")).ok_or_else(|| Error::other(&what, text.clone()))?;
        let until = until.parse().map_err(|e| Error::other(&what, e))?;
        Ok(Some((mode, until)))
    }

    /// Deletes an object as a user without any bypass would: Err with S3's answer when refused
    /// (a locked object).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        let what = format!("delete s3://{bucket}/{key}");
        let resp = self.signed(Method::Delete, bucket, key, "", &[], None).await?;
        expect_success(&what, resp).await.map(|_| ())
    }
}

async fn expect_success(what: &str, resp: reqwest::Response) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(Error::other(what, format!("{status}: {body}")))
}
