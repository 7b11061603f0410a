use std::path::PathBuf;

/// Why a test server could not be started or used. Startup failures carry the tail of the
/// server's log so a failed CI run says what the server complained about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("test binary {path} is missing: run `make testbins` (or testbins/build.sh) first")]
    MissingBinary { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for {what} (last error: {last})")]
    Timeout { what: String, last: String },
    #[error("{server} exited during startup ({status}); last log lines:\n{log}")]
    Exited { server: String, status: String, log: String },
    #[error("{what}: {message}")]
    Other { what: String, message: String },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }

    pub(crate) fn other(what: impl Into<String>, message: impl ToString) -> Self {
        Error::Other { what: what.into(), message: message.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
