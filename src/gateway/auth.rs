//! Who is calling. In this version the gateway accepts any credentials: a SigV4
//! `Authorization` header is parsed (not verified) and its access key id names the caller;
//! an unsigned request is the caller `anonymous`. Signature verification is a later,
//! opt-in strict mode.

use axum::http::HeaderMap;

/// The caller of an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Access key id from the signature, or `anonymous`.
    pub access_key_id: String,
}

impl Caller {
    /// Reads the caller from request headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let access_key_id = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(access_key_id)
            .unwrap_or("anonymous")
            .to_owned();
        Self { access_key_id }
    }

    /// The Owner ARN reported by DescribeSessions and sent to the agent as SessionOwner.
    pub fn arn(&self, account_id: &str) -> String {
        format!("arn:aws:iam::{account_id}:user/{}", self.access_key_id)
    }

    /// A session id in the AWS shape `<caller>-<17 hex digits>`.
    pub fn new_session_id(&self) -> String {
        let prefix: String = self
            .access_key_id
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

#[cfg(test)]
mod tests {
    use super::*;

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
            access_key_id: "AKID".into(),
        };
        let id = c.new_session_id();
        let (prefix, hex) = id.rsplit_once('-').unwrap();
        assert_eq!(prefix, "AKID");
        assert_eq!(hex.len(), 17);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
