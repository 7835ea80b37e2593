//! The control channel (protocol.md §1): connect, dispatch, report, reconnect.
//!
//! Backoff: the first retry comes after about a quarter second, then doubles to a one-minute
//! cap, each with up to 50 % random jitter so a fleet does not reconnect in lockstep.
//! (Upstream waits 5–10 s before the first retry and caps at 40 minutes; a session agent
//! that is unreachable for 40 minutes after a gateway blip is not what operators want.)
//! Every attempt asks for a fresh token. Keepalive pings go out every 30 s (upstream: 54 s),
//! and a channel silent for 90 s is considered dead and replaced.

use super::{notify, run_session, Ctx, Outcome, AGENT_VERSION};
use crate::backoff::Backoff;
use crate::protocol::frame::{AgentMessage, MessageType, PayloadType};
use crate::protocol::payload::{
    from_json, to_json, AgentTaskAcknowledge, AgentTaskComplete, AgentTaskPayload, ChannelClosed,
    OpenControlChannel, MESSAGE_SCHEMA_VERSION,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PING_EVERY: Duration = Duration::from_secs(30);
const DEAD_AFTER: Duration = Duration::from_secs(90);
/// agent_task_complete is resent this often until acknowledged (upstream: 3 tries, 1 s apart).
const REPLY_RETRY: Duration = Duration::from_secs(2);
/// Unacknowledged reports kept (oldest dropped past this, with an error log): reports are
/// retried until acknowledged, but memory stays bounded if a gateway never answers.
const REPLY_MAX_PENDING: usize = 10_000;
/// A control channel must stay up this long before the reconnect backoff starts over, so
/// two agents fighting over one target id (cloned machines) do not reconnect in a tight loop.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// What a session requested while the agent stops is refused with.
pub const STOPPING_REFUSAL: &str =
    "the agent on the instance is stopping (service stop or restart); start the session again in a moment";

/// Status line for the service manager while connected.
fn online_status(ctx: &Ctx, sessions: usize) -> String {
    format!(
        "Online: control channel open to {} as {}; {sessions} session(s)",
        ctx.mgs.endpoint(),
        ctx.target_id
    )
}

struct PendingReply {
    message_id: Uuid,
    report: AgentTaskComplete,
    sends: u32,
    next_send: Instant,
}

fn now_ms() -> u64 {
    crate::timefmt::unix_ms(std::time::SystemTime::now())
}

fn report_frame(reply: &mut PendingReply) -> Bytes {
    reply.sends += 1;
    reply.report.retry_number = i64::from(reply.sends);
    AgentMessage::new(
        MessageType::AgentTaskComplete,
        PayloadType::Null,
        to_json(&reply.report),
        now_ms(),
        reply.message_id,
    )
    .encode()
    .unwrap_or_default()
}

/// Runs the control loop until `shutdown` resolves, then stops gracefully: no new
/// sessions, every session told and ended, its recording flushed, its report sent, and
/// deliveries drained until `shutdown_timeout` has passed (what is left is delivered at
/// the next start).
pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: impl Future<Output = ()>) {
    // Fused: polled again after it fired (say, during a reconnect while stopping), it just
    // stays pending instead of panicking.
    let shutdown = futures_util::FutureExt::fuse(shutdown);
    tokio::pin!(shutdown);
    let mut shutdown_at: Option<Instant> = None;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let mut sessions: HashMap<String, CancellationToken> = HashMap::new();
    let mut pending: Vec<PendingReply> = Vec::new();
    let mut backoff = Backoff::control_channel();
    'reconnect: loop {
        if shutdown_at.is_some() {
            break 'reconnect;
        }
        let ws = tokio::select! {
            r = connect(&ctx) => r,
            () = &mut shutdown => break 'reconnect,
        };
        let ws = match ws {
            Ok(ws) => {
                tracing::info!(target_id = %ctx.target_id, endpoint = %ctx.mgs.endpoint(), "Control channel open");
                notify::status(&online_status(&ctx, sessions.len()));
                ws
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if e.to_string().contains("registered to another identity") {
                    tracing::error!(error = %e, retry_in = ?delay, target_id = %ctx.target_id, "The gateway holds this target id for another identity: another agent registered it, or this agent's key changed (a new state directory, other credentials). Give this host its own target_id, or have a gateway admin release the id (aws ssm deregister-managed-instance)");
                } else if e.auth_refused() && !ctx.mgs.signs_with_credentials() {
                    tracing::error!(error = %e, retry_in = ?delay, "The gateway requires signed requests: set gateway = \"aws\" (with this endpoint) and give the agent AWS credentials");
                } else if e.auth_refused() {
                    // (Mgs has dropped the cached credentials: the next attempt loads fresh ones.)
                    tracing::error!(error = %e, retry_in = ?delay, "The gateway refused the agent's credentials; check that the instance role (or the credentials in the environment) allows ssmmessages:CreateControlChannel and ssmmessages:OpenControlChannel, and that the clock is right");
                } else {
                    tracing::warn!(error = %e, retry_in = ?delay, "Control channel unavailable");
                }
                notify::status(&format!(
                    "Offline: cannot reach {} ({e}); retrying",
                    ctx.mgs.endpoint()
                ));
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue 'reconnect,
                    () = &mut shutdown => break 'reconnect,
                }
            }
        };
        let (mut sink, mut stream) = ws.split();
        for reply in &mut pending {
            reply.next_send = Instant::now();
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        let mut last_seen = Instant::now();
        let opened = Instant::now();
        loop {
            if opened.elapsed() > STABLE_AFTER {
                backoff.reset();
            }
            if shutdown_at.is_some() && sessions.is_empty() && pending.is_empty() {
                break 'reconnect;
            }
            tokio::select! {
                () = &mut shutdown, if shutdown_at.is_none() => {
                    // Stop sessions, but stay connected to deliver their final reports.
                    shutdown_at = Some(begin_stop(&ctx, &sessions));
                }
                () = sleep_until_opt(shutdown_at) => break 'reconnect,
                msg = stream.next() => {
                    let raw = match msg {
                        Some(Ok(Message::Binary(raw))) => raw,
                        gone @ (Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {
                            if shutdown_at.is_some() {
                                break 'reconnect;
                            }
                            let delay = backoff.next_delay();
                            let reason = match gone {
                                Some(Ok(Message::Close(Some(f)))) => f.reason.to_string(),
                                _ => String::new(),
                            };
                            if reason.contains("replaced by a newer control channel") {
                                tracing::warn!(target_id = %ctx.target_id, gateway_says = %reason, "Another connection took this node's control channel: another agent (or a second copy of this one) uses the same target id. Sessions go to whichever connected last; give each host its own target_id");
                            }
                            tracing::warn!(retry_in = ?delay, reason = %reason, "Control channel closed; reconnecting");
                            notify::status(&format!("Offline: control channel to {} closed; reconnecting", ctx.mgs.endpoint()));
                            tokio::select! {
                                () = tokio::time::sleep(delay) => continue 'reconnect,
                                () = &mut shutdown => break 'reconnect,
                            }
                        }
                        Some(Ok(_)) => { last_seen = Instant::now(); continue }
                    };
                    last_seen = Instant::now();
                    match AgentMessage::decode(&raw, super::budget::MAX_CONTROL_MESSAGE) {
                        Ok(m) => {
                            let before = sessions.len();
                            dispatch(&ctx, m, &mut sessions, &mut pending, &done_tx);
                            if sessions.len() != before {
                                notify::status(&online_status(&ctx, sessions.len()));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "Dropping a malformed control message"),
                    }
                }
                Some(outcome) = done_rx.recv() => {
                    if sessions.remove(&outcome.session_id).is_some() && shutdown_at.is_none() {
                        notify::status(&online_status(&ctx, sessions.len()));
                    }
                    if pending.len() >= REPLY_MAX_PENDING {
                        let gone = pending.remove(0);
                        tracing::error!(session = %gone.report.task_id, "Too many unacknowledged reports; dropping the oldest");
                    }
                    pending.push(PendingReply {
                        message_id: Uuid::new_v4(),
                        report: AgentTaskComplete {
                            schema_version: 1,
                            task_id: outcome.session_id,
                            topic: "agent_task_complete".into(),
                            final_task_status: outcome.status.into(),
                            instance_id: ctx.target_id.clone(),
                            output: outcome.output,
                            s3_bucket: outcome.locations.s3_bucket,
                            s3_url_suffix: outcome.locations.s3_key,
                            cwl_group: outcome.locations.cwl_group,
                            cwl_stream: outcome.locations.cwl_stream,
                            ..AgentTaskComplete::default()
                        },
                        sends: 0,
                        next_send: Instant::now(),
                    });
                    if send_due(&mut sink, &mut pending).await.is_err() {
                        continue 'reconnect;
                    }
                }
                _ = retry.tick() => {
                    if send_due(&mut sink, &mut pending).await.is_err() {
                        continue 'reconnect;
                    }
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > DEAD_AFTER {
                        tracing::warn!("Control channel silent for too long; reconnecting");
                        continue 'reconnect;
                    }
                    if sink.send(Message::Ping(Bytes::from_static(b"keepalive"))).await.is_err() {
                        continue 'reconnect;
                    }
                }
            }
        }
    }
    // Also when the stop came while disconnected (no reports can be sent then).
    let deadline = match shutdown_at {
        Some(at) => at,
        None => begin_stop(&ctx, &sessions),
    };
    for token in sessions.values() {
        token.cancel();
    }
    let unreported = sessions.len() + pending.len();
    if unreported > 0 {
        tracing::warn!(
            sessions = unreported,
            "Stopping without every session's final report acknowledged by the gateway"
        );
    }
    // Sessions still ending, deliveries at close and recovered deliveries.
    ctx.tasks.close();
    if tokio::time::timeout_at(deadline, ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = ctx.tasks.len(),
            timeout = ?ctx.config.shutdown_timeout,
            "Stop deadline reached with sessions ending or recordings being delivered; recordings not yet delivered are delivered at the next start"
        );
    } else {
        tracing::info!(
            "Stopped: every session ended and every recording was handed to its destinations"
        );
    }
}

/// Starts a graceful stop: new sessions are refused from now on, running ones are told
/// and ended. Returns the deadline for the whole stop.
fn begin_stop(ctx: &Ctx, sessions: &HashMap<String, CancellationToken>) -> Instant {
    tracing::info!(
        sessions = sessions.len(),
        timeout = ?ctx.config.shutdown_timeout,
        "Stopping: refusing new sessions, ending running ones, delivering recordings"
    );
    notify::stopping(&format!(
        "Stopping: ending {} session(s), delivering recordings (at most {:?})",
        sessions.len(),
        ctx.config.shutdown_timeout
    ));
    ctx.stopping.cancel();
    for token in sessions.values() {
        token.cancel();
    }
    Instant::now() + ctx.config.shutdown_timeout
}

async fn send_due<S>(sink: &mut S, pending: &mut [PendingReply]) -> Result<(), ()>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let now = Instant::now();
    for reply in pending.iter_mut().filter(|r| r.next_send <= now) {
        let frame = report_frame(reply);
        reply.next_send = now + REPLY_RETRY;
        // A send that hangs (peer not reading) is a dead channel: reconnect.
        match tokio::time::timeout(REPLY_RETRY * 5, sink.send(Message::Binary(frame))).await {
            Ok(Ok(())) => {}
            _ => return Err(()),
        }
    }
    Ok(())
}

/// `PlatformType` as upstream spells it (§1.4): every unix build but macOS says linux.
fn platform_type() -> &'static str {
    match std::env::consts::OS {
        "windows" => "windows",
        "macos" => "macos",
        _ => "linux",
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn connect(ctx: &Ctx) -> Result<super::mgs::Socket, super::mgs::MgsError> {
    let target = &ctx.target_id;
    let token = ctx
        .mgs
        .create_channel("control-channel", target, None)
        .await?;
    let open = OpenControlChannel {
        cookie: None,
        message_schema_version: MESSAGE_SCHEMA_VERSION.into(),
        request_id: Uuid::new_v4().to_string(),
        token_value: token,
        agent_version: AGENT_VERSION.into(),
        platform_type: platform_type().into(),
    };
    ctx.mgs
        .dial(
            "control-channel",
            target,
            "role=subscribe&stream=input",
            &open,
        )
        .await
}

fn dispatch(
    ctx: &Arc<Ctx>,
    m: AgentMessage,
    sessions: &mut HashMap<String, CancellationToken>,
    pending: &mut Vec<PendingReply>,
    done_tx: &mpsc::UnboundedSender<Outcome>,
) {
    match m.message_type {
        MessageType::InteractiveShell => {
            let task = match AgentTaskPayload::from_interactive_shell(&m.payload) {
                Ok((_, task)) => task,
                Err(e) => {
                    tracing::warn!(error = %e, "Ignoring an unreadable interactive_shell");
                    return;
                }
            };
            if sessions.contains_key(&task.session_id) {
                return; // a redelivery of a session already running
            }
            let id = task.session_id.clone();
            if ctx.stopping.is_cancelled() {
                tracing::warn!(session = %id, "Refusing session: the agent is stopping");
                let _ = done_tx.send(Outcome::failed(&id, STOPPING_REFUSAL.into()));
                return;
            }
            if sessions.len() >= ctx.config.max_sessions {
                tracing::warn!(session = %id, max = ctx.config.max_sessions, "Refusing session: limit reached");
                let _ = done_tx.send(Outcome::failed(
                    &id,
                    format!(
                        "the agent is already running its maximum of {} sessions",
                        ctx.config.max_sessions
                    ),
                ));
                return;
            }
            tracing::info!(session = %id, owner = %task.session_owner, "Session requested");
            let token = CancellationToken::new();
            sessions.insert(id.clone(), token.clone());
            let ctx = ctx.clone();
            let done = done_tx.clone();
            ctx.tasks.clone().spawn(async move {
                // The session runs in its own task so that a panic stays inside it.
                let recordings = ctx.config.recordings_dir();
                let policy = ctx.config.retention;
                let (outcome, delivery) = match tokio::spawn(run_session(ctx, task, token)).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(session = %id, error = %e, "Session task failed");
                        (
                            Outcome::failed(&id, "internal error in the agent".into()),
                            None,
                        )
                    }
                };
                let _ = done.send(outcome);
                // Delivery at close runs after the report: the user is not kept waiting.
                if let Some(delivery) = delivery {
                    let _ = tokio::spawn(delivery.run()).await;
                }
                let _ = tokio::task::spawn_blocking(move || {
                    super::retention::sweep(&recordings, policy)
                })
                .await;
            });
        }
        MessageType::ChannelClosed => {
            if let Ok(c) = from_json::<ChannelClosed>(&m.payload, "channel_closed") {
                if let Some(token) = sessions.get(&c.session_id) {
                    tracing::info!(session = %c.session_id, "Terminate requested");
                    token.cancel();
                }
            }
        }
        MessageType::AgentTaskAcknowledge => {
            if let Ok(ack) = from_json::<AgentTaskAcknowledge>(&m.payload, "agent_task_acknowledge")
            {
                pending.retain(|p| p.message_id.to_string() != ack.message_id);
            }
        }
        other => tracing::debug!(message_type = %other, "Ignoring control message"),
    }
}
