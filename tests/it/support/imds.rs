//! An EC2 instance metadata service (IMDSv2 only) on loopback, for
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`: session tokens (`PUT /latest/api/token` with a
//! TTL of 1–21600 s, refused with `X-Forwarded-For` as EC2 does; every `GET` needs a
//! live token, else 401), the instance id, placement, the identity document, and
//! instance-role credentials that rotate: each fetch hands out the next key of a
//! deterministic series ([`Imds::key`]), so a strict gateway can be given the keys in
//! advance and a test can see how often the agent asked.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// What the emulated instance is.
#[derive(Clone, Debug)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    pub role: String,
    pub account_id: String,
    /// How long each handed-out key is valid.
    pub lifetime: Duration,
    /// The VPC CIDR blocks of its one network interface (IPv4, IPv6).
    pub vpc_cidrs: (Vec<String>, Vec<String>),
}

/// The MAC address of the emulated instance's one interface.
pub const MAC: &str = "0e:12:34:56:78:9a";

#[derive(Default)]
struct Seen {
    tokens: HashMap<String, Instant>,
    keys_handed_out: Vec<String>,
    unauthorized: u32,
}

struct Shared {
    instance: Instance,
    seen: Mutex<Seen>,
}

pub struct Imds {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropped with the emulator, which stops it.
    _stop: oneshot::Sender<()>,
}

impl Imds {
    pub async fn start(instance: Instance) -> Self {
        let shared = Arc::new(Shared {
            instance,
            seen: Mutex::new(Seen::default()),
        });
        let app = axum::Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/instance-id", get(instance_id))
            .route("/latest/meta-data/placement/region", get(region))
            .route(
                "/latest/meta-data/placement/availability-zone",
                get(availability_zone),
            )
            .route(
                "/latest/dynamic/instance-identity/document",
                get(identity_document),
            )
            .route("/latest/meta-data/iam/security-credentials/", get(role))
            .route(
                "/latest/meta-data/iam/security-credentials/{role}",
                get(credentials),
            )
            .route("/latest/meta-data/network/interfaces/macs/", get(macs))
            .route(
                "/latest/meta-data/network/interfaces/macs/{mac}/{key}",
                get(vpc_cidrs),
            )
            .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
            .with_state(shared.clone());
        let (addr, stop) = super::serve_loopback(app).await;
        Self {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// For `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Key `n` of the series (1-based): (access key id, secret, session token).
    pub fn key(n: usize) -> (String, String, String) {
        (
            format!("ASIAIMDSTEST{n:08}"),
            format!("imds-secret-{n}"),
            format!("imds-session-token-{n}"),
        )
    }

    /// An AWS credentials file with keys 1..=n of the series.
    pub fn credentials_file(n: usize) -> String {
        (1..=n)
            .map(|i| {
                let (id, secret, token) = Self::key(i);
                // One principal for every rotation, as one instance role is in AWS.
                format!("[imds-{i}]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\naws_session_token = {token}\nprincipal = imds-instance-role\n\n")
            })
            .collect()
    }

    /// Access key ids handed out so far, in order.
    pub fn keys_handed_out(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().keys_handed_out.clone()
    }

    /// GETs refused for want of a valid token.
    pub fn unauthorized(&self) -> u32 {
        self.shared.seen.lock().unwrap().unauthorized
    }
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if headers.contains_key("x-forwarded-for") {
        return (StatusCode::FORBIDDEN, "Forbidden").into_response();
    }
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21_600).contains(t)) else {
        return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
    };
    let token = format!("imds-token-{:032x}", rand::random::<u128>());
    shared
        .seen
        .lock()
        .unwrap()
        .tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    (
        [("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
        token,
    )
        .into_response()
}

/// Whether the request carries a live token (counted when not).
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let mut seen = shared.seen.lock().unwrap();
    let live = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| seen.tokens.get(t))
        .is_some_and(|until| Instant::now() < *until);
    if !live {
        seen.unauthorized += 1;
    }
    live
}

macro_rules! guarded {
    ($shared:expr, $headers:expr) => {
        if !authorized(&$shared, &$headers) {
            return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
        }
    };
}

async fn macs(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    guarded!(s, h);
    format!("{MAC}/").into_response()
}

async fn vpc_cidrs(
    State(s): State<Arc<Shared>>,
    Path((mac, key)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    guarded!(s, h);
    let (v4, v6) = &s.instance.vpc_cidrs;
    let list = match key.as_str() {
        "vpc-ipv4-cidr-blocks" => v4,
        "vpc-ipv6-cidr-blocks" if !v6.is_empty() => v6,
        _ => return (StatusCode::NOT_FOUND, "Not Found").into_response(),
    };
    if mac != MAC {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    list.join("\n").into_response()
}

async fn instance_id(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    guarded!(s, h);
    s.instance.instance_id.clone().into_response()
}

async fn region(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    guarded!(s, h);
    s.instance.region.clone().into_response()
}

async fn availability_zone(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    guarded!(s, h);
    format!("{}a", s.instance.region).into_response()
}

async fn identity_document(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    guarded!(s, h);
    let i = &s.instance;
    json!({
        "accountId": i.account_id,
        "architecture": "x86_64",
        "availabilityZone": format!("{}a", i.region),
        "imageId": "ami-0123456789abcdef0",
        "instanceId": i.instance_id,
        "instanceType": "t3.micro",
        "pendingTime": "2026-11-21T00:00:00Z",
        "privateIp": "10.0.0.5",
        "region": i.region,
        "version": "2017-09-30"
    })
    .to_string()
    .into_response()
}

async fn role(State(s): State<Arc<Shared>>, h: HeaderMap) -> Response {
    guarded!(s, h);
    s.instance.role.clone().into_response()
}

async fn credentials(
    State(s): State<Arc<Shared>>,
    Path(role): Path<String>,
    h: HeaderMap,
) -> Response {
    guarded!(s, h);
    if role != s.instance.role {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    let n = {
        let mut seen = s.seen.lock().unwrap();
        let n = seen.keys_handed_out.len() + 1;
        seen.keys_handed_out.push(Imds::key(n).0);
        n
    };
    let (id, secret, token) = Imds::key(n);
    let now = SystemTime::now();
    let stamp = |t: SystemTime| {
        let ms = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        session_agent::timefmt::rfc3339(u64::try_from(ms).unwrap(), false)
    };
    json!({
        "Code": "Success",
        "LastUpdated": stamp(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": id,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": stamp(now + s.instance.lifetime),
    })
    .to_string()
    .into_response()
}
