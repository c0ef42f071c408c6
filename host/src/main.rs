use clap::Parser;
use rollout_host::cli::{Cli, LogFormat};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

// glibc's per-thread arenas fragment under a multi-runtime server and keep
// freed memory; mimalloc returns it and is faster for small allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let config = cli.server_config();
    if cli.validate {
        return match rollout_host::validate::validate(
            &config.plugin,
            config.limits,
            config.allocator,
        ) {
            Ok(report) => {
                println!("{}: {report}", config.plugin.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rollout-host: {e}");
                ExitCode::FAILURE
            }
        };
    }
    raise_open_file_limit();
    match rollout_host::server::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollout-host: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Each rollout in flight holds a connection to the trainer: lift the soft
/// limit on open files to the hard one, as servers for many connections do.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-file limit");
            }
        }
    }
}
