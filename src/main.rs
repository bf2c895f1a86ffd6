//! Thin entry point: parse the CLI, load config, set up tracing and the runtime, then hand over.

use clap::{CommandFactory, FromArgMatches};

fn main() -> std::process::ExitCode {
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
