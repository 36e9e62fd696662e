//! The `truc` command line, for the integration tests.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    truc::main()
}
