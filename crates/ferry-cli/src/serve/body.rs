//! Request bodies: a JSON object whose keys are the CLI's long options, read by the CLI's own
//! parser. `{"guest": "g", "to": "h2", "copy": ["vdb"], "unsafe": true, "bandwidth": 50}` is
//! `ferry migrate g --to=h2 --copy=vdb --unsafe --bandwidth=50`: the same names, the same
//! checks, the same refusals — what a person learnt on the command line carries over. Unknown
//! keys, and the keys the daemon owns (its journal, its inventory), are errors.

use std::any::TypeId;

use clap::{ArgAction, Args, ColorChoice, Command, FromArgMatches};
use serde_json::{json, Map, Value};

use super::problem::Problem;

/// One kind of body: the CLI command it mirrors, and the options the daemon keeps to itself.
#[derive(Debug)]
pub struct Form {
    /// The CLI's command (`migrate`).
    pub command: &'static str,
    /// Options the daemon sets (its journal, its inventory, its output), with why.
    pub owned: &'static [(&'static str, &'static str)],
    /// Options the route's path gives (`/v1/runs/{id}/…`): not in the body.
    pub path: &'static [&'static str],
}

/// The options the daemon keeps: the first five are every command's, the sixth every
/// command's that reads an inventory.
const DAEMON_OWNS: &[(&str, &str)] = &[
    (
        "journal",
        "the daemon's journal is its own (ferry serve --journal)",
    ),
    (
        "instance",
        "the daemon's instance name is its own (ferry serve --instance)",
    ),
    (
        "lease",
        "the daemon's leases are its own (ferry serve --lease)",
    ),
    ("json", "the API always answers in JSON"),
    (
        "inventory",
        "the daemon's inventory is its own (ferry serve --inventory)",
    ),
    (
        "rules",
        "a rules file is a path on the daemon's machine: give map and copy",
    ),
    ("dry-run", "POST /v1/plans is the dry run"),
    (
        "release-source",
        "not over the API yet: POST /v1/runs/{id}/release after the run",
    ),
];

/// `POST /v1/migrations` and `POST /v1/plans`: `ferry migrate`'s options.
pub const MIGRATE: Form = Form {
    command: "migrate",
    owned: DAEMON_OWNS,
    path: &[],
};

/// `POST /v1/evacuations`: `ferry evacuate`'s options (`dry-run`: the plan only).
pub const EVACUATE: Form = Form {
    command: "evacuate",
    owned: DAEMON_OWNS.split_at(5).0,
    path: &[],
};

/// `POST /v1/recover`: `ferry recover`'s options (`id`: one run).
pub const RECOVER: Form = Form {
    command: "recover",
    owned: DAEMON_OWNS.split_at(2).0,
    path: &[],
};

/// `POST /v1/runs/{id}/release`: `ferry release`'s options (the run is the path's).
pub const RELEASE: Form = Form {
    command: "release",
    owned: DAEMON_OWNS.split_at(5).0,
    path: &["id"],
};

/// The largest body the daemon reads.
pub const MAX_BODY: usize = 256 << 10;

fn command<T: Args>(form: &Form) -> Command {
    T::augment_args(
        Command::new(form.command)
            .no_binary_name(true)
            .color(ColorChoice::Never)
            .disable_help_flag(true),
    )
}

/// The keys of a body: the long options (and positional names) of the command, less the
/// daemon's.
fn keys(cmd: &Command, form: &Form) -> Vec<(String, clap::Arg)> {
    cmd.get_arguments()
        .filter_map(|a| {
            let key = match a.get_long() {
                Some(l) => l.to_string(),
                None if a.is_positional() => a.get_id().to_string(),
                None => return None,
            };
            (!form.owned.iter().any(|(k, _)| *k == key)).then(|| (key, a.clone()))
        })
        .collect()
}

/// Read a body into the command's arguments.
pub fn parse<T: Args + FromArgMatches>(form: &Form, body: &Value) -> Result<T, Problem> {
    parse_with(form, body, &[])
}

/// Read a body, with the values the route's path gives (`form.path`: never in the body).
pub fn parse_with<T: Args + FromArgMatches>(
    form: &Form,
    body: &Value,
    from_path: &[(&str, Value)],
) -> Result<T, Problem> {
    let cmd = command::<T>(form);
    let Value::Object(given) = body else {
        return Err(Problem::bad_request(format!(
            "the body is a JSON object whose keys are `ferry {}`'s long options",
            form.command
        )));
    };
    let mut fields = given.clone();
    for (k, v) in from_path {
        if given.contains_key(*k) {
            return Err(
                Problem::bad_request(format!("`{k}` cannot be given: it is the path's"))
                    .with("key", *k),
            );
        }
        fields.insert((*k).to_string(), v.clone());
    }
    let known = keys(&cmd, form);
    let mut argv: Vec<String> = vec![];
    let mut positional: Vec<String> = vec![];
    for (raw, v) in &fields {
        let key = raw.replace('_', "-");
        if let Some((_, why)) = form.owned.iter().find(|(k, _)| *k == key) {
            return Err(
                Problem::bad_request(format!("`{raw}` cannot be given: {why}"))
                    .with("key", raw.clone()),
            );
        }
        let Some((_, arg)) = known.iter().find(|(k, _)| *k == key) else {
            let names: Vec<&str> = known.iter().map(|(k, _)| k.as_str()).collect();
            return Err(Problem::bad_request(format!(
                "unknown key `{raw}`; the keys are `ferry {}`'s long options: {}",
                form.command,
                names.join(", ")
            ))
            .with("key", raw.clone()));
        };
        let values: Vec<String> = match v {
            Value::Null => continue,
            Value::Bool(b) if matches!(arg.get_action(), ArgAction::SetTrue) => {
                if *b {
                    argv.push(format!("--{key}"));
                }
                continue;
            }
            Value::String(s) => vec![s.clone()],
            Value::Number(n) => vec![n.to_string()],
            Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(()),
                })
                .collect::<Result<_, _>>()
                .map_err(|()| {
                    Problem::bad_request(format!("`{raw}`: a list of strings"))
                        .with("key", raw.clone())
                })?,
            _ => {
                return Err(
                    Problem::bad_request(format!("`{raw}`: expected {}", expected(arg)))
                        .with("key", raw.clone()),
                )
            }
        };
        if arg.is_positional() {
            positional.extend(values);
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            return Err(
                Problem::bad_request(format!("`{raw}`: expected true or false"))
                    .with("key", raw.clone()),
            );
        } else {
            // `--key=value`: a value that starts with `-` stays a value.
            argv.extend(values.into_iter().map(|x| format!("--{key}={x}")));
        }
    }
    argv.push("--".into());
    argv.extend(positional);
    let cmd_positionals: Vec<String> = cmd
        .get_positionals()
        .map(|a| a.get_id().to_string())
        .collect();
    let matches = cmd.try_get_matches_from(&argv).map_err(|e| {
        // clap's reason, without its `error: `, usage and help lines (a missing positional is
        // named on the line after the first).
        let text = e.render().to_string();
        let reason: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .filter(|l| !l.is_empty())
            .collect();
        let mut reason = reason.join(" ").trim_start_matches("error: ").to_string();
        // A positional is named by its key.
        for a in cmd_positionals.iter() {
            reason = reason.replace(&a.to_uppercase(), a);
        }
        Problem::bad_request(reason.replace("'--", "'").replace(['<', '>'], ""))
    })?;
    T::from_arg_matches(&matches).map_err(|e| Problem::bad_request(e.to_string()))
}

fn expected(arg: &clap::Arg) -> &'static str {
    match arg.get_action() {
        ArgAction::SetTrue => "true or false",
        ArgAction::Append => "a string or a list of strings",
        _ if is_integer(arg) => "an integer",
        _ => "a string",
    }
}

fn is_integer(arg: &clap::Arg) -> bool {
    let t = arg.get_value_parser().type_id();
    t == TypeId::of::<u64>() || t == TypeId::of::<u32>() || t == TypeId::of::<i64>()
}

/// The body's JSON Schema, from the same command: every key, its type, its help.
pub fn schema<T: Args>(form: &Form) -> Value {
    let cmd = command::<T>(form);
    let mut props = Map::new();
    let mut required = vec![];
    for (key, arg) in keys(&cmd, form) {
        if form.path.contains(&key.as_str()) {
            continue;
        }
        let mut p = match arg.get_action() {
            ArgAction::SetTrue => json!({"type": "boolean"}),
            ArgAction::Append => json!({"type": "array", "items": {"type": "string"}}),
            _ if is_integer(&arg) => json!({"type": "integer", "minimum": 0}),
            _ => {
                let values: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_string())
                    .collect();
                if values.is_empty() {
                    json!({"type": "string"})
                } else {
                    json!({"type": "string", "enum": values})
                }
            }
        };
        if let (Some(o), Some(help)) = (p.as_object_mut(), arg.get_help()) {
            o.insert("description".into(), help.to_string().into());
        }
        if let (Some(o), Some(d)) = (p.as_object_mut(), arg.get_default_values().first()) {
            let d = d.to_string_lossy().to_string();
            let v = if is_integer(&arg) {
                d.parse::<u64>().map(Value::from).unwrap_or(Value::from(d))
            } else {
                Value::from(d)
            };
            o.insert("default".into(), v);
        }
        if arg.is_required_set() {
            required.push(key.clone());
        }
        props.insert(key, p);
    }
    json!({
        "type": "object",
        "description": format!("`ferry {}`'s long options, as keys (`_` may stand for `-`)", form.command),
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::MigrateArgs;

    fn migrate(body: Value) -> Result<MigrateArgs, Problem> {
        parse::<MigrateArgs>(&MIGRATE, &body)
    }

    #[test]
    fn a_body_is_the_command_line_by_its_long_options() {
        let a = migrate(json!({
            "guest": "g", "from": "h1", "to": "h2", "map": ["/mnt/nfs=/mnt/nfs2"],
            "copy": ["vdb"], "unsafe": true, "bandwidth": 50, "p2p": false,
            "max_downtime": 150, "preseed-verify": "all", "timeout": null,
        }))
        .unwrap();
        assert_eq!(a.guest, "g");
        assert_eq!(a.from, "h1");
        assert_eq!(a.to.as_deref(), Some("h2"));
        assert_eq!(a.storage.map.len(), 1);
        assert_eq!(a.storage.copy.len(), 1);
        assert!(a.migration.unsafe_);
        assert!(!a.migration.p2p);
        assert_eq!(a.migration.bandwidth, Some(50));
        assert_eq!(a.migration.convergence.max_downtime, Some(150));
        assert_eq!(a.timeout, None);
        assert_eq!(a.connect_timeout, 30, "the CLI's default");
    }

    #[test]
    fn a_value_that_looks_like_an_option_stays_a_value() {
        let a = migrate(json!({"guest": "--to=x", "to": "-h2"})).unwrap();
        assert_eq!(a.guest, "--to=x");
        assert_eq!(a.to.as_deref(), Some("-h2"));
    }

    #[test]
    fn unknown_keys_the_daemons_own_and_bad_values_are_refused_by_name() {
        for (body, key) in [
            (json!({"guest": "g", "destination": "h2"}), "destination"),
            (json!({"guest": "g", "journal": "/tmp/j.db"}), "journal"),
            (
                json!({"guest": "g", "inventory": "/etc/passwd"}),
                "inventory",
            ),
            (json!({"guest": "g", "dry_run": true}), "dry_run"),
            (json!({"guest": "g", "unsafe": "yes"}), "unsafe"),
            (json!({"guest": "g", "bandwidth": [1, 2]}), "bandwidth"),
            (json!({"guest": "g", "copy": [{"dev": "vdb"}]}), "copy"),
        ] {
            let p = migrate(body.clone()).unwrap_err();
            assert_eq!(p.status, 422, "{body}");
            assert_eq!(p.code, "bad_request");
            assert_eq!(p.extra["key"], key, "{body}: {}", p.detail);
        }
    }

    #[test]
    fn the_clis_checks_refuse_the_same_values() {
        for (body, says) in [
            (json!({"to": "h2"}), "guest"),
            (json!({"guest": "g", "bandwidth": 0}), "bandwidth"),
            (json!({"guest": "g", "bandwidth": "fast"}), "bandwidth"),
            (
                json!({"guest": "g", "preseed_verify": "most"}),
                "preseed-verify",
            ),
            (
                json!({"guest": "g", "preseed": true, "no_preseed": true}),
                "preseed",
            ),
            (json!({"guest": "g", "copy": ["vdb=relative/path"]}), "copy"),
            (json!(["g"]), "JSON object"),
        ] {
            let p = migrate(body.clone()).unwrap_err();
            assert_eq!(p.status, 422, "{body}");
            assert!(p.detail.contains(says), "{body}: {}", p.detail);
        }
    }

    #[test]
    fn the_schema_lists_every_key_with_its_type_and_not_the_daemons() {
        let s = schema::<MigrateArgs>(&MIGRATE);
        let props = s["properties"].as_object().unwrap();
        assert_eq!(props["guest"]["type"], "string");
        assert_eq!(props["unsafe"]["type"], "boolean");
        assert_eq!(props["map"]["type"], "array");
        assert_eq!(props["bandwidth"]["type"], "integer");
        assert_eq!(props["connect-timeout"]["default"], 30);
        assert_eq!(
            props["fallback"]["enum"],
            json!(["abort", "postcopy", "pause"])
        );
        for (owned, _) in DAEMON_OWNS {
            assert!(!props.contains_key(*owned), "{owned}");
        }
        assert_eq!(s["required"], json!(["guest"]));
    }
}
