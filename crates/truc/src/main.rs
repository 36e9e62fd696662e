//! `truc`: the one binary of truc. See `truc --help`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    truc::main()
}
