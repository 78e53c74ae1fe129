//! `strata-snapshotd`: containerd's snapshots API on a unix socket, served by
//! the Strata drivers. This file only wires: arguments, logging, runtime.
#![forbid(unsafe_code)]

mod cli;
mod daemon;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    cli::init_tracing(args.debug);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.async_threads))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("strata-snapshotd: {err:#}");
            ExitCode::FAILURE
        }
    }
}
