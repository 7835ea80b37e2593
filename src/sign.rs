//! SigV4 signing of the requests this crate sends itself (protocol.md §1.2, §1.3, §2.1):
//! the message gateway's channel POSTs and websocket upgrades (service `ssmmessages`)
//! and the SSM API's JSON calls (service `ssm`). The AWS SDK signs its own calls (S3,
//! CloudWatch Logs); these are the ones it has no client for, or for which pulling in a
//! whole SDK crate would cost more than the one request it makes.
//!
//! [`Signer`] takes credentials from any `aws-config` provider (the default chain: the
//! environment, the shared config and credentials files, `credential_process`, the ECS
//! container role or the EC2 instance role through IMDSv2) and keeps them until
//! [`REFRESH_MARGIN`] before they expire, so a long-running agent renews its instance-role
//! credentials before the old ones stop working rather than after a refused request.
//! [`sign_with`] is the pure part: one request, given credentials and a clock reading.

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Credentials are renewed when they expire within this margin. EC2 hands out new
/// instance-role credentials at least 5 minutes before the old ones expire (AWS docs),
/// and the signature's own 5-minute validity must fit before the expiry too.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Signing failed: no credentials could be found, or the request could not be signed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    /// The credential chain found nothing usable.
    #[error("no AWS credentials: {0} (on EC2, attach an instance profile whose role allows ssmmessages:* and ssm:UpdateInstanceInformation; elsewhere set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")]
    NoCredentials(String),
    /// The request cannot be expressed for signing (a bad URL or header).
    #[error("cannot sign the request: {0}")]
    Request(String),
}

/// Signs requests for one service in one region, with cached credentials.
#[derive(Debug)]
pub struct Signer {
    provider: SharedCredentialsProvider,
    region: String,
    service: &'static str,
    cached: Arc<tokio::sync::Mutex<Option<Credentials>>>,
}

impl Signer {
    /// A signer for `service` in `region`, with credentials from `provider`.
    pub fn new(provider: SharedCredentialsProvider, region: &str, service: &'static str) -> Self {
        Self {
            provider,
            region: region.to_owned(),
            service,
            cached: Arc::default(),
        }
    }

    /// The same credentials and cache for another service (the agent signs `ssm` and
    /// `ssmmessages` requests with one instance role).
    pub fn for_service(&self, service: &'static str) -> Self {
        Self {
            provider: self.provider.clone(),
            region: self.region.clone(),
            service,
            cached: self.cached.clone(),
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Current credentials: the cached ones unless they expire within
    /// [`REFRESH_MARGIN`], else fresh ones from the provider.
    ///
    /// # Errors
    /// The provider found no credentials.
    pub async fn credentials(&self) -> Result<Credentials, SignError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if !expires_soon(c, SystemTime::now()) {
                return Ok(c.clone());
            }
        }
        let fresh = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| SignError::NoCredentials(crate::error_chain(&e)))?;
        tracing::debug!(
            access_key_id = %fresh.access_key_id(),
            expires = ?fresh.expiry().map(|t| crate::timefmt::rfc3339(crate::timefmt::unix_ms(t), false)),
            "AWS credentials loaded"
        );
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the cached credentials, so the next request loads fresh ones (after the
    /// service refused them as expired or invalid).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    /// The SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` for
    /// temporary credentials) for `method url` with `headers` and `body`, signed now.
    ///
    /// # Errors
    /// No credentials, or a request that cannot be signed.
    pub async fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, SignError> {
        let creds = self.credentials().await?;
        sign_with(
            &creds,
            &self.region,
            self.service,
            SystemTime::now(),
            method,
            url,
            headers,
            body,
        )
    }
}

/// Whether credentials expire within [`REFRESH_MARGIN`] of `now` (never, without an
/// expiry).
pub fn expires_soon(creds: &Credentials, now: SystemTime) -> bool {
    creds.expiry().is_some_and(|at| at <= now + REFRESH_MARGIN)
}

/// Signs one request (pure: credentials and time are parameters). `headers` are signed
/// along with `host`, which comes from the URL when not among them; the returned headers
/// are the ones to add.
///
/// # Errors
/// A request the signer cannot express (a bad URL or header value).
#[allow(clippy::too_many_arguments)]
pub fn sign_with(
    creds: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, SignError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError::Request(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError::Request(e.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| SignError::Request(e.to_string()))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Static credentials as a provider (the client's environment keys, tests).
pub fn static_provider(
    access_key_id: &str,
    secret_access_key: &str,
    session_token: Option<String>,
) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new(
        access_key_id,
        secret_access_key,
        session_token,
        None,
        "static",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sigv4::{verify, Expect, Request, Secret};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Hands out a new key on every call, expiring `lifetime` from now.
    #[derive(Debug)]
    struct Rotating {
        calls: Arc<AtomicU32>,
        lifetime: Duration,
    }

    impl ProvideCredentials for Rotating {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let expiry = SystemTime::now() + self.lifetime;
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                format!("AKIDROT{n}"),
                format!("secret{n}"),
                Some(format!("token{n}")),
                Some(expiry),
                "test",
            )))
        }
    }

    fn rotating(lifetime: Duration) -> (Signer, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let provider = SharedCredentialsProvider::new(Rotating {
            calls: calls.clone(),
            lifetime,
        });
        (Signer::new(provider, "eu-west-1", "ssmmessages"), calls)
    }

    #[tokio::test]
    async fn credentials_are_kept_until_they_near_their_expiry() {
        let (signer, calls) = rotating(Duration::from_secs(3600));
        let a = signer.credentials().await.unwrap();
        let b = signer.credentials().await.unwrap();
        assert_eq!(a.access_key_id(), b.access_key_id());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        signer.forget().await;
        assert_eq!(
            signer.credentials().await.unwrap().access_key_id(),
            "AKIDROT2"
        );

        // Inside the margin: every request renews them.
        let (signer, calls) = rotating(REFRESH_MARGIN - Duration::from_secs(1));
        signer.credentials().await.unwrap();
        let c = signer.credentials().await.unwrap();
        assert_eq!(c.access_key_id(), "AKIDROT2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn expiry_is_judged_against_the_margin() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let with =
            |secs| Credentials::new("a", "b", None, Some(now + Duration::from_secs(secs)), "t");
        assert!(expires_soon(&with(60), now));
        assert!(expires_soon(&with(300), now));
        assert!(!expires_soon(&with(301), now));
        assert!(!expires_soon(
            &Credentials::new("a", "b", None, None, "t"),
            now
        ));
    }

    /// What `Signer` produces for a websocket upgrade passes our verifier, with the
    /// session token signed, and fails it once the body or the token changes.
    #[tokio::test]
    async fn signed_upgrades_verify() {
        let (signer, _) = rotating(Duration::from_secs(3600));
        let url = "wss://gw.example:8443/v1/control-channel/i-0123?role=subscribe&stream=input";
        let signed = signer.sign("GET", url, &[], b"").await.unwrap();
        let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"authorization"), "{names:?}");
        assert!(names.contains(&"x-amz-date"), "{names:?}");
        assert!(names.contains(&"x-amz-security-token"), "{names:?}");
        let mut headers = vec![("Host".to_owned(), "gw.example:8443".to_owned())];
        headers.extend(signed);
        let secret = |id: &str| {
            (id == "AKIDROT1").then(|| Secret {
                secret_access_key: "secret1".into(),
                session_token: Some("token1".into()),
            })
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expect = Expect {
            region: "eu-west-1",
            service: "ssmmessages",
        };
        let ok = |headers: &[(String, String)], body: &[u8]| {
            let request = Request {
                method: "GET",
                path: "/v1/control-channel/i-0123",
                query: "role=subscribe&stream=input",
                headers,
                body,
            };
            verify(&request, expect, secret, now).is_ok()
        };
        assert!(ok(&headers, b""));
        assert!(!ok(&headers, b"x"));
        let mut other_token = headers.clone();
        for (k, v) in &mut other_token {
            if k == "x-amz-security-token" {
                *v = "token2".into();
            }
        }
        assert!(!ok(&other_token, b""));
    }
}
