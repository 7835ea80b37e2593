//! The SSM API subset in the AWS JSON 1.1 protocol: `POST /` with
//! `X-Amz-Target: AmazonSSM.<Operation>` and an `application/x-amz-json-1.1` body, so the
//! AWS CLI and SDKs work against the gateway with `--endpoint-url`.
//!
//! Errors have the AWS shape, `{"__type": "...", "message": "..."}` with HTTP 400 (413 for
//! an oversized body), so SDKs raise their usual typed exceptions. Operations the gateway
//! does not implement answer `UnknownOperationException`; the official agent polls a few
//! such APIs and tolerates 4xx answers.

use super::access::Denied;
use super::auth::Caller;
use super::documents;
use super::registry::{Grant, Outbound, Session, TokenRefusal};
pub use super::reply::ApiError;
use super::reply::CONTENT_TYPE;
use super::store::{OutputLocation, SessionRecord, SessionStatus};
use super::{epoch_secs, Shared, DEFAULT_IDLE_TIMEOUT};
use crate::protocol::document::{self, SessionDocument};
use crate::protocol::frame::MessageType;
use crate::protocol::payload::AgentTaskPayload;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The document name the console and CLI use for shells.
pub const SHELL_DOCUMENT: &str = "SSM-SessionManagerRunShell";

type ApiResult = Result<Value, ApiError>;

/// `POST /`.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(op) = target.strip_prefix("AmazonSSM.") else {
        return ApiError::new(
            "UnknownOperationException",
            format!(
                "missing or foreign X-Amz-Target header {target:?}; expected AmazonSSM.<Operation>"
            ),
        )
        .into_response();
    };
    let bytes = match super::read_body(body, shared.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response_for("/"),
    };
    let input: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return ApiError::new(
                    "SerializationException",
                    "request body must be a JSON object",
                )
                .into_response()
            }
            Err(e) => {
                return ApiError::new(
                    "SerializationException",
                    format!("request body is not valid JSON: {e}"),
                )
                .into_response()
            }
        }
    };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let result = match op {
        "StartSession" => start_session(&shared, &caller, host, &input),
        "ResumeSession" => resume_session(&shared, &caller, host, &input),
        "TerminateSession" => terminate_session(&shared, &caller, &input),
        "DescribeSessions" => describe_sessions(&shared, &caller, &input),
        "DescribeInstanceInformation" => describe_instance_information(&shared, &input),
        "UpdateInstanceInformation" => update_instance_information(&shared, &caller, &input),
        "DeregisterManagedInstance" => deregister_managed_instance(&shared, &caller, &input),
        other => Err(ApiError::new(
            "UnknownOperationException",
            format!("operation {other} is not supported by this gateway"),
        )),
    };
    match result {
        Ok(v) => ([("content-type", CONTENT_TYPE)], v.to_string()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A known path with a method it does not serve (`PUT /`, `DELETE /v1/...`).
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!(
        "{method} is not allowed on {}; the SSM API takes POST /, the message gateway POST (token) and GET (websocket) on its /v1 paths",
        uri.path()
    );
    if uri.path() == "/" {
        ApiError::with_status(
            StatusCode::METHOD_NOT_ALLOWED,
            "UnknownOperationException",
            message,
        )
        .into_response()
    } else {
        super::reply::xml_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "",
            "Message",
            &message,
        )
    }
}

/// Anything that is not a known route.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::with_status(
        StatusCode::NOT_FOUND,
        "NotFoundException",
        format!(
            "no endpoint {method} {}; this gateway serves POST / (SSM API), /v1/control-channel/{{target}} and /v1/data-channel/{{sessionId}}",
            uri.path()
        ),
    )
    .into_response()
}

// === input helpers ===

fn opt_str<'a>(input: &'a Value, key: &str) -> Result<Option<&'a str>, ApiError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::new(
            "SerializationException",
            format!("{key} must be a string"),
        )),
    }
}

fn req_str<'a>(input: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    opt_str(input, key)?.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{key}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn check_len(key: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at '{key}' failed to satisfy constraint: Member must have length less than or equal to {max}"
        )));
    }
    Ok(())
}

/// Ids we put into URLs and file names: `[A-Za-z0-9._-]`, 1–128 characters.
fn check_id(key: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value at '{key}' failed to satisfy constraint: Member must match [A-Za-z0-9._-]{{1,128}}"
        )))
    }
}

fn max_results(input: &Value, min: u64, max: u64, default: u64) -> Result<usize, ApiError> {
    let n = match input.get("MaxResults") {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => {
            n.as_u64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(format!("MaxResults must be between {min} and {max}"))
                })?
        }
        Some(_) => {
            return Err(ApiError::new(
                "SerializationException",
                "MaxResults must be a number",
            ))
        }
    };
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn next_token(input: &Value) -> Result<usize, ApiError> {
    match opt_str(input, "NextToken")? {
        None | Some("") => Ok(0),
        Some(t) => t.parse().map_err(|_| {
            ApiError::new(
                "InvalidNextToken",
                "the NextToken is not one this gateway issued",
            )
        }),
    }
}

fn stream_url(shared: &Shared, host: &str, session_id: &str) -> String {
    let base = shared.config.advertise_url.clone().unwrap_or_else(|| {
        let scheme = if shared.config.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{host}")
    });
    format!(
        "{}/v1/data-channel/{session_id}?role=publish_subscribe",
        base.trim_end_matches('/')
    )
}

// === operations ===

/// The content of the document `name`: the preferences for `SSM-SessionManagerRunShell`,
/// a built-in AWS document (see [`documents`]), or `<documents_dir>/<name>.json`. Names
/// starting with `AWS-` are only ever the built-in ones.
fn load_document(shared: &Shared, name: &str) -> Result<Value, ApiError> {
    if name == SHELL_DOCUMENT {
        return Ok(shared.config.preferences.clone());
    }
    if let Some(content) = documents::built_in(name, &shared.config.preferences) {
        return content.map_err(|e| {
            ApiError::new(
                "InvalidDocument",
                format!("document {name}: the session preferences it takes its inputs from do not resolve: {e}"),
            )
        });
    }
    if name.starts_with(documents::RESERVED_PREFIX) {
        let known: Vec<&str> = documents::names().collect();
        return Err(ApiError::new(
            "InvalidDocument",
            format!(
                "document {name} does not exist; the AWS- documents this gateway has are {}",
                known.join(", ")
            ),
        ));
    }
    let not_found = || ApiError::new("InvalidDocument", format!("document {name} does not exist"));
    let Some(dir) = &shared.config.documents_dir else {
        return Err(not_found());
    };
    // check_id already ruled out path separators; refuse dot names as well.
    if name.starts_with('.') {
        return Err(not_found());
    }
    let text = std::fs::read(dir.join(format!("{name}.json"))).map_err(|_| not_found())?;
    serde_json::from_slice(&text).map_err(|e| {
        ApiError::new(
            "InvalidDocument",
            format!("document {name} is not valid JSON: {e}"),
        )
    })
}

/// StartSession parameters arrive as `{"name": ["value", ...]}`.
fn parameters(input: &Value) -> Result<Map<String, Value>, ApiError> {
    match input.get("Parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let ok = matches!(v, Value::Array(items) if items.iter().all(Value::is_string));
                if !ok {
                    return Err(ApiError::new(
                        "SerializationException",
                        format!("Parameters.{k} must be a list of strings"),
                    ));
                }
            }
            Ok(m.clone())
        }
        Some(_) => Err(ApiError::new(
            "SerializationException",
            "Parameters must be a map",
        )),
    }
}

fn throttled(why: TokenRefusal) -> ApiError {
    ApiError::new("ThrottlingException", why.message())
}

fn denied(d: &Denied) -> ApiError {
    tracing::info!(who = %d.who, action = d.action, resource = %d.resource, "Access denied");
    ApiError::new("AccessDeniedException", d.message())
}

/// The RunAs user for this caller: what an `SSMSessionRunAs` tag on the IAM principal
/// would say, from `--run-as PRINCIPAL=USER` (or the access key id, or `*=USER`).
fn run_as_for(shared: &Shared, caller: &Caller) -> String {
    let rules = &shared.config.run_as;
    rules
        .iter()
        .find(|(who, _)| *who == caller.principal || *who == caller.access_key_id)
        .or_else(|| rules.iter().find(|(who, _)| who == "*"))
        .map(|(_, user)| user.clone())
        .unwrap_or_default()
}

fn minutes(m: Option<u32>) -> Option<Duration> {
    m.map(|m| Duration::from_secs(u64::from(m) * 60))
}

fn start_session(shared: &Shared, caller: &Caller, host: &str, input: &Value) -> ApiResult {
    let target = req_str(input, "Target")?;
    check_id("target", target)?;
    let document_name = opt_str(input, "DocumentName")?
        .filter(|s| !s.is_empty())
        .unwrap_or(SHELL_DOCUMENT);
    check_id("documentName", document_name)?;
    let reason = opt_str(input, "Reason")?.unwrap_or("");
    check_len("reason", reason, 256)?;
    let params = parameters(input)?;
    let content = load_document(shared, document_name)?;
    let doc: SessionDocument = document::resolve(&content, &params).map_err(|e| {
        ApiError::new(
            "InvalidParameters",
            format!("document {document_name}: {e}"),
        )
    })?;
    // A bad pattern is the document's fault, a value outside one the caller's. Whether
    // AWS answers InvalidParameters here is not verified (its StartSession models only
    // InvalidDocument and TargetNotConnected); SendCommand uses it for the same check.
    documents::check_allowed_patterns(&doc, &params).map_err(|e| {
        let kind = match e {
            documents::PatternError::BadPattern { .. } => "InvalidDocument",
            documents::PatternError::NoMatch { .. } => "InvalidParameters",
        };
        ApiError::new(kind, format!("document {document_name}: {e}"))
    })?;

    let session_id = caller.new_session_id();
    let owner = caller.arn(&shared.config.account_id);
    // Where the agent will put the recording (it reports the same at the end): known
    // now, so a session that ends without its agent's report still shows it.
    let mut output = OutputLocation::default();
    if !doc.inputs.s3_bucket_name.is_empty() {
        output.s3_bucket.clone_from(&doc.inputs.s3_bucket_name);
        output.s3_key = crate::delivery::s3_key(&doc.inputs.s3_key_prefix, &session_id, "log");
    }
    if !doc.inputs.cloud_watch_log_group_name.is_empty() {
        output
            .cwl_group
            .clone_from(&doc.inputs.cloud_watch_log_group_name);
        output.cwl_stream.clone_from(&session_id);
    }
    let task = AgentTaskPayload {
        session_id: session_id.clone(),
        document_name: document_name.to_owned(),
        document_content: content,
        parameters: params,
        run_as_user: run_as_for(shared, caller),
        session_owner: owner.clone(),
    };
    let frame = Shared::frame(
        MessageType::InteractiveShell,
        &task.to_mgs_payload("aws.ssm.startSession"),
    );
    let now = Instant::now();
    let mut reg = shared.reg();
    let quota = shared.config.limits.max_sessions_per_caller;
    let active = reg.active_sessions_of(&caller.principal);
    if active >= quota {
        return Err(ApiError::new(
            "ThrottlingException",
            format!("you own {active} active sessions, the most one identity may (max_sessions_per_caller); end some first"),
        ));
    }
    let control = match reg.agents.get(target) {
        None => {
            return Err(ApiError::new(
                "InvalidTarget",
                format!(
                    "{target} is not a managed node known to this gateway; start its agent first"
                ),
            ))
        }
        Some(a) => a.control.clone().ok_or_else(|| {
            ApiError::new("TargetNotConnected", format!("{target} is not connected."))
        })?,
    };
    let token = reg
        .issue_token(
            Grant::ClientData {
                session_id: session_id.clone(),
            },
            &caller.principal,
            shared.config.limits.max_tokens_per_caller,
            now,
        )
        .map_err(throttled)?;
    if !control.control(Outbound::Frame(frame)) {
        reg.redeem_token(&token, now);
        return Err(ApiError::new(
            "TargetNotConnected",
            format!("{target} is not connected."),
        ));
    }
    let record = SessionRecord {
        session_id: session_id.clone(),
        target: target.to_owned(),
        status: SessionStatus::Connecting,
        start_date: epoch_secs(SystemTime::now()),
        end_date: None,
        document_name: document_name.to_owned(),
        owner,
        principal: caller.principal.clone(),
        reason: reason.to_owned(),
        details: String::new(),
        final_task_status: String::new(),
        output,
        max_session_duration: doc
            .inputs
            .max_session_duration
            .map(|m| m.to_string())
            .unwrap_or_default(),
        idle_timeout_secs: Some(
            minutes(doc.inputs.idle_session_timeout)
                .unwrap_or(DEFAULT_IDLE_TIMEOUT)
                .as_secs(),
        ),
    };
    reg.sessions
        .insert(session_id.clone(), Session::new(record.clone(), now));
    drop(reg);
    shared.persist(&record);
    tracing::info!(session = %session_id, target, owner = %record.owner, "Session started");
    Ok(json!({
        "SessionId": session_id,
        "TokenValue": token,
        "StreamUrl": stream_url(shared, host, &session_id),
    }))
}

fn no_such_session(session_id: &str) -> ApiError {
    ApiError::new(
        "DoesNotExistException",
        format!("session {session_id} does not exist"),
    )
}

fn resume_session(shared: &Shared, caller: &Caller, host: &str, input: &Value) -> ApiResult {
    let session_id = req_str(input, "SessionId")?;
    let mut reg = shared.reg();
    let active = match reg.sessions.get(session_id) {
        None => return Err(no_such_session(session_id)),
        Some(s) => {
            shared
                .access
                .use_session(caller, "ssm:ResumeSession", session_id, &s.record.principal)
                .map_err(|d| denied(&d))?;
            s.record.status.is_active() && s.terminate_requested.is_none()
        }
    };
    // An empty token tells the official client the session is gone ("timed out").
    let token = if active {
        reg.issue_token(
            Grant::ClientData {
                session_id: session_id.to_owned(),
            },
            &caller.principal,
            shared.config.limits.max_tokens_per_caller,
            Instant::now(),
        )
        .map_err(throttled)?
    } else {
        String::new()
    };
    Ok(json!({
        "SessionId": session_id,
        "TokenValue": token,
        "StreamUrl": if active { stream_url(shared, host, session_id) } else { String::new() },
    }))
}

fn terminate_session(shared: &Shared, caller: &Caller, input: &Value) -> ApiResult {
    let session_id = req_str(input, "SessionId")?;
    {
        let reg = shared.reg();
        let s = reg
            .sessions
            .get(session_id)
            .ok_or_else(|| no_such_session(session_id))?;
        shared
            .access
            .use_session(
                caller,
                "ssm:TerminateSession",
                session_id,
                &s.record.principal,
            )
            .map_err(|d| denied(&d))?;
    }
    shared.terminate(session_id, "", "terminated by TerminateSession");
    Ok(json!({ "SessionId": session_id }))
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[.fff]Z` → epoch seconds.
fn parse_date(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.trim_end_matches('Z');
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let ss: f64 = t.next().unwrap_or("0").parse().ok()?;
    // Ranges first: they also keep the arithmetic below far from overflow.
    let in_range = (1..=9999).contains(&y)
        && (1..=12).contains(&m)
        && (1..=31).contains(&day)
        && (0..24).contains(&hh)
        && (0..60).contains(&mm)
        && (0.0..61.0).contains(&ss);
    if !in_range {
        return None;
    }
    // Days from civil (inverse of crate::timefmt::rfc3339's conversion).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[allow(clippy::cast_precision_loss)]
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn session_json(shared: &Shared, r: &SessionRecord) -> Value {
    let mut v = json!({
        "SessionId": r.session_id,
        "Target": r.target,
        "Status": r.status.as_str(),
        "StartDate": r.start_date,
        "DocumentName": r.document_name,
        "Owner": r.owner,
    });
    let obj = v.as_object_mut().expect("literal object");
    if let Some(end) = r.end_date {
        obj.insert("EndDate".into(), json!(end));
    }
    for (key, val) in [
        ("Reason", &r.reason),
        ("Details", &r.details),
        ("MaxSessionDuration", &r.max_session_duration),
    ] {
        if !val.is_empty() {
            obj.insert(key.into(), json!(val));
        }
    }
    let o = &r.output;
    let mut url = Map::new();
    if !o.s3_bucket.is_empty() {
        url.insert(
            "S3OutputUrl".into(),
            json!(format!("s3://{}/{}", o.s3_bucket, o.s3_key)),
        );
    }
    if !o.cwl_group.is_empty() {
        let region = &shared.config.region;
        url.insert(
            "CloudWatchOutputUrl".into(),
            json!(format!(
                "https://console.aws.amazon.com/cloudwatch/home?region={region}#logEventViewer:group={};stream={}",
                o.cwl_group, o.cwl_stream
            )),
        );
    }
    if !url.is_empty() {
        obj.insert("OutputUrl".into(), Value::Object(url));
    }
    v
}

fn describe_sessions(shared: &Shared, caller: &Caller, input: &Value) -> ApiResult {
    let state = req_str(input, "State")?;
    let want_active = match state {
        "Active" => true,
        "History" => false,
        other => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'state' failed to satisfy constraint: Member must satisfy enum value set: [Active, History]"
            )))
        }
    };
    let limit = max_results(input, 1, 200, 20)?;
    let start = next_token(input)?;
    let mut filters = Vec::new();
    if let Some(list) = input.get("Filters").filter(|v| !v.is_null()) {
        let Some(list) = list.as_array() else {
            return Err(ApiError::new(
                "SerializationException",
                "Filters must be a list",
            ));
        };
        for f in list {
            let key = req_str(f, "key")?;
            let value = req_str(f, "value")?;
            if !matches!(
                key,
                "InvokedAfter" | "InvokedBefore" | "Target" | "Owner" | "Status" | "SessionId"
            ) {
                return Err(ApiError::new(
                    "InvalidFilterKey",
                    format!("filter key {key} is not supported"),
                ));
            }
            if key.starts_with("Invoked") && parse_date(value).is_none() {
                return Err(ApiError::new(
                    "InvalidFilterValue",
                    format!("{key} value {value:?} is not a date like 2024-01-31T00:00:00Z"),
                ));
            }
            filters.push((key, value));
        }
    }
    let reg = shared.reg();
    let mut matching: Vec<&SessionRecord> = reg
        .sessions
        .values()
        .map(|s| &s.record)
        .filter(|r| r.status.is_active() == want_active)
        // Only the caller's own sessions (an admin's: all).
        .filter(|r| shared.access.sees_session(caller, &r.principal))
        .filter(|r| {
            filters.iter().all(|(k, v)| match *k {
                "InvokedAfter" => parse_date(v).is_some_and(|t| r.start_date >= t),
                "InvokedBefore" => parse_date(v).is_some_and(|t| r.start_date <= t),
                "Target" => r.target == *v,
                "Owner" => r.owner == *v,
                "Status" => r.status.as_str() == *v,
                _ => r.session_id == *v,
            })
        })
        .collect();
    matching.sort_by(|a, b| {
        b.start_date
            .total_cmp(&a.start_date)
            .then_with(|| a.session_id.cmp(&b.session_id))
    });
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|r| session_json(shared, r))
        .collect();
    let mut out = json!({ "Sessions": page });
    let next = start.saturating_add(limit);
    if next < matching.len() {
        out["NextToken"] = json!(next.to_string());
    }
    Ok(out)
}

fn platform_type(raw: &str) -> &'static str {
    match raw.to_ascii_lowercase().as_str() {
        "windows" => "Windows",
        "macos" | "darwin" => "MacOS",
        _ => "Linux",
    }
}

fn describe_instance_information(shared: &Shared, input: &Value) -> ApiResult {
    let limit = max_results(input, 5, 50, 50)?;
    let start = next_token(input)?;
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    for (list_key, key_field, values_field) in [
        ("InstanceInformationFilterList", "key", "valueSet"),
        ("Filters", "Key", "Values"),
    ] {
        let Some(list) = input.get(list_key).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(list) = list.as_array() else {
            return Err(ApiError::new(
                "SerializationException",
                format!("{list_key} must be a list"),
            ));
        };
        for f in list {
            let key = req_str(f, key_field)?;
            if !matches!(
                key,
                "InstanceIds" | "PingStatus" | "PlatformTypes" | "AgentVersion" | "ResourceType"
            ) {
                return Err(ApiError::new(
                    "InvalidInstanceInformationFilterValue",
                    format!("filter key {key} is not supported"),
                ));
            }
            let values = f
                .get(values_field)
                .and_then(Value::as_array)
                .map(|v| {
                    v.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            filters.push((key.to_owned(), values));
        }
    }
    let reg = shared.reg();
    let mut ids: Vec<&String> = reg.agents.keys().collect();
    ids.sort();
    let rows: Vec<Value> = ids
        .into_iter()
        .filter_map(|id| {
            let a = &reg.agents[id];
            let ping = if a.control.is_some() {
                "Online"
            } else {
                "ConnectionLost"
            };
            let platform = platform_type(&a.platform_type);
            let resource = if id.starts_with("i-") {
                "EC2Instance"
            } else {
                "ManagedInstance"
            };
            let pass = filters.iter().all(|(k, vals)| {
                let have = match k.as_str() {
                    "InstanceIds" => id.as_str(),
                    "PingStatus" => ping,
                    "PlatformTypes" => platform,
                    "AgentVersion" => a.agent_version.as_str(),
                    _ => resource,
                };
                vals.iter().any(|v| v == have)
            });
            pass.then(|| {
                let mut row = json!({
                    "InstanceId": id,
                    "PingStatus": ping,
                    "LastPingDateTime": a.last_ping.map(epoch_secs),
                    "AgentVersion": a.agent_version,
                    "IsLatestVersion": false,
                    "PlatformType": platform,
                    "PlatformName": a.platform_name,
                    "PlatformVersion": a.platform_version,
                    "ResourceType": resource,
                    "IPAddress": a.ip_address,
                    "ComputerName": a.computer_name,
                });
                // Not an AWS field: shown when two agents take turns with this id.
                if let Some(conflict) = &a.conflict {
                    row["SessionAgentConflict"] = json!(conflict);
                }
                row
            })
        })
        .collect();
    let total = rows.len();
    let page: Vec<Value> = rows.into_iter().skip(start).take(limit).collect();
    let mut out = json!({ "InstanceInformationList": page });
    let next = start.saturating_add(limit);
    if next < total {
        out["NextToken"] = json!(next.to_string());
    }
    Ok(out)
}

/// The instance-information fields an agent may set, and their AWS names.
const NODE_FIELDS: [&str; 6] = [
    "AgentVersion",
    "PlatformType",
    "PlatformName",
    "PlatformVersion",
    "ComputerName",
    "IPAddress",
];

fn update_instance_information(shared: &Shared, caller: &Caller, input: &Value) -> ApiResult {
    let id = req_str(input, "InstanceId")?;
    check_id("instanceId", id)?;
    let mut fields = Vec::new();
    for key in NODE_FIELDS {
        if let Some(v) = opt_str(input, key)? {
            check_len(key, v, super::registry::MAX_NODE_FIELD)?;
            fields.push((key, v.to_owned()));
        }
    }
    let mut reg = shared.reg();
    let registrant = reg.registrant_of(id).map(str::to_owned);
    shared
        .access
        .act_as_node(
            caller,
            "ssm:UpdateInstanceInformation",
            id,
            registrant.as_deref(),
        )
        .map_err(|d| denied(&d))?;
    let new_registration = registrant.is_none();
    if new_registration {
        reg.room_for_node(
            &caller.principal,
            id,
            shared.config.limits.max_nodes_per_caller,
        )
        .map_err(|m| ApiError::new("ThrottlingException", m))?;
    }
    let agent = reg.agents.entry(id.to_owned()).or_default();
    agent.registrant = Some(caller.principal.clone());
    for (key, value) in fields {
        let field = match key {
            "AgentVersion" => &mut agent.agent_version,
            "PlatformType" => &mut agent.platform_type,
            "PlatformName" => &mut agent.platform_name,
            "PlatformVersion" => &mut agent.platform_version,
            "ComputerName" => &mut agent.computer_name,
            _ => &mut agent.ip_address,
        };
        *field = value;
    }
    agent.last_ping = Some(SystemTime::now());
    if new_registration {
        tracing::info!(node = %id, principal = %caller.principal, "Managed node registered");
        shared.persist_nodes(&reg);
    }
    Ok(json!({}))
}

/// DeregisterManagedInstance: forgets a node and its registration (its registrant or an
/// admin), so another identity may register that id (a host re-provisioned with new
/// credentials).
fn deregister_managed_instance(shared: &Shared, caller: &Caller, input: &Value) -> ApiResult {
    let id = req_str(input, "InstanceId")?;
    let mut reg = shared.reg();
    let Some(agent) = reg.agents.get(id) else {
        return Err(ApiError::new(
            "InvalidInstanceId",
            format!("{id} is not a managed node known to this gateway"),
        ));
    };
    shared
        .access
        .deregister(caller, id, agent.registrant.as_deref())
        .map_err(|d| denied(&d))?;
    if let Some(old) = reg.agents.remove(id).and_then(|a| a.control) {
        old.control(Outbound::Close(
            1000,
            "the managed node was deregistered".into(),
        ));
    }
    shared.persist_nodes(&reg);
    // Its sessions end with it: whoever registers the id next must not find a live
    // session whose agent side it could take.
    let active: Vec<String> = reg
        .sessions
        .values()
        .filter(|s| s.record.target == id && s.record.status.is_active())
        .map(|s| s.record.session_id.clone())
        .collect();
    drop(reg);
    for sid in &active {
        shared.finish(
            sid,
            SessionStatus::Failed,
            "the managed node was deregistered",
            "the managed node was deregistered",
        );
    }
    tracing::info!(node = %id, by = %caller.principal, sessions_ended = active.len(), "Managed node deregistered");
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filter_dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0.0));
        assert_eq!(parse_date("2023-11-14T22:13:20Z"), Some(1_700_000_000.0));
        assert_eq!(parse_date("2000-02-29T00:00:00Z"), Some(951_782_400.0));
        assert_eq!(parse_date("2023-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
        assert_eq!(parse_date("2024-01-01T9999999999999999:00Z"), None);
        assert_eq!(parse_date("99999999999999-01-01"), None);
    }
}
