//! The `etcdsnap` binary: the command line at the edge of the library.

mod allocator;
mod cli;

fn main() -> std::process::ExitCode {
    allocator::tune();
    cli::main()
}
