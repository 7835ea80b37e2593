//! The SSM API calls this crate makes: StartSession, ResumeSession and TerminateSession
//! for the client, UpdateInstanceInformation for the agent's heartbeat. AWS JSON 1.1 over
//! HTTP(S), `POST /` with `X-Amz-Target: AmazonSSM.<Operation>`, SigV4-signed (service
//! `ssm`) when there are credentials, unsigned otherwise (the local gateway accepts that
//! unless it runs in strict mode).
//!
//! Four calls with flat JSON do not justify aws-sdk-ssm, one of the largest SDK crates
//! (minutes of compile time on the 2-core CI for ~1,000 operations we never call); the
//! signing is the same `aws-sigv4` code the SDK uses ([`crate::sign`]).
//!
//! Must not know: websockets, frames, terminals.

use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::sign::Signer;

/// REST timeout (the agent uses the same, §1.2).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The service answered with an AWS error (`__type`, `message`).
    #[error("{kind}: {message}")]
    Service {
        /// HTTP status.
        status: u16,
        /// The error type without its namespace, e.g. `InvalidTarget`.
        kind: String,
        /// The error message (one line).
        message: String,
    },
    /// The request did not get an answer (DNS, TCP, TLS, timeout).
    #[error("{0}")]
    Transport(String),
    /// A 200 answer that is not the expected JSON.
    #[error("unexpected answer: {0}")]
    BadResponse(String),
    /// Signing or TLS set-up failed.
    #[error("{0}")]
    Setup(String),
}

/// What StartSession and ResumeSession return.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionGrant {
    /// The session.
    #[serde(default)]
    pub session_id: String,
    /// Single-use token for the data-channel open frame; empty from ResumeSession when
    /// the session is gone.
    #[serde(default)]
    pub token_value: String,
    /// `ws(s)://…/v1/data-channel/<id>?role=publish_subscribe`.
    #[serde(default)]
    pub stream_url: String,
}

impl SessionGrant {
    /// Parses a StartSession response as the AWS CLI hands it to the plugin (keys
    /// matched case-insensitively).
    ///
    /// # Errors
    /// Not JSON, or no `SessionId`/`TokenValue`/`StreamUrl`.
    pub fn from_start_response(json: &str) -> Result<Self, String> {
        let grant: Self = crate::protocol::payload::from_json(json.as_bytes(), "StartSession")
            .map_err(|e| e.to_string())?;
        for (key, value) in [
            ("SessionId", &grant.session_id),
            ("TokenValue", &grant.token_value),
            ("StreamUrl", &grant.stream_url),
        ] {
            if value.is_empty() {
                return Err(format!("the StartSession response has no {key}"));
            }
        }
        Ok(grant)
    }
}

/// An SSM API endpoint.
#[derive(Debug, Clone)]
pub struct SsmApi {
    url: reqwest::Url,
    http: reqwest::Client,
    signer: Option<Arc<Signer>>,
}

impl SsmApi {
    /// `endpoint` is `http(s)://host[:port]`; `ca_file` adds PEM CAs to the web roots.
    /// Credentials: `credentials` (access key id, secret) when given, else
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`; without any,
    /// calls are unsigned.
    ///
    /// # Errors
    /// [`ApiError::Setup`] for a bad URL or CA file.
    pub fn new(
        endpoint: &str,
        region: &str,
        ca_file: Option<&Path>,
        credentials: Option<(String, String)>,
    ) -> Result<Self, ApiError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let provider = match credentials {
            Some((id, secret)) => Some(crate::sign::static_provider(&id, &secret, None)),
            None => match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => Some(crate::sign::static_provider(
                    &id,
                    &secret,
                    get("AWS_SESSION_TOKEN"),
                )),
                _ => None,
            },
        };
        let signer =
            provider.map(|p| Arc::new(Signer::new(p, region, crate::protocol::endpoint::SSM)));
        Self::with_signer(endpoint, ca_file, signer)
    }

    /// Like [`SsmApi::new`], signing with `signer` (service `ssm`), or unsigned.
    ///
    /// # Errors
    /// [`ApiError::Setup`] for a bad URL or CA file.
    pub fn with_signer(
        endpoint: &str,
        ca_file: Option<&Path>,
        signer: Option<Arc<Signer>>,
    ) -> Result<Self, ApiError> {
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| ApiError::Setup(format!("endpoint {endpoint:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ApiError::Setup(format!(
                "endpoint {endpoint:?} must be an http:// or https:// URL"
            )));
        }
        let mut http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .use_rustls_tls();
        if let Some(path) = ca_file {
            for cert in crate::tls::read_ca_file(path).map_err(ApiError::Setup)? {
                let c = reqwest::Certificate::from_der(&cert)
                    .map_err(|e| ApiError::Setup(format!("{}: {e}", path.display())))?;
                http = http.add_root_certificate(c);
            }
        }
        let http = http
            .build()
            .map_err(|e| ApiError::Setup(format!("HTTP client: {e}")))?;
        Ok(Self { url, http, signer })
    }

    /// True when calls are SigV4-signed.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// StartSession with the given request (`Target`, and optionally `DocumentName`,
    /// `Reason`, `Parameters`).
    ///
    /// # Errors
    /// The service refused, could not be reached, or answered without a token.
    pub async fn start_session(&self, request: &Value) -> Result<SessionGrant, ApiError> {
        let v = self.call("StartSession", request).await?;
        let grant: SessionGrant = crate::protocol::payload::from_value(v, "StartSession")
            .map_err(|e| ApiError::BadResponse(e.to_string()))?;
        if grant.session_id.is_empty() || grant.token_value.is_empty() {
            return Err(ApiError::BadResponse(
                "StartSession returned no SessionId or TokenValue".into(),
            ));
        }
        Ok(grant)
    }

    /// ResumeSession: a fresh token for a session whose websocket dropped. An empty
    /// token means the session is gone.
    ///
    /// # Errors
    /// The service refused or could not be reached.
    pub async fn resume_session(&self, session_id: &str) -> Result<SessionGrant, ApiError> {
        let v = self
            .call(
                "ResumeSession",
                &serde_json::json!({ "SessionId": session_id }),
            )
            .await?;
        crate::protocol::payload::from_value(v, "ResumeSession")
            .map_err(|e| ApiError::BadResponse(e.to_string()))
    }

    /// TerminateSession.
    ///
    /// # Errors
    /// The service refused or could not be reached.
    pub async fn terminate_session(&self, session_id: &str) -> Result<(), ApiError> {
        self.call(
            "TerminateSession",
            &serde_json::json!({ "SessionId": session_id }),
        )
        .await
        .map(drop)
    }

    /// DescribeInstanceInformation; returns the response as it came.
    ///
    /// # Errors
    /// The service refused or could not be reached.
    pub async fn describe_instance_information(&self, request: &Value) -> Result<Value, ApiError> {
        self.call("DescribeInstanceInformation", request).await
    }

    /// UpdateInstanceInformation (the agent's heartbeat).
    ///
    /// # Errors
    /// The service refused or could not be reached.
    pub async fn update_instance_information(&self, request: &Value) -> Result<(), ApiError> {
        self.call("UpdateInstanceInformation", request)
            .await
            .map(drop)
    }

    /// One AWS JSON 1.1 call; returns the parsed 200 body.
    async fn call(&self, operation: &str, input: &Value) -> Result<Value, ApiError> {
        let body = input.to_string();
        let target = format!("AmazonSSM.{operation}");
        let mut req = self
            .http
            .post(self.url.clone())
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", &target);
        if let Some(signer) = &self.signer {
            let headers = [
                ("content-type", CONTENT_TYPE),
                ("x-amz-target", target.as_str()),
            ];
            let signed = signer
                .sign("POST", self.url.as_str(), &headers, body.as_bytes())
                .await
                .map_err(|e| ApiError::Setup(e.to_string()))?;
            for (k, v) in signed {
                req = req.header(k, v);
            }
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| ApiError::Transport(one_line(&crate::error_chain(&e))))?;
        let status = resp.status().as_u16();
        let error_header = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = resp
            .text()
            .await
            .map_err(|e| ApiError::Transport(one_line(&crate::error_chain(&e))))?;
        if status == 200 {
            return serde_json::from_str(&text)
                .map_err(|e| ApiError::BadResponse(format!("{operation}: {e}")));
        }
        if matches!(status, 401 | 403) {
            // Refused credentials are not reused: the next call loads fresh ones.
            if let Some(signer) = &self.signer {
                signer.forget().await;
            }
        }
        Err(service_error(status, error_header.as_deref(), &text))
    }
}

/// Builds the error for a non-200 answer: `__type` (namespace stripped) and `message`
/// from the JSON body, else the `x-amzn-errortype` header, else the HTTP status.
fn service_error(status: u16, header: Option<&str>, body: &str) -> ApiError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let field = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(str::to_owned)
    };
    let kind = field(&["__type", "code", "Code"])
        .or_else(|| header.map(str::to_owned))
        .map(|t| {
            // "com.amazonaws.ssm#InvalidTarget" and "InvalidTarget:http://…" → "InvalidTarget".
            let t = t.rsplit('#').next().unwrap_or(&t).to_owned();
            t.split(':').next().unwrap_or(&t).to_owned()
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("HTTP{status}"));
    let message = field(&["message", "Message", "errorMessage"])
        .unwrap_or_else(|| body.trim().chars().take(300).collect());
    ApiError::Service {
        status,
        kind,
        message: one_line(&message),
    }
}

/// Collapses whitespace runs (newlines included) to single spaces.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_errors_become_type_and_message() {
        let e = service_error(
            400,
            None,
            r#"{"__type":"com.amazonaws.ssm#InvalidTarget","message":"no such\nnode"}"#,
        );
        assert_eq!(e.to_string(), "InvalidTarget: no such node");
        let e = service_error(
            403,
            Some("AccessDeniedException:http://internal.amazon.com/"),
            r#"{"Message":"denied"}"#,
        );
        assert_eq!(e.to_string(), "AccessDeniedException: denied");
        let e = service_error(502, None, "<html>bad gateway</html>");
        assert_eq!(e.to_string(), "HTTP502: <html>bad gateway</html>");
    }

    #[test]
    fn start_responses_need_all_three_keys() {
        let g = SessionGrant::from_start_response(
            r#"{"sessionId":"s-1","TokenValue":"t","StreamUrl":"ws://h/v1/data-channel/s-1"}"#,
        )
        .unwrap();
        assert_eq!(g.session_id, "s-1");
        assert!(SessionGrant::from_start_response(r#"{"SessionId":"s"}"#)
            .unwrap_err()
            .contains("TokenValue"));
        assert!(SessionGrant::from_start_response("nope").is_err());
    }
}
