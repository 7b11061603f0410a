//! ListObjectsV2, ListMultipartUploads, ListParts and AbortMultipartUpload, issued and parsed
//! here rather than through object_store: object_store parses every key of a page into its own
//! path type and fails the whole listing on one key it does not accept (`a//b`, `x/../y`), and
//! has no call for open uploads. A bucket may hold anything; one hostile key must cost a warning
//! for that key, not the listing.
//!
//! Every answer is validated before it counts: the root element is the one asked for, the
//! fields S3 always sends are there (`IsTruncated`, each object's key, size, ETag and time),
//! a truncated page carries the token of the next one and that token moves on, and `KeyCount`,
//! when present, matches what the page holds. A proxy's error page or a page cut short is then an
//! error (retried by [`request::send`]), never an empty bucket: an empty listing makes the
//! leader delete resources and the catch-up re-upload snapshots.

use super::config::S3Config;
use super::request::{self, Call};
use crate::store::StoreError;
use object_store::aws::AwsCredential;
use serde::Deserialize;

pub use super::request::describe_reqwest;

/// One object from a listing, with its key exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: jiff::Timestamp,
}

/// The local name of the document's root element, if it has one.
fn root_element(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            Ok(quick_xml::events::Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Parses `xml` as the document `root`, refusing any other document.
fn parse_document<'de, T: Deserialize<'de>>(xml: &'de str, root: &str) -> Result<T, String> {
    match root_element(xml) {
        Some(found) if found == root => {}
        Some(found) => {
            return Err(format!("S3 answered with a <{found}> document, not <{root}> (a proxy in the way?)"));
        }
        None => {
            let start: String = xml.chars().take(60).collect();
            return Err(format!("S3 answered with something that is not XML, not <{root}>: {start:?}"));
        }
    }
    quick_xml::de::from_str(xml).map_err(|e| format!("unreadable <{root}> answer: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<serde::de::IgnoredAny>,
    is_truncated: bool,
    #[serde(default)]
    key_count: Option<usize>,
    #[serde(default)]
    next_continuation_token: Option<String>,
    #[serde(default)]
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    size: u64,
    #[serde(rename = "ETag")]
    e_tag: String,
    last_modified: String,
}

/// Parses and checks one ListObjectsV2 page of `bucket`: the objects, and the token of the next
/// page.
pub fn parse_page(xml: &str, bucket: &str) -> Result<(Vec<ListedObject>, Option<String>), String> {
    let page: ListBucketResult = parse_document(xml, "ListBucketResult")?;
    if let Some(name) = page.name.as_deref().filter(|n| *n != bucket) {
        return Err(format!("S3 answered with a listing of bucket {name:?}, not {bucket:?}"));
    }
    // S3 counts the common prefixes in KeyCount; some servers count only the keys.
    if let Some(count) = page.key_count
        && count != page.contents.len() + page.common_prefixes.len()
        && count != page.contents.len()
    {
        return Err(format!(
            "S3 listing page says KeyCount {count} but holds {} keys and {} prefixes (cut short?)",
            page.contents.len(),
            page.common_prefixes.len()
        ));
    }
    let next = match (page.is_truncated, page.next_continuation_token) {
        (false, _) => None,
        (true, Some(t)) if !t.is_empty() => Some(t),
        (true, _) => return Err("S3 listing page is truncated but has no NextContinuationToken".into()),
    };
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
    Ok((objects, next))
}

/// A paginated call's next marker must move on: the same one twice would loop forever.
fn advance<M: PartialEq + std::fmt::Debug>(previous: &Option<M>, next: M, what: &'static str) -> Result<M, StoreError> {
    if previous.as_ref() == Some(&next) {
        return Err(StoreError::S3 {
            op: what,
            target: String::new(),
            problem: None,
            message: format!("S3 returned the same page marker {next:?} twice"),
        });
    }
    Ok(next)
}

pub(super) fn bucket_url(config: &S3Config) -> Result<url::Url, StoreError> {
    url::Url::parse(&config.bucket_url()).map_err(|e| StoreError::Client(format!("S3 URL: {e}")))
}

/// Lists the objects directly under `prefix` (which ends with `/`, or is empty for the bucket
/// root): delimiter `/`, so nothing from sub-folders or sibling folders sharing a prefix. Returns
/// the objects and how many LIST requests it took (retries included).
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
        let mut url = bucket_url(config)?;
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
        let call = Call { op: "list", method: reqwest::Method::GET, url: url.as_str(), done_if_code: None, body: &[] };
        let ((page, next), attempts) =
            request::send(http, config, credential, &call, |xml| parse_page(xml, &config.bucket)).await?;
        requests += attempts as usize;
        objects.extend(page);
        match next {
            Some(t) => token = Some(advance(&token, t, "list")?),
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
    initiated: String,
}

/// Where the next ListMultipartUploads page starts: (key marker, upload id marker).
pub type UploadMarkers = (String, String);

/// Parses and checks one ListMultipartUploads page: uploads and the markers of the next page.
pub fn parse_uploads(xml: &str) -> Result<(Vec<OpenUpload>, Option<UploadMarkers>), String> {
    let page: ListMultipartUploadsResult = parse_document(xml, "ListMultipartUploadsResult")?;
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
        (false, _, _) => None,
        (true, Some(k), Some(u)) => Some((k, u)),
        (true, _, _) => return Err("S3 uploads page is truncated but has no next markers".into()),
    };
    Ok((uploads, next))
}

/// Open multipart uploads under `prefix`.
pub async fn list_uploads(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    prefix: &str,
) -> Result<Vec<OpenUpload>, StoreError> {
    let mut uploads = Vec::new();
    let mut markers: Option<UploadMarkers> = None;
    loop {
        let mut url = bucket_url(config)?;
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
        let call =
            Call { op: "list uploads", method: reqwest::Method::GET, url: url.as_str(), done_if_code: None, body: &[] };
        let ((page, next), _) = request::send(http, config, credential, &call, parse_uploads).await?;
        uploads.extend(page);
        match next {
            Some(m) => markers = Some(advance(&markers, m, "list uploads")?),
            None => return Ok(uploads),
        }
    }
}

/// The URL of one upload of `upload.key`, with `uploadId` set.
fn upload_url(config: &S3Config, upload: &OpenUpload) -> Result<url::Url, StoreError> {
    let mut url = bucket_url(config)?;
    {
        let mut segments =
            url.path_segments_mut().map_err(|_| StoreError::Client("S3 URL cannot have a path".into()))?;
        segments.pop_if_empty();
        segments.extend(upload.key.split('/'));
    }
    url.query_pairs_mut().append_pair("uploadId", &upload.upload_id);
    Ok(url)
}

/// Aborts one multipart upload (an upload already gone counts as aborted: a retry after a lost
/// answer finds it so).
pub async fn abort_upload(
    http: &reqwest::Client,
    config: &S3Config,
    credential: &AwsCredential,
    upload: &OpenUpload,
) -> Result<(), StoreError> {
    let url = upload_url(config, upload)?;
    let call = Call {
        op: "abort upload",
        method: reqwest::Method::DELETE,
        url: url.as_str(),
        done_if_code: Some("NoSuchUpload"),
        body: &[],
    };
    request::send(http, config, credential, &call, |_| Ok(())).await.map(|_| ())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default)]
    part: Vec<Part>,
    is_truncated: bool,
    #[serde(default)]
    next_part_number_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Part {
    last_modified: String,
}

/// Parses and checks one ListParts page: the newest part's time and the marker of the next page.
pub fn parse_parts(xml: &str) -> Result<(Option<jiff::Timestamp>, Option<String>), String> {
    let page: ListPartsResult = parse_document(xml, "ListPartsResult")?;
    let newest = page.part.iter().filter_map(|p| p.last_modified.parse::<jiff::Timestamp>().ok()).max();
    let next = match (page.is_truncated, page.next_part_number_marker) {
        (false, _) => None,
        (true, Some(m)) => Some(m),
        (true, None) => return Err("S3 parts page is truncated but has no NextPartNumberMarker".into()),
    };
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
        let call =
            Call { op: "list parts", method: reqwest::Method::GET, url: url.as_str(), done_if_code: None, body: &[] };
        let ((page_newest, next), _) = request::send(http, config, credential, &call, parse_parts).await?;
        newest = newest.max(page_newest);
        match next {
            Some(m) => marker = Some(advance(&marker, m, "list parts")?),
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
    let mut url = bucket_url(config)?;
    url.query_pairs_mut().append_pair("list-type", "2").append_pair("max-keys", "1").append_pair("prefix", prefix);
    let call = Call { op: "check", method: reqwest::Method::GET, url: url.as_str(), done_if_code: None, body: &[] };
    request::send(http, config, credential, &call, |xml| parse_page(xml, &config.bucket).map(|_| ())).await.map(|_| ())
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
        let (objects, next) = parse_page(xml, "b").unwrap();
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
        assert_eq!(parse_page(xml, "b"), Ok((vec![], None)));
        let xml = r#"<?xml version="1.0"?><!-- s3 --><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>"#;
        assert_eq!(parse_page(xml, "b"), Ok((vec![], None)));
    }

    fn refused(xml: &str) -> String {
        match parse_page(xml, "b") {
            Ok(page) => panic!("accepted {xml:?} as {page:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_proxy_s_page_or_a_page_cut_short_is_never_an_empty_listing() {
        assert!(refused("<html><body>502 Bad Gateway</body></html>").contains("<html>"));
        assert!(refused("Service temporarily unavailable").contains("not XML"));
        assert!(refused("").contains("not XML"));
        assert!(refused("<Error><Code>SlowDown</Code></Error>").contains("<Error>"));
        // Cut in the middle of an element, and cut between two of them.
        let whole = "<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>1</Size><ETag>e</ETag><LastModified>2023-11-14T22:13:20Z</LastModified></Contents></ListBucketResult>";
        assert!(parse_page(whole, "b").is_ok());
        for cut in [40, 80, whole.len() - 20, whole.len() - 1] {
            refused(&whole[..cut]);
        }
    }

    #[test]
    fn the_fields_s3_always_sends_are_required() {
        refused("<ListBucketResult><Name>b</Name></ListBucketResult>");
        refused("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>");
        refused(
            "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken></NextContinuationToken></ListBucketResult>",
        );
        refused(
            "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Size>1</Size><ETag>e</ETag><LastModified>x</LastModified></Contents></ListBucketResult>",
        );
        refused(
            "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key><ETag>e</ETag><LastModified>x</LastModified></Contents></ListBucketResult>",
        );
        assert!(
            refused("<ListBucketResult><Name>other</Name><IsTruncated>false</IsTruncated></ListBucketResult>")
                .contains("other")
        );
        assert!(
            refused("<ListBucketResult><KeyCount>5</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>")
                .contains("KeyCount")
        );
    }

    #[test]
    fn a_page_marker_must_move_on() {
        assert!(advance(&None, "t1".to_string(), "list").is_ok());
        assert!(advance(&Some("t1".to_string()), "t2".to_string(), "list").is_ok());
        assert!(advance(&Some("t1".to_string()), "t1".to_string(), "list").is_err());
    }

    #[test]
    fn parses_parts() {
        let xml = r#"<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>
<Part><PartNumber>1</PartNumber><LastModified>2023-11-14T22:13:20.000Z</LastModified></Part>
<Part><PartNumber>2</PartNumber><LastModified>2023-11-14T22:13:25.000Z</LastModified></Part></ListPartsResult>"#;
        let (newest, next) = parse_parts(xml).unwrap();
        assert_eq!(newest.map(|t| t.as_second()), Some(1_700_000_005));
        assert_eq!(next.as_deref(), Some("2"));
        assert!(parse_parts("<ListPartsResult/>").is_err(), "IsTruncated is required");
        let last = "<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>";
        assert_eq!(parse_parts(last).unwrap(), (None, None));
        assert!(parse_parts("<ListPartsResult><IsTruncated>true</IsTruncated></ListPartsResult>").is_err());
        assert!(parse_parts("<html/>").is_err());
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
        let none = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>";
        assert_eq!(parse_uploads(none).map(|(u, n)| (u.len(), n)), Ok((0, None)));
        assert!(parse_uploads("<ListMultipartUploadsResult/>").is_err(), "IsTruncated is required");
        assert!(
            parse_uploads("<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>")
                .is_err()
        );
        assert!(parse_uploads("<html>nope</html>").is_err());
    }
}
