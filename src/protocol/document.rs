//! The Session Manager *session document*: the `DocumentContent` object of an
//! `interactive_shell` message (spec §1.7.1, §9), its parameter substitution and the typed
//! `inputs` the agent acts on (§5.1, §6.2, §6.3, §8).
//!
//! Pure code: no I/O, no clocks, no environment. [`resolve`] turns the JSON object plus the
//! message's `Parameters` map into a [`SessionDocument`]; [`SessionDocument::to_json`] goes back.
//!
//! Rules:
//! * Document keys (`schemaVersion`, `sessionType`, `inputs`, ...) are matched exactly as AWS
//!   spells them; unknown keys are ignored, and a JSON `null` counts as an absent key.
//! * `schemaVersion` must be the string `"1.0"`; `sessionType` must be one of [`SessionType`].
//! * Supplied parameters must be defined in the document's `parameters`. A value given as an
//!   array of strings (as AWS sends them, `{"command":["ls"]}`) becomes its single element, or
//!   its elements joined with `\n` when there are several, unless the parameter's `type` is
//!   `StringList` (kept as an array). String values of `Boolean` / `Integer` parameters become
//!   JSON booleans / numbers. A supplied `null` counts as not supplied. A defined parameter
//!   that is neither supplied nor has a `default` is an error, as AWS treats it as required.
//! * Supplied values (not defaults) are checked against `allowedValues`. `allowedPattern` is
//!   kept but **not checked here** (this module stays free of a regex engine): the gateway's
//!   StartSession checks it, after [`resolve`], in `gateway::documents::check_allowed_patterns`
//!   (whole-value match, bounded compilation). The agent does not re-check it, as upstream's
//!   does not: the document comes from the service, which has.
//! * `{{ name }}` (spaces optional, `name` made of `[A-Za-z0-9_]`) is replaced in every string
//!   of `inputs` and `properties`, with the supplied value or else the definition's `default`.
//!   When a string is exactly one placeholder, it is replaced by the typed value (a boolean
//!   stays a boolean); inside a longer string a value is inserted as text (arrays of strings
//!   joined with `\n`, other non-strings as JSON). A name that is not defined is an error.
//!   Replacement is a single pass: substituted text is not scanned again for parameters.
//!   Other `{{...}}` text (e.g. `{{.State}}` in a command) is left alone.
//! * `{{ssm:name}}` / `{{ssm-secure:name}}` Parameter Store references cannot be resolved
//!   without I/O: they are left verbatim and listed by [`SessionDocument::ssm_references`]. The
//!   caller fetches them and calls [`resolve_with_ssm`] with the values.
//! * `inputs` (§9): string-bools accept Go `ParseBool` spellings, `""` (= false) and JSON
//!   booleans; `cloudWatchStreamingEnabled` only accepts a JSON boolean; `idleSessionTimeout`
//!   (1–60) and `maxSessionDuration` (1–1440) are minutes given as strings (or numbers), `""` =
//!   unset. Absent keys take defaults, unknown ones (e.g. legacy `cloudWatchLogGroup`) are
//!   ignored, a wrong JSON type is an error.
//! * Every [`DocumentError`] names the offending key (`inputs.kmsKeyId`, `Parameters.command`
//!   for a supplied parameter, `parameters.command` for its definition).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use serde_json::{json, Map, Value};

/// The only session-document `schemaVersion` the agent accepts.
pub const SUPPORTED_SCHEMA_VERSION: &str = "1.0";
/// Name of the standard shell document built by [`SessionDocument::default_shell`].
pub const DEFAULT_SHELL_DOCUMENT_NAME: &str = "SSM-SessionManagerRunShell";
/// Accepted `inputs.idleSessionTimeout`, in minutes (AWS documentation).
pub const IDLE_SESSION_TIMEOUT_RANGE: RangeInclusive<u32> = 1..=60;
/// Accepted `inputs.maxSessionDuration`, in minutes (AWS documentation).
pub const MAX_SESSION_DURATION_RANGE: RangeInclusive<u32> = 1..=1440;

/// Why a session document was rejected. `Display` always starts with the offending key:
/// a dotted path into the document (`inputs.kmsKeyId`, `parameters.port.type`), or
/// `Parameters.<name>` for a value supplied in the `interactive_shell` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// A value has the wrong JSON type; `found` describes it, e.g. `the string "true"`.
    #[error("{key}: expected {expected}, got {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A required key is absent.
    #[error("{key}: required key is missing")]
    Missing { key: String },
    /// `schemaVersion` is not `"1.0"`.
    #[error("schemaVersion: unsupported version {0:?}, only \"1.0\" is accepted")]
    UnsupportedSchemaVersion(String),
    /// `sessionType` is not one of [`SessionType`].
    #[error("sessionType: unknown session type {0:?}")]
    UnknownSessionType(String),
    /// A value of the right JSON type that cannot be used (bad boolean, minutes out of range,
    /// a value outside `allowedValues`).
    #[error("{key}: expected {expected}, got {found:?}")]
    InvalidValue {
        key: String,
        expected: String,
        found: String,
    },
    /// A `{{ name }}` placeholder at `key` names a parameter the document does not define.
    #[error("{key}: placeholder refers to undefined parameter {name:?}")]
    UndefinedParameter { key: String, name: String },
    /// A supplied parameter is not defined by the document (AWS rejects these).
    #[error("Parameters.{0}: supplied parameter is not defined by the document")]
    UnknownParameter(String),
    /// A parameter without `default` was not supplied.
    #[error("parameters.{0}: no value supplied and no default")]
    MissingParameter(String),
}

/// The document's `sessionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionType {
    /// `Standard_Stream`: an interactive shell.
    StandardStream,
    /// `InteractiveCommands`: `properties.<os>.commands` under a PTY.
    InteractiveCommands,
    /// `NonInteractiveCommands`: `properties.<os>.commands` without a PTY, exit code reported.
    NonInteractiveCommands,
    /// `Port`: port forwarding.
    Port,
}

impl SessionType {
    /// The wire spelling, e.g. `Standard_Stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardStream => "Standard_Stream",
            Self::InteractiveCommands => "InteractiveCommands",
            Self::NonInteractiveCommands => "NonInteractiveCommands",
            Self::Port => "Port",
        }
    }

    /// Parses the wire spelling (exact, case-sensitive).
    pub fn from_wire(s: &str) -> Option<Self> {
        Some(match s {
            "Standard_Stream" => Self::StandardStream,
            "InteractiveCommands" => Self::InteractiveCommands,
            "NonInteractiveCommands" => Self::NonInteractiveCommands,
            "Port" => Self::Port,
            _ => return None,
        })
    }

    /// Whether this session type always runs the handshake, KMS or not (§5.1).
    pub fn requires_handshake(self) -> bool {
        matches!(self, Self::NonInteractiveCommands | Self::Port)
    }
}

impl fmt::Display for SessionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The per-OS keys of `properties`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// `linux`
    Linux,
    /// `windows`
    Windows,
    /// `macos`
    MacOs,
}

impl Platform {
    /// The key under `properties`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Windows => "windows",
            Self::MacOs => "macos",
        }
    }
}

/// `inputs.shellProfile`: text typed into the shell right after it starts (§6.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellProfile {
    /// Windows profile (each `\n`-separated line followed by `\r`).
    pub windows: String,
    /// Linux profile (written once, followed by `\n`).
    pub linux: String,
}

/// The typed `inputs` object (§9); `Default` is everything empty / false / unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionInputs {
    /// `s3BucketName`; empty = no S3 upload.
    pub s3_bucket_name: String,
    /// `s3KeyPrefix`.
    pub s3_key_prefix: String,
    /// `s3EncryptionEnabled`: require bucket default encryption.
    pub s3_encryption_enabled: bool,
    /// `cloudWatchLogGroupName`; empty = no CloudWatch Logs.
    pub cloud_watch_log_group_name: String,
    /// `cloudWatchEncryptionEnabled`: require a KMS-encrypted log group.
    pub cloud_watch_encryption_enabled: bool,
    /// `cloudWatchStreamingEnabled`: stream instead of uploading at the end.
    pub cloud_watch_streaming_enabled: bool,
    /// `kmsKeyId`; non-empty enables session encryption (not for `Port`).
    pub kms_key_id: String,
    /// `runAsEnabled`: run as the RunAs user instead of `ssm-user`.
    pub run_as_enabled: bool,
    /// `runAsDefaultUser`: RunAs user when the IAM principal has no tag.
    pub run_as_default_user: String,
    /// `idleSessionTimeout`, minutes (enforced by the service, not the agent).
    pub idle_session_timeout: Option<u32>,
    /// `maxSessionDuration`, minutes (enforced by the service, not the agent).
    pub max_session_duration: Option<u32>,
    /// `shellProfile`.
    pub shell_profile: ShellProfile,
}

impl SessionInputs {
    /// Parses an `inputs` object (after substitution); `null` gives the defaults.
    pub fn from_json(inputs: &Value) -> Result<Self, DocumentError> {
        let obj = match inputs {
            Value::Null => return Ok(Self::default()),
            Value::Object(obj) => obj,
            other => return Err(wrong_type("inputs", "a JSON object", other)),
        };
        let shell_profile = match field(obj, "shellProfile") {
            None => ShellProfile::default(),
            Some(Value::Object(p)) => ShellProfile {
                windows: string(p, "inputs.shellProfile.", "windows")?,
                linux: string(p, "inputs.shellProfile.", "linux")?,
            },
            Some(other) => return Err(wrong_type("inputs.shellProfile", "a JSON object", other)),
        };
        let streaming = match field(obj, "cloudWatchStreamingEnabled") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                let key = "inputs.cloudWatchStreamingEnabled";
                return Err(wrong_type(key, "a JSON boolean", other));
            }
        };
        Ok(Self {
            s3_bucket_name: string(obj, "inputs.", "s3BucketName")?,
            s3_key_prefix: string(obj, "inputs.", "s3KeyPrefix")?,
            s3_encryption_enabled: lenient_bool(obj, "s3EncryptionEnabled")?,
            cloud_watch_log_group_name: string(obj, "inputs.", "cloudWatchLogGroupName")?,
            cloud_watch_encryption_enabled: lenient_bool(obj, "cloudWatchEncryptionEnabled")?,
            cloud_watch_streaming_enabled: streaming,
            kms_key_id: string(obj, "inputs.", "kmsKeyId")?,
            run_as_enabled: lenient_bool(obj, "runAsEnabled")?,
            run_as_default_user: string(obj, "inputs.", "runAsDefaultUser")?,
            idle_session_timeout: minutes(obj, "idleSessionTimeout", IDLE_SESSION_TIMEOUT_RANGE)?,
            max_session_duration: minutes(obj, "maxSessionDuration", MAX_SESSION_DURATION_RANGE)?,
            shell_profile,
        })
    }

    /// Renders the `inputs` object as AWS spells it (minutes as strings, `""` when unset).
    pub fn to_json(&self) -> Value {
        let minutes = |m: Option<u32>| m.map(|m| m.to_string()).unwrap_or_default();
        json!({
            "s3BucketName": self.s3_bucket_name,
            "s3KeyPrefix": self.s3_key_prefix,
            "s3EncryptionEnabled": self.s3_encryption_enabled,
            "cloudWatchLogGroupName": self.cloud_watch_log_group_name,
            "cloudWatchEncryptionEnabled": self.cloud_watch_encryption_enabled,
            "cloudWatchStreamingEnabled": self.cloud_watch_streaming_enabled,
            "kmsKeyId": self.kms_key_id,
            "runAsEnabled": self.run_as_enabled,
            "runAsDefaultUser": self.run_as_default_user,
            "idleSessionTimeout": minutes(self.idle_session_timeout),
            "maxSessionDuration": minutes(self.max_session_duration),
            "shellProfile": {"windows": self.shell_profile.windows, "linux": self.shell_profile.linux},
        })
    }
}

/// One entry of the document's `parameters` object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParameterDefinition {
    /// `type` (`String`, `StringList`, `Boolean`, `Integer`, ...); absent means `String`.
    pub param_type: Option<String>,
    /// `default`; a parameter without one must be supplied.
    pub default: Option<Value>,
    /// `description`.
    pub description: Option<String>,
    /// `allowedValues`; empty = unrestricted. Checked for supplied values only.
    pub allowed_values: Vec<String>,
    /// `allowedPattern` (Go RE2 syntax): kept, not checked here; the gateway checks it
    /// (`gateway::documents::check_allowed_patterns`).
    pub allowed_pattern: Option<String>,
}

impl ParameterDefinition {
    fn from_json(name: &str, value: &Value) -> Result<Self, DocumentError> {
        let prefix = format!("parameters.{name}.");
        let Value::Object(obj) = value else {
            return Err(wrong_type(
                &format!("parameters.{name}"),
                "a JSON object",
                value,
            ));
        };
        let allowed_values = match field(obj, "allowedValues") {
            None => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                items.iter().map(as_text).collect()
            }
            Some(other) => {
                let key = format!("{prefix}allowedValues");
                return Err(wrong_type(&key, "an array of strings", other));
            }
        };
        Ok(Self {
            param_type: opt_string(obj, &prefix, "type")?,
            default: field(obj, "default").cloned(),
            description: opt_string(obj, &prefix, "description")?,
            allowed_values,
            allowed_pattern: opt_string(obj, &prefix, "allowedPattern")?,
        })
    }

    /// Renders the definition back to its JSON object.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        let strings = [
            ("type", &self.param_type),
            ("description", &self.description),
            ("allowedPattern", &self.allowed_pattern),
        ];
        for (key, value) in strings {
            if let Some(v) = value {
                obj.insert(key.into(), v.as_str().into());
            }
        }
        if let Some(default) = &self.default {
            obj.insert("default".into(), default.clone());
        }
        if !self.allowed_values.is_empty() {
            obj.insert("allowedValues".into(), self.allowed_values.clone().into());
        }
        Value::Object(obj)
    }

    /// Normalises, checks and types a supplied (non-null) value.
    fn accept(&self, name: &str, supplied: &Value) -> Result<Value, DocumentError> {
        let kind = self.param_type.as_deref().unwrap_or("String");
        let value = match supplied {
            Value::Array(items) if kind != "StringList" && items.iter().all(Value::is_string) => {
                Value::String(as_text(supplied))
            }
            other => other.clone(),
        };
        let invalid = |expected: &str, found: String| DocumentError::InvalidValue {
            key: format!("Parameters.{name}"),
            expected: expected.into(),
            found,
        };
        let texts = match &value {
            Value::Array(items) => items.iter().map(as_text).collect(),
            other => vec![as_text(other)],
        };
        let allowed =
            |t: &String| self.allowed_values.is_empty() || self.allowed_values.contains(t);
        if let Some(text) = texts.into_iter().find(|t| !allowed(t)) {
            return Err(invalid("one of the allowedValues", text));
        }
        Ok(match (kind, value) {
            ("Boolean", Value::String(s)) => {
                Value::Bool(parse_go_bool(&s).ok_or_else(|| invalid("a boolean", s.clone()))?)
            }
            ("Integer", Value::String(s)) => match s.trim().parse::<i64>() {
                Ok(n) => n.into(),
                Err(_) => return Err(invalid("an integer", s)),
            },
            (_, value) => value,
        })
    }
}

/// A Parameter Store reference left verbatim in the document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SsmReference {
    /// The parameter name (or ARN) after `ssm:` / `ssm-secure:`.
    pub name: String,
    /// Written `{{ssm-secure:...}}`: a SecureString, fetch with decryption.
    pub secure: bool,
}

/// A resolved session document.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDocument {
    /// `description` (not substituted; empty when absent).
    pub description: String,
    /// `sessionType`.
    pub session_type: SessionType,
    /// `inputs`, after substitution.
    pub inputs: SessionInputs,
    /// `parameters` definitions by name.
    pub parameters: BTreeMap<String, ParameterDefinition>,
    /// `properties` after substitution (`Null` when absent).
    pub properties: Value,
    ssm_references: Vec<SsmReference>,
}

impl SessionDocument {
    /// The standard `SSM-SessionManagerRunShell` document: a `Standard_Stream` shell with all
    /// inputs empty / false / unset, for a gateway with no document configured.
    pub fn default_shell() -> Self {
        Self {
            description: "Session Manager shell preferences".into(),
            session_type: SessionType::StandardStream,
            inputs: SessionInputs::default(),
            parameters: BTreeMap::new(),
            properties: Value::Null,
            ssm_references: Vec::new(),
        }
    }

    /// Renders the document as a `DocumentContent` object that [`resolve`] reads back;
    /// `parameters` / `properties` are omitted when empty / null.
    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "schemaVersion": SUPPORTED_SCHEMA_VERSION,
            "description": self.description,
            "sessionType": self.session_type.as_str(),
            "inputs": self.inputs.to_json(),
        });
        if !self.parameters.is_empty() {
            let defs = self
                .parameters
                .iter()
                .map(|(k, d)| (k.clone(), d.to_json()));
            doc["parameters"] = Value::Object(defs.collect());
        }
        if !self.properties.is_null() {
            doc["properties"] = self.properties.clone();
        }
        doc
    }

    /// Parameter Store references still verbatim in `inputs` / `properties`, sorted and
    /// deduplicated. The caller fetches them and calls [`resolve_with_ssm`].
    pub fn ssm_references(&self) -> &[SsmReference] {
        &self.ssm_references
    }

    /// `properties.<platform>.commands` (for `InteractiveCommands` /
    /// `NonInteractiveCommands`); an array of strings is joined with `\n`.
    pub fn commands(&self, platform: Platform) -> Option<String> {
        match self.properties.get(platform.key())?.get("commands")? {
            v @ (Value::String(_) | Value::Array(_)) => Some(as_text(v)),
            _ => None,
        }
    }

    /// Session encryption is on: `kmsKeyId` non-empty and the session is not `Port` (§5.1).
    pub fn encryption_enabled(&self) -> bool {
        !self.inputs.kms_key_id.is_empty() && self.session_type != SessionType::Port
    }

    /// The handshake runs: required by the session type, or encryption is on (§5.1).
    pub fn requires_handshake(&self) -> bool {
        self.session_type.requires_handshake() || self.encryption_enabled()
    }
}

/// Parses `DocumentContent` and substitutes the supplied `Parameters`; Parameter Store
/// references are left verbatim (see [`SessionDocument::ssm_references`]).
pub fn resolve(
    content: &Value,
    parameters: &Map<String, Value>,
) -> Result<SessionDocument, DocumentError> {
    resolve_with_ssm(content, parameters, &BTreeMap::new())
}

/// Like [`resolve`], also replacing `{{ssm:name}}` / `{{ssm-secure:name}}` by
/// `ssm_values[name]`; references without a value stay verbatim and listed.
pub fn resolve_with_ssm(
    content: &Value,
    parameters: &Map<String, Value>,
    ssm_values: &BTreeMap<String, String>,
) -> Result<SessionDocument, DocumentError> {
    let Value::Object(doc) = content else {
        return Err(wrong_type("DocumentContent", "a JSON object", content));
    };
    let version = required_string(doc, "schemaVersion")?;
    if version != SUPPORTED_SCHEMA_VERSION {
        return Err(DocumentError::UnsupportedSchemaVersion(version.into()));
    }
    let session_type = required_string(doc, "sessionType")?;
    let session_type = SessionType::from_wire(session_type)
        .ok_or_else(|| DocumentError::UnknownSessionType(session_type.into()))?;
    let description = string(doc, "", "description")?;
    let definitions: BTreeMap<_, _> = match field(doc, "parameters") {
        None => BTreeMap::new(),
        Some(Value::Object(defs)) => defs
            .iter()
            .map(|(name, d)| Ok((name.clone(), ParameterDefinition::from_json(name, d)?)))
            .collect::<Result<_, DocumentError>>()?,
        Some(other) => return Err(wrong_type("parameters", "a JSON object", other)),
    };
    if let Some(name) = parameters.keys().find(|k| !definitions.contains_key(*k)) {
        return Err(DocumentError::UnknownParameter(name.clone()));
    }
    let mut values = BTreeMap::new();
    for (name, def) in &definitions {
        let value = match parameters.get(name).filter(|v| !v.is_null()) {
            Some(supplied) => def.accept(name, supplied)?,
            None => def
                .default
                .clone()
                .filter(|v| !v.is_null())
                .ok_or_else(|| DocumentError::MissingParameter(name.clone()))?,
        };
        values.insert(name.as_str(), value);
    }

    let mut refs = Vec::new();
    let mut expand = |key: &str| -> Result<Value, DocumentError> {
        let raw = field(doc, key).cloned().unwrap_or_default();
        let with_params = substitute(&raw, key, &mut |ph, path| match ph {
            Placeholder::Param(name) => match values.get(name) {
                Some(v) => Ok(Some(v.clone())),
                None => Err(DocumentError::UndefinedParameter {
                    key: path.into(),
                    name: name.into(),
                }),
            },
            Placeholder::Ssm { .. } => Ok(None),
        })?;
        substitute(&with_params, key, &mut |ph, _| match ph {
            Placeholder::Ssm { name, secure } => match ssm_values.get(name) {
                Some(v) => Ok(Some(v.as_str().into())),
                None => {
                    refs.push(SsmReference {
                        name: name.into(),
                        secure,
                    });
                    Ok(None)
                }
            },
            Placeholder::Param(_) => Ok(None),
        })
    };
    let inputs = SessionInputs::from_json(&expand("inputs")?)?;
    let properties = expand("properties")?;
    refs.sort();
    refs.dedup();
    Ok(SessionDocument {
        description,
        session_type,
        inputs,
        parameters: definitions,
        properties,
        ssm_references: refs,
    })
}

/// A recognised `{{ ... }}` placeholder.
enum Placeholder<'a> {
    Param(&'a str),
    Ssm { name: &'a str, secure: bool },
}

fn classify(inner: &str) -> Option<Placeholder<'_>> {
    let inner = inner.trim();
    if inner.contains(['{', '}']) {
        return None;
    }
    for (prefix, secure) in [("ssm-secure:", true), ("ssm:", false)] {
        if let Some(name) = inner.strip_prefix(prefix).map(str::trim) {
            return (!name.is_empty()).then_some(Placeholder::Ssm { name, secure });
        }
    }
    let is_name = !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_name.then_some(Placeholder::Param(inner))
}

/// Decides a placeholder found at a path: `Some(value)` replaces it, `None` keeps it verbatim.
type Replacer<'r> = dyn FnMut(Placeholder<'_>, &str) -> Result<Option<Value>, DocumentError> + 'r;

/// Rewrites every string in `value`; `path` is the dotted key used in errors.
fn substitute(
    value: &Value,
    path: &str,
    replace: &mut Replacer<'_>,
) -> Result<Value, DocumentError> {
    Ok(match value {
        Value::String(s) => expand_string(s, &mut |ph| replace(ph, path))?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| substitute(v, &format!("{path}[{i}]"), replace))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(obj) => Value::Object(
            obj.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, &format!("{path}.{k}"), replace)?)))
                .collect::<Result<_, DocumentError>>()?,
        ),
        other => other.clone(),
    })
}

/// One string: a lone placeholder becomes the typed value, others are spliced in as text.
fn expand_string(
    s: &str,
    replace: &mut dyn FnMut(Placeholder<'_>) -> Result<Option<Value>, DocumentError>,
) -> Result<Value, DocumentError> {
    let whole = s
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .and_then(classify);
    if let Some(ph) = whole {
        return Ok(replace(ph)?.unwrap_or_else(|| s.into()));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        let Some(ph) = classify(&after[..close]) else {
            // Not a placeholder: keep one brace and rescan (so `{{{ x }}}` finds `{{ x }}`).
            out.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            continue;
        };
        out.push_str(&rest[..open]);
        match replace(ph)? {
            Some(v) => out.push_str(&as_text(&v)),
            None => out.push_str(&rest[open..open + close + 4]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// A value as text: strings as-is, arrays of strings joined with `\n`, the rest as JSON.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Go `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `obj[key]`, treating `null` as absent.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> DocumentError {
    let found = match found {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    };
    DocumentError::WrongType {
        key: key.into(),
        expected,
        found,
    }
}

/// A top-level string key that must be present.
fn required_string<'a>(doc: &'a Map<String, Value>, key: &str) -> Result<&'a str, DocumentError> {
    match field(doc, key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(key, "a string", other)),
        None => Err(DocumentError::Missing { key: key.into() }),
    }
}

/// A string key of `obj`; `prefix` (e.g. `inputs.`) completes the key named in errors.
fn opt_string(
    obj: &Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<Option<String>, DocumentError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(&format!("{prefix}{key}"), "a string", other)),
    }
}

fn string(obj: &Map<String, Value>, prefix: &str, key: &str) -> Result<String, DocumentError> {
    Ok(opt_string(obj, prefix, key)?.unwrap_or_default())
}

/// An `inputs` bool: JSON bool, `""` (false) or a Go `ParseBool` spelling.
fn lenient_bool(obj: &Map<String, Value>, key: &str) -> Result<bool, DocumentError> {
    match field(obj, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.is_empty() => Ok(false),
        Some(Value::String(s)) => parse_go_bool(s).ok_or_else(|| DocumentError::InvalidValue {
            key: format!("inputs.{key}"),
            expected: "a boolean (true/false, t/f, 1/0 or \"\")".into(),
            found: s.clone(),
        }),
        Some(other) => Err(wrong_type(
            &format!("inputs.{key}"),
            "a boolean or a string",
            other,
        )),
    }
}

/// An `inputs` duration in minutes: a string (or number) within `range`; `""` = unset.
fn minutes(
    obj: &Map<String, Value>,
    key: &str,
    range: RangeInclusive<u32>,
) -> Result<Option<u32>, DocumentError> {
    let (parsed, found) = match field(obj, key) {
        None => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => (s.trim().parse::<u32>().ok(), s.clone()),
        Some(Value::Number(n)) => (
            n.as_u64().and_then(|n| u32::try_from(n).ok()),
            n.to_string(),
        ),
        Some(other) => {
            return Err(wrong_type(
                &format!("inputs.{key}"),
                "a string of minutes",
                other,
            ));
        }
    };
    match parsed {
        Some(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(DocumentError::InvalidValue {
            key: format!("inputs.{key}"),
            expected: format!("whole minutes from {} to {}", range.start(), range.end()),
            found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn key_of(err: &DocumentError) -> String {
        err.to_string().split(": ").next().unwrap().to_string()
    }

    fn inputs(inputs: Value) -> Result<SessionInputs, DocumentError> {
        let doc =
            json!({"schemaVersion": "1.0", "sessionType": "Standard_Stream", "inputs": inputs});
        resolve(&doc, &Map::new()).map(|d| d.inputs)
    }

    fn commands_doc() -> Value {
        json!({
            "schemaVersion": "1.0",
            "sessionType": "InteractiveCommands",
            "parameters": {
                "command": {"type": "String", "description": "what to run"},
                "user": {"type": "String", "default": "ec2-user", "allowedValues": ["ec2-user", "admin"]},
                "port": {"type": "Integer", "default": 22, "allowedPattern": "^[0-9]+$"},
                "elevated": {"type": "Boolean", "default": false},
                "stream": {"type": "Boolean", "default": true},
                "timeout": {"type": "String", "default": "15"}
            },
            "inputs": {
                "runAsEnabled": "{{ elevated }}",
                "runAsDefaultUser": "{{user}}",
                "cloudWatchStreamingEnabled": "{{stream}}",
                "idleSessionTimeout": "{{  timeout  }}"
            },
            "properties": {
                "linux": {"commands": "{{ command }} -p {{port}}", "runAsElevated": "{{elevated}}"},
                "windows": {"commands": ["{{command}}", "exit"]}
            }
        })
    }

    #[test]
    fn spec_example_document() {
        let content: Value = serde_json::from_str(
            r#"{"schemaVersion":"1.0","description":"Session preferences","sessionType":"Standard_Stream",
            "inputs":{"s3BucketName":"","s3KeyPrefix":"","s3EncryptionEnabled":true,
            "cloudWatchLogGroupName":"","cloudWatchEncryptionEnabled":true,"cloudWatchStreamingEnabled":true,
            "kmsKeyId":"","runAsEnabled":false,"runAsDefaultUser":"","idleSessionTimeout":"20",
            "maxSessionDuration":"","shellProfile":{"windows":"","linux":""}}}"#,
        )
        .unwrap();
        let doc = resolve(&content, &Map::new()).unwrap();
        assert_eq!(doc.session_type, SessionType::StandardStream);
        assert_eq!(doc.description, "Session preferences");
        let expected = SessionInputs {
            s3_encryption_enabled: true,
            cloud_watch_encryption_enabled: true,
            cloud_watch_streaming_enabled: true,
            idle_session_timeout: Some(20),
            ..SessionInputs::default()
        };
        assert_eq!(doc.inputs, expected);
        assert!(doc.ssm_references().is_empty() && !doc.requires_handshake());
    }

    #[test]
    fn lenient_bool_spellings() {
        let truthy = ["1", "t", "T", "TRUE", "true", "True"].map(Value::from);
        let falsy = ["0", "f", "F", "FALSE", "false", "False", ""].map(Value::from);
        let cases = truthy
            .into_iter()
            .map(|v| (v, true))
            .chain(falsy.into_iter().map(|v| (v, false)));
        let cases = cases.chain([
            (json!(true), true),
            (json!(false), false),
            (Value::Null, false),
        ]);
        for (value, expected) in cases {
            let got = inputs(json!({
                "s3EncryptionEnabled": value, "cloudWatchEncryptionEnabled": value, "runAsEnabled": value
            }))
            .unwrap();
            let flags = [
                got.s3_encryption_enabled,
                got.cloud_watch_encryption_enabled,
                got.run_as_enabled,
            ];
            assert_eq!(flags, [expected; 3], "{value}");
        }
        let err = inputs(json!({"runAsEnabled": "yes"})).unwrap_err();
        assert_eq!(key_of(&err), "inputs.runAsEnabled");
        assert!(matches!(err, DocumentError::InvalidValue { .. }));
        let err = inputs(json!({"s3EncryptionEnabled": 1})).unwrap_err();
        assert!(matches!(err, DocumentError::WrongType { .. }), "{err}");
    }

    #[test]
    fn streaming_flag_is_strict() {
        let err = inputs(json!({"cloudWatchStreamingEnabled": "true"})).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"inputs.cloudWatchStreamingEnabled: expected a JSON boolean, got the string "true""#
        );
        assert!(inputs(json!({"cloudWatchStreamingEnabled": ""})).is_err());
        let on = inputs(json!({"cloudWatchStreamingEnabled": true})).unwrap();
        assert!(on.cloud_watch_streaming_enabled);
    }

    #[test]
    fn substitution_with_supplied_defaults_and_typed_values() {
        let params = obj(json!({"command": ["top"], "port": ["8080"], "elevated": ["True"]}));
        let doc = resolve(&commands_doc(), &params).unwrap();
        assert_eq!(
            doc.commands(Platform::Linux).as_deref(),
            Some("top -p 8080")
        );
        assert_eq!(
            doc.commands(Platform::Windows).as_deref(),
            Some("top\nexit")
        );
        assert_eq!(doc.commands(Platform::MacOs), None);
        // Lone placeholders of Boolean parameters become JSON booleans, so the strict key accepts them.
        assert_eq!(doc.properties["linux"]["runAsElevated"], json!(true));
        assert!(doc.inputs.run_as_enabled && doc.inputs.cloud_watch_streaming_enabled);
        assert_eq!(doc.inputs.run_as_default_user, "ec2-user");
        assert_eq!(doc.inputs.idle_session_timeout, Some(15));
        assert!(doc.requires_handshake() == SessionType::InteractiveCommands.requires_handshake());

        // Several array elements are joined with newlines; defaults fill the rest.
        let doc = resolve(&commands_doc(), &obj(json!({"command": ["ls", "pwd"]}))).unwrap();
        assert_eq!(
            doc.commands(Platform::Linux).as_deref(),
            Some("ls\npwd -p 22")
        );
        assert!(!doc.inputs.run_as_enabled);
    }

    #[test]
    fn placeholder_scanning() {
        let mut replace = |ph: Placeholder<'_>| match ph {
            Placeholder::Param("x") => Ok(Some(json!("X"))),
            _ => Ok(None),
        };
        let cases = [
            ("{{x}}", "X"),
            ("a{{ x }}b{{x}}", "aXbX"),
            ("{{{ x }}}", "{X}"),
            (
                "docker inspect -f '{{.State}}' {{x}}",
                "docker inspect -f '{{.State}}' X",
            ),
            ("{{ssm:/a}} {{x}} {{", "{{ssm:/a}} X {{"),
            ("{{ssm:/a}} {{ssm:/b}}", "{{ssm:/a}} {{ssm:/b}}"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                expand_string(input, &mut replace).unwrap(),
                json!(expected),
                "{input}"
            );
        }
    }

    #[test]
    fn parameter_errors() {
        let mut content = commands_doc();
        content["properties"]["linux"]["commands"] = json!("{{ nope }}");
        let err = resolve(&content, &obj(json!({"command": "ls"}))).unwrap_err();
        let msg = r#"properties.linux.commands: placeholder refers to undefined parameter "nope""#;
        assert_eq!(err.to_string(), msg);
        let extra = obj(json!({"command": "ls", "extra": "1"}));
        let err = resolve(&commands_doc(), &extra).unwrap_err();
        assert_eq!(err, DocumentError::UnknownParameter("extra".into()));
        assert_eq!(key_of(&err), "Parameters.extra");
        let err = resolve(&commands_doc(), &Map::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameters.command: no value supplied and no default"
        );
        for (name, bad) in [("user", "root"), ("elevated", "maybe"), ("port", "80a")] {
            let params = obj(json!({"command": "ls", name: bad}));
            let err = resolve(&commands_doc(), &params).unwrap_err();
            assert_eq!(key_of(&err), format!("Parameters.{name}"));
        }
        assert!(resolve(
            &commands_doc(),
            &obj(json!({"command": "ls", "user": ["admin"]}))
        )
        .is_ok());
    }

    #[test]
    fn ssm_references_are_listed_and_resolvable() {
        let content = json!({"schemaVersion": "1.0", "sessionType": "Port", "inputs": {
            "s3BucketName": "{{ssm:/logs/bucket}}",
            "kmsKeyId": "{{ ssm-secure:/kms/key }}",
            "s3KeyPrefix": "{{ssm:/logs/bucket}}/x",
        }});
        let doc = resolve(&content, &Map::new()).unwrap();
        assert_eq!(doc.inputs.s3_bucket_name, "{{ssm:/logs/bucket}}");
        let refs = [
            SsmReference {
                name: "/kms/key".into(),
                secure: true,
            },
            SsmReference {
                name: "/logs/bucket".into(),
                secure: false,
            },
        ];
        assert_eq!(doc.ssm_references(), refs);
        let values = BTreeMap::from([("/logs/bucket".to_string(), "my-bucket".to_string())]);
        let doc = resolve_with_ssm(&content, &Map::new(), &values).unwrap();
        assert_eq!(doc.inputs.s3_bucket_name, "my-bucket");
        assert_eq!(doc.inputs.s3_key_prefix, "my-bucket/x");
        assert_eq!(doc.ssm_references(), &refs[..1]);
        assert!(
            !doc.encryption_enabled(),
            "Port sessions are never encrypted"
        );
    }

    #[test]
    fn top_level_checks() {
        let check = |content: Value, expected: &str| {
            assert_eq!(
                resolve(&content, &Map::new()).unwrap_err().to_string(),
                expected
            );
        };
        let doc = |version: Value, session_type: Value| json!({"schemaVersion": version, "sessionType": session_type});
        let unsupported = r#"schemaVersion: unsupported version "2.0", only "1.0" is accepted"#;
        check(doc(json!("2.0"), json!("Port")), unsupported);
        check(
            doc(json!(1.0), json!("Port")),
            "schemaVersion: expected a string, got the number 1.0",
        );
        check(
            doc(Value::Null, json!("Port")),
            "schemaVersion: required key is missing",
        );
        check(
            doc(json!("1.0"), json!("Shell")),
            r#"sessionType: unknown session type "Shell""#,
        );
        check(
            json!([]),
            "DocumentContent: expected a JSON object, got an array",
        );
        let mut content = doc(json!("1.0"), json!("Port"));
        content["description"] = json!(3);
        check(content, "description: expected a string, got the number 3");
        for t in [
            "Standard_Stream",
            "InteractiveCommands",
            "NonInteractiveCommands",
            "Port",
        ] {
            assert_eq!(SessionType::from_wire(t).unwrap().to_string(), t);
        }
    }

    #[test]
    fn wrong_types_name_the_key() {
        let cases = [
            (json!({"s3BucketName": 5}), "inputs.s3BucketName"),
            (json!({"kmsKeyId": true}), "inputs.kmsKeyId"),
            (json!({"shellProfile": "sh"}), "inputs.shellProfile"),
            (
                json!({"shellProfile": {"linux": 1}}),
                "inputs.shellProfile.linux",
            ),
            (
                json!({"idleSessionTimeout": true}),
                "inputs.idleSessionTimeout",
            ),
            (json!([1]), "inputs"),
        ];
        for (value, key) in cases {
            let err = inputs(value).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{key}: expected ")),
                "{err}"
            );
        }
        let mut content = commands_doc();
        content["parameters"]["port"]["type"] = json!(3);
        let err = resolve(&content, &Map::new()).unwrap_err();
        assert_eq!(key_of(&err), "parameters.port.type");
        content["parameters"]["port"] = json!("x");
        assert_eq!(
            key_of(&resolve(&content, &Map::new()).unwrap_err()),
            "parameters.port"
        );
        // Unknown and legacy keys are ignored; null means absent.
        let got = inputs(json!({"cloudWatchLogGroup": 5, "other": [1], "kmsKeyId": null}));
        assert_eq!(got, Ok(SessionInputs::default()));
    }

    #[test]
    fn timeouts() {
        let parse = |idle: Value, max: Value| {
            inputs(json!({"idleSessionTimeout": idle, "maxSessionDuration": max}))
                .map(|i| (i.idle_session_timeout, i.max_session_duration))
        };
        assert_eq!(
            parse(json!("20"), json!("1440")),
            Ok((Some(20), Some(1440)))
        );
        assert_eq!(parse(json!(""), json!("")), Ok((None, None)));
        assert_eq!(parse(json!(1), json!(60)), Ok((Some(1), Some(60))));
        assert_eq!(parse(json!(" 5 "), Value::Null), Ok((Some(5), None)));
        for bad in [
            json!("0"),
            json!("61"),
            json!("abc"),
            json!("-1"),
            json!(20.5),
        ] {
            let err = parse(bad.clone(), json!("")).unwrap_err();
            assert_eq!(key_of(&err), "inputs.idleSessionTimeout", "{bad}");
        }
        let err = parse(json!(""), json!("1441")).unwrap_err();
        let msg = r#"inputs.maxSessionDuration: expected whole minutes from 1 to 1440, got "1441""#;
        assert_eq!(err.to_string(), msg);
    }

    #[test]
    fn default_shell_round_trips() {
        let doc = SessionDocument::default_shell();
        let json = doc.to_json();
        assert_eq!(json["sessionType"], "Standard_Stream");
        assert_eq!(json["inputs"]["cloudWatchStreamingEnabled"], json!(false));
        assert_eq!(json["inputs"]["idleSessionTimeout"], json!(""));
        assert_eq!(resolve(&json, &Map::new()).unwrap(), doc);

        let params = obj(json!({"command": "ls"}));
        let resolved = resolve(&commands_doc(), &params).unwrap();
        assert_eq!(resolve(&resolved.to_json(), &params).unwrap(), resolved);
    }
}
