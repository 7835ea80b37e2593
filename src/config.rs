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

/// Largest session document file read, in bytes (AWS's own limit for a document's
/// content is 64 KB; the `get-document` wrapper and indentation add to it).
pub const MAX_SESSION_DOCUMENT_BYTES: usize = 256 * 1024;

/// Reads a session document file (SSM-SessionManagerRunShell, in JSON or YAML) and
/// resolves it with its parameters' defaults, as `gateway --preferences`, `dev
/// --preferences` and `doctor --document` take it: the document as JSON, and what it
/// resolves to. See [`parse_session_document`] for the forms accepted.
///
/// # Errors
/// Unreadable, larger than [`MAX_SESSION_DOCUMENT_BYTES`], neither JSON nor YAML, or not
/// a valid document; the message names the file (and the line and column of a syntax
/// error).
pub fn read_session_document(
    path: &std::path::Path,
) -> Result<(serde_json::Value, document::SessionDocument), String> {
    use std::io::Read;
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_SESSION_DOCUMENT_BYTES as u64 + 1)
                .read_to_end(&mut text)
        })
        .map_err(|e| cannot(&e))?;
    let doc = parse_session_document(&text, path)?;
    let resolved = document::resolve(&doc, &serde_json::Map::new())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((doc, resolved))
}

/// Parses a session document's text (no I/O) into its JSON form. Accepted:
///
/// * the document in JSON, or in YAML (as `aws ssm create-document --document-format
///   YAML` takes it) — told apart by content: JSON starts with `{`, anything else is
///   read as YAML (whose flow style would take JSON too, with worse messages);
/// * the output of `aws ssm get-document` (`{"Name": ..., "Content": "<the document
///   as a string>", "DocumentFormat": "JSON" | "YAML", ...}`): its `Content` is
///   unwrapped and parsed as its `DocumentFormat` says (by content when absent).
///
/// YAML aliases are expanded within a bound (serde_yaml_ng refuses a document whose
/// aliases expand past 100 times its own size, so an alias bomb costs little), after
/// the [`MAX_SESSION_DOCUMENT_BYTES`] bound on the text.
///
/// # Errors
/// Too large, not UTF-8, neither JSON nor YAML (`FILE:LINE:COLUMN: what`), or a
/// `get-document` wrapper whose `Content` is not a string or whose format is unknown.
pub fn parse_session_document(
    text: &[u8],
    path: &std::path::Path,
) -> Result<serde_json::Value, String> {
    let doc = parse_json_or_yaml(text, path, None)?;
    // `aws ssm get-document` output: a wrapper, not the document itself.
    let wrapped = doc
        .as_object()
        .filter(|o| o.contains_key("Content") && !o.contains_key("schemaVersion"));
    let Some(wrapper) = wrapped else {
        return Ok(doc);
    };
    let serde_json::Value::String(content) = &wrapper["Content"] else {
        return Err(format!(
            "{}: `Content` (of `aws ssm get-document` output) is not a string",
            path.display()
        ));
    };
    let format = match wrapper.get("DocumentFormat").and_then(|f| f.as_str()) {
        None => None,
        Some("JSON") => Some(false),
        Some("YAML") => Some(true),
        Some(other) => {
            return Err(format!(
                "{}: DocumentFormat {other:?} is not JSON or YAML",
                path.display()
            ))
        }
    };
    let inner = std::path::PathBuf::from(format!("{} (Content)", path.display()));
    parse_json_or_yaml(content.as_bytes(), &inner, format)
}

/// JSON or YAML (`yaml`: `None` decides by content) into a JSON value.
fn parse_json_or_yaml(
    text: &[u8],
    path: &std::path::Path,
    yaml: Option<bool>,
) -> Result<serde_json::Value, String> {
    if text.len() > MAX_SESSION_DOCUMENT_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SESSION_DOCUMENT_BYTES} bytes",
            path.display()
        ));
    }
    let text = std::str::from_utf8(text).map_err(|e| {
        format!(
            "{} is not UTF-8 text (byte {})",
            path.display(),
            e.valid_up_to()
        )
    })?;
    let yaml = yaml.unwrap_or_else(|| {
        !text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('{')
    });
    if yaml {
        serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
            Some(at) => format!(
                "{}:{}:{}: not a YAML document: {}",
                path.display(),
                at.line(),
                at.column(),
                one_line_yaml(&e)
            ),
            None => format!(
                "{}: not a YAML document: {}",
                path.display(),
                one_line_yaml(&e)
            ),
        })
    } else {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "{}:{}:{}: not JSON: {}",
                path.display(),
                e.line(),
                e.column(),
                // (serde_json adds " at line L column C" itself.)
                e.to_string().split(" at line ").next().unwrap_or_default()
            )
        })
    }
}

/// serde_yaml_ng's message without its own position suffix.
fn one_line_yaml(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn example(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name)
    }

    #[test]
    fn session_documents_are_read_in_json_and_yaml_alike() {
        let (json, from_json) =
            read_session_document(&example("session-preferences.example.json")).unwrap();
        let (yaml, from_yaml) =
            read_session_document(&example("session-preferences.example.yaml")).unwrap();
        assert_eq!(from_yaml, from_json);
        assert_eq!(yaml, json);
        // YAML's block style, by content (no `{` first), whatever the file is called.
        let text = "# prefs\nschemaVersion: '1.0'\nsessionType: Standard_Stream\ninputs:\n  runAsEnabled: true\n  runAsDefaultUser: deploy\n";
        let doc = parse_session_document(text.as_bytes(), Path::new("prefs.json")).unwrap();
        assert_eq!(doc["inputs"]["runAsDefaultUser"], "deploy");
        assert!(document::resolve(&doc, &serde_json::Map::new()).is_ok());
    }

    #[test]
    fn get_document_output_is_unwrapped() {
        let path = Path::new("get-document.json");
        let content = std::fs::read_to_string(example("session-preferences.example.json")).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&content).unwrap();
        let wrapper = serde_json::json!({
            "Name": "SSM-SessionManagerRunShell",
            "DocumentVersion": "1",
            "Status": "Active",
            "Content": content,
            "DocumentType": "Session",
            "DocumentFormat": "JSON",
        });
        let doc = parse_session_document(wrapper.to_string().as_bytes(), path).unwrap();
        assert_eq!(doc, expected);
        // YAML content, as `get-document --document-format YAML` returns it.
        let yaml = std::fs::read_to_string(example("session-preferences.example.yaml")).unwrap();
        let wrapper = serde_json::json!({"Name": "x", "Content": yaml, "DocumentFormat": "YAML"});
        let doc = parse_session_document(wrapper.to_string().as_bytes(), path).unwrap();
        assert_eq!(doc["inputs"]["idleSessionTimeout"], "20");
        // The wrapper's format is obeyed: YAML content said to be JSON is an error that
        // names where it was.
        let wrapper = serde_json::json!({"Content": yaml, "DocumentFormat": "JSON"});
        let e = parse_session_document(wrapper.to_string().as_bytes(), path).unwrap_err();
        assert!(
            e.starts_with("get-document.json (Content):1:1: not JSON"),
            "{e}"
        );
        for bad in [
            serde_json::json!({"Content": 5}),
            serde_json::json!({"Content": "{}", "DocumentFormat": "TEXT"}),
        ] {
            let e = parse_session_document(bad.to_string().as_bytes(), path).unwrap_err();
            assert!(e.starts_with("get-document.json: "), "{e}");
        }
    }

    #[test]
    fn bad_session_documents_are_named_with_their_position() {
        let path = Path::new("prefs");
        let e = parse_session_document(b"{\n  \"schemaVersion\": \"1.0\",\n  oops\n}", path)
            .unwrap_err();
        assert!(
            e.starts_with("prefs:3:3: not JSON: key must be a string"),
            "{e}"
        );
        let e =
            parse_session_document(b"schemaVersion: '1.0'\ninputs:\n  a: [1\n", path).unwrap_err();
        assert!(e.starts_with("prefs:"), "{e}");
        assert!(e.contains("not a YAML document"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = parse_session_document(&[b'a', b':', b' ', 0xff], path).unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
        let big = vec![b' '; MAX_SESSION_DOCUMENT_BYTES + 1];
        let e = parse_session_document(&big, path).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        // A file that is too large is not read whole.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.yaml");
        std::fs::write(&file, vec![b'#'; 4 * MAX_SESSION_DOCUMENT_BYTES]).unwrap();
        assert!(read_session_document(&file)
            .unwrap_err()
            .contains("larger than"));
    }

    /// "Billion laughs": nine levels of nine aliases would expand to 9^9 strings; the
    /// expansion bound refuses it, quickly and in little memory.
    #[test]
    fn a_yaml_alias_bomb_is_refused() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            text.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
        }
        assert!(text.len() < 1024);
        let e = parse_session_document(text.as_bytes(), Path::new("bomb.yaml")).unwrap_err();
        assert!(e.contains("repetition limit"), "{e}");
        // Deep nesting is bounded too.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = parse_session_document(format!("a: {deep}").as_bytes(), Path::new("deep.yaml"))
            .unwrap_err();
        assert!(e.contains("recursion limit"), "{e}");
        let e = parse_session_document(
            format!("{{\"a\": {deep}}}").as_bytes(),
            Path::new("deep.json"),
        )
        .unwrap_err();
        assert!(e.contains("recursion limit"), "{e}");
    }

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
