//! The AWS-managed Session documents the gateway knows without `--documents-dir`, and the
//! `allowedPattern` check StartSession applies to supplied parameters.
//!
//! # The built-in documents
//!
//! Selected by StartSession `DocumentName`; the JSON is in `src/gateway/documents/`.
//! None of these documents is in a public AWS repository, so each was rebuilt from public
//! copies (protocol-sessions.md §4 has the evidence):
//!
//! | Document | sessionType | Where the content comes from |
//! |---|---|---|
//! | `AWS-StartPortForwardingSession` | `Port` | Parameter names, defaults (`"80"`, `"0"`), descriptions, both `allowedPattern`s and the properties as in the many public Terraform copies said to be copies of the managed document, and the AWS user guide's CLI example; consistent, secondhand |
//! | `AWS-StartPortForwardingSessionToRemoteHost` | `Port` | Parameter names from public CLI usage; the port parameters as in the document above; `host` **not verified**: made required (no default, as "ToRemoteHost" needs a host) with a pattern of our own, `^[A-Za-z0-9._:-]{1,253}$` (DNS names, IPv4 and unbracketed IPv6 literals); its description is ours |
//! | `AWS-StartSSHSession` | `Port` | `portNumber` default `"22"` and description from a public `describe-document` output; the 1–65535 `allowedPattern` from public copies; properties `{"portNumber"}` without `type`, so the client forwards stdin/stdout |
//! | `AWS-StartInteractiveCommand` | `InteractiveCommands` | Parameter name `command` from public CLI usage; description, `runAsElevated: false` and the per-OS layout **not verified** (the agent reads `properties.<os>.commands`) |
//! | `AWS-StartNonInteractiveCommand` | `NonInteractiveCommands` | As `AWS-StartInteractiveCommand`; whether AWS sets `separateOutputStream` is unknown, so it is left out (the agent's default, false) |
//!
//! Names starting with `AWS-` are reserved for these, as AWS reserves the prefix for its own
//! documents: a `--documents-dir` file named `AWS-*.json` is never read (the gateway warns
//! about it at start), and an `AWS-` name that is not built in does not exist.
//!
//! **Preferences.** Whether AWS merges the account's session preferences (the `inputs` of
//! `SSM-SessionManagerRunShell`) into these documents is not known. The gateway does: each
//! built-in document is sent with the preferences' `inputs` (resolved with the
//! preferences' own parameter defaults), so command sessions are recorded and delivered
//! (S3, CloudWatch, KMS, RunAs) like a shell, and a Port session carries the same idle
//! timeout and logging settings for the agent's record of the tunnel (upstream's agent
//! logs nothing for Port sessions and ignores them).
//!
//! # `allowedPattern`
//!
//! [`check_allowed_patterns`] runs after [`document::resolve`] in StartSession, for every
//! document (built in, preferences or `--documents-dir`):
//! * Every definition's pattern must compile, supplied or not: a bad one is the document's
//!   fault ([`PatternError::BadPattern`], answered `InvalidDocument`). Compilation is bounded
//!   ([`MAX_PATTERN_LEN`], [`PATTERN_SIZE_LIMIT`], [`PATTERN_NEST_LIMIT`]) so a hostile
//!   document cannot make the gateway allocate without bound; matching is linear time.
//! * A supplied value must match the **whole** pattern (as if written `\A(?:pattern)\z`),
//!   whether or not the pattern anchors itself (whether AWS anchors is not verified; its
//!   own patterns are written `^…$`, so they behave the same either way). The
//!   value checked is the one [`resolve`](crate::protocol::document::resolve) substitutes:
//!   a list of strings given for a `String` parameter is checked joined with `\n`, so a
//!   second element cannot slip past a `^…$` pattern; a `StringList` is checked element by
//!   element. Defaults are not checked (the document's author chose them).
//! * Syntax is the `regex` crate's, which accepts RE2 (Go) syntax; one difference: `\d`,
//!   `\w`, `\s` are Unicode-aware here and ASCII-only in Go, so they accept slightly more:
//!   non-ASCII characters, and vertical tab for `\s`; no ASCII punctuation.
//! * A value that does not match is [`PatternError::NoMatch`], naming the parameter and the
//!   pattern (answered `InvalidParameters`, the type this gateway already gives parameter
//!   errors and AWS gives them in SendCommand; what AWS StartSession answers is not verified:
//!   its API reference lists only InvalidDocument, TargetNotConnected, InternalServerError).
//!
//! The agent does not re-check patterns: it receives the document from the service, and
//! upstream's agent does not either.

use crate::protocol::document::{self, DocumentError, SessionDocument};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

/// The name prefix AWS reserves for its own documents.
pub const RESERVED_PREFIX: &str = "AWS-";

/// The built-in documents: name and JSON content.
const BUILT_IN: [(&str, &str); 5] = [
    (
        "AWS-StartPortForwardingSession",
        include_str!("documents/AWS-StartPortForwardingSession.json"),
    ),
    (
        "AWS-StartPortForwardingSessionToRemoteHost",
        include_str!("documents/AWS-StartPortForwardingSessionToRemoteHost.json"),
    ),
    (
        "AWS-StartSSHSession",
        include_str!("documents/AWS-StartSSHSession.json"),
    ),
    (
        "AWS-StartInteractiveCommand",
        include_str!("documents/AWS-StartInteractiveCommand.json"),
    ),
    (
        "AWS-StartNonInteractiveCommand",
        include_str!("documents/AWS-StartNonInteractiveCommand.json"),
    ),
];

/// Longest `allowedPattern` accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;
/// Compiled-program size limit for one pattern (`RegexBuilder::size_limit`); the lazy DFA
/// cache gets the same.
pub const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Deepest nesting of groups and repetitions accepted in a pattern.
pub const PATTERN_NEST_LIMIT: u32 = 64;
/// How much of a refused value an error message quotes.
const QUOTED_VALUE_CHARS: usize = 100;

/// The names of the built-in documents.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILT_IN.iter().map(|(name, _)| *name)
}

/// Whether `name` is one of the built-in documents.
pub fn is_built_in(name: &str) -> bool {
    names().any(|n| n == name)
}

/// The built-in document `name` (`None` if there is none), its `inputs` taken from
/// `preferences` (the `SSM-SessionManagerRunShell` document) resolved with its defaults.
///
/// # Errors
/// The preferences do not resolve.
pub fn built_in(name: &str, preferences: &Value) -> Option<Result<Value, DocumentError>> {
    let (_, text) = BUILT_IN.iter().find(|(n, _)| *n == name)?;
    let mut content: Value = serde_json::from_str(text).expect("built-in documents are JSON");
    Some(document::resolve(preferences, &Map::new()).map(|prefs| {
        content["inputs"] = prefs.inputs.to_json();
        content
    }))
}

/// Files in `dir` the gateway never reads because their name is reserved
/// (`AWS-*.json`), sorted; an unreadable directory gives none.
pub fn ignored_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(RESERVED_PREFIX) && n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Why StartSession's parameters failed an `allowedPattern`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The document's pattern does not compile (bad syntax, too long, too large).
    #[error("parameters.{name}.allowedPattern: not a usable regular expression: {reason}")]
    BadPattern { name: String, reason: String },
    /// A supplied value does not match its parameter's pattern.
    #[error("Parameters.{name}: value {value:?} does not match the allowedPattern {pattern}")]
    NoMatch {
        name: String,
        value: String,
        pattern: String,
    },
}

/// Compiles `pattern` for a whole-value match, within the limits above.
fn compile(name: &str, pattern: &str) -> Result<Regex, PatternError> {
    let bad = |reason: String| PatternError::BadPattern {
        name: name.to_owned(),
        reason,
    };
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(bad(format!(
            "{} bytes long, the most accepted is {MAX_PATTERN_LEN}",
            pattern.len()
        )));
    }
    let build = |p: &str| {
        RegexBuilder::new(p)
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .nest_limit(PATTERN_NEST_LIMIT)
            .build()
            .map_err(|e| bad(e.to_string().replace('\n', " ")))
    };
    // The pattern alone first: wrapped, an unbalanced `)` in it could close our group.
    build(pattern)?;
    build(&format!(r"\A(?:{pattern})\z"))
}

/// Checks the supplied `parameters` (StartSession's, as given to
/// [`document::resolve`]) against the `allowedPattern`s of `doc`, and that every pattern
/// of `doc` compiles. See the module documentation.
///
/// # Errors
/// [`PatternError`] for the first bad pattern or refused value, by parameter name.
pub fn check_allowed_patterns(
    doc: &SessionDocument,
    parameters: &Map<String, Value>,
) -> Result<(), PatternError> {
    for (name, def) in &doc.parameters {
        let Some(pattern) = &def.allowed_pattern else {
            continue;
        };
        let re = compile(name, pattern)?;
        let Some(supplied) = parameters.get(name).filter(|v| !v.is_null()) else {
            continue;
        };
        let string_list = def.param_type.as_deref() == Some("StringList");
        let texts: Vec<String> = match supplied {
            Value::Array(items) if string_list => items.iter().map(text).collect(),
            Value::Array(items) => {
                vec![items.iter().map(text).collect::<Vec<_>>().join("\n")]
            }
            other => vec![text(other)],
        };
        if let Some(value) = texts.into_iter().find(|t| !re.is_match(t)) {
            return Err(PatternError::NoMatch {
                name: name.clone(),
                value: quote(&value),
                pattern: pattern.clone(),
            });
        }
    }
    Ok(())
}

/// A JSON value as the text substituted for it: strings as they are, others as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// At most [`QUOTED_VALUE_CHARS`] characters of `value`, marked when cut.
fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTED_VALUE_CHARS) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::document::{resolve, SessionType};
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn prefs() -> Value {
        SessionDocument::default_shell().to_json()
    }

    /// Resolves a built-in document as StartSession does, patterns included.
    fn start(name: &str, supplied: Value) -> Result<SessionDocument, String> {
        let content = built_in(name, &prefs()).unwrap().unwrap();
        let supplied = params(supplied);
        let doc = resolve(&content, &supplied).map_err(|e| e.to_string())?;
        check_allowed_patterns(&doc, &supplied).map_err(|e| e.to_string())?;
        Ok(doc)
    }

    #[test]
    fn every_built_in_document_parses_and_resolves() {
        let typical = [
            ("AWS-StartPortForwardingSession", json!({})),
            (
                "AWS-StartPortForwardingSessionToRemoteHost",
                json!({"host": ["h"]}),
            ),
            ("AWS-StartSSHSession", json!({})),
            ("AWS-StartInteractiveCommand", json!({"command": ["ls"]})),
            ("AWS-StartNonInteractiveCommand", json!({"command": ["ls"]})),
        ];
        assert_eq!(
            names().collect::<Vec<_>>(),
            typical.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        );
        for (name, supplied) in typical {
            assert!(name.starts_with(RESERVED_PREFIX) && is_built_in(name));
            let doc = start(name, supplied).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!doc.description.is_empty());
            assert!(doc.properties.is_object(), "{name}");
        }
        assert!(built_in("AWS-NoSuchDocument", &prefs()).is_none());
        assert!(!is_built_in("SSM-SessionManagerRunShell"));
    }

    #[test]
    fn port_forwarding_substitutes_values_and_fills_defaults() {
        let doc = start(
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["8080"]}),
        )
        .unwrap();
        assert_eq!(doc.session_type, SessionType::Port);
        assert_eq!(
            doc.properties,
            json!({"portNumber": "8080", "type": "LocalPortForwarding", "localPortNumber": "0"})
        );
        let doc = start("AWS-StartPortForwardingSession", json!({})).unwrap();
        assert_eq!(doc.properties["portNumber"], "80");
        let doc = start(
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["65535"], "localPortNumber": ["56789"]}),
        )
        .unwrap();
        assert_eq!(doc.properties["localPortNumber"], "56789");
    }

    #[test]
    fn remote_host_needs_a_host_and_carries_it() {
        let doc = start(
            "AWS-StartPortForwardingSessionToRemoteHost",
            json!({"host": ["db.internal.example"], "portNumber": ["5432"], "localPortNumber": ["15432"]}),
        )
        .unwrap();
        assert_eq!(
            doc.properties,
            json!({"portNumber": "5432", "type": "LocalPortForwarding", "host": "db.internal.example", "localPortNumber": "15432"})
        );
        for host in ["10.0.0.5", "fd00::1"] {
            let doc = start(
                "AWS-StartPortForwardingSessionToRemoteHost",
                json!({ "host": [host] }),
            )
            .unwrap();
            assert_eq!(doc.properties["host"], host);
            assert_eq!(doc.properties["portNumber"], "80");
        }
        let err = start("AWS-StartPortForwardingSessionToRemoteHost", json!({})).unwrap_err();
        assert!(err.contains("host"), "{err}");
        let err = start(
            "AWS-StartPortForwardingSessionToRemoteHost",
            json!({"host": ["db; rm -rf /"]}),
        )
        .unwrap_err();
        assert!(err.contains("Parameters.host"), "{err}");
    }

    #[test]
    fn ssh_document_forwards_stdio_without_a_type() {
        let doc = start("AWS-StartSSHSession", json!({})).unwrap();
        assert_eq!(doc.session_type, SessionType::Port);
        assert_eq!(doc.properties, json!({"portNumber": "22"}));
        let doc = start("AWS-StartSSHSession", json!({"portNumber": ["2222"]})).unwrap();
        assert_eq!(doc.properties, json!({"portNumber": "2222"}));
    }

    #[test]
    fn command_documents_put_the_command_on_every_platform() {
        for (name, kind) in [
            (
                "AWS-StartInteractiveCommand",
                SessionType::InteractiveCommands,
            ),
            (
                "AWS-StartNonInteractiveCommand",
                SessionType::NonInteractiveCommands,
            ),
        ] {
            let doc = start(name, json!({"command": ["tail -f /var/log/syslog"]})).unwrap();
            assert_eq!(doc.session_type, kind);
            for os in ["linux", "windows", "macos"] {
                assert_eq!(
                    doc.properties[os],
                    json!({"commands": "tail -f /var/log/syslog", "runAsElevated": false}),
                    "{name} {os}"
                );
            }
            let err = start(name, json!({})).unwrap_err();
            assert!(err.contains("parameters.command"), "{name}: {err}");
        }
    }

    #[test]
    fn built_in_documents_carry_the_preferences_inputs() {
        let preferences = json!({
            "schemaVersion": "1.0",
            "sessionType": "Standard_Stream",
            "parameters": {"bucket": {"type": "String", "default": "logs-bucket"}},
            "inputs": {"s3BucketName": "{{ bucket }}", "idleSessionTimeout": "5", "kmsKeyId": "alias/k"}
        });
        for name in names() {
            let content = built_in(name, &preferences).unwrap().unwrap();
            // Resolved with the preferences' defaults: no placeholder left behind.
            assert_eq!(content["inputs"]["s3BucketName"], "logs-bucket", "{name}");
            assert_eq!(content["inputs"]["idleSessionTimeout"], "5", "{name}");
            assert_eq!(content["inputs"]["kmsKeyId"], "alias/k", "{name}");
        }
        let doc = start("AWS-StartSSHSession", json!({})).unwrap();
        assert!(!doc.encryption_enabled());
        let bad = json!({"schemaVersion": "2.0", "sessionType": "Standard_Stream"});
        assert!(built_in("AWS-StartSSHSession", &bad).unwrap().is_err());
    }

    #[test]
    fn values_outside_the_pattern_are_refused_by_name_and_pattern() {
        for bad in ["99999", "0", "80; rm -rf /", "080", "80\n", " 80", ""] {
            let err = start(
                "AWS-StartPortForwardingSession",
                json!({ "portNumber": [bad] }),
            )
            .unwrap_err();
            assert!(
                err.starts_with("Parameters.portNumber: value ")
                    && err.contains("does not match the allowedPattern ^([1-9]|"),
                "{bad:?}: {err}"
            );
        }
        // Two values for a String parameter are checked as the joined text.
        let err = start(
            "AWS-StartPortForwardingSession",
            json!({"portNumber": ["80", "81"]}),
        )
        .unwrap_err();
        assert!(err.contains(r#""80\n81""#), "{err}");
        // localPortNumber allows 0, portNumber does not.
        start(
            "AWS-StartPortForwardingSession",
            json!({"localPortNumber": ["0"]}),
        )
        .unwrap();
        // A long value is quoted cut short.
        let err = start(
            "AWS-StartSSHSession",
            json!({"portNumber": ["9".repeat(10_000)]}),
        )
        .unwrap_err();
        assert!(err.len() < 400 && err.contains("..."), "{err}");
    }

    fn custom(pattern: &str, kind: &str) -> SessionDocument {
        let content = json!({
            "schemaVersion": "1.0",
            "sessionType": "Port",
            "parameters": {"p": {"type": kind, "default": "x", "allowedPattern": pattern}},
            "properties": {"portNumber": "{{ p }}"}
        });
        resolve(&content, &Map::new()).unwrap()
    }

    #[test]
    fn patterns_match_the_whole_value() {
        let doc = custom("[0-9]+", "String");
        check_allowed_patterns(&doc, &params(json!({"p": ["123"]}))).unwrap();
        let err = check_allowed_patterns(&doc, &params(json!({"p": ["12a"]}))).unwrap_err();
        assert!(matches!(err, PatternError::NoMatch { .. }), "{err}");
        // Alternation binds inside the anchors.
        let doc = custom("a|ab", "String");
        check_allowed_patterns(&doc, &params(json!({"p": ["ab"]}))).unwrap();
        assert!(check_allowed_patterns(&doc, &params(json!({"p": ["abc"]}))).is_err());
        // A StringList is checked element by element.
        let doc = custom("^[a-z]+$", "StringList");
        check_allowed_patterns(&doc, &params(json!({"p": ["ab", "cd"]}))).unwrap();
        assert!(check_allowed_patterns(&doc, &params(json!({"p": ["ab", "c d"]}))).is_err());
        // Unsupplied (default) values are not checked.
        let doc = custom("^[0-9]+$", "String");
        check_allowed_patterns(&doc, &Map::new()).unwrap();
    }

    #[test]
    fn bad_and_hostile_patterns_are_refused_as_the_documents_fault() {
        for pattern in [
            "(unclosed",
            "a)|(b",
            r"(?<=x)y",
            "((((a{1000}){1000}){1000}){1000})",
            &"a".repeat(MAX_PATTERN_LEN + 1),
            &format!("{}a{}", "(".repeat(200), ")".repeat(200)),
        ] {
            let doc = custom(pattern, "String");
            // Refused even when the parameter is not supplied.
            let err = check_allowed_patterns(&doc, &Map::new()).unwrap_err();
            match &err {
                PatternError::BadPattern { name, .. } => assert_eq!(name, "p"),
                other => panic!("{pattern:.40}: {other}"),
            }
            assert!(
                err.to_string()
                    .starts_with("parameters.p.allowedPattern: not a usable"),
                "{err}"
            );
        }
    }

    #[test]
    fn reserved_files_in_the_documents_dir_are_listed_as_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "AWS-StartSSHSession.json",
            "AWS-Mine.json",
            "Mine.json",
            "AWS-notes.txt",
        ] {
            std::fs::write(dir.path().join(f), "{}").unwrap();
        }
        assert_eq!(
            ignored_files(dir.path()),
            ["AWS-Mine.json", "AWS-StartSSHSession.json"]
        );
        assert!(ignored_files(&dir.path().join("missing")).is_empty());
    }
}
