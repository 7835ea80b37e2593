//! A session client for the benchmark: the product's own client state machine
//! (`session_agent::client::channel::Channel`: sequence numbers, acknowledgements,
//! reordering, retransmission) on a plain websocket, without a terminal. Output is
//! handed to the caller chunk by chunk, so the measurements see bytes as a terminal
//! would get them.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use session_agent::client::channel::{Channel, Effect};
use session_agent::protocol::payload::{to_json, OpenDataChannel, Size};
use session_agent::ssm::SsmApi;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Terminal size the benchmark sessions announce.
pub const SIZE: Size = Size {
    cols: 120,
    rows: 40,
};

/// One data channel from StartSession to `channel_closed`.
pub struct Session {
    pub id: String,
    ws: Socket,
    channel: Channel,
    /// Output received but not yet handed out.
    ready: VecDeque<Bytes>,
    closed: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish()
    }
}

impl Session {
    /// StartSession for `target`, the data channel's open frame, then the window size
    /// (the agent starts the shell once it knows the size).
    pub async fn start(api: &SsmApi, target: &str) -> Result<Self> {
        let grant = api
            .start_session(&json!({"Target": target, "Reason": "benchmark"}))
            .await
            .map_err(|e| anyhow!("StartSession: {e}"))?;
        // TCP_NODELAY, as the product's client sets it: keystrokes are small writes.
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(grant.stream_url.as_str(), None, true)
                .await
                .with_context(|| format!("connecting to {}", grant.stream_url))?;
        let open = OpenDataChannel {
            message_schema_version: "1.0".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            token_value: grant.token_value,
            client_instance_id: None,
            client_id: uuid::Uuid::new_v4().to_string(),
            client_version: Some(session_agent::client::CLIENT_VERSION.into()),
        };
        ws.send(Message::text(String::from_utf8(to_json(&open))?))
            .await?;
        let mut session = Self {
            id: grant.session_id,
            ws,
            channel: Channel::new(session_agent::client::CLIENT_VERSION),
            ready: VecDeque::new(),
            closed: false,
        };
        session.channel.queue_size(SIZE);
        session.flush().await?;
        Ok(session)
    }

    /// Queues keystrokes and sends what the flow-control window allows; the rest goes
    /// out as acknowledgements arrive (while [`Session::next_output`] runs).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.channel.queue_input(bytes);
        self.flush().await
    }

    async fn flush(&mut self) -> Result<()> {
        let frames = self.channel.flush(Instant::now());
        self.transmit(frames).await
    }

    async fn transmit(&mut self, frames: Vec<Bytes>) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        for f in frames {
            self.ws.feed(Message::binary(f)).await?;
        }
        self.ws.flush().await?;
        Ok(())
    }

    /// The next output chunk; `None` once the session is closed. Fails after
    /// `within` without output.
    pub async fn next_output(&mut self, within: Duration) -> Result<Option<Bytes>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Ok(Some(b));
            }
            if self.closed {
                return Ok(None);
            }
            let retransmit_at = self
                .channel
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(deadline);
            tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(raw))) => {
                        let effects = self.channel.on_frame(&raw, Instant::now());
                        let mut frames = Vec::new();
                        for e in effects {
                            match e {
                                Effect::Send(f) => frames.push(f),
                                Effect::Stdout(b) | Effect::Stderr(b) => self.ready.push_back(b),
                                Effect::Closed(_) => self.closed = true,
                                Effect::Notice(_)
                                | Effect::GenerateDataKey { .. }
                                | Effect::Started(_)
                                | Effect::Flag(_) => {}
                            }
                        }
                        frames.extend(self.channel.flush(Instant::now()));
                        self.transmit(frames).await?;
                    }
                    Some(Ok(Message::Close(_))) | None => self.closed = true,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => bail!("session {}: websocket: {e}", self.id),
                },
                () = tokio::time::sleep_until(retransmit_at) => {
                    if let Some(f) = self.channel.poll_retransmit(Instant::now()) {
                        self.transmit(vec![f]).await?;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline && self.ready.is_empty() && !self.closed {
                bail!("session {}: no output within {within:?}", self.id);
            }
        }
    }

    /// Reads output until `needle` has been seen; returns the bytes read (needle
    /// included). Output is scanned across chunk boundaries.
    pub async fn read_until(&mut self, needle: &[u8], within: Duration) -> Result<u64> {
        let mut total = 0u64;
        let mut tail: Vec<u8> = Vec::new();
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(chunk) = self.next_output(left).await? else {
                bail!(
                    "session {} closed before {:?} appeared",
                    self.id,
                    String::from_utf8_lossy(needle)
                );
            };
            total += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            if tail.windows(needle.len()).any(|w| w == needle) {
                return Ok(total);
            }
            let keep = needle.len().saturating_sub(1);
            if tail.len() > keep {
                tail.drain(..tail.len() - keep);
            }
            if Instant::now() >= deadline {
                bail!(
                    "session {}: {:?} did not appear within {within:?}",
                    self.id,
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }

    /// Types `exit` and waits for `channel_closed`.
    pub async fn exit(mut self) -> Result<()> {
        self.send(b"exit\n").await?;
        while self.next_output(Duration::from_secs(30)).await?.is_some() {}
        Ok(())
    }
}
