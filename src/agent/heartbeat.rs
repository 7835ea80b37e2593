//! The SSM heartbeat (AWS mode): `UpdateInstanceInformation` at start and every
//! [`EVERY`] (the official agent's health cadence), so Fleet Manager and
//! `describe-instance-information` show the node Online with its agent version and
//! platform. The first call is made (and waited for, up to the API timeout) before the
//! control channel opens, as upstream does; a failure is logged with what to fix and
//! does not keep sessions from working, since the message gateway does not depend on it.

use super::identity::AwsIdentity;
use super::{Ctx, AGENT_VERSION};
use crate::protocol::endpoint::SSM;
use crate::ssm::SsmApi;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// How often the heartbeat is sent (upstream: every 5 minutes).
pub const EVERY: Duration = Duration::from_secs(5 * 60);
/// `AgentName` reported.
pub const AGENT_NAME: &str = "session-agent";

/// Sends the first heartbeat, then keeps sending them in the background until the
/// agent stops.
pub(crate) async fn start(ctx: &Arc<Ctx>, aws: &AwsIdentity) {
    let signer = Arc::new(aws.signer.for_service(SSM));
    let api = match SsmApi::with_signer(
        &aws.ssm_endpoint,
        ctx.config.ca_file.as_deref(),
        Some(signer),
    ) {
        Ok(api) => api,
        Err(e) => {
            tracing::error!(endpoint = %aws.ssm_endpoint, error = %e, "Cannot set up the SSM API client; the node will not report as Online");
            return;
        }
    };
    let request = request(&ctx.target_id, &platform(), local_ip());
    beat(&api, &aws.ssm_endpoint, &request).await;
    let stopping = ctx.stopping.clone();
    let endpoint = aws.ssm_endpoint.clone();
    ctx.tasks.spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(EVERY) => beat(&api, &endpoint, &request).await,
                () = stopping.cancelled() => return,
            }
        }
    });
}

async fn beat(api: &SsmApi, endpoint: &str, request: &Value) {
    match api.update_instance_information(request).await {
        Ok(()) => tracing::debug!(%endpoint, "UpdateInstanceInformation sent"),
        Err(
            e @ crate::ssm::ApiError::Service {
                status: 401 | 403, ..
            },
        ) => {
            // (SsmApi has dropped the cached credentials: the next beat loads fresh ones.)
            tracing::error!(%endpoint, error = %e, "UpdateInstanceInformation refused: the node will not show as Online; the agent's credentials must be valid and allow ssm:UpdateInstanceInformation (the AmazonSSMManagedInstanceCore policy has it)");
        }
        Err(e) => {
            tracing::warn!(%endpoint, error = %e, retry_in = ?EVERY, "UpdateInstanceInformation failed");
        }
    }
}

/// Name and version of the operating system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `Linux`, `Windows` or `MacOS` (the API's PlatformType values).
    pub kind: &'static str,
    /// E.g. `Ubuntu`, `Amazon Linux`.
    pub name: String,
    /// E.g. `24.04`.
    pub version: String,
}

fn platform() -> Platform {
    let kind = match std::env::consts::OS {
        "windows" => "Windows",
        "macos" => "MacOS",
        _ => "Linux",
    };
    let (name, version) = std::fs::read_to_string("/etc/os-release")
        .map(|text| os_release(&text))
        .unwrap_or_default();
    Platform {
        kind,
        name: if name.is_empty() {
            std::env::consts::OS.to_owned()
        } else {
            name
        },
        version,
    }
}

/// `NAME` and `VERSION_ID` from an os-release file (quotes removed).
pub fn os_release(text: &str) -> (String, String) {
    let mut name = String::new();
    let mut version = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        match key.trim() {
            "NAME" => name = value.chars().take(120).collect(),
            "VERSION_ID" => version = value.chars().take(60).collect(),
            _ => {}
        }
    }
    (name, version)
}

/// The host's primary address: a UDP socket "connected" (no packet is sent) to a
/// documentation address takes the default route's source address. `None` without a
/// default route.
fn local_ip() -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:443").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then(|| ip.to_string())
}

/// The request body.
pub fn request(instance_id: &str, platform: &Platform, ip: Option<String>) -> Value {
    let mut m = Map::new();
    m.insert("InstanceId".into(), json!(instance_id));
    m.insert("AgentName".into(), json!(AGENT_NAME));
    m.insert("AgentVersion".into(), json!(AGENT_VERSION));
    m.insert("AgentStatus".into(), json!("Active"));
    m.insert("PlatformType".into(), json!(platform.kind));
    m.insert("PlatformName".into(), json!(platform.name));
    m.insert("PlatformVersion".into(), json!(platform.version));
    if let Some(host) = crate::platform::hostname() {
        m.insert("ComputerName".into(), json!(host));
    }
    if let Some(ip) = ip {
        m.insert("IPAddress".into(), json!(ip));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_gives_name_and_version() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n# comment\nbroken line\n";
        assert_eq!(
            os_release(text),
            ("Debian GNU/Linux".to_owned(), "12".to_owned())
        );
        assert_eq!(os_release(""), (String::new(), String::new()));
    }

    #[test]
    fn the_request_names_the_node_and_the_agent() {
        let p = Platform {
            kind: "Linux",
            name: "Ubuntu".into(),
            version: "24.04".into(),
        };
        let r = request("i-0123456789abcdef0", &p, Some("10.0.0.5".into()));
        assert_eq!(r["InstanceId"], "i-0123456789abcdef0");
        assert_eq!(r["AgentName"], AGENT_NAME);
        assert_eq!(r["AgentVersion"], AGENT_VERSION);
        assert_eq!(r["AgentStatus"], "Active");
        assert_eq!(r["PlatformType"], "Linux");
        assert_eq!(r["PlatformName"], "Ubuntu");
        assert_eq!(r["PlatformVersion"], "24.04");
        assert_eq!(r["IPAddress"], "10.0.0.5");
        assert!(request("i-1", &p, None).get("IPAddress").is_none());
    }
}
