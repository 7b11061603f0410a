//! Writes a container image without a container daemon or a registry: a root file system
//! directory becomes one reproducible gzip layer, and that layer, its image config and manifest
//! go into an [OCI image layout] packed as a tar file (what `skopeo` calls `oci-archive:`).
//!
//! The same directory, settings and `SOURCE_DATE_EPOCH` give the same bytes and so the same
//! manifest digest: entries are sorted, every mtime is the epoch, owners are 0:0 except where a
//! [`PathOverride`] says otherwise, and JSON keys are sorted.
//!
//! [OCI image layout]: https://github.com/opencontainers/image-spec/blob/main/image-layout.md

mod blob;
mod error;
mod layer;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::Path;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, ImageIndex,
    ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder,
    RootFsBuilder,
};

pub use blob::{HashingWriter, canonical_json, sha256_hex};
pub use error::{Error, Result};
pub use layer::{LayerInfo, PathOverride, write_layer};

/// The annotation that names an image in an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The annotation `ctr image import` (containerd) names the imported image by.
pub const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// Version of the image layout this tool writes (`oci-layout`).
pub const IMAGE_LAYOUT_VERSION: &str = "1.0.0";

/// What the image says about itself and how it runs.
#[derive(Clone, Debug)]
pub struct ImageSettings {
    /// OCI architecture name (`amd64`, `arm64`).
    pub architecture: String,
    /// `org.opencontainers.image.version`.
    pub version: String,
    /// `org.opencontainers.image.revision`: the source commit.
    pub revision: String,
    pub title: String,
    pub description: String,
    pub source: String,
    pub licenses: String,
    /// The name in `index.json` (`etcdsnap:0.1.0`), also the default for `podman load`.
    pub ref_name: String,
    /// Seconds since 1970: every mtime in the layer and the `created` time.
    pub source_date_epoch: u64,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: String,
    pub env: Vec<String>,
    pub working_dir: String,
    /// Owners and modes that differ from 0:0 and the mode on disk.
    pub overrides: Vec<PathOverride>,
}

impl ImageSettings {
    /// etcdsnap's image: `etcdsnap agent` as user 65532, for the host's architecture,
    /// `/var/lib/etcdsnap` owned by that user and `/tmp` sticky and world-writable.
    pub fn etcdsnap(version: &str, revision: &str) -> Result<Self> {
        Ok(ImageSettings {
            architecture: oci_architecture(std::env::consts::ARCH)?.to_string(),
            version: version.to_string(),
            revision: revision.to_string(),
            title: "etcdsnap".to_string(),
            description: "Takes, stores, indexes, prunes, verifies and restores etcd snapshots of a Kubernetes \
                          control plane"
                .to_string(),
            source: "https://github.com/etcdsnap/etcdsnap".to_string(),
            licenses: "Apache-2.0".to_string(),
            ref_name: format!("etcdsnap:{version}"),
            source_date_epoch: 0,
            entrypoint: vec!["/usr/local/bin/etcdsnap".to_string()],
            cmd: vec!["agent".to_string()],
            user: "65532:65532".to_string(),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()],
            working_dir: "/".to_string(),
            overrides: vec![
                PathOverride::parse_owner("/var/lib/etcdsnap=65532:65532")?,
                PathOverride::parse_mode("/tmp=1777")?,
            ],
        })
    }

    fn created(&self) -> Result<String> {
        let secs = i64::try_from(self.source_date_epoch).map_err(|_| Error::InvalidEpoch(i64::MAX))?;
        let ts = jiff::Timestamp::from_second(secs).map_err(|_| Error::InvalidEpoch(secs))?;
        Ok(ts.to_string())
    }

    fn labels(&self) -> Result<HashMap<String, String>> {
        Ok(HashMap::from([
            ("org.opencontainers.image.title".to_string(), self.title.clone()),
            ("org.opencontainers.image.description".to_string(), self.description.clone()),
            ("org.opencontainers.image.version".to_string(), self.version.clone()),
            ("org.opencontainers.image.revision".to_string(), self.revision.clone()),
            ("org.opencontainers.image.source".to_string(), self.source.clone()),
            ("org.opencontainers.image.licenses".to_string(), self.licenses.clone()),
            ("org.opencontainers.image.created".to_string(), self.created()?),
        ]))
    }
}

/// The OCI (Go) name of a Rust target architecture (`std::env::consts::ARCH`).
pub fn oci_architecture(rust_arch: &str) -> Result<&'static str> {
    match rust_arch {
        "x86_64" | "amd64" => Ok("amd64"),
        "aarch64" | "arm64" => Ok("arm64"),
        other => Err(Error::UnsupportedArchitecture(other.to_string())),
    }
}

/// The name containerd gives an image: `etcdsnap:0.1.0` is `docker.io/library/etcdsnap:0.1.0`,
/// `ghcr.io/x/y:1` stays as it is, so that a pod's `image:` finds it after `ctr image import`.
pub fn containerd_name(ref_name: &str) -> String {
    match ref_name.split_once('/') {
        None => format!("docker.io/library/{ref_name}"),
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => ref_name.to_string(),
        Some(_) => format!("docker.io/{ref_name}"),
    }
}

/// The image config for one layer whose uncompressed tar has sha256 `diff_id` (hex).
pub fn image_config(settings: &ImageSettings, diff_id: &str) -> Result<ImageConfiguration> {
    let config = ConfigBuilder::default()
        .user(settings.user.clone())
        .env(settings.env.clone())
        .entrypoint(settings.entrypoint.clone())
        .cmd(settings.cmd.clone())
        .working_dir(settings.working_dir.clone())
        .labels(settings.labels()?)
        .build()
        .map_err(Error::spec("config"))?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![format!("sha256:{diff_id}")])
        .build()
        .map_err(Error::spec("rootfs"))?;
    let history = HistoryBuilder::default()
        .created(settings.created()?)
        .created_by(format!("oci-image {} from a root file system directory", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Error::spec("history"))?;
    ImageConfigurationBuilder::default()
        .created(settings.created()?)
        .architecture(Arch::from(settings.architecture.as_str()))
        .os(Os::Linux)
        .config(config)
        .rootfs(rootfs)
        .history(vec![history])
        .build()
        .map_err(Error::spec("config"))
}

/// The manifest of one config and one gzip layer.
pub fn image_manifest(config: Descriptor, layer: Descriptor) -> Result<ImageManifest> {
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(vec![layer])
        .build()
        .map_err(Error::spec("manifest"))
}

/// `index.json`: the one manifest, named `ref_name`, for `settings`' platform.
pub fn image_index(settings: &ImageSettings, manifest: &[u8]) -> Result<ImageIndex> {
    let platform = PlatformBuilder::default()
        .architecture(Arch::from(settings.architecture.as_str()))
        .os(Os::Linux)
        .build()
        .map_err(Error::spec("platform"))?;
    let descriptor = blob::descriptor(MediaType::ImageManifest, &sha256_hex(manifest), manifest.len() as u64)?
        .platform(platform)
        .annotations(HashMap::from([
            (REF_NAME_ANNOTATION.to_string(), settings.ref_name.clone()),
            (CONTAINERD_NAME_ANNOTATION.to_string(), containerd_name(&settings.ref_name)),
        ]));
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![blob::build_descriptor(descriptor, "index entry")?])
        .build()
        .map_err(Error::spec("index"))
}

/// What [`build_image`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// `sha256:<hex>` of the manifest: the image's identity.
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer: LayerInfo,
    pub ref_name: String,
}

/// Writes `rootfs` as a single-layer image to the OCI archive `output` (a tar of an OCI image
/// layout). The layer is streamed to a temporary file beside `output`; `output` appears only
/// once complete.
pub fn build_image(rootfs: &Path, output: &Path, settings: &ImageSettings) -> Result<BuiltImage> {
    let out_dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };

    let layer_file = tempfile::tempfile_in(out_dir).map_err(Error::io(out_dir))?;
    let (layer_file, layer) =
        write_layer(rootfs, BufWriter::new(layer_file), settings.source_date_epoch, &settings.overrides)?;
    let mut layer_file =
        layer_file.into_inner().map_err(|e| Error::Io { path: output.into(), source: e.into_error() })?;
    layer_file.rewind().map_err(Error::io(output))?;

    let config = canonical_json(&image_config(settings, &layer.diff_id)?, "config")?;
    let config_hex = sha256_hex(&config);
    let config_desc = blob::build_descriptor(
        blob::descriptor(MediaType::ImageConfig, &config_hex, config.len() as u64)?,
        "config descriptor",
    )?;
    let layer_desc =
        blob::build_descriptor(blob::descriptor(MediaType::ImageLayerGzip, &layer.digest, layer.size)?, "layer")?;
    let manifest = canonical_json(&image_manifest(config_desc, layer_desc)?, "manifest")?;
    let manifest_hex = sha256_hex(&manifest);
    let index = canonical_json(&image_index(settings, &manifest)?, "index")?;
    let oci_layout = canonical_json(
        &OciLayoutBuilder::default()
            .image_layout_version(IMAGE_LAYOUT_VERSION)
            .build()
            .map_err(Error::spec("layout"))?,
        "oci-layout",
    )?;

    let tmp = tempfile::NamedTempFile::new_in(out_dir).map_err(Error::io(out_dir))?;
    {
        let mut archive = Archive {
            tar: tar::Builder::new(BufWriter::new(tmp.as_file())),
            mtime: settings.source_date_epoch,
            output,
        };
        archive.dir("blobs/")?;
        archive.dir("blobs/sha256/")?;
        // Blobs in digest order, like every other entry: sorted by name.
        let mut blobs: Vec<(&str, Blob)> = vec![
            (&config_hex, Blob::Bytes(&config)),
            (&layer.digest, Blob::File(&mut layer_file, layer.size)),
            (&manifest_hex, Blob::Bytes(&manifest)),
        ];
        blobs.sort_by(|a, b| a.0.cmp(b.0));
        for (hex, data) in blobs {
            archive.blob(hex, data)?;
        }
        archive.file("index.json", &index)?;
        archive.file("oci-layout", &oci_layout)?;
        let mut buffered = archive.tar.into_inner().map_err(Error::io(output))?;
        buffered.flush().map_err(Error::io(output))?;
    }
    tmp.as_file().sync_all().map_err(Error::io(output))?;
    tmp.persist(output).map_err(|e| Error::Io { path: output.into(), source: e.error })?;

    Ok(BuiltImage {
        manifest_digest: format!("sha256:{manifest_hex}"),
        config_digest: format!("sha256:{config_hex}"),
        layer,
        ref_name: settings.ref_name.clone(),
    })
}

enum Blob<'a> {
    Bytes(&'a [u8]),
    File(&'a mut File, u64),
}

struct Archive<'a, W: Write> {
    tar: tar::Builder<W>,
    mtime: u64,
    output: &'a Path,
}

impl<W: Write> Archive<'_, W> {
    fn header(&self, entry_type: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(entry_type);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
        self.tar.append_data(&mut h, path, io::empty()).map_err(Error::io(self.output))
    }

    fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let mut h = self.header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        self.tar.append_data(&mut h, path, bytes).map_err(Error::io(self.output))
    }

    fn blob(&mut self, hex: &str, blob: Blob<'_>) -> Result<()> {
        let path = format!("blobs/sha256/{hex}");
        match blob {
            Blob::Bytes(bytes) => self.file(&path, bytes),
            Blob::File(file, size) => {
                let mut h = self.header(tar::EntryType::Regular, 0o644, size);
                self.tar.append_data(&mut h, &path, io::Read::take(file, size)).map_err(Error::io(self.output))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn settings() -> ImageSettings {
        let mut s = ImageSettings::etcdsnap("1.2.3", "abc123").unwrap();
        s.architecture = "amd64".to_string();
        s.source_date_epoch = 1_700_000_000;
        s
    }

    #[test]
    fn architecture_names() {
        assert_eq!(oci_architecture("x86_64").unwrap(), "amd64");
        assert_eq!(oci_architecture("aarch64").unwrap(), "arm64");
        assert!(oci_architecture("mips").is_err());
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert!(oci_architecture(std::env::consts::ARCH).is_ok());
        }
    }

    #[test]
    fn containerd_names_are_normalised() {
        assert_eq!(containerd_name("etcdsnap:0.1.0"), "docker.io/library/etcdsnap:0.1.0");
        assert_eq!(containerd_name("etcdsnap/etcdsnap:1"), "docker.io/etcdsnap/etcdsnap:1");
        assert_eq!(containerd_name("ghcr.io/etcdsnap/etcdsnap:1"), "ghcr.io/etcdsnap/etcdsnap:1");
        assert_eq!(containerd_name("localhost/etcdsnap:1"), "localhost/etcdsnap:1");
        assert_eq!(containerd_name("reg:5000/etcdsnap:1"), "reg:5000/etcdsnap:1");
    }

    #[test]
    fn config_json_has_the_runtime_fields_and_labels() {
        let json: Value =
            serde_json::from_slice(&canonical_json(&image_config(&settings(), &"a".repeat(64)).unwrap(), "t").unwrap())
                .unwrap();
        assert_eq!(json["architecture"], "amd64");
        assert_eq!(json["os"], "linux");
        assert_eq!(json["created"], "2023-11-14T22:13:20Z");
        let c = &json["config"];
        assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/etcdsnap"]));
        assert_eq!(c["Cmd"], serde_json::json!(["agent"]));
        assert_eq!(c["User"], "65532:65532");
        assert_eq!(c["Env"], serde_json::json!(["PATH=/usr/local/bin:/usr/bin:/bin"]));
        assert_eq!(c["WorkingDir"], "/");
        let l = &c["Labels"];
        assert_eq!(l["org.opencontainers.image.title"], "etcdsnap");
        assert_eq!(l["org.opencontainers.image.version"], "1.2.3");
        assert_eq!(l["org.opencontainers.image.revision"], "abc123");
        assert_eq!(l["org.opencontainers.image.source"], "https://github.com/etcdsnap/etcdsnap");
        assert_eq!(l["org.opencontainers.image.licenses"], "Apache-2.0");
        assert!(l["org.opencontainers.image.description"].as_str().unwrap().contains("etcd snapshots"));
        assert_eq!(json["rootfs"]["type"], "layers");
        assert_eq!(json["rootfs"]["diff_ids"], serde_json::json!([format!("sha256:{}", "a".repeat(64))]));
    }

    #[test]
    fn index_names_the_manifest() {
        let index: Value =
            serde_json::from_slice(&canonical_json(&image_index(&settings(), b"{}").unwrap(), "t").unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let m = &index["manifests"][0];
        assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(m["digest"], format!("sha256:{}", sha256_hex(b"{}")));
        assert_eq!(m["size"], 2);
        assert_eq!(m["annotations"][REF_NAME_ANNOTATION], "etcdsnap:1.2.3");
        assert_eq!(m["annotations"][CONTAINERD_NAME_ANNOTATION], "docker.io/library/etcdsnap:1.2.3");
        assert_eq!(m["platform"]["architecture"], "amd64");
        assert_eq!(m["platform"]["os"], "linux");
    }

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["tmp", "var/lib/etcdsnap", "usr/local/bin"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("usr/local/bin/etcdsnap"), b"#!/bin/true\n").unwrap();
        dir
    }

    #[test]
    fn building_twice_gives_the_same_archive_and_manifest_digest() {
        let root = rootfs();
        let out = tempfile::tempdir().unwrap();
        let (a, b) = (out.path().join("a.tar"), out.path().join("b.tar"));
        let first = build_image(root.path(), &a, &settings()).unwrap();
        let second = build_image(root.path(), &b, &settings()).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 2, "no temporary files left behind");

        let mut other = settings();
        other.source_date_epoch += 1;
        let third = build_image(root.path(), &out.path().join("c.tar"), &other).unwrap();
        assert_ne!(first.manifest_digest, third.manifest_digest, "the epoch is part of the image");
    }

    #[test]
    fn archive_holds_the_layout_and_content_addressed_blobs() {
        let root = rootfs();
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("img.tar");
        let built = build_image(root.path(), &path, &settings()).unwrap();
        let mut archive = tar::Archive::new(File::open(&path).unwrap());
        let mut files = std::collections::BTreeMap::new();
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            names.push(name.clone());
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.insert(name, bytes);
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (name, bytes) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256_hex(bytes), hex, "{name}");
            }
        }
        let manifest: Value = serde_json::from_slice(
            &files[&format!("blobs/sha256/{}", built.manifest_digest.trim_start_matches("sha256:"))],
        )
        .unwrap();
        assert_eq!(manifest["config"]["digest"], built.config_digest);
        assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(manifest["layers"][0]["size"], built.layer.size);
    }
}
