//! The `fanout` binary: `fanout serve` runs a gateway, `fanout apply` sends a
//! declarative registry to a running one, `fanout check` checks registry and
//! config files offline, `fanout spill replay` delivers the disk backlog of a
//! gateway that is not coming back.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fanout_gateway::config::{ApplyArgs, CheckArgs, ReplayArgs, ServeArgs};

/// Fanout: a remote-write export gateway.
#[derive(Parser)]
#[command(name = "fanout", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway (with no flags: embedded SQLite store in ./fanout-data).
    #[command(after_help = "Logging:\n  \
        FANOUT_LOG  which lines go to stderr: a tracing filter (error, warn, info, debug, trace; \
        per module, e.g. info,fanout_gateway::ingest=debug) [default: info]")]
    Serve(Box<ServeArgs>),
    /// Send a declarative registry file to a running gateway's admin API.
    Apply(ApplyArgs),
    /// Check registry files and a serve config offline (exit code 1 on a problem).
    Check(CheckArgs),
    /// Work on a data dir's disk spill.
    #[command(subcommand)]
    Spill(SpillCommand),
}

#[derive(Subcommand)]
enum SpillCommand {
    /// Deliver the disk backlog of a gateway that is not coming back, to
    /// the targets of the registry it used, then remove it.
    Replay(ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => fanout_gateway::serve::run(*args),
        Command::Apply(args) => fanout_gateway::admin::apply::run(args),
        Command::Check(args) => fanout_gateway::check::run(args),
        Command::Spill(SpillCommand::Replay(args)) => fanout_gateway::replay::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Each cause once: many errors already end with their source's
            // text, and `{:#}` would repeat it.
            let mut text = err.to_string();
            for cause in err.chain().skip(1) {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    text.push_str(": ");
                    text.push_str(&cause);
                }
            }
            // A closed stderr must not turn into a panic here either.
            let _ = writeln!(std::io::stderr(), "fanout: {text}");
            ExitCode::FAILURE
        }
    }
}
