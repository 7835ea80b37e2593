//! `session-agent doctor` (the real binary) against a real gateway and LocalStack: every
//! check passes on a good setup and leaves nothing behind; an unencrypted bucket that
//! must be encrypted, a missing log group, an unreachable gateway and a broken
//! configuration each fail with what to do.

use crate::recording::{gateway, preferences, LocalStack, LOCALSTACK, REGION};
use serde_json::json;
use tokio::process::Command;

/// Runs doctor without blocking the test's runtime (the gateway is served on it).
async fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .arg("doctor")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", LOCALSTACK)
        .env("AWS_ACCESS_KEY_ID", "AKIADOCTORTEST123456")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn line<'a>(report: &'a str, start: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{report}"))
}

#[tokio::test]
async fn doctor_checks_gateway_credentials_and_each_sink_and_says_what_to_do() {
    let ls = LocalStack::get().await;
    let gw = gateway(json!({})).await;
    let state = tempfile::tempdir().unwrap();
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(true).await;
    let good = state.path().join("good.json");
    std::fs::write(
        &good,
        preferences(json!({
            "s3BucketName": bucket, "s3KeyPrefix": "audit", "s3EncryptionEnabled": true,
            "cloudWatchLogGroupName": group, "cloudWatchEncryptionEnabled": true,
        }))
        .to_string(),
    )
    .unwrap();
    let endpoint = gw.http_url();
    let state_dir = state.path().to_str().unwrap();
    let config = state.path().join("agent.toml");
    std::fs::write(&config, "target_id = \"doc-node\"\n").unwrap();
    let config = config.to_str().unwrap();
    let common = [
        "--endpoint",
        &endpoint,
        "--config",
        config,
        "--state-dir",
        state_dir,
    ];
    let mut args = common.to_vec();
    args.extend(["--document", good.to_str().unwrap()]);
    let (code, report) = doctor(&args).await;
    assert_eq!(code, 0, "{report}");
    assert!(line(&report, "ok    configuration")
        .ends_with(&format!("valid ({config} and flags/environment)")));
    assert!(line(&report, "ok    gateway").contains("token for doc-node was issued"));
    assert!(line(&report, "ok    AWS credentials").contains("AKIA…3456"));
    assert!(
        !report.contains("AKIADOCTORTEST123456"),
        "key shown in full"
    );
    assert!(line(&report, "ok    recordings").contains("writable"));
    let s3 = line(&report, &format!("ok    S3 bucket {bucket}"));
    assert!(
        s3.contains("SSE-S3 (AES256)") && s3.contains("written and deleted"),
        "{s3}"
    );
    let cwl = line(&report, &format!("ok    CloudWatch Logs log group {group}"));
    assert!(
        cwl.contains("encrypted with KMS key") && cwl.contains("written and deleted"),
        "{cwl}"
    );
    assert!(report.contains(" 0 failed"), "{report}");
    // Nothing left behind.
    let objects = ls
        .s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(objects.contents().is_empty(), "{objects:?}");
    let streams = ls
        .logs
        .describe_log_streams()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    assert!(streams.log_streams().is_empty(), "{streams:?}");

    // Unencrypted bucket that must be encrypted, and a log group that does not exist.
    let plain = ls.bucket(false).await;
    let bad = state.path().join("bad.json");
    std::fs::write(
        &bad,
        preferences(json!({
            "s3BucketName": plain, "s3EncryptionEnabled": true,
            "cloudWatchLogGroupName": "/no/such/group",
        }))
        .to_string(),
    )
    .unwrap();
    let mut args = common.to_vec();
    args.extend(["--document", bad.to_str().unwrap()]);
    let (code, report) = doctor(&args).await;
    assert_eq!(code, 1, "{report}");
    let s3 = line(&report, &format!("FAIL  S3 bucket {plain}"));
    assert!(
        s3.contains(session_agent::delivery::S3_NOT_ENCRYPTED),
        "{s3}"
    );
    assert!(report.contains("-> create the bucket with default encryption"));
    assert!(
        line(&report, "FAIL  CloudWatch Logs log group /no/such/group").contains("does not exist")
    );
    assert!(report.contains("-> create the log group"), "{report}");

    // No gateway there; a configuration with a bad value.
    let (code, report) =
        doctor(&["--endpoint", "http://127.0.0.1:9", "--state-dir", state_dir]).await;
    assert_eq!(code, 1, "{report}");
    assert!(
        line(&report, "FAIL  gateway http://127.0.0.1:9").contains("Connection refused"),
        "{report}"
    );
    assert!(report.contains("-> start the gateway or fix `endpoint`"));
    assert!(line(&report, "skip  S3 / CloudWatch Logs").contains("--document"));
    let (code, report) = doctor(&["--max-sessions", "0"]).await;
    assert_eq!(code, 1, "{report}");
    assert!(
        line(&report, "FAIL  configuration").contains("max_sessions: must be between 1 and 10000"),
        "{report}"
    );
}
