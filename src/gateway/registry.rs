//! The gateway's in-memory view of the world: connected agents, sessions, single-use
//! tokens. Plain data guarded by one `std::sync::Mutex` in [`super::Shared`]; nothing
//! here awaits, so the lock is never held across an `.await`.
//!
//! Must not know: sockets, HTTP, files (persistence is [`super::store`]).

use super::store::SessionRecord;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long an issued token may wait for its open frame. AWS does not document its value;
/// one minute is ample for an agent or client that dials right after asking.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Frames held for a peer that is momentarily absent (client not yet connected, agent
/// reconnecting). Overflow drops the oldest: stream data is retransmitted by its sender,
/// so a drop costs latency, never data.
pub(crate) const PENDING_MAX_FRAMES: usize = 256;
/// Byte cap for the same queue.
pub(crate) const PENDING_MAX_BYTES: usize = 1024 * 1024;
/// Finished sessions kept for DescribeSessions History, oldest forgotten first.
pub(crate) const HISTORY_LIMIT: usize = 10_000;
/// Outstanding (issued, unused, unexpired) tokens. Each costs ~150 bytes; past this,
/// token requests are throttled instead of growing memory for whoever keeps asking.
pub(crate) const MAX_TOKENS: usize = 100_000;
/// Managed nodes remembered (connected or registered by UpdateInstanceInformation).
pub(crate) const MAX_AGENTS: usize = 10_000;

/// What a websocket should send next.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A binary AgentMessage frame.
    Frame(Bytes),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

/// Handle to one open websocket. Relayed frames go through the bounded `tx` (a slow
/// peer back-pressures its sender); the gateway's own few messages (channel_closed,
/// pause/start publication, close) go through `ctl`, which is never full, so they are
/// never lost to a busy relay.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) conn_id: u64,
    pub(crate) tx: mpsc::Sender<Outbound>,
    pub(crate) ctl: mpsc::UnboundedSender<Outbound>,
}

impl Peer {
    /// Queues a gateway message; fails only when the socket is already gone.
    pub(crate) fn control(&self, out: Outbound) {
        let _ = self.ctl.send(out);
    }
}

/// What a token lets its bearer open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    /// The agent's control channel for this target.
    Control { target: String },
    /// The agent's end of a session's data channel.
    AgentData { session_id: String },
    /// The client's end of a session's data channel (StreamUrl).
    ClientData { session_id: String },
}

#[derive(Debug)]
pub(crate) struct IssuedToken {
    pub(crate) grant: Grant,
    pub(crate) expires: Instant,
}

/// A managed node, known from its control channel or UpdateInstanceInformation.
#[derive(Debug, Default)]
pub(crate) struct Agent {
    pub(crate) agent_version: String,
    pub(crate) platform_type: String,
    pub(crate) platform_name: String,
    pub(crate) platform_version: String,
    pub(crate) computer_name: String,
    pub(crate) ip_address: String,
    pub(crate) last_ping: Option<SystemTime>,
    pub(crate) control: Option<Peer>,
}

/// Which end of a data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Agent,
    Client,
}

/// A session: its persisted record plus live connections.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) record: SessionRecord,
    pub(crate) agent: Option<Peer>,
    pub(crate) client: Option<Peer>,
    /// Frames waiting for the agent / the client to (re)connect.
    pub(crate) pending_to_agent: Pending,
    pub(crate) pending_to_client: Pending,
    /// When the agent's data channel was last attached or detached (orphan detection).
    pub(crate) agent_changed: Instant,
    /// Last input or output relayed (idle timeout).
    pub(crate) last_activity: Instant,
    pub(crate) started: Instant,
    /// When TerminateSession (or a timeout) asked the agent to stop.
    pub(crate) terminate_requested: Option<Instant>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_duration: Option<Duration>,
    /// agent_task_complete already applied (its retries are re-acknowledged only).
    pub(crate) completed: bool,
}

/// A bounded FIFO of raw frames for an absent peer.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl Pending {
    /// Queues a frame, dropping the oldest ones past the caps. Returns how many were dropped.
    pub(crate) fn push(&mut self, frame: Bytes) -> usize {
        self.bytes += frame.len();
        self.frames.push_back(frame);
        let mut dropped = 0;
        while self.frames.len() > PENDING_MAX_FRAMES || self.bytes > PENDING_MAX_BYTES {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.len();
                dropped += 1;
            } else {
                break;
            }
        }
        dropped
    }

    pub(crate) fn take(&mut self) -> VecDeque<Bytes> {
        self.bytes = 0;
        std::mem::take(&mut self.frames)
    }
}

impl Session {
    /// A live entry for `record`. Timing is derived from the record, so a session
    /// reloaded after a restart keeps its idle timeout, maximum duration and age.
    pub(crate) fn new(record: SessionRecord, now: Instant) -> Self {
        let age = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() - record.start_date)
            .ok()
            .filter(|a| a.is_finite() && *a > 0.0)
            .map_or(Duration::ZERO, |a| Duration::from_secs_f64(a.min(1e9)));
        let started = now.checked_sub(age).unwrap_or(now);
        let idle_timeout = record.idle_timeout_secs.map(Duration::from_secs);
        let max_duration = record
            .max_session_duration
            .parse::<u64>()
            .ok()
            .map(|m| Duration::from_secs(m.saturating_mul(60)));
        Self {
            record,
            agent: None,
            client: None,
            pending_to_agent: Pending::default(),
            pending_to_client: Pending::default(),
            agent_changed: now,
            last_activity: now,
            started,
            terminate_requested: None,
            idle_timeout,
            max_duration,
            completed: false,
        }
    }

    pub(crate) fn peer(&self, side: Side) -> Option<&Peer> {
        match side {
            Side::Agent => self.agent.as_ref(),
            Side::Client => self.client.as_ref(),
        }
    }

    pub(crate) fn slot(&mut self, side: Side) -> &mut Option<Peer> {
        match side {
            Side::Agent => &mut self.agent,
            Side::Client => &mut self.client,
        }
    }

    pub(crate) fn pending(&mut self, to: Side) -> &mut Pending {
        match to {
            Side::Agent => &mut self.pending_to_agent,
            Side::Client => &mut self.pending_to_client,
        }
    }
}

/// Everything the gateway knows, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) agents: HashMap<String, Agent>,
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) tokens: HashMap<String, IssuedToken>,
    /// The one outstanding control-channel token per target: a new request replaces it.
    control_tokens: HashMap<String, String>,
    next_conn_id: u64,
}

impl Registry {
    pub(crate) fn next_conn_id(&mut self) -> u64 {
        self.next_conn_id += 1;
        self.next_conn_id
    }

    /// Issues a fresh single-use token for `grant`; `None` when too many are outstanding.
    pub(crate) fn issue_token(&mut self, grant: Grant, now: Instant) -> Option<String> {
        if let Grant::Control { target } = &grant {
            if let Some(old) = self.control_tokens.remove(target) {
                self.tokens.remove(&old);
            }
        }
        if self.tokens.len() >= MAX_TOKENS {
            return None;
        }
        let token = super::random_token();
        if let Grant::Control { target } = &grant {
            self.control_tokens.insert(target.clone(), token.clone());
        }
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                grant,
                expires: now + TOKEN_TTL,
            },
        );
        Some(token)
    }

    /// Consumes a token: it is gone whether or not it was valid for this use.
    pub(crate) fn redeem_token(&mut self, token: &str, now: Instant) -> Option<Grant> {
        let issued = self.tokens.remove(token)?;
        if let Grant::Control { target } = &issued.grant {
            self.control_tokens.remove(target);
        }
        (issued.expires > now).then_some(issued.grant)
    }

    /// Drops expired tokens and forgets the oldest finished sessions past the limit.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.tokens.retain(|_, t| t.expires > now);
        let tokens = &self.tokens;
        self.control_tokens
            .retain(|_, tok| tokens.contains_key(tok));
        let finished = self
            .sessions
            .values()
            .filter(|s| !s.record.status.is_active())
            .count();
        if finished > HISTORY_LIMIT {
            let mut ends: Vec<(f64, String)> = self
                .sessions
                .values()
                .filter(|s| !s.record.status.is_active())
                .map(|s| {
                    (
                        s.record.end_date.unwrap_or(0.0),
                        s.record.session_id.clone(),
                    )
                })
                .collect();
            ends.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (_, id) in ends.into_iter().take(finished - HISTORY_LIMIT) {
                self.sessions.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_expire() {
        let mut r = Registry::default();
        let now = Instant::now();
        let grant = Grant::Control { target: "t".into() };
        let tok = r.issue_token(grant.clone(), now).unwrap();
        assert_eq!(r.redeem_token(&tok, now), Some(grant.clone()));
        assert_eq!(r.redeem_token(&tok, now), None);
        let tok = r.issue_token(grant, now).unwrap();
        assert_eq!(r.redeem_token(&tok, now + TOKEN_TTL), None);
    }

    #[test]
    fn a_new_control_token_replaces_the_targets_previous_one() {
        let mut r = Registry::default();
        let now = Instant::now();
        let grant = || Grant::Control { target: "t".into() };
        let first = r.issue_token(grant(), now).unwrap();
        for _ in 0..10 {
            r.issue_token(grant(), now).unwrap();
        }
        assert_eq!(r.tokens.len(), 1, "repeated requests do not pile up tokens");
        assert_eq!(r.redeem_token(&first, now), None);
    }

    #[test]
    fn token_issuing_is_capped() {
        let mut r = Registry::default();
        let now = Instant::now();
        for i in 0..MAX_TOKENS {
            assert!(r
                .issue_token(
                    Grant::AgentData {
                        session_id: i.to_string()
                    },
                    now
                )
                .is_some());
        }
        assert!(r
            .issue_token(
                Grant::AgentData {
                    session_id: "x".into()
                },
                now
            )
            .is_none());
    }

    #[test]
    fn pending_queue_is_bounded() {
        let mut p = Pending::default();
        let mut dropped = 0;
        for _ in 0..PENDING_MAX_FRAMES + 10 {
            dropped += p.push(Bytes::from_static(b"x"));
        }
        assert_eq!(dropped, 10);
        let big = Bytes::from(vec![0u8; PENDING_MAX_BYTES]);
        p.push(big.clone());
        let left = p.take();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].len(), big.len());
    }
}
