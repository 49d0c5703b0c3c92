//! The command line as a request body: the inverse of the daemon's reading of a body
//! (`serve::body`). Every option given on the command line becomes its long name's key with
//! the text typed, so the daemon's parser (the same clap command) reads exactly what this
//! process read; defaults are left to it. An option the daemon keeps to itself (`--journal`,
//! `--inventory`, …) given here is refused with the daemon's reason.

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use serde_json::{Map, Value};

use crate::serve::body::Form;

/// The body for `form`'s command `cmd`, from what `m` holds (this command's matches). Options
/// in `local` are this process's own (`--wait`, `--out-xml`): never sent.
pub fn body(cmd: &Command, m: &ArgMatches, form: &Form, local: &[&str]) -> anyhow::Result<Value> {
    let mut body = Map::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        // Only what the operator typed: a default or an environment variable (this machine's
        // FERRY_JOURNAL, FERRY_INVENTORY) is not the daemon's business.
        if m.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let key = match arg.get_long() {
            Some(l) => l.to_string(),
            None => id.to_string(),
        };
        if local.contains(&key.as_str()) {
            continue;
        }
        if let Some((_, why)) = form.owned.iter().find(|(k, _)| *k == key) {
            anyhow::bail!("--{key} cannot be given with --server: {why}");
        }
        let raw: Vec<String> = m
            .get_raw(id)
            .map(|vs| {
                vs.map(|v| {
                    v.to_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow::anyhow!("--{key}: the value is not UTF-8 text"))
                })
                .collect::<anyhow::Result<_>>()
            })
            .transpose()?
            .unwrap_or_default();
        let value = match arg.get_action() {
            ArgAction::SetTrue => Value::Bool(m.get_flag(id)),
            ArgAction::Append => Value::Array(raw.into_iter().map(Value::from).collect()),
            _ => match raw.as_slice() {
                [one] => Value::from(one.clone()),
                _ => Value::Array(raw.into_iter().map(Value::from).collect()),
            },
        };
        body.insert(key, value);
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::args::{Cli, MigrateArgs};
    use crate::serve::body;

    /// `argv` as `ferry …` reads it: the subcommand's command and matches.
    fn sub(argv: &[&str]) -> (Command, ArgMatches) {
        let cli = Cli::command();
        let m = cli
            .clone()
            .try_get_matches_from(std::iter::once("ferry").chain(argv.iter().copied()))
            .unwrap();
        let (name, sm) = m.subcommand().unwrap();
        (cli.find_subcommand(name).unwrap().clone(), sm.clone())
    }

    #[test]
    fn the_daemon_reads_the_body_as_this_process_read_the_command_line() {
        let argv = [
            "migrate",
            "g1",
            "--from",
            "h1",
            "--to=h2",
            "--copy",
            "vdb",
            "--copy=vdc=/dev/x",
            "--map",
            "/mnt/a=/mnt/b",
            "--unsafe",
            "--bandwidth",
            "50",
        ];
        let (cmd, m) = sub(&argv);
        let b = body(&cmd, &m, &body::MIGRATE, &[]).unwrap();
        assert_eq!(b["guest"], "g1");
        assert_eq!(b["copy"], serde_json::json!(["vdb", "vdc=/dev/x"]));
        assert_eq!(b["unsafe"], true);
        assert_eq!(b["bandwidth"], "50");
        // Defaults are not sent: the daemon's parser gives the same.
        assert!(b.get("timeout").is_none() && b.get("connect-timeout").is_none());
        let there: MigrateArgs = body::parse(&body::MIGRATE, &b).unwrap();
        let here = MigrateArgs::from_arg_matches(&m).unwrap();
        assert_eq!(format!("{there:?}"), format!("{here:?}"));
    }

    #[test]
    fn an_option_the_daemon_keeps_is_refused_with_its_reason() {
        let (cmd, m) = sub(&["migrate", "g1", "--from", "h1", "--journal", "/tmp/j.db"]);
        let e = body(&cmd, &m, &body::MIGRATE, &[]).unwrap_err();
        assert!(
            e.to_string().starts_with("--journal cannot be given"),
            "{e}"
        );
        let (cmd, m) = sub(&["migrate", "g1", "--from", "h1", "--dry-run"]);
        assert!(body(&cmd, &m, &body::MIGRATE, &[]).is_err());
        // A local option is never sent.
        let (cmd, m) = sub(&["abort", "g1", "--wait", "5"]);
        let b = body(&cmd, &m, &body::MIGRATE, &["wait"]).unwrap();
        assert_eq!(b, serde_json::json!({"which": "g1"}));
    }
}
