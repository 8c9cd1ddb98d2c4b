//! `dmaplace`: place dma-buf memory for every device that shares it.

mod alloc_cmd;
mod client_cmd;
mod demo;
mod load;
mod out;
mod probe_cmd;
mod report;
mod request;
mod sim_cmd;
mod solve_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for a request that is well-formed but cannot be satisfied.
const EXIT_UNSATISFIABLE: u8 = 2;
/// Exit status for bad input: unknown device, format or platform, absurd sizes.
const EXIT_BAD_INPUT: u8 = 1;

#[derive(Parser, Debug)]
#[command(name = "dmaplace", version, about = "Place dma-buf memory so that every device sharing it can use it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Solve a placement for a set of devices and print the plan, or the conflict.
    Solve(solve_cmd::SolveArgs),
    /// Walk through the design on a platform.
    Demo(demo::DemoArgs),
    /// Allocate a plan's buffer on this machine's kernel; as root, show and verify where it went.
    Alloc(alloc_cmd::AllocArgs),
    /// Replay a scenario or a trace on a simulated platform under placement policies, and compare.
    Sim(sim_cmd::SimArgs),
    /// Write this machine's platform file, read from sysfs and procfs, each value with its source.
    Probe(probe_cmd::ProbeArgs),
    /// Talk to dmaplaced: shell, status, inspect, alloc.
    Client(client_cmd::ClientArgs),
    /// List the known platforms.
    Platforms {
        /// Emit JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a platform's devices and their constraints.
    Devices {
        /// Platform name (built in, or platforms/<name>.toml) or path to a TOML file.
        #[arg(long, short = 'p', default_value = dmaplace_core::builtin::DEFAULT_PLATFORM)]
        platform: String,
        /// Emit JSON.
        #[arg(long)]
        json: bool,
    },
}

/// An outcome that maps to an exit status.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok,
    Unsatisfiable,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_BAD_INPUT) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Solve(args) => solve_cmd::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Alloc(args) => alloc_cmd::run(&args),
        Command::Sim(args) => sim_cmd::run(&args),
        Command::Probe(args) => probe_cmd::run(&args),
        Command::Client(args) => client_cmd::run(&args),
        Command::Platforms { json } => load::list_platforms(json).map(|()| Outcome::Ok),
        Command::Devices { platform, json } => load::list_devices(&platform, json).map(|()| Outcome::Ok),
    };
    // A reader that closed the pipe early ends the output quietly; the status stays the
    // command's own.
    if let Err(e) = out::finish() {
        eprintln!("dmaplace: error: writing the output: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Unsatisfiable) => ExitCode::from(EXIT_UNSATISFIABLE),
        Err(e) => {
            eprintln!("dmaplace: error: {e:#}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}
