//! `ringfs [OPTIONS] <SOURCE> <MOUNTPOINT>`, `ringfs cache info|clear` and `ringfs watch`: see
//! `ringfs --help` and the README.

use std::process::ExitCode;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let result = ringfs::cli::main(std::env::args_os().collect());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs: {e:#}");
            ExitCode::from(ringfs::cli::exit_code(&e))
        }
    }
}

/// glibc gives each thread that allocates under contention its own arena (up to 8 per core), and
/// memory freed into one arena is not reused by another. Audio chunks are allocated by download
/// tasks and freed by eviction on whichever runtime thread runs it, so with 20 readers the arenas
/// held 10-18 MiB beyond the cache budget (peak RSS 122-125 -> 106-112 MiB, `--cache-size 64M`,
/// 20 concurrent `cat`s in the benchmark). Two arenas keep contention low on the paths that
/// allocate (one chunk per 256 KiB). Must run before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
