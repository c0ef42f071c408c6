use clap::Parser;
use rollout_host::cli::{Cli, Command, LogFormat, ServeArgs};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

// glibc's per-thread arenas fragment under a multi-runtime server and keep
// freed memory; mimalloc returns it and is faster for small allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    rollout_host::runtime::capacity::disable_transparent_huge_pages();
    match Cli::parse().into_command() {
        Command::Serve(args) => serve(&args),
        Command::Test(args) => rollout_host::test_mode::main(*args),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let config = match args.server_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rollout-host: {e}");
            return ExitCode::from(2);
        }
    };
    if args.validate {
        let cache = config
            .compile_cache
            .as_deref()
            .and_then(rollout_host::runtime::CompileCache::open_or_warn);
        for spec in &config.plugins {
            let plugin = &spec.plugin;
            match rollout_host::validate::validate(
                plugin,
                spec.settings.limits.clone(),
                config.allocator,
                cache.clone(),
            ) {
                Ok(report) => println!("{}: {report}", plugin.display()),
                Err(e) => {
                    eprintln!("rollout-host: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    rollout_host::runtime::capacity::raise_open_file_limit();
    match rollout_host::server::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollout-host: {e}");
            ExitCode::FAILURE
        }
    }
}
