//! AWS mode (issue 7) against a gateway in strict SigV4 mode and an IMDSv2 emulator on
//! loopback: the real agent binary finds its region and instance id in instance metadata,
//! signs every channel request and upgrade with the rotating instance-role credentials
//! (renewed before they expire), reports itself with UpdateInstanceInformation, and runs
//! a shell; the strict gateway refuses unsigned, expired and wrongly signed requests with
//! AWS's errors.

use crate::support::imds::{Imds, Instance};
use crate::support::{open_shell, wait_online, Gateway, AKID, WAIT};
use aws_credential_types::Credentials;
use serde_json::{json, Value};
use session_agent::gateway::auth::StrictSigV4;
use session_agent::gateway::GatewayConfig;
use session_agent::sign::{sign_with, REFRESH_MARGIN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const REGION: &str = "us-east-1";
const INSTANCE: &str = "i-0a1b2c3d4e5f60718";

/// The harness's own key (what `Gateway::api` signs with) plus the emulator's series.
fn credentials_file(dir: &Path) -> PathBuf {
    let path = dir.join("gateway-credentials");
    std::fs::write(
        &path,
        format!(
            "[owner]\naws_access_key_id = {AKID}\naws_secret_access_key = secret\n\n{}",
            Imds::credentials_file(50)
        ),
    )
    .unwrap();
    path
}

async fn strict_gateway(dir: &Path) -> Gateway {
    let strict = StrictSigV4::load(&credentials_file(dir), REGION).unwrap();
    Gateway::start(GatewayConfig {
        strict_sigv4: Some(Arc::new(strict)),
        ..GatewayConfig::default()
    })
    .await
}

/// The agent binary with a config file and a clean environment (no AWS keys, no AWS
/// config files: credentials and region can only come from what the test gives).
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_session-agent"))
            .arg("run")
            .arg("--config")
            .arg(&file)
            .arg("--state-dir")
            .arg(dir.path())
            .args(["--shell", "sh"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("AWS_CONFIG_FILE", dir.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("no-aws-credentials"),
            )
            .env("SESSION_AGENT_LOG", "info,session_agent::sign=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Waits for `needle` in the log; fails with the log after `within`.
    async fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never logged; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_agent_finds_itself_in_imds_signs_everything_and_renews_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let gw = strict_gateway(dir.path()).await;
    // Each key is renewed by the agent once it is within REFRESH_MARGIN of expiring, so
    // these are good for 4 s of use.
    let imds = Imds::start(Instance {
        instance_id: INSTANCE.into(),
        region: REGION.into(),
        role: "SessionAgentRole".into(),
        account_id: "123456789012".into(),
        lifetime: REFRESH_MARGIN + Duration::from_secs(4),
        vpc_cidrs: (
            vec!["10.0.0.0/16".into()],
            vec!["2600:1f18:abcd:1200::/56".into()],
        ),
    })
    .await;
    let started = Instant::now();
    let agent = Agent::start(
        &format!(
            "gateway = \"aws\"\nendpoint = \"{url}\"\nssm_endpoint = \"{url}\"\n",
            url = gw.http_url()
        ),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url())],
    );
    wait_online(&gw, INSTANCE, WAIT * 2).await;
    let log = agent.log();
    assert!(
        log.contains("AWS mode: requests are signed") && log.contains(REGION),
        "{log}"
    );
    // The heartbeat, signed for `ssm`, reached the API before the control channel opened.
    let info = gw
        .api_ok(
            "DescribeInstanceInformation",
            json!({"Filters":[{"Key":"InstanceIds","Values":[INSTANCE]}]}),
        )
        .await;
    let node = &info["InstanceInformationList"][0];
    assert_eq!(node["AgentVersion"], env!("CARGO_PKG_VERSION"), "{info}");
    assert_eq!(node["PlatformType"], "Linux", "{info}");
    assert_eq!(node["PingStatus"], "Online", "{info}");
    let first = imds.keys_handed_out();
    assert_eq!(first.first(), Some(&Imds::key(1).0), "{first:?}");

    // Past the first key's renewal point, a session: the agent's CreateDataChannel and
    // data-channel upgrade are signed with a fresh key.
    let renew_at = started + Duration::from_secs(5);
    tokio::time::sleep_until(renew_at.into()).await;
    let (_sid, mut client) = open_shell(&gw, INSTANCE).await;
    client.type_text("echo signed-$((6*7))\n").await;
    client.expect("signed-42").await;
    let keys = imds.keys_handed_out();
    assert!(keys.len() > first.len(), "no renewal: {keys:?}");
    assert_eq!(
        imds.unauthorized(),
        0,
        "a metadata GET came without a token"
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("access_key_id={}", Imds::key(2).0)),
        "the renewal is not in the log:\n{log}"
    );
    // The VPC's DNS resolver (base + 2), read from instance metadata, is denied to port
    // sessions, IPv4 and IPv6, as upstream.
    assert!(
        log.contains("also denies each VPC's reserved addresses"),
        "{log}"
    );
    for host in ["10.0.0.2", "2600:1f18:abcd:1200::2"] {
        let (_sid, mut c) = crate::port::PortClient::start_document(
            &gw,
            INSTANCE,
            "AWS-StartPortForwardingSessionToRemoteHost",
            json!({"host": [host], "portNumber": ["53"]}),
            "1.2.650.0",
        )
        .await;
        c.until_closed().await;
        let why = c.closed.clone().unwrap().output;
        assert!(
            why.contains(&format!("forwarding to {host} is forbidden")),
            "{why}"
        );
    }
    drop(agent);
    gw.stop().await;
}

/// (status, body) of a POST to `path`, signed with `creds` at `time` for `region`
/// (unsigned without creds); `send_body` differs from the signed body to test tampering.
async fn post(
    gw: &Gateway,
    path: &str,
    creds: Option<&Credentials>,
    time: SystemTime,
    region: &str,
    service: &str,
    send_body: Option<&str>,
) -> (u16, String) {
    let url = format!("{}{path}", gw.http_url());
    let body =
        r#"{"MessageSchemaVersion":"1.0","RequestId":"00000000-0000-4000-8000-000000000000"}"#;
    let content_type = if path == "/" {
        "application/x-amz-json-1.1"
    } else {
        "application/json"
    };
    let mut headers = vec![("content-type", content_type)];
    if path == "/" {
        headers.push(("x-amz-target", "AmazonSSM.DescribeInstanceInformation"));
    }
    let mut req = gw.http().post(&url);
    for (k, v) in &headers {
        req = req.header(*k, *v);
    }
    if let Some(creds) = creds {
        for (k, v) in sign_with(
            creds,
            region,
            service,
            time,
            "POST",
            &url,
            &headers,
            body.as_bytes(),
        )
        .unwrap()
        {
            req = req.header(k, v);
        }
    }
    let resp = req
        .body(send_body.unwrap_or(body).to_owned())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The HTTP status a websocket upgrade gets (101 when accepted).
async fn upgrade(gw: &Gateway, path: &str, creds: Option<&Credentials>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", gw.ws_url());
    let mut request = url.as_str().into_client_request().unwrap();
    if let Some(creds) = creds {
        for (k, v) in sign_with(
            creds,
            REGION,
            "ssmmessages",
            SystemTime::now(),
            "GET",
            &url,
            &[],
            b"",
        )
        .unwrap()
        {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("upgrade to {path}: {e}"),
    }
}

#[allow(clippy::type_complexity)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_gateway_refuses_unsigned_expired_and_wrongly_signed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let gw = strict_gateway(dir.path()).await;
    let now = SystemTime::now();
    let owner = Credentials::new(AKID, "secret", None, None, "test");
    let cc = "/v1/control-channel/i-0123456789abcdef0";
    let cases: Vec<(
        &str,
        Option<Credentials>,
        SystemTime,
        &str,
        Option<&str>,
        u16,
        &str,
    )> = vec![
        (
            "unsigned",
            None,
            now,
            REGION,
            None,
            403,
            "MissingAuthenticationTokenException",
        ),
        (
            "unknown key",
            Some(Credentials::new("AKIDNOBODY", "x", None, None, "t")),
            now,
            REGION,
            None,
            403,
            "UnrecognizedClientException",
        ),
        (
            "wrong secret",
            Some(Credentials::new(AKID, "not-the-secret", None, None, "t")),
            now,
            REGION,
            None,
            403,
            "does not match",
        ),
        (
            "ten minutes old",
            Some(owner.clone()),
            now - Duration::from_secs(600),
            REGION,
            None,
            403,
            "Signature expired",
        ),
        (
            "another region",
            Some(owner.clone()),
            now,
            "eu-west-1",
            None,
            403,
            "Credential should be scoped to",
        ),
        (
            "tampered body",
            Some(owner.clone()),
            now,
            REGION,
            Some(
                r#"{"MessageSchemaVersion":"1.0","RequestId":"11111111-0000-4000-8000-000000000000"}"#,
            ),
            403,
            "does not match",
        ),
        (
            "temporary key without its session token",
            Some(Credentials::new(
                Imds::key(1).0,
                Imds::key(1).1,
                None,
                None,
                "t",
            )),
            now,
            REGION,
            None,
            403,
            "UnrecognizedClientException",
        ),
        (
            "temporary key with its session token",
            Some(Credentials::new(
                Imds::key(1).0,
                Imds::key(1).1,
                Some(Imds::key(1).2),
                None,
                "t",
            )),
            now,
            REGION,
            None,
            201,
            "TokenValue",
        ),
        (
            "valid",
            Some(owner.clone()),
            now,
            REGION,
            None,
            201,
            "TokenValue",
        ),
    ];
    for (what, creds, time, region, send, status, needle) in &cases {
        let (got, body) = post(&gw, cc, creds.as_ref(), *time, region, "ssmmessages", *send).await;
        assert_eq!(got, *status, "{what}: {body}");
        assert!(body.contains(needle), "{what}: {body}");
    }
    // A channel request signed for the API's service is refused too.
    let (got, body) = post(&gw, cc, Some(&owner), now, REGION, "ssm", None).await;
    assert_eq!(got, 403, "{body}");

    // The SSM API answers in its own JSON shape.
    let (got, body) = post(&gw, "/", None, now, REGION, "ssm", None).await;
    assert_eq!(got, 403, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["__type"], "MissingAuthenticationTokenException", "{v}");
    let (got, body) = post(&gw, "/", Some(&owner), now, REGION, "ssm", None).await;
    assert_eq!(got, 200, "{body}");

    // Upgrades: the control channel must be signed; a data channel may come unsigned
    // (the official client signs none; its token is checked in the first frame).
    assert_eq!(upgrade(&gw, cc, None).await, 403);
    assert_eq!(upgrade(&gw, cc, Some(&owner)).await, 101);
    assert_eq!(upgrade(&gw, "/v1/data-channel/s-0123", None).await, 101);
    let wrong = Credentials::new(AKID, "nope", None, None, "t");
    assert_eq!(
        upgrade(&gw, "/v1/data-channel/s-0123", Some(&wrong)).await,
        403
    );

    // A key added to the file later is picked up without a restart.
    let added = Credentials::new("AKIDADDEDLATER", "later-secret", None, None, "t");
    let (got, _) = post(&gw, cc, Some(&added), now, REGION, "ssmmessages", None).await;
    assert_eq!(got, 403);
    let path = dir.path().join("gateway-credentials");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[added]\naws_access_key_id = AKIDADDEDLATER\naws_secret_access_key = later-secret\n",
    );
    std::fs::write(&path, text).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (got, body) = post(
        &gw,
        cc,
        Some(&added),
        SystemTime::now(),
        REGION,
        "ssmmessages",
        None,
    )
    .await;
    assert_eq!(got, 201, "{body}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_agents_say_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let gw = strict_gateway(dir.path()).await;
    let url = gw.http_url();
    // Unsigned (local mode) against a strict gateway.
    let local = Agent::start(
        &format!("endpoint = \"{url}\"\ntarget_id = \"plain\"\n"),
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    // AWS mode off EC2: no region anywhere; a region but no instance id.
    let no_region = Agent::start(
        &format!("gateway = \"aws\"\nendpoint = \"{url}\"\n"),
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    let no_id = Agent::start(
        &format!("gateway = \"aws\"\nendpoint = \"{url}\"\nregion = \"{REGION}\"\n"),
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    // AWS mode with keys the gateway does not know.
    let unknown = Agent::start(
        &format!("gateway = \"aws\"\nendpoint = \"{url}\"\nregion = \"{REGION}\"\ntarget_id = \"mi-0123456789abcdef0\"\nssm_endpoint = \"{url}\"\n"),
        &[
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ACCESS_KEY_ID", "AKIDSTRANGER"),
            ("AWS_SECRET_ACCESS_KEY", "whatever"),
        ],
    );
    local
        .wait_log(
            "The gateway requires signed requests: set gateway = \"aws\"",
            WAIT,
        )
        .await;
    no_region
        .wait_log("no AWS region: set `region`", WAIT)
        .await;
    no_id
        .wait_log("off EC2, set `target_id` to the managed-instance id", WAIT)
        .await;
    let log = unknown
        .wait_log("The gateway refused the agent's credentials", WAIT)
        .await;
    assert!(log.contains("UnrecognizedClientException"), "{log}");
    assert!(log.contains("UpdateInstanceInformation refused"), "{log}");
    for agent in [&local, &no_region, &no_id, &unknown] {
        assert!(!agent.log().contains("panicked"), "{}", agent.log());
    }
    gw.stop().await;
}
