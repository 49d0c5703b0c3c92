//! `ferry`: the thin command line over Ferry's crates.

/// `println!` through [`out::write`]: a closed pipe or a full disk never panics.
macro_rules! outln {
    () => {
        $crate::out::write(format_args!(""), true)
    };
    ($($t:tt)*) => {
        $crate::out::write(format_args!($($t)*), true)
    };
}

/// `print!` through [`out::write`].
macro_rules! out {
    ($($t:tt)*) => {
        $crate::out::write(format_args!($($t)*), false)
    };
}

mod args;
mod evacuate_cmd;
mod hosts_cmd;
mod input;
mod journal_cmd;
mod migrate_cmd;
mod out;
mod plan_cmd;
mod remote;
mod serve;
mod simulate_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match remote::through(&cli) {
        Ok(Some(url)) => remote::run(url, &cli, &matches),
        Ok(None) => local(cli),
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: error: {}", because(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Run the command on this machine.
fn local(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut cli = cli;
    // Which journal (--journal, else the inventory's [journal], else the default), and who
    // this Ferry is to the others sharing it, before it takes any lease.
    let env_inventory = args::InventoryArgs::from_env();
    match &mut cli.command {
        Command::Migrate(a) => a.journal.resolve(&a.inventory)?,
        Command::Evacuate(a) => a.journal.resolve(&a.inventory)?,
        Command::Serve(a) => a.journal.resolve(&a.inventory)?,
        Command::Release(a) => a.journal.resolve(&a.inventory)?,
        Command::Recover(a) => a.journal.resolve(&env_inventory)?,
        Command::History(a) => a.journal.resolve(&env_inventory)?,
        Command::Abort(a) => a.journal.resolve(&env_inventory)?,
        _ => {}
    }
    match cli.command {
        Command::Plan(a) => plan_cmd::run(&a),
        Command::Hosts(a) => hosts_cmd::run(&a),
        Command::Completions { shell } => {
            let mut text = vec![];
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut text);
            out::bytes(&text);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut text = vec![];
            clap_mangen::Man::new(Cli::command())
                .render(&mut text)
                .map(|()| {
                    out::bytes(&text);
                    ExitCode::SUCCESS
                })
                .map_err(Into::into)
        }
        Command::Migrate(a) => migrate_cmd::run(&a),
        Command::History(a) => journal_cmd::history(&a).map(|()| ExitCode::SUCCESS),
        Command::Recover(a) => journal_cmd::recover(&a),
        Command::Abort(a) => journal_cmd::abort(&a),
        Command::Release(a) => journal_cmd::release(&a),
        Command::Simulate(a) => simulate_cmd::run(&a),
        Command::Evacuate(a) => evacuate_cmd::run(&a),
        Command::Serve(a) => serve::run(&a),
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
