//! What ships beside the binary: the Helm chart against helm, kubectl and a real kube-apiserver
//! (`helm_chart`), and `make install`'s manual pages and shell completions (`install`).
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helm_chart;
mod install;
