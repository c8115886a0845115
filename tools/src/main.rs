//! `ixctl`: operate and benchmark the IX dataplane. See `ixctl --help`.

use std::io::{self, Write};
use std::process::ExitCode;

use ix_tools::bench::report::Outcome;
use ix_tools::cli::{self, EXIT_FAILURE, EXIT_USAGE};
use ix_tools::commands::{self, Done};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let command = match cli::parse(std::env::args_os()) {
        Ok(command) => command,
        Err(err) if err.is_help() => {
            // Help and version go to stdout; a closed pipe is not an error.
            let _ = io::stdout().write_all(err.full_text().as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(err) if err.is_missing_subcommand() => {
            eprint!("{}", err.full_text());
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => {
            eprintln!("ixctl: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match commands::execute(&command, &mut io::stdout().lock()) {
        Ok(Done::Ctl) => ExitCode::SUCCESS,
        Ok(Done::Bench(report)) => {
            let mut status = ExitCode::SUCCESS;
            for row in report.rows() {
                if let Outcome::NotRun(why) = &row.outcome {
                    eprintln!("ixctl: {}: {why}", row.system);
                    status = ExitCode::from(EXIT_FAILURE);
                }
            }
            status
        }
        Ok(Done::BenchKvs(report)) => {
            let mut status = ExitCode::SUCCESS;
            for (system, why) in report.failures() {
                eprintln!("ixctl: {system}: {why}");
                status = ExitCode::from(EXIT_FAILURE);
            }
            status
        }
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ixctl: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// True when the error comes from writing to a closed stdout (`ixctl … | head`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io_err| io_err.kind() == io::ErrorKind::BrokenPipe)
}
