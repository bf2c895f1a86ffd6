//! Thin entry point: parse the CLI, load config, set up tracing and the runtime, then hand over.

use clap::{CommandFactory, FromArgMatches};

/// glibc allocator settings for a long-running server (each yields to its environment variable):
/// - `M_MMAP_THRESHOLD` fixed at 128 KiB. glibc's default raises the threshold to the size of the
///   largest mmapped block ever freed; after the first argon2id hash (a 19 MiB buffer) every later
///   one came from the heap and was never given back: 900 logins left the server at 5 GB RSS.
///   Fixed, large buffers are mmapped and unmapped again (same run: 33 MB).
/// - `M_ARENA_MAX` 2: glibc gives every thread that contends for the allocator an arena of its own
///   (up to 8 per core), and memory freed in one arena is not reused by another; two arenas hold
///   RSS about 10 % lower with 10,000 WebSockets at no measurable throughput cost (BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tune_allocator();
    let version = idstack::cli::version_string();
    let matches = idstack::cli::Cli::command()
        .version(version.clone())
        .long_version(version)
        .get_matches();
    let cli = match idstack::cli::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("idstack")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(idstack::commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
