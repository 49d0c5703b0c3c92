//! Presenting a plan: the human text, the JSON, the equivalent `virsh migrate` line, the XML
//! diff. The planner ([`crate::plan`]) decides; this module only shows what it decided.

use crate::plan::{Decision, Plan};

/// The files the equivalent virsh command reads.
#[derive(Debug, Clone)]
pub struct XmlFiles {
    pub dest_xml: String,
    pub persist_xml: Option<String>,
}

impl XmlFiles {
    /// The given file names, or `GUEST-target.xml` / `GUEST-target-persistent.xml`; the
    /// persistent file only when the plan has a persistent XML.
    pub fn for_plan(plan: &Plan, dest_xml: Option<String>, persist_xml: Option<String>) -> Self {
        XmlFiles {
            dest_xml: dest_xml.unwrap_or_else(|| format!("{}-target.xml", plan.domain)),
            persist_xml: plan.persist_xml.as_ref().map(|_| {
                persist_xml.unwrap_or_else(|| format!("{}-target-persistent.xml", plan.domain))
            }),
        }
    }
}

/// The unified diff (2 lines of context) of a rewrite, made from its edits in linear time: the
/// edits never add or remove a line break, so line N of `a` is line N of `b`, and only the lines
/// an edit touches differ. (A general diff algorithm costs time quadratic in the number of
/// changed lines: 50,000 mapped disks took half a minute.)
pub fn edits_diff(
    a: &str,
    b: &str,
    ranges: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
    from: &str,
    to: &str,
) -> String {
    use std::fmt::Write;
    let starts = |t: &str| -> Vec<usize> {
        std::iter::once(0)
            .chain(t.match_indices('\n').map(|(i, _)| i + 1))
            .filter(|&i| i < t.len())
            .collect()
    };
    let (la, lb) = (starts(a), starts(b));
    if la.len() != lb.len() {
        return unified_diff(a, b, from, to);
    }
    let line_of = |starts: &[usize], at: usize| starts.partition_point(|&s| s <= at).max(1) - 1;
    let mut changed: Vec<usize> = Vec::new();
    for (ir, _) in ranges {
        let first = line_of(&la, ir.start);
        let last = line_of(&la, ir.end.max(ir.start + 1) - 1);
        changed.extend(first..=last);
    }
    changed.sort_unstable();
    changed.dedup();
    if changed.is_empty() {
        return String::new();
    }
    let line = |t: &'_ str, starts: &[usize], i: usize| -> String {
        let end = starts.get(i + 1).copied().unwrap_or(t.len());
        t[starts[i]..end].to_string()
    };
    let n = la.len();
    const CONTEXT: usize = 2;
    let mut out = format!("--- {from}\n+++ {to}\n");
    let mut i = 0;
    while i < changed.len() {
        // A hunk: changed lines whose context windows touch.
        let mut j = i;
        while j + 1 < changed.len() && changed[j + 1] <= changed[j] + 2 * CONTEXT + 1 {
            j += 1;
        }
        let lo = changed[i].saturating_sub(CONTEXT);
        let hi = (changed[j] + CONTEXT).min(n - 1);
        let span = |start: usize, len: usize| {
            if len == 1 {
                format!("{}", start + 1)
            } else {
                format!("{},{len}", start + 1)
            }
        };
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            span(lo, hi - lo + 1),
            span(lo, hi - lo + 1)
        );
        let mut k = lo;
        while k <= hi {
            if changed[i..=j].binary_search(&k).is_ok() {
                // A run of changed lines: all old, then all new.
                let run_end = (k..=hi)
                    .take_while(|x| changed[i..=j].binary_search(x).is_ok())
                    .last()
                    .unwrap_or(k);
                for x in k..=run_end {
                    out.push('-');
                    out.push_str(&line(a, &la, x));
                }
                for x in k..=run_end {
                    out.push('+');
                    out.push_str(&line(b, &lb, x));
                }
                k = run_end + 1;
            } else {
                out.push(' ');
                out.push_str(&line(a, &la, k));
                k += 1;
            }
        }
        i = j + 1;
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The general unified diff (2 lines of context) of two texts.
pub fn unified_diff(a: &str, b: &str, from: &str, to: &str) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(2)
        .header(from, to)
        .to_string()
}

/// Quote `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Plan {
    /// The `virsh migrate` command that does what this plan does, runnable as printed once the
    /// XML files exist. `source_uri` adds `-c URI` when the source is not the default.
    pub fn virsh_command(&self, files: &XmlFiles, source_uri: Option<&str>) -> String {
        let mut a: Vec<String> = vec!["virsh".into()];
        if let Some(u) = source_uri {
            a.extend(["-c".into(), u.into()]);
        }
        a.push("migrate".into());
        a.extend(self.flags.set().map(|d| d.virsh.to_string()));
        if !self.migrate_disks.is_empty() {
            a.extend(["--migrate-disks".into(), self.migrate_disks.join(",")]);
        }
        a.extend(["--xml".into(), files.dest_xml.clone()]);
        if let Some(p) = &files.persist_xml {
            a.extend(["--persistent-xml".into(), p.clone()]);
        }
        if let Some(b) = self.bandwidth_per_stream_mib {
            a.extend(["--bandwidth".into(), b.to_string()]);
        }
        if let Some(u) = &self.options.migrate_uri {
            a.extend(["--migrateuri".into(), u.clone()]);
        }
        if let Some(u) = &self.options.disks_uri {
            a.extend(["--disks-uri".into(), u.clone()]);
        }
        a.push(self.domain.clone());
        a.push(self.dest_uri.clone());
        // Every argument quoted where a shell would read it otherwise: the line is pasted.
        a.iter()
            .map(|x| shell_quote(x))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The plan as a person reads it.
    pub fn render(&self, files: &XmlFiles, source_uri: Option<&str>, with_diff: bool) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Plan: migrate guest '{}' to {}",
            self.domain, self.dest_uri
        );
        let _ = writeln!(s, "\nDisks:");
        for d in &self.disks {
            let src = d.source.as_ref().map(|x| x.to_string()).unwrap_or_default();
            let dst = d
                .dest_source
                .as_ref()
                .map(|x| x.to_string())
                .unwrap_or_default();
            let arrow = if d.decision == Decision::NoMedia {
                String::new()
            } else if src == dst && d.source_type == d.dest_type {
                format!("{} {src} (unchanged)", d.source_type)
            } else {
                format!("{} {src} -> {} {dst}", d.source_type, d.dest_type)
            };
            let mut size = d
                .bytes_to_copy
                .map(|b| format!(", {}", human_bytes(b)))
                .unwrap_or_default();
            if let Some(n) = d.dest_slice {
                size.push_str(&format!(", into a storage slice of the first {n} bytes"));
            }
            let _ = writeln!(
                s,
                "  {:<6} {:<8} {arrow}\n  {:<6} {:<8} why: {}{size}",
                d.target,
                d.decision.as_str(),
                "",
                "",
                d.reason
            );
        }
        let md = if self.migrate_disks.is_empty() {
            "(none: no disk is copied)".to_string()
        } else {
            self.migrate_disks.join(", ")
        };
        let _ = writeln!(s, "\nmigrate_disks: {md}");
        let _ = writeln!(s, "flags: {}", self.flags.names().join(" | "));
        if let (Some(total), Some(per)) =
            (self.options.bandwidth_mib, self.bandwidth_per_stream_mib)
        {
            let _ = writeln!(
                s,
                "bandwidth: {total} MiB/s in all ({per} MiB/s per stream: libvirt applies the cap \
                 to each of the {} disk mirror(s))",
                self.migrate_disks.len().max(1)
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let _ = writeln!(
            s,
            "\nEquivalent virsh command:\n  {}",
            self.virsh_command(files, source_uri)
        );
        if with_diff {
            let _ = writeln!(s, "\nChanges to the live XML:\n{}", self.diff);
            if let Some(d) = &self.persist_diff {
                let _ = writeln!(s, "Changes to the persistent XML:\n{d}");
            }
        }
        s
    }

    /// The plan as one JSON object, with the virsh command line.
    pub fn to_json(&self, files: &XmlFiles, source_uri: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("flag_names".into(), self.flags.names().into());
            o.insert("virsh".into(), self.virsh_command(files, source_uri).into());
        }
        v
    }
}

/// Bytes in the largest binary unit that keeps the figure at least 1.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Text from outside (a guest's name, a journal's message) made inert for a terminal: every
/// control character, newlines included, is shown escaped (`\n`, `\u{1b}`), so it can neither
/// forge a line nor drive the terminal. JSON output is exact and never goes through this.
pub fn inert(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod inert_tests {
    use super::inert;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(inert("lab-guest"), "lab-guest");
        assert_eq!(inert("a\nb"), "a\\nb");
        assert_eq!(inert("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(inert("tab\there\r"), "tab\\there\\r");
        assert_eq!(inert("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(inert("café ✓"), "café ✓");
        assert!(!inert("x\u{7}\u{7f}").chars().any(char::is_control));
    }
}
