//! One file per command: its flags (a clap `Args` struct, with the shared groups of
//! `flags.rs` flattened after its own) and the function that runs it. Each turns its flags into
//! settings through `resolve.rs`, runs the service layer's operation and prints what it
//! returned through `output/`.

pub mod agent;
pub mod completion;
pub mod crd;
pub mod delete;
pub mod drill;
pub mod kit;
pub mod ls;
pub mod man;
pub mod prune;
pub mod reconcile;
pub mod recover;
pub mod restore;
pub mod restore_check;
mod restore_check_event;
pub mod save;
pub mod verify;
pub mod watch;
