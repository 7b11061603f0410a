//! Which engine a replay runs on, and where its helper is.
//!
//! - **direct** (the default when its helper is found): `etcdsnap-replay` applies the captured
//!   revisions to the restored base's database with etcd's own storage code ([`super::direct`]).
//! - **etcd**: a private etcd applies each revision as one guarded transaction
//!   ([`super::apply`]). It is the fallback when the helper is missing, and what
//!   `--replay-engine etcd` asks for.
//!
//! The helper is looked for beside etcdsnap's own binary, then beside etcdutl, then beside the
//! etcd binary (each in the directory named, then in the one its links lead to), then in
//! `$PATH` (the image ships it beside etcdutl).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::direct::HELPER;

/// The engine a replay runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayEngine {
    /// `etcdsnap-replay` at this path: etcd's storage code on the database file.
    Direct(PathBuf),
    /// A private etcd, one guarded transaction per revision.
    Etcd,
}

/// What the operator asked for (`--replay-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// direct when its helper is found, else etcd (with a log line).
    #[default]
    Auto,
    Direct,
    Etcd,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "--replay-engine direct: no {HELPER} beside etcdsnap or etcdutl ({}){etcd}, nor in PATH; install it from the image or `testbins/build.sh etcd`, or use --replay-engine etcd",
    etcdutl.display()
)]
pub struct NoHelper {
    etcdutl: PathBuf,
    /// " or etcd (PATH)" when an etcd binary was given.
    etcd: String,
}

/// The engine for `choice`, with the helper found near `etcdutl` or `etcd` when it is direct.
pub fn choose(choice: EngineChoice, etcdutl: &Path, etcd: &Path) -> Result<ReplayEngine, NoHelper> {
    if choice == EngineChoice::Etcd {
        return Ok(ReplayEngine::Etcd);
    }
    match locate(etcdutl, etcd) {
        Some(helper) => Ok(ReplayEngine::Direct(helper)),
        None if choice == EngineChoice::Direct => {
            let etcd = match etcd.as_os_str().is_empty() {
                true => String::new(),
                false => format!(" or etcd ({})", etcd.display()),
            };
            Err(NoHelper { etcdutl: etcdutl.to_path_buf(), etcd })
        }
        None => {
            tracing::info!(
                helper = HELPER,
                "the direct replay engine's helper was not found: replaying in a private etcd (slower)"
            );
            Ok(ReplayEngine::Etcd)
        }
    }
}

/// The helper beside etcdsnap, etcdutl or etcd, or in `$PATH`.
fn locate(etcdutl: &Path, etcd: &Path) -> Option<PathBuf> {
    let own = std::env::current_exe().ok();
    // Each binary's directory as given, then the one its links lead to.
    let beside = [own.as_deref(), Some(etcdutl), Some(etcd)]
        .into_iter()
        .flatten()
        .flat_map(|bin| [Some(bin.to_path_buf()), bin.canonicalize().ok()])
        .flatten()
        .filter_map(|bin| bin.parent().map(Path::to_path_buf));
    let search = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::split_paths(&search).collect::<Vec<_>>();
    beside.chain(path).map(|dir| dir.join(HELPER)).find(|p| executable(p))
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<EngineChoice, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "direct" => Ok(EngineChoice::Direct),
            "etcd" => Ok(EngineChoice::Etcd),
            other => Err(format!("unknown replay engine {other:?} (auto, direct or etcd)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_is_found_beside_etcdutl_and_direct_without_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let etcdutl = dir.path().join("etcdutl");
        std::fs::write(&etcdutl, "").unwrap();
        let none = dir.path().join("nowhere").join("etcd");
        // Without the helper: etcd for auto, refused for direct (unless one is in PATH).
        if locate(&etcdutl, &none).is_none() {
            assert_eq!(choose(EngineChoice::Auto, &etcdutl, &none).unwrap(), ReplayEngine::Etcd);
            assert!(choose(EngineChoice::Direct, &etcdutl, &none).unwrap_err().to_string().contains(HELPER));
        }
        let helper = dir.path().join(HELPER);
        std::fs::write(&helper, "").unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = choose(EngineChoice::Auto, &etcdutl, &none).unwrap();
        assert!(matches!(&found, ReplayEngine::Direct(p) if p.ends_with(HELPER)), "{found:?}");
        assert_eq!(choose(EngineChoice::Etcd, &etcdutl, &none).unwrap(), ReplayEngine::Etcd);
        assert_eq!("direct".parse::<EngineChoice>().unwrap(), EngineChoice::Direct);
        assert!("fast".parse::<EngineChoice>().is_err());
    }
}
