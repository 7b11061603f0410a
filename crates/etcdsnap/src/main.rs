//! The `etcdsnap` binary.

fn main() -> std::process::ExitCode {
    etcdsnap::cli::main()
}
