//! `stratactl`: a debug tool for `strata-snapshotd`, in the style of
//! `ctr snapshots`. This file only wires arguments to commands.
//!
//! # Layout
//! - `cli`: the argument structs.
//! - `snapshots`: the `snapshots` verbs, run against the daemon over gRPC.
//! - `mountcmd`: renders mounts as shell commands a person can paste.
//! - `output`: tables, trees, human sizes and timestamps.
//! - `pool`: offline `info` and `check [--repair]` of a blockcow pool.
#![forbid(unsafe_code)]

mod cli;
mod mountcmd;
mod output;
mod pool;
mod snapshots;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("stratactl: start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        cli::Command::Snapshots(command) => runtime.block_on(snapshots::run(&args.global, command)),
        cli::Command::Pool(pool_args) => pool::run(pool_args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stratactl: {err:#}");
            ExitCode::FAILURE
        }
    }
}
