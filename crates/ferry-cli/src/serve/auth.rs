//! Who may do what: bearer tokens from a file, each `read` (look) or `operate` (also start,
//! abort, release). No anonymous access to anything but the page's static assets.

use std::path::Path;

use anyhow::{bail, Context};

/// What a route needs, and what a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Look: plans, runs, hosts, events, metrics.
    Read,
    /// Act: start, abort, release, recover.
    Operate,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
        }
    }
}

/// The tokens file, read once at start.
#[derive(Clone)]
pub struct Tokens {
    tokens: Vec<(Scope, String)>,
}

impl std::fmt::Debug for Tokens {
    // Never a token in a log line, even by accident.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} token(s))", self.tokens.len())
    }
}

/// A token is at least this long: a guessable one is refused at start.
pub const MIN_TOKEN: usize = 16;

impl Tokens {
    /// Parse the file's text: `read TOKEN` or `operate TOKEN` a line, `#` comments, blank
    /// lines ignored.
    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let mut tokens = vec![];
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(scope), Some(token), None) = (words.next(), words.next(), words.next())
            else {
                bail!(
                    "line {}: expected `read TOKEN` or `operate TOKEN` (the token is not shown)",
                    n + 1
                );
            };
            let scope = match scope {
                "read" => Scope::Read,
                "operate" => Scope::Operate,
                other => bail!(
                    "line {}: `{other}` is not a scope: `read` or `operate`",
                    n + 1
                ),
            };
            if token.len() < MIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                bail!(
                    "line {}: a token is at least {MIN_TOKEN} visible ASCII characters (e.g. \
                     `openssl rand -hex 24`)",
                    n + 1
                );
            }
            tokens.push((scope, token.to_string()));
        }
        if tokens.is_empty() {
            bail!(
                "no token in it: no one could use the daemon (one `operate TOKEN` line at least)"
            );
        }
        Ok(Tokens { tokens })
    }

    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let text =
            crate::input::read_text(path, "tokens file", 1 << 20, crate::input::Accept::File)?;
        Self::parse(&text).with_context(|| format!("in the tokens file {}", path.display()))
    }

    /// The scope a presented token grants (compared in time independent of where it differs).
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        self.tokens
            .iter()
            .filter(|(_, t)| same(t.as_bytes(), presented.as_bytes()))
            .map(|(s, _)| *s)
            .max()
    }
}

/// Equal bytes, in a time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one the daemon does not know: 401.
    Unauthenticated,
    /// A known token without the scope: 403.
    Forbidden { has: Scope, needs: Scope },
}

/// Check an `Authorization` header's value against what a route needs.
pub fn check(tokens: &Tokens, header: Option<&str>, needs: Scope) -> Result<Scope, Denied> {
    let presented = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(Denied::Unauthenticated)?;
    let has = tokens.scope_of(presented).ok_or(Denied::Unauthenticated)?;
    if has < needs {
        return Err(Denied::Forbidden { has, needs });
    }
    Ok(has)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "r-0123456789abcdef";
    const O: &str = "o-0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "# ops\nread {R}\n\noperate {O}  # the scheduler\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_read_token_reads_and_an_operate_token_does_everything() {
        let t = tokens();
        let bearer = |x: &str| format!("Bearer {x}");
        assert_eq!(check(&t, Some(&bearer(R)), Scope::Read), Ok(Scope::Read));
        assert_eq!(
            check(&t, Some(&bearer(R)), Scope::Operate),
            Err(Denied::Forbidden {
                has: Scope::Read,
                needs: Scope::Operate
            })
        );
        assert_eq!(
            check(&t, Some(&bearer(O)), Scope::Operate),
            Ok(Scope::Operate)
        );
        assert_eq!(check(&t, Some(&bearer(O)), Scope::Read), Ok(Scope::Operate));
    }

    #[test]
    fn no_token_or_an_unknown_one_is_unauthenticated() {
        let t = tokens();
        for h in [
            None,
            Some(R),
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer r-0123456789abcdeF"),
            Some("Bearer r-0123456789abcde"),
        ] {
            assert_eq!(
                check(&t, h, Scope::Read),
                Err(Denied::Unauthenticated),
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_bad_tokens_file_is_refused_without_showing_a_token() {
        for (text, says) in [
            ("", "no token"),
            ("# only a comment\n", "no token"),
            ("write abcdefabcdefabcdef\n", "`write` is not a scope"),
            ("read short\n", "at least 16"),
            ("read abcdefabcdefabcdef extra\n", "line 1: expected"),
            ("read\n", "line 1: expected"),
        ] {
            let e = Tokens::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(!e.contains("abcdefabcdef"), "{e}");
        }
        assert!(!format!("{:?}", tokens()).contains(R));
    }
}
