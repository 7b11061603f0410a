//! Links the `etcdsnap` binary as a position-dependent executable on Linux.
//!
//! As a PIE, the dynamic loader applies ~40,000 relative relocations to the binary at every
//! start: it reads all of `.rela.dyn` (0.9 MiB) and writes into every page of `.data.rel.ro`
//! (0.7 MiB), which then become private copies. Both stay resident for the life of the
//! process: about 2 MiB of the 16 MiB a save may use. Linked without PIE the addresses are
//! fixed at link time and none of that happens. The price is that the executable's own image
//! is not randomised (libraries, heap and stacks still are), as for Go binaries such as etcd
//! and K3s. Only the link changes: every crate is still compiled as position-independent code.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=etcdsnap=-no-pie");
    }
}
