//! The hand-written S3 calls' transport: one signed request, retried with capped exponential
//! backoff and full jitter on what may pass (throttling, 5xx, a dropped connection, a timeout, an
//! answer that is not the document asked for), for at most `--s3-timeout` in all, like the
//! object_store calls beside them. What will not pass (403, 404, a bad request) fails at once.
//!
//! An answer counts only once it parses: a proxy's HTML error page sent with a 200, or a listing
//! cut short, is an error to retry, never an empty result.

use super::config::S3Config;
use super::hints::{S3Problem, error_code, explain_status};
use crate::describe_error;
use crate::retry::Backoff;
use crate::store::StoreError;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use std::time::Duration;
use tokio::time::Instant;

/// Most attempts of one call (the time budget usually ends it first).
const MAX_ATTEMPTS: u32 = 6;

/// One S3 call: what it is (for messages) and how its answer is read.
pub struct Call<'a> {
    pub op: &'static str,
    pub method: reqwest::Method,
    pub url: &'a str,
    /// Treat this S3 error code as success (an abort retried after its answer was lost finds
    /// the upload gone: `NoSuchUpload`).
    pub done_if_code: Option<&'static str>,
    /// An XML document to send (empty: none). It goes with its `x-amz-checksum-sha256`, which
    /// S3 requires of the Object Lock calls.
    pub body: &'a [u8],
}

/// Why one attempt failed, and whether another may succeed.
#[derive(Debug)]
struct Failure {
    message: String,
    problem: Option<S3Problem>,
    retryable: bool,
}

/// Sends `call` until its answer parses with `parse`, retrying what may pass within the S3
/// timeout. Returns the parsed answer and how many requests it took.
pub async fn send<T>(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    call: &Call<'_>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, u32), StoreError> {
    let started = Instant::now();
    let deadline = started + config.timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let failure = match send_once(http, config, credential, call, remaining).await {
            Ok(body) => match parse(&body) {
                Ok(parsed) => return Ok((parsed, attempt)),
                Err(message) => Failure { message, problem: None, retryable: true },
            },
            Err(f) => f,
        };
        let wait = Backoff::S3.delay(attempt - 1);
        let out_of_time = Instant::now() + wait >= deadline;
        if !failure.retryable || attempt >= MAX_ATTEMPTS || out_of_time {
            let message = if attempt > 1 {
                format!("{} (after {attempt} attempts in {:.1}s)", failure.message, started.elapsed().as_secs_f64())
            } else {
                failure.message
            };
            return Err(StoreError::S3 { op: call.op, target: config.describe(), problem: failure.problem, message });
        }
        tracing::debug!(op = call.op, attempt, error = %failure.message, "S3 request failed; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

/// One attempt: the answer's body (empty for the accepted error code, `done_if_code`).
async fn send_once(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    call: &Call<'_>,
    timeout: Duration,
) -> Result<String, Failure> {
    let fatal = |message: String| Failure { message, problem: None, retryable: false };
    let mut request = http::Request::builder().method(call.method.clone()).uri(call.url);
    if !call.body.is_empty() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(call.body));
        request = request.header("x-amz-checksum-sha256", checksum).header("content-type", "application/xml");
    }
    let mut request = request
        .body(object_store::client::HttpRequestBody::from(call.body.to_vec()))
        .map_err(|e| fatal(format!("building request: {e}")))?;
    AwsAuthorizer::new(credential, "s3", &config.region)
        .try_authorize(&mut request, None)
        .map_err(|e| fatal(format!("signing request: {e}")))?;
    let mut builder = http.request(call.method.clone(), call.url).timeout(timeout);
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    if !call.body.is_empty() {
        builder = builder.body(call.body.to_vec());
    }
    let transient = |e: reqwest::Error| Failure { message: describe_reqwest(e), problem: None, retryable: true };
    let response = builder.send().await.map_err(transient)?;
    let status = response.status();
    let body = response.text().await.map_err(transient)?;
    if status.is_success() {
        return Ok(body);
    }
    let code = error_code(&body);
    if call.done_if_code.is_some() && code.as_deref() == call.done_if_code {
        return Ok(String::new());
    }
    Err(Failure {
        message: explain_status(status.as_u16(), &body, &config.bucket),
        problem: code.as_deref().and_then(S3Problem::from_code),
        retryable: is_retryable_status(status.as_u16(), code.as_deref()),
    })
}

/// Throttling and server-side failures pass; refusals and bad requests do not.
pub fn is_retryable_status(status: u16, code: Option<&str>) -> bool {
    matches!(status, 429 | 500..=599)
        || matches!(code, Some("SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"))
}

/// reqwest errors with their causes (connection refused, certificate unknown, timeout), without
/// the request URL.
pub fn describe_reqwest(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        return format!("timed out: {}", describe_error(&e));
    }
    describe_error(&e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_retried_refusals_are_not() {
        assert!(is_retryable_status(503, Some("SlowDown")));
        assert!(is_retryable_status(500, None));
        assert!(is_retryable_status(429, None));
        assert!(is_retryable_status(400, Some("RequestTimeout")));
        assert!(!is_retryable_status(403, Some("AccessDenied")));
        assert!(!is_retryable_status(404, Some("NoSuchBucket")));
        assert!(!is_retryable_status(400, Some("InvalidArgument")));
    }
}
