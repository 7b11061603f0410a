//! Which etcd versions the tests can run, read from `testbins/versions.env`.
//!
//! Users run more than one etcd minor (K3s and RKE2 releases still ship 3.5, the newest is 3.7),
//! and etcdsnap must save from and restore to each of them. `testbins/build.sh` builds every
//! version listed in `ETCD_VERSIONS` into `target/testbins/<name>-<version>`; the unversioned
//! `target/testbins/etcd` symlink only ever points at the default (`ETCD_VERSION`). Tests name a
//! minor ("3.5"), not a patch release, so that moving a pin to a newer patch is a one-line change
//! in versions.env and no test has to follow.

use crate::process::testbins_dir;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// `testbins/versions.env`, the one place the pinned versions are written down (build.sh and
/// gen-modules.sh source it). Found next to the workspace like `target/testbins`, so the list
/// the tests read is always the one the binaries were built from.
pub fn versions_env_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testbins/versions.env")
}

/// The value of `key` in versions.env text: `KEY=VALUE` lines, the value optionally in double
/// quotes; comments and anything else are ignored (the file is also sourced by bash).
fn env_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn read_versions_env() -> Result<String> {
    let path = versions_env_path();
    std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

/// `(major, minor)` of `v3.5.35`, `3.5.35` or `3.5`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The default etcd version (`ETCD_VERSION`, e.g. `v3.6.16`): the one [`crate::testbin`]`("etcd")`
/// and every test that does not ask for a version runs.
pub fn default_etcd_version() -> Result<String> {
    let text = read_versions_env()?;
    env_value(&text, "ETCD_VERSION").ok_or_else(|| Error::other("testbins/versions.env", "no ETCD_VERSION"))
}

/// Every etcd version built for the tests (`ETCD_VERSIONS`, e.g. `["v3.5.35", "v3.6.16",
/// "v3.7.3"]`), oldest first as listed. Falls back to the default alone for a versions.env that
/// predates the list.
pub fn etcd_versions() -> Result<Vec<String>> {
    let text = read_versions_env()?;
    match env_value(&text, "ETCD_VERSIONS") {
        Some(list) => Ok(list.split_whitespace().map(str::to_string).collect()),
        None => Ok(vec![default_etcd_version()?]),
    }
}

/// The pinned etcd release for `version`: a minor (`"3.5"`, `"v3.7"`) picks the one release of
/// that minor in `ETCD_VERSIONS`; a full version (`"v3.5.35"`) must be listed as it is.
pub fn etcd_version(version: &str) -> Result<String> {
    resolve(&etcd_versions()?, version)
}

fn resolve(listed: &[String], wanted: &str) -> Result<String> {
    let not_built = || {
        Error::other(
            format!("etcd {wanted}"),
            format!("not in ETCD_VERSIONS of testbins/versions.env (built: {})", listed.join(" ")),
        )
    };
    let wanted_trimmed = wanted.trim().trim_start_matches('v');
    if wanted_trimmed.split('.').count() >= 3 {
        return listed.iter().find(|v| v.trim_start_matches('v') == wanted_trimmed).cloned().ok_or_else(not_built);
    }
    let minor = major_minor(wanted_trimmed).ok_or_else(not_built)?;
    let mut matching = listed.iter().filter(|v| major_minor(v) == Some(minor));
    match (matching.next(), matching.next()) {
        (Some(v), None) => Ok(v.clone()),
        (Some(_), Some(_)) => Err(Error::other(
            format!("etcd {wanted}"),
            "ETCD_VERSIONS lists more than one release of this minor; name the full version",
        )),
        (None, _) => Err(not_built()),
    }
}

/// Path of an etcd tool (`etcd`, `etcdctl`, `etcdutl`) of the given etcd version, e.g.
/// `testbin_version("etcdutl", "3.5")` for `target/testbins/etcdutl-v3.5.35`. A restore must use
/// the etcdutl of the cluster's minor, so tests that restore pick it by the same version as the
/// etcd they saved from.
pub fn testbin_version(name: &str, version: &str) -> Result<PathBuf> {
    let release = etcd_version(version)?;
    let path = testbins_dir().join(format!("{name}-{release}"));
    if path.exists() { Ok(path.canonicalize().unwrap_or(path)) } else { Err(Error::MissingBinary { path }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed() -> Vec<String> {
        ["v3.5.35", "v3.6.16", "v3.7.3"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_quoted_and_plain_values_and_skips_comments() {
        let text = "# ETCD_VERSION=v0.0.1 in a comment\nETCD_VERSION=v3.6.16\nETCD_VERSIONS=\"v3.5.35 v3.6.16\"\n";
        assert_eq!(env_value(text, "ETCD_VERSION").as_deref(), Some("v3.6.16"));
        assert_eq!(env_value(text, "ETCD_VERSIONS").as_deref(), Some("v3.5.35 v3.6.16"));
        assert_eq!(env_value(text, "KUBE_VERSION"), None);
    }

    #[test]
    fn a_minor_or_a_full_version_resolves_to_the_pinned_release() {
        assert_eq!(resolve(&listed(), "3.5").unwrap(), "v3.5.35");
        assert_eq!(resolve(&listed(), "v3.7").unwrap(), "v3.7.3");
        assert_eq!(resolve(&listed(), "3.6.16").unwrap(), "v3.6.16");
        assert!(resolve(&listed(), "3.4").is_err());
        assert!(resolve(&listed(), "v3.6.15").is_err(), "an unpinned patch is not silently replaced");
        assert!(resolve(&listed(), "three").is_err());
        let two = vec!["v3.5.34".to_string(), "v3.5.35".to_string()];
        assert!(resolve(&two, "3.5").is_err());
    }

    #[test]
    fn the_real_versions_env_lists_the_default_and_one_release_per_minor() {
        let versions = etcd_versions().unwrap();
        assert!(versions.contains(&default_etcd_version().unwrap()), "{versions:?}");
        let mut minors: Vec<_> = versions.iter().map(|v| major_minor(v).unwrap()).collect();
        minors.sort_unstable();
        minors.dedup();
        assert_eq!(minors.len(), versions.len(), "{versions:?}");
    }

    /// Each pinned release is really what runs: the server's own status, and the version
    /// etcdctl and etcdutl print, name exactly the release the binary is filed under.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_pinned_etcd_starts_and_reports_its_version() {
        for release in etcd_versions().unwrap() {
            let bare = release.trim_start_matches('v');
            let minor = format!("{}.{}", major_minor(&release).unwrap().0, major_minor(&release).unwrap().1);
            let etcd = crate::Etcd::single_version(&minor).await.unwrap();
            assert_eq!(etcd.version(), Some(release.as_str()));
            let mut client = etcd.client().await.unwrap();
            client.put("/versions/key", bare, None).await.unwrap();
            let status = client.status().await.unwrap();
            assert_eq!(status.version(), bare, "etcd {minor}");
            for tool in ["etcdctl", "etcdutl"] {
                let path = etcd.testbin(tool).unwrap();
                assert_eq!(path, testbin_version(tool, &minor).unwrap());
                let out = std::process::Command::new(&path).arg("version").output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains(&format!("{tool} version: {bare}")), "{}: {text}", path.display());
            }
        }
    }
}
