//! Thin entry point: parse the CLI, load config, set up tracing and the runtime, then hand over.

use clap::{CommandFactory, FromArgMatches};

/// glibc gives every thread that contends for the allocator an arena of its own (up to 8 per
/// core), and memory freed in one arena is not reused by another: after a connection storm the
/// server keeps tens of MB it no longer uses. Two arenas hold RSS about 10 % lower with 10,000
/// WebSockets (BENCHMARKS.md) at no measurable throughput cost. `MALLOC_ARENA_MAX` still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe {
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
