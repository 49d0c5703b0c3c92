//! Volumes libvirt cannot create (NVMe namespaces, SAN LUNs), made by a hook: a command the
//! inventory names, run where Ferry runs, one JSON request on stdin, one JSON answer on stdout,
//! bounded in time. See [`ferry_core::inventory::LocalStore`] for the protocol.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_core::inventory::Hook;
use serde::{Deserialize, Serialize};

/// Who created a volume, and so who deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Provider {
    /// libvirt's storage API on the target host.
    Libvirt,
    /// A hook, for the inventory host `host`.
    Hook { hook: Hook, host: String },
}

/// Why a hook call failed. Each names the hook and says what it did.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {name}: cannot run {command}")]
    Spawn {
        name: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hook {name} did not answer within {secs} s and was killed")]
    Timeout { name: String, secs: u64 },
    #[error("hook {name} failed ({status}): {stderr}")]
    Failed {
        name: String,
        status: String,
        stderr: String,
    },
    #[error("hook {name} answered {stdout:?}, not {{\"path\": \"/dev/…\"}}")]
    BadAnswer { name: String, stdout: String },
}

/// Delete a volume Ferry created, through whoever created it.
pub fn give_back(
    hv: &dyn ferry_hypervisor::Hypervisor,
    host: ferry_hypervisor::HostId,
    path: &str,
    provider: &Provider,
) -> Result<(), crate::Cause> {
    match provider {
        Provider::Libvirt => Ok(hv.delete_volume(host, path)?),
        Provider::Hook { hook, host } => Ok(delete(hook, host, path)?),
    }
}

/// Run the hook with `request` on stdin; its stdout when it exits 0 within its timeout.
pub fn call(hook: &Hook, request: &serde_json::Value) -> Result<String, HookError> {
    let command = hook.command.join(" ");
    let spawn_err = |source| HookError::Spawn {
        name: hook.name.clone(),
        command: command.clone(),
        source,
    };
    let (prog, args) = hook
        .command
        .split_first()
        .ok_or_else(|| spawn_err(std::io::Error::other("the hook's command is empty")))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its request fails below with its own words.
        let _ = writeln!(stdin, "{request}");
    }
    // Read both pipes on threads, so a chatty hook cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let deadline = ferry_hypervisor::wait::deadline_in(Duration::from_secs(hook.timeout_s));
    let exited = ferry_hypervisor::wait::poll_until(deadline, Duration::from_millis(20), || {
        child.try_wait().transpose()
    });
    let status = match exited {
        Some(s) => s.map_err(spawn_err)?,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::Timeout {
                name: hook.name.clone(),
                secs: hook.timeout_s,
            });
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        return Err(HookError::Failed {
            name: hook.name.clone(),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(stdout)
}

/// Ask the hook for a volume of `bytes` for `guest`'s `disk` on inventory host `host`.
pub fn create(
    hook: &Hook,
    host: &str,
    guest: &str,
    disk: &str,
    bytes: u64,
) -> Result<String, HookError> {
    let req = serde_json::json!({
        "action": "create", "host": host, "guest": guest, "disk": disk, "bytes": bytes,
    });
    let stdout = call(hook, &req)?;
    #[derive(Deserialize)]
    struct Answer {
        path: String,
    }
    match serde_json::from_str::<Answer>(stdout.trim()) {
        Ok(a) if a.path.starts_with('/') => Ok(a.path),
        _ => Err(HookError::BadAnswer {
            name: hook.name.clone(),
            stdout: stdout.trim().to_string(),
        }),
    }
}

/// Give a hook's volume back.
pub fn delete(hook: &Hook, host: &str, path: &str) -> Result<(), HookError> {
    call(
        hook,
        &serde_json::json!({"action": "delete", "host": host, "path": path}),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_s: u64) -> Hook {
        Hook {
            name: "test-hook".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            timeout_s,
        }
    }

    #[test]
    fn a_hook_gets_its_request_on_stdin_and_answers_a_path() {
        // The hook echoes the fields it was given into the path it answers.
        let h = sh(
            r#"read -r req; b=$(echo "$req" | sed 's/.*"bytes":\([0-9]*\).*/\1/');
               d=$(echo "$req" | sed 's/.*"disk":"\([a-z]*\)".*/\1/');
               echo "{\"path\": \"/dev/ns-$d-$b\"}""#,
            5,
        );
        assert_eq!(
            create(&h, "h2", "g", "vdb", 4096).unwrap(),
            "/dev/ns-vdb-4096"
        );
        let del = sh(
            r#"read -r req; case "$req" in *'"action":"delete"'*'"path":"/dev/x"'*) ;; *) exit 3;; esac"#,
            5,
        );
        delete(&del, "h2", "/dev/x").unwrap();
    }

    #[test]
    fn failures_say_what_the_hook_said_and_a_slow_hook_is_killed() {
        let e = create(
            &sh("echo 'no free namespace' >&2; exit 4", 5),
            "h2",
            "g",
            "vdb",
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("test-hook failed") && e.contains("no free namespace"),
            "{e}"
        );
        let e = create(&sh("echo 'not json'", 5), "h2", "g", "vdb", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not json"), "{e}");
        let e = create(
            &sh("echo '{\"path\": \"relative\"}'", 5),
            "h2",
            "g",
            "vdb",
            1,
        );
        assert!(matches!(e, Err(HookError::BadAnswer { .. })));
        let t = std::time::Instant::now();
        let e = create(&sh("sleep 30", 1), "h2", "g", "vdb", 1).unwrap_err();
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the hook was not killed"
        );
        let e = create(
            &Hook {
                name: "missing".into(),
                command: vec!["/nonexistent/hook".into()],
                timeout_s: 1,
            },
            "h2",
            "g",
            "vdb",
            1,
        )
        .unwrap_err();
        assert!(matches!(e, HookError::Spawn { .. }), "{e}");
    }
}
