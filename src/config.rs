//! Configuration errors and the small parsers every command's configuration shares.
//!
//! A leaf: `cli` (the command line) and the domain modules that validate their own
//! configuration (`agent::config`, `client`, `gateway::args`) all import it, and it
//! imports none of them, so the command layer and the domains do not import each other.

use crate::protocol::document;
use std::time::Duration;

/// The local gateway's default address as a URL (`session-agent gateway`'s default
/// `--listen`): `run`'s default endpoint, and what `connect` suggests for a local gateway.
pub const LOCAL_GATEWAY_URL: &str = "http://127.0.0.1:8080";

/// Invalid configuration: names the key (flag) and why, and where in which file when it
/// came from one (`FILE:LINE:COLUMN: key: reason`, as compilers print it, so that editors
/// and terminals can jump there).
#[derive(Debug, thiserror::Error)]
#[error("{}{key}: {reason}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The offending flag or key.
    pub key: String,
    /// What is wrong and what to do.
    pub reason: String,
    /// The file, line and column of the offending value, when it came from a file.
    pub location: Option<Location>,
}

/// A place in a configuration file: line and column count from 1, the column in
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub path: std::path::PathBuf,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1, in characters.
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `text` (clamped to its end, and to a
    /// character boundary).
    pub fn at(path: &std::path::Path, text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            path: path.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

pub(crate) fn config_error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
        location: None,
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
///
/// # Errors
/// Anything else, with an example of what works.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 2m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?} has an unknown unit; use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Reads a session document file (SSM-SessionManagerRunShell JSON) and resolves it with
/// its parameters' defaults, as `gateway --preferences` and `doctor --document` take it:
/// the JSON as written, and what it resolves to.
///
/// # Errors
/// Unreadable, not JSON, or not a valid document; the message names the file.
pub fn read_session_document(
    path: &std::path::Path,
) -> Result<(serde_json::Value, document::SessionDocument), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let resolved = document::resolve(&doc, &serde_json::Map::new())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((doc, resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
