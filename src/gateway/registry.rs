//! The gateway's in-memory view of the world: connected agents, sessions, single-use
//! tokens. Plain data guarded by one `std::sync::Mutex` in [`super::Shared`]; nothing
//! here awaits, so the lock is never held across an `.await`.
//!
//! Must not know: sockets, HTTP, files (persistence is [`super::store`]).

use super::store::{SessionRecord, HISTORY_LIMIT};
use crate::bounded::{ByteSender, TrySendError};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long an issued token may wait for its open frame. AWS does not document its value;
/// one minute is ample for an agent or client that dials right after asking.
pub(crate) const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Frames held for a peer that is momentarily absent (client not yet connected, agent
/// reconnecting). Overflow drops the oldest: stream data is retransmitted by its sender,
/// so a drop costs latency, never data.
pub(crate) const PENDING_MAX_FRAMES: usize = 256;
/// Byte cap for the same queue.
pub(crate) const PENDING_MAX_BYTES: usize = 1024 * 1024;
/// Outstanding (issued, unused, unexpired) tokens. Each costs ~200 bytes (20 MiB in
/// all); past this, token requests are throttled instead of growing memory for whoever
/// keeps asking.
pub(crate) const MAX_TOKENS: usize = 100_000;
/// Managed nodes remembered (connected or registered by UpdateInstanceInformation). A
/// node costs at most ~2 KiB (its fields are capped: [`MAX_NODE_FIELD`]), 20 MiB in all.
pub(crate) const MAX_AGENTS: usize = 10_000;
/// Longest instance-information field kept (AgentVersion, PlatformName, ComputerName,
/// ...), in characters; longer values are refused.
pub(crate) const MAX_NODE_FIELD: usize = 256;
/// A control channel replaced by another this many times within [`TAKEOVER_WINDOW`]
/// means two agents share one target id.
pub(crate) const TAKEOVER_CONFLICT: usize = 3;
/// See [`TAKEOVER_CONFLICT`].
pub(crate) const TAKEOVER_WINDOW: Duration = Duration::from_secs(60);

/// What a websocket should send next.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A binary AgentMessage frame.
    Frame(Bytes),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

impl Outbound {
    /// Bytes it holds (what it costs in a queue's byte budget).
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Frame(b) => b.len(),
            Self::Close(_, reason) => 2 + reason.len(),
        }
    }
}

/// Handle to one open websocket. Relayed frames go through `tx`, bounded in bytes
/// ([`super::OUTBOUND_BYTES`]: a slow peer back-pressures its sender); the gateway's own
/// few messages (channel_closed, pause/start publication, close, tasks for an agent) go
/// through `ctl` ([`super::CONTROL_BYTES`]), which a live peer never fills, so they are
/// never lost to a busy relay. A peer that lets `ctl` fill is not reading: it is closed
/// (`kill`).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) conn_id: u64,
    pub(crate) tx: ByteSender<Outbound>,
    pub(crate) ctl: ByteSender<Outbound>,
    pub(crate) kill: CancellationToken,
}

impl Peer {
    /// Queues a gateway message; false when the socket is gone or was just closed for
    /// not reading.
    pub(crate) fn control(&self, out: Outbound) -> bool {
        let len = out.len();
        match self.ctl.try_send(out, len) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    conn = self.conn_id,
                    "Closing a websocket whose peer does not read its control messages"
                );
                self.kill.cancel();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
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
    /// Who asked for it (tokens count against their principal's quota).
    pub(crate) principal: String,
    pub(crate) expires: Instant,
}

/// Why no token was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// The caller holds this many outstanding tokens already.
    CallerQuota(usize),
    /// The gateway holds [`MAX_TOKENS`].
    Full,
}

impl TokenRefusal {
    /// The text for the caller.
    pub(crate) fn message(self) -> String {
        match self {
            Self::CallerQuota(n) => format!(
                "you hold {n} unused channel tokens, the most one identity may; tokens expire 60 s after they are issued"
            ),
            Self::Full => "too many outstanding tokens on this gateway; retry in a minute".into(),
        }
    }
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
    /// The principal the node belongs to (see `access`); `None` until registered.
    pub(crate) registrant: Option<String>,
    /// Address of the connected control channel.
    pub(crate) control_addr: Option<std::net::SocketAddr>,
    /// When this node's control channel was replaced by another (recent ones only).
    pub(crate) takeovers: VecDeque<Instant>,
    /// Set while two agents take turns with this target id: what we know of them.
    pub(crate) conflict: Option<String>,
}

impl Agent {
    /// Notes a control channel replaced by one from `new_addr`; returns the conflict
    /// text when replacements are frequent enough to mean two agents share this id.
    pub(crate) fn note_takeover(
        &mut self,
        target: &str,
        old_addr: Option<std::net::SocketAddr>,
        new_addr: Option<std::net::SocketAddr>,
        now: Instant,
    ) -> Option<String> {
        self.takeovers.push_back(now);
        while self
            .takeovers
            .front()
            .is_some_and(|t| now.duration_since(*t) > TAKEOVER_WINDOW)
        {
            self.takeovers.pop_front();
        }
        if self.takeovers.len() < TAKEOVER_CONFLICT {
            return None;
        }
        let addr =
            |a: Option<std::net::SocketAddr>| a.map_or_else(|| "?".into(), |a| a.to_string());
        let text = format!(
            "two agents use the target id {target} (control channels from {} and {}); they replaced each other {} times in {} s, and sessions go to whichever connected last. Give each host its own target_id.",
            addr(old_addr),
            addr(new_addr),
            self.takeovers.len(),
            TAKEOVER_WINDOW.as_secs()
        );
        self.conflict = Some(text.clone());
        Some(text)
    }
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
    /// The one outstanding control-channel token per target and principal: a new request
    /// replaces the asker's own earlier one, never another principal's.
    control_tokens: HashMap<(String, String), String>,
    /// Outstanding tokens per principal.
    tokens_by: HashMap<String, usize>,
    next_conn_id: u64,
}

impl Registry {
    pub(crate) fn next_conn_id(&mut self) -> u64 {
        self.next_conn_id += 1;
        self.next_conn_id
    }

    /// Issues a fresh single-use token for `grant` to `principal`, who may hold at most
    /// `per_caller` outstanding ones.
    ///
    /// # Errors
    /// The caller's quota or the gateway's limit is reached.
    pub(crate) fn issue_token(
        &mut self,
        grant: Grant,
        principal: &str,
        per_caller: usize,
        now: Instant,
    ) -> Result<String, TokenRefusal> {
        if let Grant::Control { target } = &grant {
            let key = (target.clone(), principal.to_owned());
            if let Some(old) = self.control_tokens.remove(&key) {
                self.forget_token(&old);
            }
        }
        let held = self.tokens_by.get(principal).copied().unwrap_or(0);
        if held >= per_caller {
            return Err(TokenRefusal::CallerQuota(held));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(TokenRefusal::Full);
        }
        let token = super::random_token();
        if let Grant::Control { target } = &grant {
            self.control_tokens
                .insert((target.clone(), principal.to_owned()), token.clone());
        }
        *self.tokens_by.entry(principal.to_owned()).or_default() += 1;
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                grant,
                principal: principal.to_owned(),
                expires: now + TOKEN_TTL,
            },
        );
        Ok(token)
    }

    fn forget_token(&mut self, token: &str) -> Option<IssuedToken> {
        let issued = self.tokens.remove(token)?;
        if let Some(n) = self.tokens_by.get_mut(&issued.principal) {
            *n -= 1;
            if *n == 0 {
                self.tokens_by.remove(&issued.principal);
            }
        }
        Some(issued)
    }

    /// Consumes a token: it is gone whether or not it was valid for this use. Returns
    /// what it grants and to whom.
    pub(crate) fn redeem_token(&mut self, token: &str, now: Instant) -> Option<(Grant, String)> {
        let issued = self.forget_token(token)?;
        if let Grant::Control { target } = &issued.grant {
            self.control_tokens
                .remove(&(target.clone(), issued.principal.clone()));
        }
        (issued.expires > now).then_some((issued.grant, issued.principal))
    }

    /// Nodes registered to `principal`.
    pub(crate) fn nodes_of(&self, principal: &str) -> usize {
        self.agents
            .values()
            .filter(|a| a.registrant.as_deref() == Some(principal))
            .count()
    }

    /// Whether `principal` may register one more node (`target`): its own quota
    /// (`quota`, max_nodes_per_caller), and the gateway's ([`MAX_AGENTS`]); why not.
    pub(crate) fn room_for_node(
        &self,
        principal: &str,
        target: &str,
        quota: usize,
    ) -> Result<(), String> {
        let held = self.nodes_of(principal);
        if held >= quota {
            return Err(format!("{principal} holds {held} managed nodes, the most one identity may register (max_nodes_per_caller); {target} was not registered"));
        }
        if !self.agents.contains_key(target) && self.agents.len() >= MAX_AGENTS {
            return Err(format!(
                "this gateway tracks at most {MAX_AGENTS} managed nodes"
            ));
        }
        Ok(())
    }

    /// Active sessions owned by `principal`.
    pub(crate) fn active_sessions_of(&self, principal: &str) -> usize {
        self.sessions
            .values()
            .filter(|s| s.record.status.is_active() && s.record.principal == principal)
            .count()
    }

    /// The registrant of a session's target.
    pub(crate) fn registrant_of(&self, target: &str) -> Option<&str> {
        self.agents.get(target)?.registrant.as_deref()
    }

    /// Drops expired tokens and forgets the oldest finished sessions past the limit.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.tokens.retain(|_, t| t.expires > now);
        self.tokens_by.clear();
        for t in self.tokens.values() {
            *self.tokens_by.entry(t.principal.clone()).or_default() += 1;
        }
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
        let tok = r.issue_token(grant.clone(), "p", 10, now).unwrap();
        assert_eq!(r.redeem_token(&tok, now), Some((grant.clone(), "p".into())));
        assert_eq!(r.redeem_token(&tok, now), None);
        let tok = r.issue_token(grant, "p", 10, now).unwrap();
        assert_eq!(r.redeem_token(&tok, now + TOKEN_TTL), None);
    }

    #[test]
    fn a_new_control_token_replaces_the_targets_previous_one() {
        let mut r = Registry::default();
        let now = Instant::now();
        let grant = || Grant::Control { target: "t".into() };
        let first = r.issue_token(grant(), "p", 2, now).unwrap();
        for _ in 0..10 {
            r.issue_token(grant(), "p", 2, now).unwrap();
        }
        assert_eq!(r.tokens.len(), 1, "repeated requests do not pile up tokens");
        assert_eq!(r.tokens_by["p"], 1);
        assert_eq!(r.redeem_token(&first, now), None);
    }

    #[test]
    fn a_control_token_is_replaced_only_by_its_own_principal() {
        let mut r = Registry::default();
        let now = Instant::now();
        let grant = || Grant::Control { target: "t".into() };
        let agents = r.issue_token(grant(), "agent", 10, now).unwrap();
        for _ in 0..5 {
            r.issue_token(grant(), "mallory", 10, now).unwrap();
        }
        assert_eq!(
            r.redeem_token(&agents, now),
            Some((grant(), "agent".into()))
        );
    }

    #[test]
    fn token_issuing_is_capped_per_caller_and_in_all() {
        let mut r = Registry::default();
        let now = Instant::now();
        let data = |i: usize| Grant::AgentData {
            session_id: i.to_string(),
        };
        for i in 0..1000 {
            r.issue_token(data(i), "flooder", 1000, now).unwrap();
        }
        assert_eq!(
            r.issue_token(data(0), "flooder", 1000, now),
            Err(TokenRefusal::CallerQuota(1000))
        );
        // Another caller is not starved by the first one.
        let tok = r.issue_token(data(0), "alice", 1000, now).unwrap();
        // Redeeming gives the flooder room again.
        r.redeem_token(&tok, now).unwrap();
        assert_eq!(r.tokens_by.get("alice"), None);
        let mut i = 0;
        while r.tokens.len() < MAX_TOKENS {
            r.issue_token(data(i), &format!("p{}", i / 1000), 1000, now)
                .unwrap();
            i += 1;
        }
        assert_eq!(
            r.issue_token(data(0), "late", 1000, now),
            Err(TokenRefusal::Full)
        );
        r.prune(now + TOKEN_TTL);
        assert!(r.tokens.is_empty() && r.tokens_by.is_empty());
    }

    #[test]
    fn frequent_takeovers_are_a_conflict() {
        let mut a = Agent::default();
        let t0 = Instant::now();
        let x = Some("127.0.0.1:1".parse().unwrap());
        let y = Some("127.0.0.1:2".parse().unwrap());
        assert_eq!(a.note_takeover("web-1", x, y, t0), None);
        assert_eq!(
            a.note_takeover("web-1", y, x, t0 + Duration::from_secs(90)),
            None,
            "old takeovers age out"
        );
        assert_eq!(
            a.note_takeover("web-1", x, y, t0 + Duration::from_secs(91)),
            None
        );
        let text = a
            .note_takeover("web-1", y, x, t0 + Duration::from_secs(92))
            .unwrap();
        assert!(
            text.contains("two agents use the target id web-1"),
            "{text}"
        );
        assert!(
            text.contains("127.0.0.1:2") && text.contains("127.0.0.1:1"),
            "{text}"
        );
        assert_eq!(a.conflict.as_deref(), Some(text.as_str()));
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
