//! `truc`: the one binary of truc. See `truc --help`.

#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    quiet_on_closed_pipe();
    truc::main()
}

/// A command whose output goes to a reader that stops early (`truc inbox
/// --json | head`) ends quietly, as other command-line tools do, instead of
/// panicking in `println!` on the closed pipe: exit status 141, as for a
/// process ended by SIGPIPE. SIGPIPE itself stays ignored, so that a socket
/// written to after its peer went (a vectored write has no MSG_NOSIGNAL)
/// is an error the command reports, not a silent end.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// At most two glibc malloc arenas, set before any thread starts.
///
/// glibc gives a thread that meets contention an arena of its own, up to eight
/// per core, and each keeps the memory freed in it. A node's threads (tokio's
/// workers, the blocking pool that runs store batches, sled's flushers) filled
/// sixteen of them: a hub holding 20,000 queued documents grew 29 MiB, 23 MiB
/// with one arena (`truc bench queued-drain`, BENCHMARKS.md), and throughput
/// did not change with two. An operator's `GLIBC_TUNABLES=glibc.malloc.arena_max=N`
/// wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max")) {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter; it is called first thing
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
