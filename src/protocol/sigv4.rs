//! AWS Signature Version 4 verification (pure: the caller passes the request, the secret
//! lookup and the clock reading). The gateway's strict mode uses it to check what agents
//! and clients sign (protocol.md §1.2–§1.3, §2.1: service `ssmmessages` for the message
//! gateway, `ssm` for the API); signing itself is done with the `aws-sigv4` crate, so the
//! tests check one implementation against the other as well as against AWS's published
//! signing test suite.
//!
//! The canonical request follows the AWS documentation for every service but S3: the
//! path as sent is URI-encoded once more (double encoding), the query's names and values
//! are decoded and re-encoded and sorted, the signed headers' values are trimmed with
//! inner runs of spaces collapsed and repeated headers joined with `,`, and the payload
//! hash is the SHA-256 of the body actually received (a `x-amz-content-sha256` claiming
//! otherwise is refused).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The algorithm name in `Authorization` and the string to sign.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the signature's time may be from the verifier's clock, either way (AWS: 5 min).
pub const MAX_SKEW_SECS: u64 = 300;

/// A request as received, for verification.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path as sent (percent-encoded), e.g. `/v1/control-channel/i-0123`.
    pub path: &'a str,
    /// The query as sent, without `?` (empty when none).
    pub query: &'a str,
    /// Every header, any case, repeated names allowed.
    pub headers: &'a [(String, String)],
    /// The body received.
    pub body: &'a [u8],
}

impl Request<'_> {
    /// All values of header `name` (case-insensitive), in order.
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }
}

/// The secret of an access key, and the session token it must come with (temporary
/// credentials) or `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token required with it, if the key is temporary.
    pub session_token: Option<String>,
}

/// What the verifier accepts: the region and service names in the credential scope.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The verifier's region.
    pub region: &'a str,
    /// `ssmmessages` or `ssm`.
    pub service: &'a str,
}

/// Why a request's signature was refused. The texts are what AWS answers, so a client
/// shows the familiar message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Authorization` header.
    #[error("Missing Authentication Token")]
    Unsigned,
    /// The header is not `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
    #[error("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters of the AWS4-HMAC-SHA256 algorithm: {0}")]
    Malformed(String),
    /// No `X-Amz-Date`, or not `YYYYMMDD'T'HHMMSS'Z'`.
    #[error("Authorization requires a valid X-Amz-Date header (YYYYMMDD'T'HHMMSS'Z'): {0}")]
    BadDate(String),
    /// The signature is older (or newer) than the allowed skew.
    #[error(
        "Signature expired: {signed} is not within {max_skew} seconds of the server time {now}"
    )]
    Expired {
        /// X-Amz-Date of the request.
        signed: String,
        /// The server's time, in the same format.
        now: String,
        /// The allowed skew.
        max_skew: u64,
    },
    /// The credential's date, region or service is not the expected one.
    #[error("Credential should be scoped to {expected}, not {got}")]
    WrongScope {
        /// `date/region/service/aws4_request` expected.
        expected: String,
        /// What the request had.
        got: String,
    },
    /// The access key is not known.
    #[error("The security token included in the request is invalid: unknown access key {0}")]
    UnknownKey(String),
    /// Temporary credentials without (or with another) session token.
    #[error("The security token included in the request is invalid: the session token does not belong to access key {0}")]
    BadSessionToken(String),
    /// A header that must be signed is not (host, x-amz-date, and the session token).
    #[error("'{0}' must be a signed header")]
    NotSigned(String),
    /// The signature does not match.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")]
    Mismatch,
}

/// The parts of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// `YYYYMMDD/region/service/aws4_request`.
    pub scope: String,
    /// Lowercase header names, as listed.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/scope, SignedHeaders=a;b, Signature=hex`.
///
/// # Errors
/// [`SigError::Malformed`] naming what is wrong.
pub fn parse_authorization(header: &str) -> Result<Authorization, SigError> {
    let rest = header
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| SigError::Malformed(format!("the algorithm must be {ALGORITHM}")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| SigError::Malformed("no Credential".into()))?;
    let (access_key_id, scope) = credential
        .split_once('/')
        .ok_or_else(|| SigError::Malformed("the Credential has no scope".into()))?;
    if access_key_id.is_empty()
        || scope.split('/').count() != 4
        || !scope.ends_with("/aws4_request")
    {
        return Err(SigError::Malformed(
            "the Credential must be KEY/YYYYMMDD/region/service/aws4_request".into(),
        ));
    }
    let signed_headers: Vec<String> = signed
        .ok_or_else(|| SigError::Malformed("no SignedHeaders".into()))?
        .split(';')
        .map(str::to_ascii_lowercase)
        .collect();
    if signed_headers.iter().any(String::is_empty) {
        return Err(SigError::Malformed("an empty name in SignedHeaders".into()));
    }
    let signature = signature.ok_or_else(|| SigError::Malformed("no Signature".into()))?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigError::Malformed(
            "the Signature must be 64 hex digits".into(),
        ));
    }
    Ok(Authorization {
        access_key_id: access_key_id.to_owned(),
        scope: scope.to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// Checks `request`'s signature. `secret_for` finds an access key's secret; `now` is the
/// verifier's Unix time in seconds. Returns the access key id that signed.
///
/// # Errors
/// Each way a signature can be wrong, as a [`SigError`].
pub fn verify(
    request: &Request<'_>,
    expect: Expect<'_>,
    secret_for: impl Fn(&str) -> Option<Secret>,
    now: u64,
) -> Result<String, SigError> {
    let header = request.header("authorization").ok_or(SigError::Unsigned)?;
    let auth = parse_authorization(header)?;
    let amz_date = request
        .header("x-amz-date")
        .ok_or_else(|| SigError::BadDate("no X-Amz-Date header".into()))?;
    let signed_at = crate::timefmt::parse_amz_date(amz_date)
        .ok_or_else(|| SigError::BadDate(amz_date.to_owned()))?;
    if signed_at.abs_diff(now) > MAX_SKEW_SECS {
        return Err(SigError::Expired {
            signed: amz_date.to_owned(),
            now: crate::timefmt::amz_date(now),
            max_skew: MAX_SKEW_SECS,
        });
    }
    let expected_scope = format!(
        "{}/{}/{}/aws4_request",
        &amz_date[..8],
        expect.region,
        expect.service
    );
    if auth.scope != expected_scope {
        return Err(SigError::WrongScope {
            expected: expected_scope,
            got: auth.scope,
        });
    }
    let secret = secret_for(&auth.access_key_id)
        .ok_or_else(|| SigError::UnknownKey(auth.access_key_id.clone()))?;
    if request.header("x-amz-security-token") != secret.session_token.as_deref() {
        return Err(SigError::BadSessionToken(auth.access_key_id));
    }
    let mut must_sign = vec!["host", "x-amz-date"];
    if secret.session_token.is_some() {
        must_sign.push("x-amz-security-token");
    }
    for name in must_sign {
        if !auth.signed_headers.iter().any(|h| h == name) {
            return Err(SigError::NotSigned(name.to_owned()));
        }
    }
    let body_hash = hex(&Sha256::digest(request.body));
    if let Some(claimed) = request.header("x-amz-content-sha256") {
        if claimed != body_hash {
            return Err(SigError::Mismatch);
        }
    }
    let canonical = canonical_request(request, &auth.signed_headers, &body_hash);
    let to_sign = string_to_sign(amz_date, &auth.scope, &canonical);
    let key = signing_key(
        &secret.secret_access_key,
        &amz_date[..8],
        expect.region,
        expect.service,
    );
    let computed = hex(&hmac(&key, to_sign.as_bytes()));
    // Compared whole (both are public-length hex strings); a timing side channel on a
    // loopback test gateway is not a concern, but constant time costs nothing.
    if !constant_time_eq(computed.as_bytes(), auth.signature.as_bytes()) {
        return Err(SigError::Mismatch);
    }
    Ok(auth.access_key_id)
}

/// The canonical request: method, canonical path, canonical query, canonical headers,
/// signed header list, payload hash, one per line.
pub fn canonical_request(
    request: &Request<'_>,
    signed_headers: &[String],
    payload_hash: &str,
) -> String {
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = request
            .header_values(name)
            .into_iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        canonical_path(request.path),
        canonical_query(request.query),
        headers,
        signed_headers.join(";"),
        payload_hash
    )
}

/// The path as sent, dot segments removed, each segment percent-encoded again.
fn canonical_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| encode(s))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if path.ends_with("/.") || path.ends_with("/..") {
        out.push('/');
    }
    out
}

/// Names and values decoded then encoded again, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k)), encode(&decode(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but the unreserved characters (`A-Za-z0-9-_.~`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (anything else, `+` included, stays as it is).
fn decode(s: &str) -> String {
    let hex_digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `AWS4-HMAC-SHA256`, the date, the scope and the canonical request's hash.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The signing key: HMAC chain over date, region, service and `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length: `new_from_slice` does not fail (and if it did, an
    // empty result only makes the signature mismatch).
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// 2015-08-30T12:36:00Z, the time of AWS's signing test suite.
    const SUITE_TIME: u64 = 1_440_938_160;
    const SUITE: Expect<'static> = Expect {
        region: "us-east-1",
        service: "service",
    };

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn secret(token: Option<&str>) -> impl Fn(&str) -> Option<Secret> + '_ {
        move |key| {
            (key == AKID).then(|| Secret {
                secret_access_key: SECRET.into(),
                session_token: token.map(str::to_owned),
            })
        }
    }

    fn auth(signed: &str, signature: &str) -> String {
        format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={signature}")
    }

    /// Requests and signatures from AWS's SigV4 signing test suite (the copy shipped in
    /// the aws-sigv4 crate, `aws-signing-test-suite/v4/<name>/`).
    #[test]
    fn the_aws_signing_test_suite_verifies() {
        // (name, method, query, headers, signed headers, signature)
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            Vec<(&'static str, &'static str)>,
            &'static str,
            &'static str,
        );
        let cases: [Case; 5] = [
            (
                "get-vanilla",
                "GET",
                "",
                vec![("Host", "example.amazonaws.com")],
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "Param2=value2&Param1=value1",
                vec![("Host", "example.amazonaws.com")],
                "host;x-amz-date",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "post-vanilla-query",
                "POST",
                "Param1=value1",
                vec![("Host", "example.amazonaws.com")],
                "host;x-amz-date",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
            (
                "get-header-value-trim",
                "GET",
                "",
                vec![
                    ("Host", "example.amazonaws.com"),
                    ("My-Header1", " value1"),
                    ("My-Header2", " \"a   b   c\""),
                ],
                "host;my-header1;my-header2;x-amz-date",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            ),
            (
                "post-x-www-form-urlencoded",
                "POST",
                "",
                vec![
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Host", "example.amazonaws.com"),
                    ("Content-Length", "13"),
                    (
                        "x-amz-content-sha256",
                        "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
                    ),
                ],
                "content-length;content-type;host;x-amz-content-sha256;x-amz-date",
                "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b",
            ),
        ];
        for (name, method, query, list, signed, signature) in cases {
            let mut all = headers(&list);
            all.push(("X-Amz-Date".into(), "20150830T123600Z".into()));
            all.push(("Authorization".into(), auth(signed, signature)));
            let body: &[u8] = if name == "post-x-www-form-urlencoded" {
                b"Param1=value1"
            } else {
                b""
            };
            let request = Request {
                method,
                path: "/",
                query,
                headers: &all,
                body,
            };
            assert_eq!(
                verify(&request, SUITE, secret(None), SUITE_TIME).as_deref(),
                Ok(AKID),
                "{name}"
            );
            // One bit of the body or one header changed: refused.
            let mut tampered = all.clone();
            tampered[0].1.push('x');
            let request = Request {
                headers: &tampered,
                ..request
            };
            assert_eq!(
                verify(&request, SUITE, secret(None), SUITE_TIME),
                Err(SigError::Mismatch),
                "{name}"
            );
        }
    }

    #[test]
    fn session_tokens_are_signed_and_must_match() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let all = headers(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Security-Token", token),
            ("X-Amz-Date", "20150830T123600Z"),
            (
                "Authorization",
                &auth(
                    "host;x-amz-date;x-amz-security-token",
                    "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
                ),
            ),
        ]);
        let request = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &all,
            body: b"",
        };
        assert_eq!(
            verify(&request, SUITE, secret(Some(token)), SUITE_TIME).as_deref(),
            Ok(AKID)
        );
        // The key is temporary with another token, or permanent: refused before hashing.
        assert_eq!(
            verify(&request, SUITE, secret(Some("other")), SUITE_TIME),
            Err(SigError::BadSessionToken(AKID.into()))
        );
        assert_eq!(
            verify(&request, SUITE, secret(None), SUITE_TIME),
            Err(SigError::BadSessionToken(AKID.into()))
        );
    }

    /// What agents send (§1.2): signed with the aws-sigv4 crate as the agent does, then
    /// verified here, including a websocket upgrade's synthetic GET (§1.3).
    #[test]
    fn what_the_aws_sigv4_crate_signs_verifies() {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        use aws_sigv4::sign::v4;
        let now = 1_700_000_000u64;
        let creds = aws_credential_types::Credentials::new(
            "ASIATESTKEY",
            "secret/key+example",
            Some("session-token-value".into()),
            None,
            "test",
        )
        .into();
        let sign_request = |method: &str, url: &str, body: &[u8]| {
            let params = v4::SigningParams::builder()
                .identity(&creds)
                .region("eu-west-3")
                .name("ssmmessages")
                .time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(now))
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let base = [
                ("host", "ssmmessages.eu-west-3.amazonaws.com"),
                ("content-type", "application/json"),
            ];
            let signable =
                SignableRequest::new(method, url, base.iter().copied(), SignableBody::Bytes(body))
                    .unwrap();
            let (instructions, _) = sign(signable, &params).unwrap().into_parts();
            let mut all = headers(&base);
            for (k, v) in instructions.headers() {
                all.push((k.to_owned(), v.to_owned()));
            }
            all
        };
        let expect = Expect {
            region: "eu-west-3",
            service: "ssmmessages",
        };
        let keys = |key: &str| {
            (key == "ASIATESTKEY").then(|| Secret {
                secret_access_key: "secret/key+example".into(),
                session_token: Some("session-token-value".into()),
            })
        };
        let body =
            br#"{"MessageSchemaVersion":"1.0","RequestId":"0b3f9a52-7c1e-4c8e-9d7a-3f2b1c0d4e5f"}"#;
        let all = sign_request(
            "POST",
            "https://ssmmessages.eu-west-3.amazonaws.com/v1/control-channel/i-0123456789abcdef0",
            body,
        );
        let post = Request {
            method: "POST",
            path: "/v1/control-channel/i-0123456789abcdef0",
            query: "",
            headers: &all,
            body,
        };
        assert_eq!(
            verify(&post, expect, keys, now).as_deref(),
            Ok("ASIATESTKEY")
        );
        assert_eq!(
            verify(&post, expect, keys, now + 200).as_deref(),
            Ok("ASIATESTKEY"),
            "within the skew"
        );
        // Another body, path, service, region, or a clock 6 minutes off: refused.
        let other_body = Request {
            body: b"{}",
            ..post.clone()
        };
        assert_eq!(
            verify(&other_body, expect, keys, now),
            Err(SigError::Mismatch)
        );
        let other_path = Request {
            path: "/v1/control-channel/i-0000000000000000",
            ..post.clone()
        };
        assert_eq!(
            verify(&other_path, expect, keys, now),
            Err(SigError::Mismatch)
        );
        let ssm = Expect {
            service: "ssm",
            ..expect
        };
        assert!(matches!(
            verify(&post, ssm, keys, now),
            Err(SigError::WrongScope { .. })
        ));
        let region = Expect {
            region: "us-east-1",
            ..expect
        };
        assert!(matches!(
            verify(&post, region, keys, now),
            Err(SigError::WrongScope { .. })
        ));
        for late in [now + 360, now - 360] {
            let e = verify(&post, expect, keys, late).unwrap_err();
            assert!(matches!(e, SigError::Expired { .. }), "{e}");
            assert!(e.to_string().starts_with("Signature expired: 2023"), "{e}");
        }
        assert_eq!(
            verify(&post, expect, |_| None, now),
            Err(SigError::UnknownKey("ASIATESTKEY".into()))
        );
        // The websocket upgrade: a GET of the wss URL with its query, empty body.
        let all = sign_request(
            "GET",
            "wss://ssmmessages.eu-west-3.amazonaws.com/v1/control-channel/i-0123456789abcdef0?role=subscribe&stream=input",
            b"",
        );
        let upgrade = Request {
            method: "GET",
            path: "/v1/control-channel/i-0123456789abcdef0",
            query: "role=subscribe&stream=input",
            headers: &all,
            body: b"",
        };
        assert_eq!(
            verify(&upgrade, expect, keys, now).as_deref(),
            Ok("ASIATESTKEY")
        );
        let other_query = Request {
            query: "role=publish&stream=input",
            ..upgrade
        };
        assert_eq!(
            verify(&other_query, expect, keys, now),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn unsigned_and_malformed_requests_are_refused_with_aws_texts() {
        fn request(headers: &[(String, String)]) -> Request<'_> {
            Request {
                method: "GET",
                path: "/",
                query: "",
                headers,
                body: b"",
            }
        }
        let none: Vec<(String, String)> = headers(&[("Host", "h")]);
        assert_eq!(
            verify(&request(&none), SUITE, secret(None), SUITE_TIME),
            Err(SigError::Unsigned)
        );
        assert_eq!(
            SigError::Unsigned.to_string(),
            "Missing Authentication Token"
        );
        for bad in [
            "Basic Zm9v",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=xyz",
        ] {
            let h = headers(&[("Host", "h"), ("X-Amz-Date", "20150830T123600Z"), ("Authorization", bad)]);
            assert!(
                matches!(verify(&request(&h), SUITE, secret(None), SUITE_TIME), Err(SigError::Malformed(_))),
                "{bad}"
            );
        }
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let no_date = headers(&[
            ("Host", "example.amazonaws.com"),
            ("Authorization", &auth("host;x-amz-date", sig)),
        ]);
        assert!(matches!(
            verify(&request(&no_date), SUITE, secret(None), SUITE_TIME),
            Err(SigError::BadDate(_))
        ));
        // host left out of the signature: refused even if the signature is right for
        // what was signed.
        let host_unsigned = headers(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", &auth("x-amz-date", sig)),
        ]);
        assert_eq!(
            verify(&request(&host_unsigned), SUITE, secret(None), SUITE_TIME),
            Err(SigError::NotSigned("host".into()))
        );
        // A body hash that lies.
        let lying = headers(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("Authorization", &auth("host;x-amz-date", sig)),
        ]);
        assert_eq!(
            verify(&request(&lying), SUITE, secret(None), SUITE_TIME),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn canonical_paths_and_queries() {
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(
            canonical_path("/v1/data-channel/a%3Ab"),
            "/v1/data-channel/a%253Ab"
        );
        assert_eq!(canonical_path("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query("k=a%20b&x"), "k=a%20b&x=");
        assert_eq!(canonical_query("k=%zz%4"), "k=%25zz%254");
    }
}
