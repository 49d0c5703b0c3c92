//! `ferry`: the thin command line over Ferry's crates.

mod args;
mod evacuate_cmd;
mod hosts_cmd;
mod journal_cmd;
mod migrate_cmd;
mod plan_cmd;
mod simulate_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(a) => plan_cmd::run(&a),
        Command::Hosts(a) => hosts_cmd::run(&a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
        Command::Migrate(a) => migrate_cmd::run(&a),
        Command::History(a) => journal_cmd::history(&a).map(|()| ExitCode::SUCCESS),
        Command::Recover(a) => journal_cmd::recover(&a),
        Command::Abort(a) => journal_cmd::abort(&a),
        Command::Release(a) => journal_cmd::release(&a),
        Command::Simulate(a) => simulate_cmd::run(&a),
        Command::Evacuate(a) => evacuate_cmd::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: error: {}", because(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error for a person: its message, then a `because:` line per cause under it. The one
/// place the command line walks an error chain.
pub(crate) fn because(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!("\n  because: {c}"));
        cause = c.source();
    }
    s
}
