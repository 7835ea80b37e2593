//! Who is calling. Every request passes through `verify_layer`, which decides the
//! [`Caller`] once and hands it to the handlers (a request extension); no handler reads
//! credentials from headers itself.
//!
//! * **Open mode** (default): a SigV4 `Authorization` header is parsed, not verified, and
//!   its access key id names the caller (the *principal* is the key id); an unsigned
//!   request is the caller `anonymous`. Identities are claims: anyone who can reach the
//!   gateway can claim any key id. Ownership rules (`gateway::access`) still apply to the
//!   claimed identity, which keeps honest users apart but stops no attacker.
//! * **Strict mode** (`--strict-sigv4 --credentials FILE`, [`StrictSigV4`]) verifies every
//!   signature against the keys in an AWS-style credentials file, as AWS does: the SSM API
//!   (`POST /`, service `ssm`), the channel POSTs and the control-channel upgrade (service
//!   `ssmmessages`) must be signed and valid; a data-channel upgrade may come unsigned,
//!   because the official client sends no signature there (its single-use token from
//!   StartSession is the proof, protocol.md §13), but if it is signed the signature must
//!   be valid. Refusals carry AWS's error names and texts ([`sigv4::SigError`]). The file is
//!   read again when an unknown key shows up (at most once a second), so keys can be added
//!   or rotated without a restart. The principal of a key is its section's `principal =`
//!   value, or else the section name: several keys (an instance role's rotating
//!   credentials, say) can then be one identity, as one IAM role is in AWS.

use crate::protocol::sigv4::{self, Secret, SigError};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The principal of unsigned requests.
pub const ANONYMOUS: &str = "anonymous";

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Access key id from the signature, or `anonymous`.
    pub access_key_id: String,
    /// Who that is: the credentials file's principal in strict mode; the access key id in
    /// open mode. Sessions, nodes and quotas belong to principals.
    pub principal: String,
    /// The signature was verified (strict mode).
    pub verified: bool,
}

impl Caller {
    /// An unsigned caller.
    pub fn anonymous() -> Self {
        Self {
            access_key_id: ANONYMOUS.into(),
            principal: ANONYMOUS.into(),
            verified: false,
        }
    }

    /// Open mode: the access key id the request claims, unverified.
    pub fn claimed(headers: &HeaderMap) -> Self {
        let key = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(access_key_id)
            .unwrap_or(ANONYMOUS)
            .to_owned();
        Self {
            access_key_id: key.clone(),
            principal: key,
            verified: false,
        }
    }

    /// The Owner ARN reported by DescribeSessions and sent to the agent as SessionOwner.
    pub fn arn(&self, account_id: &str) -> String {
        principal_arn(account_id, &self.principal)
    }

    /// A session id in the AWS shape `<principal>-<17 hex digits>`.
    pub fn new_session_id(&self) -> String {
        let prefix: String = self
            .principal
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(64)
            .collect();
        let prefix = if prefix.is_empty() {
            "session".into()
        } else {
            prefix
        };
        let n: u128 = rand::random();
        format!("{prefix}-{:017x}", n & ((1u128 << 68) - 1))
    }
}

/// `arn:aws:iam::<account>:user/<principal>`.
pub fn principal_arn(account_id: &str, principal: &str) -> String {
    format!("arn:aws:iam::{account_id}:user/{principal}")
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/ssm/aws4_request, ...` → `AKID`.
/// Only ids made of `[A-Za-z0-9_-]` (1–128 chars) are accepted, so the id is safe to use
/// in ARNs, session ids and file names.
fn access_key_id(header: &str) -> Option<&str> {
    let rest = header.strip_prefix("AWS4-HMAC-SHA256")?;
    let cred = rest
        .split(',')
        .find_map(|p| p.trim().strip_prefix("Credential="))?;
    let id = cred.split('/').next()?;
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(id)
}

/// Principal names: IAM user-name characters, 1–64 of them (safe in ARNs, session ids
/// and logs).
pub fn valid_principal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// One key of the credentials file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The secret (and session token) signatures are checked against.
    pub secret: Secret,
    /// Who signs with it.
    pub principal: String,
}

/// Strict SigV4 verification: the keys it accepts, from a credentials file (or, for
/// `dev`, given in memory).
pub struct StrictSigV4 {
    path: Option<PathBuf>,
    region: String,
    keys: Mutex<(HashMap<String, Key>, Instant)>,
}

impl std::fmt::Debug for StrictSigV4 {
    // Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrictSigV4")
            .field("path", &self.path)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// How often the credentials file may be re-read for an unknown key.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What strict verification concluded about a request.
enum Verified {
    /// Signed by this key, verified.
    Signed(String),
    /// An unsigned data-channel upgrade, accepted on its token.
    UnsignedUpgrade,
}

impl StrictSigV4 {
    /// Loads `path` (AWS credentials file format); `region` is the one signatures must be
    /// scoped to.
    ///
    /// # Errors
    /// An unreadable file, a malformed one, or one without keys.
    pub fn load(path: &Path, region: &str) -> Result<Self, String> {
        let keys = read_credentials(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            region: region.to_owned(),
            keys: Mutex::new((keys, Instant::now())),
        })
    }

    /// Verification against keys held in memory only (`dev`'s per-run key).
    pub fn with_keys(keys: HashMap<String, Key>, region: &str) -> Self {
        Self {
            path: None,
            region: region.to_owned(),
            keys: Mutex::new((keys, Instant::now())),
        }
    }

    /// The key `access_key_id`, re-reading the file (rate-limited) when unknown.
    fn key(&self, access_key_id: &str) -> Option<Key> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = keys.0.get(access_key_id) {
            return Some(k.clone());
        }
        if let Some(path) = &self.path {
            if keys.1.elapsed() >= RELOAD_EVERY {
                keys.1 = Instant::now();
                match read_credentials(path) {
                    Ok(fresh) => keys.0 = fresh,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot re-read the credentials file; keeping the keys loaded before")
                    }
                }
            }
        }
        keys.0.get(access_key_id).cloned()
    }

    /// Verifies one request (service by path).
    fn check(
        &self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Verified, SigError> {
        let path = uri.path();
        let service = if path != "/" {
            "ssmmessages"
        } else if headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("EC2WindowsMessageDeliveryService."))
        {
            // The official agent polls ec2messages (Run Command) on the same endpoint;
            // verified as such, then answered "unknown operation" by the API.
            "ec2messages"
        } else {
            "ssm"
        };
        let signed = headers.contains_key(axum::http::header::AUTHORIZATION);
        if !signed && method == Method::GET && path.starts_with("/v1/data-channel/") {
            return Ok(Verified::UnsignedUpgrade);
        }
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let request = sigv4::Request {
            method: method.as_str(),
            path,
            query: uri.query().unwrap_or(""),
            headers: &pairs,
            body,
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expect = sigv4::Expect {
            region: &self.region,
            service,
        };
        sigv4::verify(&request, expect, |id| self.key(id).map(|k| k.secret), now)
            .map(Verified::Signed)
    }

    /// The caller a verified access key id stands for.
    fn caller(&self, access_key_id: String) -> Caller {
        let principal = self
            .key(&access_key_id)
            .map_or_else(|| access_key_id.clone(), |k| k.principal);
        Caller {
            access_key_id,
            principal,
            verified: true,
        }
    }
}

/// Parses an AWS credentials file: `[profile]` sections with `aws_access_key_id`,
/// `aws_secret_access_key`, optionally `aws_session_token` and `principal` (who signs
/// with the key; default: the section name); `#` and `;` start comments. Returns the
/// keys by access key id.
///
/// # Errors
/// A section without both keys, a bad principal name, a line that is not
/// `name = value`, or no keys at all.
pub fn parse_credentials(text: &str) -> Result<HashMap<String, Key>, String> {
    let mut out = HashMap::new();
    let mut section: Option<(String, HashMap<String, String>)> = None;
    let finish = |section: Option<(String, HashMap<String, String>)>,
                  out: &mut HashMap<String, Key>|
     -> Result<(), String> {
        let Some((name, mut kv)) = section else {
            return Ok(());
        };
        let id = kv.remove("aws_access_key_id");
        let secret = kv.remove("aws_secret_access_key");
        let principal = kv.remove("principal").unwrap_or_else(|| name.clone());
        if !valid_principal(&principal) {
            return Err(format!(
                "[{name}]: principal {principal:?} must be 1-64 of A-Z a-z 0-9 + = , . @ _ -"
            ));
        }
        match (id, secret) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                out.insert(
                    id,
                    Key {
                        secret: Secret {
                            secret_access_key: secret,
                            session_token: kv.remove("aws_session_token").filter(|t| !t.is_empty()),
                        },
                        principal,
                    },
                );
                Ok(())
            }
            _ => Err(format!(
                "[{name}] needs aws_access_key_id and aws_secret_access_key"
            )),
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            finish(section.take(), &mut out)?;
            section = Some((name.trim().to_owned(), HashMap::new()));
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected `name = value`", n + 1));
        };
        let Some((_, kv)) = section.as_mut() else {
            return Err(format!("line {}: a key before any [section]", n + 1));
        };
        kv.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    finish(section, &mut out)?;
    if out.is_empty() {
        return Err("no credentials in it".into());
    }
    Ok(out)
}

fn read_credentials(path: &Path) -> Result<HashMap<String, Key>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_credentials(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The middleware every request passes: decides the [`Caller`] (verifying the signature
/// in strict mode, refusing what fails), and passes the request on with the caller as an
/// extension (and, in strict mode, its body restored).
pub(crate) async fn verify_layer(
    State(shared): State<Arc<super::Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(strict) = shared.config.strict_sigv4.as_ref() else {
        let caller = Caller::claimed(request.headers());
        request.extensions_mut().insert(caller);
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        request.extensions_mut().insert(Caller::anonymous());
        return next.run(request).await;
    }
    let max_body = shared.config.max_body_bytes;
    let (mut parts, body) = request.into_parts();
    let bytes = match super::read_body(body, max_body).await {
        Ok(b) => b,
        Err(e) => return e.into_response_for(parts.uri.path()),
    };
    match strict.check(&parts.method, &parts.uri, &parts.headers, &bytes) {
        Ok(verified) => {
            let caller = match verified {
                Verified::Signed(key) => strict.caller(key),
                Verified::UnsignedUpgrade => Caller::anonymous(),
            };
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) => {
            tracing::info!(method = %parts.method, path = %parts.uri.path(), error = %e, "Refused: SigV4 verification failed");
            refusal(parts.uri.path(), &e)
        }
    }
}

/// AWS's status and error name for a refused signature, in the path's format (JSON for
/// the API, XML for the message gateway).
fn refusal(path: &str, e: &SigError) -> Response {
    let (status, kind) = match e {
        SigError::Unsigned => (StatusCode::FORBIDDEN, "MissingAuthenticationTokenException"),
        SigError::Malformed(_) | SigError::BadDate(_) | SigError::NotSigned(_) => {
            (StatusCode::BAD_REQUEST, "IncompleteSignatureException")
        }
        SigError::Expired { .. } | SigError::WrongScope { .. } | SigError::Mismatch => {
            (StatusCode::FORBIDDEN, "InvalidSignatureException")
        }
        SigError::UnknownKey(_) | SigError::BadSessionToken(_) => {
            (StatusCode::FORBIDDEN, "UnrecognizedClientException")
        }
    };
    if path == "/" {
        return super::reply::ApiError::with_status(status, kind, e.to_string()).into_response();
    }
    super::reply::xml_response(status, kind, "", "Message", &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_parse_like_aws_ones() {
        let keys = parse_credentials(
            "# test keys\n[default]\naws_access_key_id = AKID1\naws_secret_access_key=s1\n\n[temp]\nAWS_ACCESS_KEY_ID = ASIA2\naws_secret_access_key = s2\naws_session_token = tok\nprincipal = role-web\n; end\n",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["AKID1"].secret.secret_access_key, "s1");
        assert_eq!(keys["AKID1"].secret.session_token, None);
        assert_eq!(keys["AKID1"].principal, "default");
        assert_eq!(keys["ASIA2"].secret.session_token.as_deref(), Some("tok"));
        assert_eq!(keys["ASIA2"].principal, "role-web");
        for bad in [
            "",
            "[a]\naws_access_key_id = x\n",
            "aws_access_key_id = x\n",
            "[a]\njunk\n",
            "[a]\naws_access_key_id = x\naws_secret_access_key = y\nprincipal = a/b\n",
        ] {
            assert!(parse_credentials(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_the_access_key_id() {
        let h = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ssm/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";
        assert_eq!(access_key_id(h), Some("AKIDEXAMPLE"));
        assert_eq!(access_key_id("Basic Zm9v"), None);
        assert_eq!(access_key_id("AWS4-HMAC-SHA256 Credential=../x/y"), None);
    }

    #[test]
    fn session_ids_have_the_aws_shape() {
        let c = Caller {
            access_key_id: "AKIDXYZ".into(),
            principal: "AKID".into(),
            verified: true,
        };
        let id = c.new_session_id();
        let (prefix, hex) = id.rsplit_once('-').unwrap();
        assert_eq!(prefix, "AKID");
        assert_eq!(hex.len(), 17);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
