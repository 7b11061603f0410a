//! Content addressing: the sha256 of what passes through a writer, descriptors of blobs, and the
//! canonical JSON encoding that makes a blob's digest depend only on its content.

use std::collections::BTreeMap;
use std::io::{self, Write};

use oci_spec::image::{Descriptor, DescriptorBuilder, Digest, MediaType, Sha256Digest};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Passes bytes on to `inner` and keeps the sha256 and count of those that were written.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    /// The inner writer, the lowercase hex sha256 of everything written and its length.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` as an OCI digest.
pub fn sha256_digest(hex: &str) -> Result<Digest> {
    let digest: Sha256Digest = hex.parse().map_err(Error::spec("digest"))?;
    Ok(digest.into())
}

/// A descriptor of a blob with the given media type, hex sha256 and size.
pub fn descriptor(media_type: MediaType, hex: &str, size: u64) -> Result<DescriptorBuilder> {
    Ok(DescriptorBuilder::default().media_type(media_type).digest(sha256_digest(hex)?).size(size))
}

/// Builds a descriptor, naming what it describes in the error.
pub fn build_descriptor(builder: DescriptorBuilder, what: &'static str) -> Result<Descriptor> {
    builder.build().map_err(Error::spec(what))
}

/// Compact JSON with the keys of every object sorted, whatever order the value's maps iterate in
/// (oci-spec keeps labels and annotations in `HashMap`s, whose order changes from run to run).
pub fn canonical_json<T: serde::Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|source| Error::Json { what, source })?;
    serde_json::to_vec(&sorted(value)).map_err(|source| Error::Json { what, source })
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let entries: BTreeMap<String, Value> = map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, hex, n) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(n, 11);
        assert_eq!(hex, sha256_hex(b"hello world"));
        assert_eq!(hex, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    }

    #[test]
    fn descriptor_carries_media_type_digest_and_size() {
        let hex = sha256_hex(b"{}");
        let d = build_descriptor(descriptor(MediaType::ImageConfig, &hex, 2).unwrap(), "config").unwrap();
        let json: Value = serde_json::from_slice(&canonical_json(&d, "descriptor").unwrap()).unwrap();
        assert_eq!(json["mediaType"], "application/vnd.oci.image.config.v1+json");
        assert_eq!(json["digest"], format!("sha256:{hex}"));
        assert_eq!(json["size"], 2);
    }

    #[test]
    fn digest_rejects_non_hex() {
        assert!(sha256_digest("not-a-digest").is_err());
        assert!(sha256_digest(&"A".repeat(64)).is_err(), "uppercase is not a valid sha256 digest");
    }

    #[test]
    fn canonical_json_sorts_nested_keys() {
        let mut m = std::collections::HashMap::new();
        for k in ["zeta", "alpha", "mid", "beta", "omega"] {
            m.insert(k.to_string(), serde_json::json!({"y": 1, "b": [ {"d": 1, "c": 2} ]}));
        }
        let out = String::from_utf8(canonical_json(&m, "test").unwrap()).unwrap();
        assert!(out.starts_with(r#"{"alpha":{"b":[{"c":2,"d":1}],"y":1},"beta""#), "{out}");
        assert!(out.ends_with(r#""zeta":{"b":[{"c":2,"d":1}],"y":1}}"#), "{out}");
    }
}
