//! `jobgate trace` on its own, the way the binary wires it:
//! `cargo run -p jobgate-trace --example trace -- <TRACE_ID|JOB_ID> --logs logs`.

use std::process::ExitCode;

use clap::Parser;
use jobgate_trace::TraceArgs;

/// Prints one job's narrative from the JSON-lines logs.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    trace: TraceArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match jobgate_trace::run(&cli.trace, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jobgate trace: {error}");
            ExitCode::FAILURE
        }
    }
}
