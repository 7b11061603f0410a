//! Fail-closed listings for replicas. object_store reads a listing page leniently: an S3
//! answer that is a proxy's HTML page sent with `200 OK` deserializes as a page with no
//! objects, and the replica looks empty (seen in tests/snapshots/replicas.rs). Every replica
//! client's requests go through [`ListingGuard`], which checks each listing answer before
//! object_store reads it: a whole XML document whose root is the provider's listing element.
//! Anything else (HTML, a page cut short, another document) fails the listing.

use async_trait::async_trait;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpResponseBody, HttpService,
    ReqwestConnector,
};

/// Gives each replica client the guarded HTTP client.
#[derive(Debug, Default)]
pub struct GuardedConnector;

impl HttpConnector for GuardedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(ListingGuard { inner }))
    }
}

/// Checks listing answers; everything else passes untouched.
#[derive(Debug)]
struct ListingGuard {
    inner: HttpClient,
}

/// The root element a listing answer must have, from the request: S3's and GCS's XML
/// ListObjectsV2, Azure's List Blobs. None for every other request.
fn listing_root(req: &HttpRequest) -> Option<&'static str> {
    if req.method() != http::Method::GET {
        return None;
    }
    let query = req.uri().query().unwrap_or_default();
    let has = |pair: &str| query.split('&').any(|p| p == pair);
    if has("list-type=2") {
        Some("ListBucketResult")
    } else if has("comp=list") {
        Some("EnumerationResults")
    } else {
        None
    }
}

#[async_trait]
impl HttpService for ListingGuard {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let root = listing_root(&req);
        let response = self.inner.execute(req).await?;
        let Some(root) = root.filter(|_| response.status().is_success()) else { return Ok(response) };
        let (parts, body) = response.into_parts();
        let bytes = body.bytes().await?;
        check_listing(&bytes, root).map_err(|message| HttpError::new(HttpErrorKind::Decode, Refused(message)))?;
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::from(bytes)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("refused listing answer: {0}")]
struct Refused(String);

/// Whether `body` is one whole XML document whose root element is `root`.
pub fn check_listing(body: &[u8], root: &str) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8 text".to_string())?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut seen_root = false;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) => {
                if depth == 0 {
                    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    if seen_root || name != root {
                        return Err(format!("a <{name}> document, not <{root}> (a proxy in the way?)"));
                    }
                    seen_root = true;
                }
                depth += 1;
            }
            Ok(quick_xml::events::Event::Empty(e)) if depth == 0 => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if seen_root || name != root {
                    return Err(format!("a <{name}/> document, not <{root}>"));
                }
                seen_root = true;
            }
            Ok(quick_xml::events::Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(quick_xml::events::Event::Text(t)) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err("text outside the document (not XML?)".into());
            }
            Ok(quick_xml::events::Event::Eof) => break,
            Err(e) => return Err(format!("unreadable XML: {e}")),
            Ok(_) => {}
        }
    }
    match (seen_root, depth) {
        (true, 0) => Ok(()),
        (false, _) => Err(format!("no <{root}> document (empty or not XML)")),
        (true, _) => Err(format!("the <{root}> document ends early (cut short?)")),
    }
}

#[cfg(test)]
mod tests {
    use super::check_listing;

    #[test]
    fn only_whole_listing_documents_pass() {
        let whole = r#"<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="x"><Blobs><Blob><Name>a</Name></Blob></Blobs><NextMarker /></EnumerationResults>"#;
        assert_eq!(check_listing(whole.as_bytes(), "EnumerationResults"), Ok(()));
        assert!(check_listing(whole.as_bytes(), "ListBucketResult").is_err());
        for cut in [10, 50, whole.len() / 2, whole.len() - 1] {
            assert!(check_listing(&whole.as_bytes()[..cut], "EnumerationResults").is_err(), "cut at {cut}");
        }
        assert!(check_listing(b"<ListBucketResult/>", "ListBucketResult").is_ok());
        for bad in ["", "Service unavailable", "<html><body>502</body></html>", "<Error><Code>x</Code></Error>"] {
            assert!(check_listing(bad.as_bytes(), "ListBucketResult").is_err(), "{bad:?} accepted");
        }
    }
}
