//! The operations every front end shares (CLI commands, the agent's schedule), one file each:
//! [`save`], [`list`], [`remove`] (delete and prune) and [`verify`], over whichever stores the
//! [`Context`] ([`context`]) holds; the reconcile job ([`reconcile`]) and the catch-up of failed
//! uploads ([`catchup`]); copies to replicas ([`replicate`], [`replicate_deltas`]). They return reports; what to print, which resources to write and which
//! exit code to use is the caller's business.

pub mod catchup;
mod context;
pub mod list;
pub mod reconcile;
pub mod remove;
pub mod replicate;
pub mod replicate_deltas;
pub mod save;
pub mod verify;

pub use context::Context;
pub use list::{ListReport, list};
pub use remove::{DeleteResult, Deletion, LockedSnapshot, PruneError, PruneOptions, PruneReport, delete, prune};
pub use replicate::{ReplicaRetention, ReplicaStatus, replicate};
pub use save::{SaveError, SaveOptions, SaveReport, save};
pub use verify::{VerifyResult, check_problems, verify_record};
