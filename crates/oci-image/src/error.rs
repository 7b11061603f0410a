use std::io;
use std::path::PathBuf;

/// Why an image could not be written. Every file system error names the path it happened on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{path}: unsupported file type (a layer holds only regular files, directories and symbolic links)",
        path = path.display()
    )]
    UnsupportedFileType { path: PathBuf },

    #[error("{path}: not in the root file system, so its owner or mode cannot be set", path = path.display())]
    OverrideTargetMissing { path: PathBuf },

    #[error("invalid path override {spec:?}: {reason}")]
    InvalidOverride { spec: String, reason: String },

    #[error("architecture {0:?} has no OCI name this tool knows (expected x86_64/amd64 or aarch64/arm64)")]
    UnsupportedArchitecture(String),

    #[error("SOURCE_DATE_EPOCH {0} is not a time this tool can write")]
    InvalidEpoch(i64),

    #[error("building the image {what}: {source}")]
    Spec {
        what: &'static str,
        #[source]
        source: oci_spec::OciSpecError,
    },

    #[error("encoding the image {what} as JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn spec(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> Error {
        move |source| Error::Spec { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
