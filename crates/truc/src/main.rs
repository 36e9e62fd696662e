//! `truc`: the one binary of truc. See `truc --help`.

#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    quiet_on_closed_pipe();
    truc::main()
}

/// The commands that serve or dial sockets in this process, for which a
/// write to a closed peer must stay an error (EPIPE), not a signal.
const SERVING: &[&str] = &["node", "bench", "chaos", "demo"];

/// A command whose output goes to a reader that stops early (`truc inbox
/// --json | head`) ends quietly, as other command-line tools do, instead of
/// panicking in `println!` on the closed pipe: SIGPIPE back to its default
/// for every command but [`SERVING`]. Set before any thread starts.
#[cfg(unix)]
#[allow(unsafe_code)]
fn quiet_on_closed_pipe() {
    let mut args = std::env::args().skip(1);
    let command = loop {
        match args.next() {
            Some(a) if a == "--log-format" => {
                args.next();
            }
            Some(a) if a.starts_with('-') => {}
            other => break other,
        }
    };
    if command.is_some_and(|c| !SERVING.contains(&c.as_str())) {
        // SAFETY: resets one signal's disposition first thing in main,
        // before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

#[cfg(not(unix))]
fn quiet_on_closed_pipe() {}

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
