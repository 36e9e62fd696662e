//! The `truc` command line, as a library so that the integration tests in `tests/`
//! build and run exactly this code as a real process (`truc-it`).

#![forbid(unsafe_code)]

pub mod archive;
mod bench;
pub mod certs;
pub mod chaos;
pub mod cli;
pub mod client;
mod demo;
pub mod edxml;
pub mod pdf;
pub mod pgserver;
pub mod verify;

pub use cli::main;
