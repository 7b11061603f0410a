//! What ships beside the binary: the Helm chart against helm, kubectl and a real kube-apiserver
//! (`helm_chart`), `make install`'s manual pages and shell completions (`install`), what
//! `--help` says and the parser refuses (`help`), and the servers `make demo` builds
//! (`make_demo`).
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helm_chart;
mod help;
mod install;
mod make_demo;
