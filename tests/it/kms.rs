//! KMS-encrypted sessions (protocol.md §5) with the real agent binary and the KMS
//! emulator: a client doing what the official plugin does (GenerateDataKey of 64 bytes
//! with the session's encryption context, HandshakeResponse, the challenge, then sealed
//! input and output); a client that cannot do KMS gets the session refused, never an
//! unencrypted shell; a data key from another session does not decrypt.

use crate::recording::{gateway, AgentProcess, REGION};
use crate::support::kms::{Kms, KEY_ALIAS};
use crate::support::*;
use base64::Engine;
use serde_json::{json, Value};
use session_agent::protocol::crypto::{Role, SessionCipher, ENCRYPTED_NOTICE};
use session_agent::protocol::frame::{AgentMessage, MessageType, PayloadType};
use session_agent::protocol::payload::{
    kms_context, to_json, EncryptionChallenge, HandshakeComplete, HandshakeRequest,
    HandshakeResponse, KmsEncryptionParameters, ProcessedClientAction,
};
use std::collections::HashSet;

/// Next new `output_stream_data` (acknowledged; retransmissions skipped).
async fn next_output(peer: &mut Peer, seen: &mut HashSet<i64>) -> AgentMessage {
    loop {
        let (m, _) = peer.recv().await;
        if m.message_type != MessageType::OutputStreamData {
            continue;
        }
        peer.send_raw(ack_for(&m)).await;
        if seen.insert(m.sequence_number) {
            return m;
        }
    }
}

async fn kms_client(kms: &Kms) -> session_agent::delivery::aws::Kms {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(session_agent::sign::static_provider("test", "test", None))
        .endpoint_url(kms.url())
        .http_client(session_agent::delivery::aws::https_client())
        .load()
        .await;
    session_agent::delivery::aws::Kms::new(&config)
}

/// Starts a session on an agent whose documents ask for KMS; returns the session id,
/// the client peer and the agent's HandshakeRequest.
async fn start(gw: &Gateway, target: &str) -> (String, Peer, HashSet<i64>, HandshakeRequest) {
    let (sid, token, url) = start_session(gw, target).await;
    let mut peer = client_connect(gw, &url, &token).await;
    let mut seen = HashSet::new();
    let m = next_output(&mut peer, &mut seen).await;
    assert_eq!(m.payload_type, PayloadType::HandshakeRequest, "{m:?}");
    let request: HandshakeRequest = serde_json::from_slice(&m.payload).unwrap();
    (sid, peer, seen, request)
}

fn response(actions: Vec<ProcessedClientAction>) -> Vec<u8> {
    to_json(&HandshakeResponse {
        client_version: "1.2.677.0".into(),
        processed_client_actions: actions,
        errors: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_sessions_are_encrypted_end_to_end_and_recorded_in_clear() {
    let kms = Kms::start(REGION, ("test", "test")).await;
    let gw = gateway(json!({"kmsKeyId": KEY_ALIAS})).await;
    let agent =
        AgentProcess::start_with(&gw, "kms-node", &[("AWS_ENDPOINT_URL_KMS", &kms.url())]).await;
    let (sid, mut peer, mut seen, request) = start(&gw, "kms-node").await;
    let kms_action = request
        .requested_client_actions
        .iter()
        .find(|a| a.action_type == "KMSEncryption")
        .expect("no KMSEncryption action");
    let params: KmsEncryptionParameters =
        serde_json::from_value(kms_action.action_parameters.clone()).unwrap();
    assert_eq!(params.kms_key_id, KEY_ALIAS);
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(b64.decode(&params.challenge).unwrap().len(), 16);

    // What the official client does: a 64-byte data key bound to this session.
    let (blob, plain) = kms_client(&kms)
        .await
        .generate_data_key(KEY_ALIAS, 64, &kms_context(&sid, "kms-node", None))
        .await
        .unwrap();
    let client = SessionCipher::new(&plain, Role::Client, [0; 12]).unwrap();
    let actions = vec![
        ProcessedClientAction {
            action_type: "SessionType".into(),
            action_status: 1,
            action_result: Value::Null,
            error: String::new(),
        },
        ProcessedClientAction {
            action_type: "KMSEncryption".into(),
            action_status: 1,
            action_result: json!({"KMSCipherTextKey": b64.encode(&blob), "KMSCipherTextHash": null}),
            error: String::new(),
        },
    ];
    let mut seq = 0;
    let mut send = |pt: PayloadType, payload: Vec<u8>| {
        let f = frame(MessageType::InputStreamData, pt, payload, seq);
        seq += 1;
        f
    };
    peer.send_raw(send(PayloadType::HandshakeResponse, response(actions)))
        .await;
    let m = next_output(&mut peer, &mut seen).await;
    assert_eq!(m.payload_type, PayloadType::EncChallengeRequest);
    let challenge: EncryptionChallenge = serde_json::from_slice(&m.payload).unwrap();
    let opened = client
        .open(&b64.decode(&challenge.challenge).unwrap())
        .unwrap();
    assert_eq!(opened.len(), 64);
    let answer = EncryptionChallenge {
        challenge: b64.encode(client.seal_with(rand::random(), &opened)),
    };
    peer.send_raw(send(PayloadType::EncChallengeResponse, to_json(&answer)))
        .await;
    let m = next_output(&mut peer, &mut seen).await;
    assert_eq!(m.payload_type, PayloadType::HandshakeComplete);
    let complete: HandshakeComplete = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(complete.customer_message, ENCRYPTED_NOTICE);

    // Size goes in clear (§5.4); keystrokes sealed; output arrives sealed.
    peer.send_raw(send(
        PayloadType::Size,
        br#"{"cols":100,"rows":30}"#.to_vec(),
    ))
    .await;
    peer.send_raw(send(
        PayloadType::Output,
        client.seal_with(rand::random(), b"echo kms-$((6*7))\n"),
    ))
    .await;
    let mut screen = String::new();
    while !screen.contains("kms-42") {
        let m = next_output(&mut peer, &mut seen).await;
        if m.payload_type != PayloadType::Output {
            continue;
        }
        assert!(
            !String::from_utf8_lossy(&m.payload).contains("kms-"),
            "output went out in clear"
        );
        let plain = client.open(&m.payload).expect("output does not decrypt");
        screen.push_str(&String::from_utf8_lossy(&plain));
    }
    peer.send_raw(send(
        PayloadType::Output,
        client.seal_with(rand::random(), b"exit\n"),
    ))
    .await;
    wait_status(&gw, &sid, "History", "Terminated").await;
    assert!(
        kms.calls().contains(&"Decrypt ok".to_owned()),
        "{:?}",
        kms.calls()
    );
    // The flight recorder keeps the clear text.
    let transcript = std::fs::read_to_string(agent.recording_dir(&sid).join(format!("{sid}.log")))
        .unwrap_or_default();
    assert!(transcript.contains("kms-42"), "{transcript}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_sessions_are_refused_to_clients_without_kms_or_with_another_sessions_key() {
    let kms = Kms::start(REGION, ("test", "test")).await;
    let gw = gateway(json!({"kmsKeyId": KEY_ALIAS})).await;
    let _agent =
        AgentProcess::start_with(&gw, "kms-refuse", &[("AWS_ENDPOINT_URL_KMS", &kms.url())]).await;

    // A client that does not support KMS (as the official one reports it: status 3).
    let (sid, mut peer, _, _) = start(&gw, "kms-refuse").await;
    let actions = vec![ProcessedClientAction {
        action_type: "KMSEncryption".into(),
        action_status: 3,
        action_result: Value::Null,
        error: "not supported".into(),
    }];
    peer.send_raw(frame(
        MessageType::InputStreamData,
        PayloadType::HandshakeResponse,
        response(actions),
        0,
    ))
    .await;
    let failed = wait_status(&gw, &sid, "History", "Failed").await;
    assert!(failed.to_string().contains("KMS"), "{failed}");

    // A data key generated for another session.
    let (sid, mut peer, _, _) = start(&gw, "kms-refuse").await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (blob, _) = kms_client(&kms)
        .await
        .generate_data_key(
            KEY_ALIAS,
            64,
            &kms_context("someone-else-0123", "kms-refuse", None),
        )
        .await
        .unwrap();
    let actions = vec![ProcessedClientAction {
        action_type: "KMSEncryption".into(),
        action_status: 1,
        action_result: json!({"KMSCipherTextKey": b64.encode(&blob)}),
        error: String::new(),
    }];
    peer.send_raw(frame(
        MessageType::InputStreamData,
        PayloadType::HandshakeResponse,
        response(actions),
        0,
    ))
    .await;
    wait_status(&gw, &sid, "History", "Failed").await;
    assert!(
        kms.calls()
            .iter()
            .any(|c| c == "Decrypt InvalidCiphertextException"),
        "{:?}",
        kms.calls()
    );
    gw.stop().await;
}
