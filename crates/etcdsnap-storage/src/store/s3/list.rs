//! ListObjectsV2, issued and parsed here rather than through object_store: object_store parses
//! every key of a page into its own path type and fails the whole listing on one key it does
//! not accept (`a//b`, `x/../y`). A bucket may hold anything; one hostile key must cost a
//! warning for that key, not the listing.

use super::config::S3Config;
use super::hints::{S3Problem, error_code, explain_status};
use crate::describe_error;
use crate::store::StoreError;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use serde::Deserialize;

/// One object from a listing, with its key exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: jiff::Timestamp,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_continuation_token: Option<String>,
    #[serde(default)]
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    #[serde(default)]
    size: u64,
    #[serde(default, rename = "ETag")]
    e_tag: String,
    #[serde(default)]
    last_modified: String,
}

/// Parses one ListObjectsV2 page: the objects, and the token of the next page.
pub fn parse_page(xml: &str) -> Result<(Vec<ListedObject>, Option<String>), String> {
    let page: ListBucketResult =
        quick_xml::de::from_str(xml).map_err(|e| format!("unreadable ListObjectsV2 answer: {e}"))?;
    let url_encoded = page.encoding_type.as_deref() == Some("url");
    let mut objects = Vec::with_capacity(page.contents.len());
    for c in page.contents {
        let key = if url_encoded {
            percent_encoding::percent_decode_str(&c.key.replace('+', " ")).decode_utf8_lossy().into_owned()
        } else {
            c.key
        };
        let last_modified = c.last_modified.parse::<jiff::Timestamp>().unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        objects.push(ListedObject { key, size: c.size, etag: c.e_tag.trim_matches('"').to_string(), last_modified });
    }
    let next = if page.is_truncated { page.next_continuation_token } else { None };
    Ok((objects, next))
}

/// Lists the objects directly under `prefix` (which ends with `/`, or is empty for the bucket
/// root): delimiter `/`, so nothing from sub-folders or sibling folders sharing a prefix. Returns
/// the objects and how many LIST requests it took.
pub async fn list_prefix(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    prefix: &str,
) -> Result<(Vec<ListedObject>, usize), StoreError> {
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    let mut requests = 0;
    loop {
        let mut url = url::Url::parse(&config.bucket_url()).map_err(|e| StoreError::Client(format!("S3 URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("list-type", "2");
            q.append_pair("delimiter", "/");
            q.append_pair("encoding-type", "url");
            q.append_pair("max-keys", "1000");
            if !prefix.is_empty() {
                q.append_pair("prefix", prefix);
            }
            if let Some(t) = &token {
                q.append_pair("continuation-token", t);
            }
        }
        let body = send_signed(http, config, credential, reqwest::Method::GET, url.as_str(), "list").await?;
        requests += 1;
        let (page, next) = parse_page(&body).map_err(|message| StoreError::S3 {
            op: "list",
            target: format!("{}/{prefix}", config.describe()),
            problem: None,
            message,
        })?;
        objects.extend(page);
        match next {
            Some(t) => token = Some(t),
            None => return Ok((objects, requests)),
        }
    }
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: jiff::Timestamp,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    upload: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    #[serde(default)]
    initiated: String,
}

/// Where the next ListMultipartUploads page starts: (key marker, upload id marker).
pub type UploadMarkers = (String, String);

/// Parses one ListMultipartUploads page: uploads and the markers of the next page.
pub fn parse_uploads(xml: &str) -> Result<(Vec<OpenUpload>, Option<UploadMarkers>), String> {
    let page: ListMultipartUploadsResult =
        quick_xml::de::from_str(xml).map_err(|e| format!("unreadable ListMultipartUploads answer: {e}"))?;
    let uploads = page
        .upload
        .into_iter()
        .map(|u| OpenUpload {
            key: u.key,
            upload_id: u.upload_id,
            initiated: u.initiated.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        })
        .collect();
    let next = match (page.is_truncated, page.next_key_marker, page.next_upload_id_marker) {
        (true, Some(k), Some(u)) => Some((k, u)),
        _ => None,
    };
    Ok((uploads, next))
}

/// Open multipart uploads under `prefix` (object_store has no call for this).
pub async fn list_uploads(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    prefix: &str,
) -> Result<Vec<OpenUpload>, StoreError> {
    let mut uploads = Vec::new();
    let mut markers: Option<UploadMarkers> = None;
    loop {
        let mut url = url::Url::parse(&config.bucket_url()).map_err(|e| StoreError::Client(format!("S3 URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("uploads", "");
            if !prefix.is_empty() {
                q.append_pair("prefix", prefix);
            }
            if let Some((k, u)) = &markers {
                q.append_pair("key-marker", k);
                q.append_pair("upload-id-marker", u);
            }
        }
        let body = send_signed(http, config, credential, reqwest::Method::GET, url.as_str(), "list uploads").await?;
        let (page, next) = parse_uploads(&body).map_err(|message| StoreError::S3 {
            op: "list uploads",
            target: config.describe(),
            problem: None,
            message,
        })?;
        uploads.extend(page);
        match next {
            Some(m) => markers = Some(m),
            None => return Ok(uploads),
        }
    }
}

/// The URL of one upload of `upload.key`, with `uploadId` set.
fn upload_url(config: &S3Config, upload: &OpenUpload) -> Result<url::Url, StoreError> {
    let mut url = url::Url::parse(&config.bucket_url()).map_err(|e| StoreError::Client(format!("S3 URL: {e}")))?;
    {
        let mut segments =
            url.path_segments_mut().map_err(|_| StoreError::Client("S3 URL cannot have a path".into()))?;
        segments.pop_if_empty();
        segments.extend(upload.key.split('/'));
    }
    url.query_pairs_mut().append_pair("uploadId", &upload.upload_id);
    Ok(url)
}

/// Aborts one multipart upload.
pub async fn abort_upload(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    upload: &OpenUpload,
) -> Result<(), StoreError> {
    let url = upload_url(config, upload)?;
    send_signed(http, config, credential, reqwest::Method::DELETE, url.as_str(), "abort upload").await.map(|_| ())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default)]
    part: Vec<Part>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_part_number_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Part {
    #[serde(default)]
    last_modified: String,
}

/// Parses one ListParts page: the newest part's time and the marker of the next page.
pub fn parse_parts(xml: &str) -> Result<(Option<jiff::Timestamp>, Option<String>), String> {
    let page: ListPartsResult =
        quick_xml::de::from_str(xml).map_err(|e| format!("unreadable ListParts answer: {e}"))?;
    let newest = page.part.iter().filter_map(|p| p.last_modified.parse::<jiff::Timestamp>().ok()).max();
    let next = if page.is_truncated { page.next_part_number_marker } else { None };
    Ok((newest, next))
}

/// When a part of `upload` was last uploaded (None: no part yet): a save still running uploads
/// a part at least every S3 timeout, a dead one never again.
pub async fn last_part_time(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    upload: &OpenUpload,
) -> Result<Option<jiff::Timestamp>, StoreError> {
    let mut newest = None;
    let mut marker: Option<String> = None;
    loop {
        let mut url = upload_url(config, upload)?;
        if let Some(m) = &marker {
            url.query_pairs_mut().append_pair("part-number-marker", m);
        }
        let body = send_signed(http, config, credential, reqwest::Method::GET, url.as_str(), "list parts").await?;
        let (page_newest, next) = parse_parts(&body).map_err(|message| StoreError::S3 {
            op: "list parts",
            target: format!("s3://{}/{}", config.bucket, upload.key),
            problem: None,
            message,
        })?;
        newest = newest.max(page_newest);
        match next {
            Some(m) => marker = Some(m),
            None => return Ok(newest),
        }
    }
}

/// One LIST of at most one key: proves the bucket exists and the credentials work.
pub async fn probe(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    prefix: &str,
) -> Result<(), StoreError> {
    let mut url = url::Url::parse(&config.bucket_url()).map_err(|e| StoreError::Client(format!("S3 URL: {e}")))?;
    url.query_pairs_mut().append_pair("list-type", "2").append_pair("max-keys", "1").append_pair("prefix", prefix);
    send_signed(http, config, credential, reqwest::Method::GET, url.as_str(), "check").await.map(|_| ())
}

/// A signed request whose answer body is returned; S3 errors are turned into messages that say
/// what to check.
async fn send_signed(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    method: reqwest::Method,
    url: &str,
    op: &'static str,
) -> Result<String, StoreError> {
    let target = config.describe();
    let err = |message: String| StoreError::S3 { op, target: target.clone(), problem: None, message };
    let mut request = http::Request::builder()
        .method(method.clone())
        .uri(url)
        .body(object_store::client::HttpRequestBody::empty())
        .map_err(|e| err(format!("building request: {e}")))?;
    AwsAuthorizer::new(credential, "s3", &config.region)
        .try_authorize(&mut request, None)
        .map_err(|e| err(format!("signing request: {e}")))?;
    let mut builder = http.request(method, url);
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.map_err(|e| err(describe_reqwest(e)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| err(describe_reqwest(e)))?;
    if !status.is_success() {
        let problem = error_code(&body).as_deref().and_then(S3Problem::from_code);
        let message = explain_status(status.as_u16(), &body, &config.bucket);
        return Err(StoreError::S3 { op, target, problem, message });
    }
    Ok(body)
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
    fn parses_pages_with_encoded_keys() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>k3s/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter>
  <IsTruncated>true</IsTruncated><NextContinuationToken>tok2</NextContinuationToken><EncodingType>url</EncodingType>
  <Contents><Key>k3s/etcd-snapshot-n1-1700000000</Key><LastModified>2023-11-14T22:13:20.000Z</LastModified><ETag>"abc"</ETag><Size>42</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>k3s/a%2F..%2Fb</Key><LastModified>2023-11-14T22:13:21.000Z</LastModified><ETag>"def"</ETag><Size>1</Size></Contents>
  <Contents><Key>k3s/with+space</Key><LastModified>bad</LastModified><ETag>x</ETag><Size>0</Size></Contents>
  <CommonPrefixes><Prefix>k3s/.metadata/</Prefix></CommonPrefixes>
</ListBucketResult>"#;
        let (objects, next) = parse_page(xml).unwrap();
        assert_eq!(next.as_deref(), Some("tok2"));
        assert_eq!(objects.len(), 3);
        assert_eq!(objects[0].key, "k3s/etcd-snapshot-n1-1700000000");
        assert_eq!(objects[0].etag, "abc");
        assert_eq!(objects[0].size, 42);
        assert_eq!(objects[0].last_modified.as_second(), 1_700_000_000);
        assert_eq!(objects[1].key, "k3s/a/../b");
        assert_eq!(objects[2].key, "k3s/with space");
        assert_eq!(objects[2].last_modified, jiff::Timestamp::UNIX_EPOCH);
    }

    #[test]
    fn last_page_and_empty_listing() {
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(parse_page(xml), Ok((vec![], None)));
        assert!(
            parse_page("<html>proxy error</html>").is_ok_and(|(v, n)| v.is_empty() && n.is_none())
                || parse_page("<html>").is_err()
        );
    }

    #[test]
    fn parses_parts() {
        let xml = r#"<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>
<Part><PartNumber>1</PartNumber><LastModified>2023-11-14T22:13:20.000Z</LastModified></Part>
<Part><PartNumber>2</PartNumber><LastModified>2023-11-14T22:13:25.000Z</LastModified></Part></ListPartsResult>"#;
        let (newest, next) = parse_parts(xml).unwrap();
        assert_eq!(newest.map(|t| t.as_second()), Some(1_700_000_005));
        assert_eq!(next.as_deref(), Some("2"));
        assert_eq!(parse_parts("<ListPartsResult/>").unwrap(), (None, None));
    }

    #[test]
    fn parses_open_uploads() {
        let xml = r#"<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated>
<NextKeyMarker>k2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
<Upload><Key>f/s-n-1</Key><UploadId>u1</UploadId><Initiated>2023-11-14T22:13:20.000Z</Initiated></Upload>
<Upload><Key>f/s-n-2</Key><UploadId>u2</UploadId><Initiated>x</Initiated></Upload></ListMultipartUploadsResult>"#;
        let (uploads, next) = parse_uploads(xml).unwrap();
        assert_eq!(uploads.len(), 2);
        assert_eq!(uploads[0].key, "f/s-n-1");
        assert_eq!(uploads[0].initiated.as_second(), 1_700_000_000);
        assert_eq!(next, Some(("k2".into(), "u2".into())));
        assert_eq!(parse_uploads("<ListMultipartUploadsResult/>").map(|(u, n)| (u.len(), n)), Ok((0, None)));
    }
}
