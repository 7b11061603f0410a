//! Builds the real image with scripts/build-image.sh (a debug etcdsnap, the pinned etcdutl, the
//! replay's etcdsnap-replay) and reads it the way a container runtime would: layout, content
//! addresses, config, layer, and then runs the binaries inside the unpacked layer with `chroot`
//! as the image's user.
//!
//! Needs `target/debug/etcdsnap` (built by `cargo test --workspace`, else built here) and
//! `target/testbins/etcdutl` and `etcdsnap-replay` (`make testbins`), plus apt-get/dpkg-deb for
//! the Debian packages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use oci_image::{HashingWriter, sha256_hex};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// target/debug, from where this test binary runs (target/debug/deps/image-<hash>).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).expect("the test binary lives in <target>/<profile>/deps").to_path_buf()
}

fn etcdsnap_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ETCDSNAP_BIN") {
        return PathBuf::from(bin);
    }
    let bin = profile_dir().join("etcdsnap");
    if !bin.exists() {
        // `cargo test --workspace` has built it already; `cargo test -p oci-image` alone has not.
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "etcdsnap", "--locked"])
            .current_dir(workspace())
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p etcdsnap failed: run `cargo build -p etcdsnap` first");
    }
    assert!(bin.exists(), "{} is missing: run `cargo build -p etcdsnap` first", bin.display());
    bin
}

/// A value of testbins/versions.env.
fn pinned(key: &str) -> String {
    let env = fs::read_to_string(workspace().join("testbins/versions.env")).unwrap();
    let line = env.lines().find_map(|l| l.strip_prefix(key).and_then(|l| l.strip_prefix('='))).unwrap();
    line.trim().to_string()
}

/// The etcdutl the image ships (`IMAGE_ETCDUTL_VERSION` in testbins/versions.env).
fn image_etcdutl_version() -> String {
    pinned("IMAGE_ETCDUTL_VERSION")
}

fn testbin(name: &str) -> PathBuf {
    let dir = std::env::var_os("TESTBINS_DIR").map_or_else(|| workspace().join("target/testbins"), PathBuf::from);
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: run `make testbins` first", bin.display());
    bin
}

fn etcdutl_bin() -> PathBuf {
    testbin(&format!("etcdutl-{}", image_etcdutl_version()))
}

/// The replay's direct engine, built at the default etcd's version.
fn replay_bin() -> PathBuf {
    testbin(&format!("etcdsnap-replay-{}", pinned("ETCD_VERSION")))
}

struct Built {
    archive: PathBuf,
    version: String,
}

/// The image, built once per test process into a work directory under target/tmp (its debs/
/// cache survives between runs; the root file system and archive are rebuilt every time).
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let etcdsnap = etcdsnap_bin();
        let version_out = Command::new(&etcdsnap).arg("--version").output().unwrap();
        let version =
            String::from_utf8(version_out.stdout).unwrap().trim().strip_prefix("etcdsnap ").unwrap().to_string();
        let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci-image-test");
        let out = Command::new("bash")
            .arg(workspace().join("scripts/build-image.sh"))
            .env("ETCDSNAP_BIN", &etcdsnap)
            .env("ETCDUTL_BIN", etcdutl_bin())
            .env("REPLAY_BIN", replay_bin())
            .env("OCI_IMAGE_BIN", env!("CARGO_BIN_EXE_oci-image"))
            .env("IMAGE_WORK", &work)
            .env_remove("IMAGE_OUT")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "build-image.sh failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let archive = work.join(format!("etcdsnap-{version}.oci.tar"));
        let last = stdout.lines().last().unwrap_or_default();
        assert!(last.starts_with(&format!("image: {}", archive.display())), "{last}");
        assert!(last.contains("skopeo copy oci-archive:") && last.contains("podman load -i"), "{last}");
        Built { archive, version }
    })
}

/// Every file of the OCI archive by name.
fn archive_files(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(File::open(path).unwrap());
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            files.insert(entry.path().unwrap().display().to_string(), bytes);
        }
    }
    files
}

fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = files.get(&format!("blobs/sha256/{hex}")).unwrap_or_else(|| panic!("no blob {digest}"));
    assert_eq!(sha256_hex(bytes), hex, "blob {digest} does not hash to its name");
    bytes
}

struct Image {
    files: BTreeMap<String, Vec<u8>>,
    config: ImageConfiguration,
    layer_digest: String,
}

fn read_image(built: &Built) -> Image {
    let files = archive_files(&built.archive);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&files["oci-layout"]).unwrap()["imageLayoutVersion"],
        "1.0.0"
    );

    let index = ImageIndex::from_reader(&files["index.json"][..]).unwrap();
    assert_eq!(index.manifests().len(), 1);
    let entry = &index.manifests()[0];
    assert_eq!(entry.media_type(), &MediaType::ImageManifest);
    let annotations = entry.annotations().as_ref().unwrap();
    assert_eq!(annotations["org.opencontainers.image.ref.name"], format!("etcdsnap:{}", built.version));
    let manifest_bytes = blob(&files, entry.digest().as_ref());
    assert_eq!(entry.size(), manifest_bytes.len() as u64);

    let manifest = ImageManifest::from_reader(manifest_bytes).unwrap();
    assert_eq!(manifest.schema_version(), 2);
    assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
    let config_bytes = blob(&files, manifest.config().digest().as_ref());
    assert_eq!(manifest.config().size(), config_bytes.len() as u64);
    let config = ImageConfiguration::from_reader(config_bytes).unwrap();

    assert_eq!(manifest.layers().len(), 1);
    let layer = &manifest.layers()[0];
    assert_eq!(layer.media_type(), &MediaType::ImageLayerGzip);
    assert_eq!(layer.media_type().to_string(), "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(layer.size(), blob(&files, layer.digest().as_ref()).len() as u64);
    Image { layer_digest: layer.digest().to_string(), files, config }
}

fn layer_bytes(image: &Image) -> &[u8] {
    blob(&image.files, &image.layer_digest)
}

/// Runs `args` inside `root` as the image's user: chroot --userspec as root, else in a user
/// namespace (where only the caller's own uid is mapped, as root).
fn run_in(root: &Path, args: &[&str]) -> String {
    let mut cmd = if is_root() {
        let mut c = Command::new("chroot");
        c.arg("--userspec=65532:65532");
        c
    } else {
        let mut c = Command::new("unshare");
        c.args(["-r", "chroot"]);
        c
    };
    let out = cmd.arg(root).args(args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} in the image failed ({}): {text}", out.status);
    text
}

fn is_root() -> bool {
    // The effective uid, without a libc dependency: /proc/self/status "Uid: real effective ...".
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap()
}

#[test]
fn image_is_a_valid_layout_whose_binaries_run_as_the_image_user() {
    let built = built();
    let image = read_image(built);

    let config = image.config.config().as_ref().unwrap();
    assert_eq!(config.entrypoint().as_deref(), Some(&["/usr/local/bin/etcdsnap".to_string()][..]));
    assert_eq!(config.cmd().as_deref(), Some(&["agent".to_string()][..]));
    assert_eq!(config.user().as_deref(), Some("65532:65532"));
    assert_eq!(config.working_dir().as_deref(), Some("/"));
    assert_eq!(config.env().as_deref(), Some(&["PATH=/usr/local/bin:/usr/bin:/bin".to_string()][..]));
    let labels = config.labels().as_ref().unwrap();
    assert_eq!(labels["org.opencontainers.image.title"], "etcdsnap");
    assert_eq!(labels["org.opencontainers.image.version"], built.version);
    assert_eq!(labels["org.opencontainers.image.source"], "https://github.com/etcdsnap/etcdsnap");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(!labels["org.opencontainers.image.description"].is_empty());
    let head = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(workspace()).output().unwrap();
    let head = if head.status.success() { String::from_utf8(head.stdout).unwrap() } else { "unknown".into() };
    assert_eq!(labels["org.opencontainers.image.revision"], head.trim());
    let expected_arch = oci_image::oci_architecture(std::env::consts::ARCH).unwrap();
    assert_eq!(image.config.architecture().to_string(), expected_arch);
    assert_eq!(image.config.os().to_string(), "linux");

    // diff_id: the sha256 of the layer as an uncompressed tar.
    let mut hashing = HashingWriter::new(io::sink());
    io::copy(&mut flate2::read::GzDecoder::new(layer_bytes(&image)), &mut hashing).unwrap();
    let (_, diff_id, _) = hashing.finish();
    assert_eq!(image.config.rootfs().diff_ids(), &[format!("sha256:{diff_id}")]);

    // Unpack as a runtime would (owners kept when root) and run both binaries as 65532.
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(layer_bytes(&image)));
    layer.set_preserve_permissions(true);
    layer.set_preserve_ownerships(is_root());
    layer.unpack(root.path()).unwrap();
    let version = run_in(root.path(), &["/usr/local/bin/etcdsnap", "--version"]);
    assert!(version.starts_with("etcdsnap "), "{version}");
    let etcdutl = run_in(root.path(), &["/usr/local/bin/etcdutl", "version"]);
    assert!(etcdutl.contains("etcdutl version"), "{etcdutl}");
    // Drills hash with it: only 3.7 and later read snapshots holding leased keys.
    let shipped = image_etcdutl_version();
    assert!(etcdutl.contains(&format!("etcdutl version: {}", shipped.trim_start_matches('v'))), "{etcdutl}");
    assert!(shipped.starts_with("v3.") && shipped[3..].split('.').next().unwrap().parse::<u32>().unwrap() >= 7);
    // Point-in-time restores find it beside etcdutl.
    let replay = run_in(root.path(), &["/usr/local/bin/etcdsnap-replay", "-h"]);
    assert!(replay.contains("-base-revision"), "{replay}");
}

#[test]
fn layer_paths_stay_inside_and_special_directories_have_their_owner_and_mode() {
    let image = read_image(built());
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(layer_bytes(&image)));
    let mut seen = BTreeMap::new();
    let mut count = 0;
    for entry in layer.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_))),
            "{} is absolute or has `.`/`..`",
            path.display()
        );
        let h = entry.header();
        count += 1;
        seen.insert(
            path.display().to_string(),
            (h.entry_type(), h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
        );
    }
    let get = |p: &str| *seen.get(p).unwrap_or_else(|| panic!("{p} is not in the layer"));

    let (kind, mode, _, _, _) = get("tmp");
    assert!(kind.is_dir());
    assert_eq!(mode, 0o1777, "/tmp is sticky and world-writable");
    let (kind, _, uid, gid, _) = get("var/lib/etcdsnap");
    assert!(kind.is_dir());
    assert_eq!((uid, gid), (65532, 65532), "/var/lib/etcdsnap belongs to the image user");
    for bin in ["usr/local/bin/etcdsnap", "usr/local/bin/etcdutl", "usr/local/bin/etcdsnap-replay"] {
        let (kind, mode, uid, _, _) = get(bin);
        assert!(kind.is_file());
        assert_eq!((mode, uid), (0o755, 0), "{bin}");
    }
    for file in ["etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt"] {
        get(file);
    }
    assert!(seen.iter().any(|(_, v)| v.0.is_symlink()), "the Debian packages' symbolic links are kept");
    let owned_by_user = ["var/lib/etcdsnap", "home/nonroot"];
    for (path, (_, _, uid, gid, _)) in &seen {
        if !owned_by_user.contains(&path.as_str()) {
            assert_eq!((*uid, *gid), (0, 0), "{path}");
        }
    }
    let mtimes: std::collections::BTreeSet<u64> = seen.values().map(|v| v.4).collect();
    assert_eq!(mtimes.len(), 1, "every entry has the same mtime (SOURCE_DATE_EPOCH)");
    assert_eq!(seen.len(), count, "no path appears twice");
}
