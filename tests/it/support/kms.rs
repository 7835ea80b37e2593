//! A KMS emulator on loopback with the real API shape (AWS JSON 1.1, `X-Amz-Target:
//! TrentService.<Operation>`, SigV4-verified with service `kms`), for
//! `AWS_ENDPOINT_URL_KMS`: GenerateDataKey (any NumberOfBytes 1–1024, unlike LocalStack
//! 4.10, which always returns 32 bytes and so cannot serve Session Manager's 64-byte
//! session keys) and Decrypt, with the encryption context bound into the ciphertext as
//! AES-GCM associated data, so a key generated for one session does not decrypt for
//! another (InvalidCiphertextException), as with real KMS.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde_json::{json, Map, Value};
use session_agent::protocol::sigv4;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub const KEY_ALIAS: &str = "alias/session-test";
pub const KEY_ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";
const ACCOUNT: &str = "123456789012";

struct Shared {
    master: LessSafeKey,
    region: String,
    access_key: (String, String),
    calls: Mutex<Vec<String>>,
}

pub struct Kms {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropped with the emulator, which stops it.
    _stop: oneshot::Sender<()>,
}

impl Kms {
    /// One symmetric key (`KEY_ID`, alias `KEY_ALIAS`); requests must be signed by
    /// `access_key` for `region`.
    pub async fn start(region: &str, access_key: (&str, &str)) -> Self {
        let master: [u8; 32] = rand::random();
        let shared = Arc::new(Shared {
            master: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &master).unwrap()),
            region: region.into(),
            access_key: (access_key.0.into(), access_key.1.into()),
            calls: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/", axum::routing::post(handle))
            .with_state(shared.clone());
        let (addr, stop) = super::serve_loopback(app).await;
        Self {
            addr,
            shared,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn arn(&self) -> String {
        format!("arn:aws:kms:{}:{ACCOUNT}:key/{KEY_ID}", self.shared.region)
    }

    /// Operations called so far, with their outcome (`Decrypt ok`, `Decrypt
    /// InvalidCiphertextException`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.shared.calls.lock().unwrap().clone()
    }
}

fn error(kind: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/x-amz-json-1.1")],
        json!({"__type": kind, "message": message}).to_string(),
    )
        .into_response()
}

/// The context as associated data: sorted `k=v` lines.
fn aad(context: &Map<String, Value>) -> Vec<u8> {
    let sorted: BTreeMap<&String, &Value> = context.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={}\n", v.as_str().unwrap_or_default()))
        .collect::<String>()
        .into_bytes()
}

fn known_key(id: &str) -> bool {
    id == KEY_ID
        || id == KEY_ALIAS
        || id.ends_with(&format!(":key/{KEY_ID}"))
        || id.ends_with(&format!(":{KEY_ALIAS}"))
}

async fn handle(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let op = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."))
        .unwrap_or("")
        .to_owned();
    let outcome = answer(&s, &op, &headers, &body);
    let label = match &outcome {
        Ok(_) => "ok".to_owned(),
        Err((kind, _)) => kind.clone(),
    };
    s.calls.lock().unwrap().push(format!("{op} {label}"));
    match outcome {
        Ok(v) => (
            [("content-type", "application/x-amz-json-1.1")],
            v.to_string(),
        )
            .into_response(),
        Err((kind, message)) => error(&kind, &message),
    }
}

fn answer(
    s: &Shared,
    op: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, (String, String)> {
    let fail = |k: &str, m: &str| (k.to_owned(), m.to_owned());
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let request = sigv4::Request {
        method: "POST",
        path: "/",
        query: "",
        headers: &pairs,
        body,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sigv4::verify(
        &request,
        sigv4::Expect {
            region: &s.region,
            service: "kms",
        },
        |id| {
            (id == s.access_key.0).then(|| sigv4::Secret {
                secret_access_key: s.access_key.1.clone(),
                session_token: None,
            })
        },
        now,
    )
    .map_err(|e| fail("UnrecognizedClientException", &e.to_string()))?;
    let input: Value =
        serde_json::from_slice(body).map_err(|e| fail("SerializationException", &e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let context = input
        .get("EncryptionContext")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let arn = format!("arn:aws:kms:{}:{ACCOUNT}:key/{KEY_ID}", s.region);
    match op {
        "GenerateDataKey" => {
            let key_id = input["KeyId"].as_str().unwrap_or_default();
            if !known_key(key_id) {
                return Err(fail(
                    "NotFoundException",
                    &format!("Key '{key_id}' does not exist"),
                ));
            }
            let n = match (input.get("NumberOfBytes"), input.get("KeySpec")) {
                (Some(n), _) => n
                    .as_u64()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| {
                        fail(
                            "ValidationException",
                            "NumberOfBytes must be between 1 and 1024",
                        )
                    })?,
                (None, Some(spec)) if spec == "AES_256" => 32,
                (None, Some(spec)) if spec == "AES_128" => 16,
                _ => {
                    return Err(fail(
                        "ValidationException",
                        "Please specify either number of bytes or key spec.",
                    ))
                }
            };
            let plain: Vec<u8> = (0..n).map(|_| rand::random()).collect();
            let nonce: [u8; 12] = rand::random();
            let mut sealed = plain.clone();
            let tag = s
                .master
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(&context)),
                    &mut sealed,
                )
                .unwrap();
            let mut blob = b"SAKMS1".to_vec();
            blob.extend_from_slice(&nonce);
            blob.extend_from_slice(&sealed);
            blob.extend_from_slice(tag.as_ref());
            Ok(
                json!({"CiphertextBlob": b64.encode(&blob), "Plaintext": b64.encode(&plain), "KeyId": arn}),
            )
        }
        "Decrypt" => {
            if let Some(id) = input.get("KeyId").and_then(Value::as_str) {
                if !known_key(id) {
                    return Err(fail("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation."));
                }
            }
            let blob = input["CiphertextBlob"]
                .as_str()
                .and_then(|t| b64.decode(t).ok())
                .ok_or_else(|| fail("ValidationException", "CiphertextBlob must be base64"))?;
            let invalid = || fail("InvalidCiphertextException", "");
            let rest = blob.strip_prefix(b"SAKMS1").ok_or_else(invalid)?;
            if rest.len() < 12 + 16 {
                return Err(invalid());
            }
            let (nonce, sealed) = rest.split_at(12);
            let mut buf = sealed.to_vec();
            let plain = s
                .master
                .open_in_place(
                    Nonce::try_assume_unique_for_key(nonce).unwrap(),
                    Aad::from(aad(&context)),
                    &mut buf,
                )
                .map_err(|_| invalid())?;
            Ok(
                json!({"KeyId": arn, "Plaintext": b64.encode(plain), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
            )
        }
        other => Err(fail(
            "UnknownOperationException",
            &format!("{other} is not emulated"),
        )),
    }
}
