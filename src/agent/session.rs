//! One session: its data channel and its shell (protocol.md §2.2, §4, §6), the I/O
//! around the channel's state machine (`agent::channel`).
//!
//! ```text
//!  PTY master (reactor) ──read──────────▶ pump ─▶ Channel ─Send─▶ data websocket
//!  PTY master (reactor) ◀─keyboard task◀─ pump ◀─ Channel ◀─on_frame── data websocket
//! ```
//!
//! Every decision is the machine's (`agent::channel::Channel`: sequencing, acks,
//! reorder, pause, retransmission deadlines, the KMS handshake's steps, limits, drain,
//! liveness); this file only does what needs I/O, and is small on purpose: one select
//! over the websocket, the PTY, the machine's next deadline and the cancel token, whose
//! result is fed to the machine, whose effects are carried out in order (sends with a
//! timeout, `SEND_TIMEOUT`; keystrokes to the keyboard task; resizes; the recording tap;
//! the reopen with its backoff).
//!
//! No thread of its own: the PTY master is on tokio's reactor (`session::pty`), read by
//! the pump itself (only while the machine wants output: back-pressure) and written by a
//! small keyboard task, so a shell that does not read its input blocks only that task. No
//! fixed sleeps: output leaves as soon as it is read; retransmission wakes exactly at the
//! sender's next deadline.
//!
//! A dropped data channel is reopened (fresh token) with upstream's schedule, and every
//! unacknowledged frame is sent again; the client's receiver discards duplicates, so no
//! byte is lost or doubled.

use super::channel::{Channel, Effect, Ending, Limits, INPUT_QUEUE_BYTES};
use super::mgs::{Mgs, MgsError, Socket};
use super::recording::Tap;
use crate::bounded::{self, ByteSender};
use crate::protocol::frame::{AgentMessage, MessageType, PayloadType};
use crate::protocol::payload::{
    to_json, AgentSessionState, OpenDataChannel, SessionState, MESSAGE_SCHEMA_VERSION,
};
use crate::session::pty::{PtyReader, PtyWriter};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Bytes per PTY read and per output frame. Upstream uses 1 KiB with a 1 ms sleep per
/// read (about 1 MB/s at best); the official client accepts larger payloads (§13).
/// Measured on a 2-core VM, release build, `cat` of 141 MB through gateway, agent and
/// `connect` on loopback (MB/s, two runs each): 1 KiB 36/35, 4 KiB 76/63, 16 KiB 70/84,
/// 64 KiB 96/73. Beyond 4 KiB the differences are within run-to-run noise (a PTY read
/// seldom returns more than a few KiB); 16 KiB keeps per-frame overhead (header, SHA-256,
/// one ack each) low without making each retransmission large.
pub const CHUNK: usize = 16 * 1024;
/// How long to wait for the client's first Size before starting the shell, so the prompt
/// is drawn at the right width when the client sends it early.
pub const FIRST_SIZE_WAIT: Duration = Duration::from_millis(300);
/// Data-channel reopen schedule (§1.6): 6 attempts, random 100–200 ms ×2 each, capped.
const REOPEN_ATTEMPTS: u32 = 6;
/// Longest a send may take before the channel is treated as stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a session's output comes from: a shell's PTY, or a pipe from a port session's
/// forwarder (the tunnel's bytes, or the smux stream of a multiplexed session).
pub enum SessionOutput {
    /// The PTY master.
    Pty(PtyReader),
    /// The pump's end of a bounded in-memory pipe from the forwarder (read only; the
    /// forwarder dropping its end is the end of file).
    Pipe(tokio::io::DuplexStream),
    /// Chunks with their payload type (a command without a terminal: standard output,
    /// standard error, its exit code); the sender dropping is the end of file.
    Typed(TypedOutput),
}

/// A bounded channel of typed output chunks, and what is left of the one being read.
#[derive(Debug)]
pub struct TypedOutput {
    rx: tokio::sync::mpsc::Receiver<(PayloadType, Bytes)>,
    left: Option<(PayloadType, Bytes)>,
}

impl TypedOutput {
    /// Output from `rx`.
    pub fn new(rx: tokio::sync::mpsc::Receiver<(PayloadType, Bytes)>) -> Self {
        Self { rx, left: None }
    }

    fn take(
        &mut self,
        (t, mut bytes): (PayloadType, Bytes),
        buf: &mut [u8],
    ) -> (PayloadType, usize) {
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes.split_to(n));
        if !bytes.is_empty() {
            self.left = Some((t, bytes));
        }
        (t, n)
    }
}

impl SessionOutput {
    /// The next bytes and their payload type; 0 bytes at the end.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<(PayloadType, usize)> {
        match self {
            Self::Pty(r) => r.read(buf).await.map(|n| (PayloadType::Output, n)),
            Self::Pipe(r) => tokio::io::AsyncReadExt::read(r, buf)
                .await
                .map(|n| (PayloadType::Output, n)),
            Self::Typed(t) => {
                let next = match t.left.take() {
                    Some(chunk) => Some(chunk),
                    None => t.rx.recv().await,
                };
                Ok(match next {
                    Some(chunk) => t.take(chunk, buf),
                    None => (PayloadType::Output, 0),
                })
            }
        }
    }

    /// What is ready now, without waiting (`None`: nothing). Terminal output only: the
    /// typed source ends by itself once everything was read.
    fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self {
            Self::Pty(r) => r.try_read(buf),
            Self::Pipe(r) => {
                use futures_util::FutureExt;
                tokio::io::AsyncReadExt::read(r, buf)
                    .now_or_never()
                    .transpose()
            }
            Self::Typed(_) => Ok(None),
        }
    }
}

impl std::fmt::Debug for SessionOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pty(_) => "SessionOutput::Pty",
            Self::Pipe(_) => "SessionOutput::Pipe",
            Self::Typed(_) => "SessionOutput::Typed",
        })
    }
}

impl std::fmt::Debug for SessionInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pty(_) => "SessionInput::Pty",
            Self::Pipe(_) => "SessionInput::Pipe",
            Self::Keys(_) => "SessionInput::Keys",
        })
    }
}

/// Where a session's input goes: the shell's PTY, or the pipe to a port session's
/// forwarder.
pub enum SessionInput {
    /// The PTY master.
    Pty(PtyWriter),
    /// The forwarder's end of a bounded in-memory pipe.
    Pipe(tokio::io::DuplexStream),
    /// Keystrokes for a command without a terminal, which looks only for Ctrl-C and
    /// Ctrl-\\ (signals).
    Keys(tokio::sync::mpsc::Sender<Vec<u8>>),
}

impl SessionInput {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Pty(w) => w.write_all(bytes).await,
            Self::Pipe(w) => tokio::io::AsyncWriteExt::write_all(w, bytes).await,
            Self::Keys(tx) => tx
                .send(bytes.to_vec())
                .await
                .map_err(|_| std::io::ErrorKind::BrokenPipe.into()),
        }
    }
}

/// A port session's flags between the pump and its forwarder: the client's
/// (DisconnectToPort) in, the forwarder's (ConnectToPortError) out.
#[derive(Debug)]
pub struct FlagLink {
    /// Flags from the client, for the forwarder.
    pub to_forwarder: tokio::sync::mpsc::Sender<u32>,
    /// Flags from the forwarder, for the client.
    pub from_forwarder: tokio::sync::mpsc::Receiver<u32>,
}

/// I/O handles of a running session (a shell, a command or a port forwarder), as the
/// pump needs them.
pub struct SessionIo {
    /// Output for the client.
    pub output: SessionOutput,
    /// Input from the client.
    pub input: SessionInput,
    /// Applies a window size (cols, rows).
    pub resize: Box<dyn FnMut(u16, u16) + Send>,
    /// Fires when the process (or the forwarder) ends.
    pub exited: tokio::sync::oneshot::Receiver<()>,
    /// Reads the terminal's ECHO-off state (`None`: unreadable), sampled for every input
    /// chunk as it is written, for the recorder's redaction rule.
    pub echo_probe: Box<dyn Fn() -> Option<bool> + Send>,
    /// A port session's flags.
    pub flags: Option<FlagLink>,
}

impl std::fmt::Debug for SessionIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionIo")
    }
}

/// A data channel for one session: the socket, and the machine that decides.
#[derive(Debug)]
pub struct DataChannel {
    mgs: Mgs,
    session_id: String,
    target_id: String,
    ws: Socket,
    machine: Channel,
    /// channel_closed arrived before the shell started.
    pub closed_early: bool,
}

/// Message time; never 0 (a zero CreatedDate is refused by decoders).
fn now_ms() -> u64 {
    crate::timefmt::unix_ms(SystemTime::now()).max(1)
}

fn control_frame(t: MessageType, payload: &impl serde::Serialize) -> Bytes {
    AgentMessage::new(
        t,
        PayloadType::Null,
        to_json(payload),
        now_ms(),
        Uuid::new_v4(),
    )
    .with_sequence(0, 3)
    .encode()
    .unwrap_or_default()
}

/// What the pump's parts are while the shell runs (see [`DataChannel::pump`]).
struct Pump<'a> {
    input: &'a ByteSender<Vec<u8>>,
    reader: &'a mut SessionOutput,
    flags: Option<&'a mut FlagLink>,
    buf: &'a mut [u8],
    resize: &'a mut Box<dyn FnMut(u16, u16) + Send>,
    tap: Option<&'a Tap>,
    cancel: &'a CancellationToken,
}

impl DataChannel {
    /// CreateDataChannel, dial, OpenDataChannel, `agent_session_state` Connected (§2.2).
    ///
    /// # Errors
    /// The gateway refused or could not be reached.
    pub async fn open(mgs: &Mgs, session_id: &str, target_id: &str) -> Result<Self, MgsError> {
        let ws = Self::dial(mgs, session_id, target_id).await?;
        Ok(Self {
            mgs: mgs.clone(),
            session_id: session_id.to_owned(),
            target_id: target_id.to_owned(),
            ws,
            machine: Channel::new(session_id, Instant::now()),
            closed_early: false,
        })
    }

    /// Runs the handshake (§5; its steps are the machine's): HandshakeRequest with
    /// SessionType (and `properties`, the document's for Port) and, with `kms`, the KMS
    /// steps: the client's HandshakeResponse with the data key's ciphertext, `decrypt`
    /// (KMS Decrypt; given the ciphertext and, when the client acknowledged it, the
    /// challenge for the encryption context), the encryption challenge, and
    /// HandshakeComplete. From then on output is sealed and input opened. The client's
    /// version on success.
    ///
    /// # Errors
    /// What failed, for the user.
    pub async fn handshake<F, Fut>(
        &mut self,
        session_type: &str,
        properties: serde_json::Value,
        kms: Option<(&str, F)>,
    ) -> Result<String, String>
    where
        F: FnOnce(Vec<u8>, Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
    {
        use base64::Engine;
        let challenge =
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        let (kms, mut decrypt) = match kms {
            Some((key_id, decrypt)) => (Some((key_id.to_owned(), challenge)), Some(decrypt)),
            None => (None, None),
        };
        let mut effects: VecDeque<Effect> = self
            .machine
            .start_handshake(
                crate::protocol::version::AGENT_COMPAT_VERSION,
                session_type,
                properties,
                kms,
                Instant::now(),
            )
            .into();
        loop {
            while let Some(effect) = effects.pop_front() {
                match effect {
                    Effect::Send(frame) => self.send_ws(Message::Binary(frame)).await?,
                    Effect::Decrypt { blob, challenge } => {
                        let decrypt = decrypt.take().ok_or("the data key was asked for twice")?;
                        let key = decrypt(blob, challenge).await;
                        effects.extend(self.machine.on_data_key(key, Instant::now()));
                    }
                    Effect::HandshakeDone => return Ok(self.machine.client_version().to_owned()),
                    Effect::Refuse(why) => return Err(why),
                    other => {
                        tracing::debug!(session = %self.session_id, ?other, "Not during the handshake")
                    }
                }
            }
            let wake = self
                .machine
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let more = tokio::select! {
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(raw))) => {
                        // Keystrokes are not taken during the handshake: no room needed.
                        self.machine.on_frame(&raw, Instant::now(), usize::MAX)
                    }
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => {
                        return Err("the data channel closed during the handshake".into())
                    }
                },
                () = sleep_opt(wake) => self.machine.on_tick(Instant::now()),
            };
            effects.extend(more);
        }
    }

    async fn dial(mgs: &Mgs, session_id: &str, target_id: &str) -> Result<Socket, MgsError> {
        let token = mgs
            .create_channel("data-channel", session_id, Some(""))
            .await?;
        let open = OpenDataChannel {
            message_schema_version: MESSAGE_SCHEMA_VERSION.into(),
            request_id: Uuid::new_v4().to_string(),
            token_value: token,
            client_instance_id: Some(target_id.to_owned()),
            client_id: String::new(),
            client_version: None,
        };
        let mut ws = mgs
            .dial("data-channel", session_id, "role=publish_subscribe", &open)
            .await?;
        let state = AgentSessionState {
            schema_version: 1,
            session_state: SessionState::Connected,
            session_id: session_id.to_owned(),
        };
        let frame = control_frame(MessageType::AgentSessionState, &state);
        ws.send(Message::Binary(frame))
            .await
            .map_err(|e| MgsError::Websocket {
                what: "sending Connected".into(),
                source: Box::new(e),
            })?;
        Ok(ws)
    }

    /// Reopens after a drop, then resends everything unacknowledged.
    async fn reopen(&mut self) -> Result<(), String> {
        let mut backoff = crate::backoff::Backoff::reconnect();
        let mut last = String::new();
        for attempt in 0..REOPEN_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            match Self::dial(&self.mgs, &self.session_id, &self.target_id).await {
                Ok(ws) => {
                    self.ws = ws;
                    let mut resent = Ok(());
                    for f in self.machine.on_reopened(Instant::now()) {
                        resent = self.send_ws(Message::Binary(f)).await;
                        if resent.is_err() {
                            break;
                        }
                    }
                    match resent {
                        Ok(()) => return Ok(()),
                        // The new socket failed at once: try the next attempt.
                        Err(e) => last = e,
                    }
                }
                Err(e) if e.session_terminated() => return Err(e.to_string()),
                Err(e) => {
                    tracing::warn!(session = %self.session_id, attempt, error = %e, "Reopening the data channel failed");
                    last = e.to_string();
                }
            }
        }
        Err(last)
    }

    /// A port session: its output is the tunnel's, sent but never recorded as terminal
    /// output (the forwarder records each connection instead).
    pub fn port_session(&mut self) {
        self.machine.stop_recording_output();
    }

    /// Waits up to `wait` for the client's first Size message, handling anything else
    /// that arrives meanwhile (keystrokes are kept for the shell, in `early_input`).
    pub async fn first_size(
        &mut self,
        wait: Duration,
        early_input: &mut Vec<u8>,
    ) -> Option<(u16, u16)> {
        let deadline = tokio::time::Instant::now() + wait;
        let size = loop {
            if let Some(size) = self.machine.first_size() {
                break Some(size);
            }
            let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                break None;
            };
            let Ok(Message::Binary(raw)) = msg else {
                continue;
            };
            // Early keystrokes are bounded by the machine, not by the keyboard queue.
            for effect in self.machine.on_frame(&raw, Instant::now(), usize::MAX) {
                match effect {
                    Effect::Send(frame) => {
                        let _ = self.send_ws(Message::Binary(frame)).await;
                    }
                    Effect::End(_) => {
                        self.closed_early = true;
                        break;
                    }
                    _ => {}
                }
            }
            if self.closed_early {
                break None;
            }
        };
        early_input.extend(self.machine.take_early_input());
        size
    }

    /// Runs the session until the shell exits, `cancel` fires, or the channel is lost;
    /// how it ended.
    pub async fn pump(
        &mut self,
        shell: SessionIo,
        early_input: Vec<u8>,
        limits: Limits,
        cancel: &CancellationToken,
        tap: Option<Tap>,
        recording_failed: Option<tokio::sync::oneshot::Receiver<String>>,
    ) -> Ending {
        let SessionIo {
            output: mut reader,
            input: writer,
            mut resize,
            mut exited,
            echo_probe,
            mut flags,
        } = shell;
        let (in_tx, in_rx) = bounded::channel::<Vec<u8>>(INPUT_QUEUE_BYTES);
        let keyboard = tokio::spawn(keyboard(in_rx, writer, tap.clone(), echo_probe));
        if !early_input.is_empty() {
            let len = early_input.len();
            let _ = in_tx.try_send(early_input, len);
        }
        let mut buf = vec![0u8; CHUNK];
        let mut io = Pump {
            input: &in_tx,
            reader: &mut reader,
            flags: flags.as_mut(),
            buf: &mut buf,
            resize: &mut resize,
            tap: tap.as_ref(),
            cancel,
        };
        let ending = self
            .run_loop(&mut io, &mut exited, limits, recording_failed)
            .await;
        // Input still queued is not typed into a session that has ended.
        keyboard.abort();
        ending
    }

    /// The select loop: every source of the session, fed to the machine; its effects
    /// carried out, until one ends the session.
    async fn run_loop(
        &mut self,
        io: &mut Pump<'_>,
        exited: &mut tokio::sync::oneshot::Receiver<()>,
        limits: Limits,
        mut recording_failed: Option<tokio::sync::oneshot::Receiver<String>>,
    ) -> Ending {
        let mut exit_seen = false;
        let mut effects = self.machine.start(limits, Instant::now());
        loop {
            if let Some(ending) = self.perform(effects, io).await {
                return ending;
            }
            let wake = self
                .machine
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            let can_read = self.machine.wants_output();
            effects = tokio::select! {
                biased;
                () = io.cancel.cancelled() => self.machine.on_cancel(),
                failed = async { recording_failed.as_mut().expect("guarded").await }, if recording_failed.is_some() => {
                    match failed {
                        Ok(reason) => self.machine.on_recording_failed(&reason, Instant::now()),
                        // The recording ended without an alarm: nothing more to watch.
                        Err(_) => {
                            recording_failed = None;
                            Vec::new()
                        }
                    }
                }
                () = sleep_opt(wake) => self.machine.on_tick(Instant::now()),
                _ = &mut *exited, if !exit_seen => {
                    exit_seen = true;
                    self.machine.on_shell_exited(Instant::now())
                }
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Binary(raw))) => {
                        self.machine.on_frame(&raw, Instant::now(), io.input.room())
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        self.machine.on_socket_closed(Instant::now())
                    }
                    Some(Ok(_)) => {
                        self.machine.heard(Instant::now());
                        Vec::new()
                    }
                },
                Some(value) = async { io.flags.as_mut().expect("guarded").from_forwarder.recv().await }, if io.flags.is_some() => {
                    match self.machine.send_flag(value, Instant::now()) {
                        Ok(fx) => fx,
                        Err(e) => {
                            tracing::debug!(session = %self.session_id, error = %e, "Flag not sent");
                            Vec::new()
                        }
                    }
                }
                read = io.reader.read(io.buf), if can_read => match read {
                    Ok((t, n)) if n > 0 => self.machine.on_output_as(t, &io.buf[..n], Instant::now()),
                    // EOF (no process holds the terminal) or a failed read: the end.
                    _ => self.machine.on_pty_eof(Instant::now()),
                },
            };
        }
    }

    /// Carries out the machine's effects in order; the ending, if one came.
    async fn perform(&mut self, effects: Vec<Effect>, io: &mut Pump<'_>) -> Option<Ending> {
        let mut effects = VecDeque::from(effects);
        while let Some(effect) = effects.pop_front() {
            match effect {
                Effect::Send(frame) => {
                    if let Err(e) = self.send_ws(Message::Binary(frame)).await {
                        tracing::debug!(session = %self.session_id, error = %e, "Send failed; will retransmit after reopening");
                    }
                }
                Effect::Ping => {
                    let _ = self
                        .send_ws(Message::Ping(Bytes::from_static(b"keepalive")))
                        .await;
                }
                Effect::Record(bytes) => {
                    if let Some(tap) = io.tap {
                        tap.output(&bytes).await;
                    }
                }
                Effect::Type(bytes) => {
                    let len = bytes.len();
                    if io.input.try_send(bytes, len).is_err() {
                        tracing::warn!(session = %self.session_id, "Input queue full; keystrokes dropped");
                    }
                }
                Effect::Resize { cols, rows } => {
                    (io.resize)(cols, rows);
                    if let Some(tap) = io.tap {
                        tap.resize(cols, rows).await;
                    }
                }
                Effect::Probe => {
                    let found = match io.reader.try_read(io.buf) {
                        Ok(Some(n)) if n > 0 => Some(io.buf[..n].to_vec()),
                        _ => None,
                    };
                    effects.extend(self.machine.on_probed(found, Instant::now()));
                }
                Effect::Reopen => {
                    let reopened = tokio::select! {
                        r = self.reopen() => r,
                        () = io.cancel.cancelled() => return Some(Ending::Terminated),
                    };
                    if let Err(e) = reopened {
                        return Some(Ending::ChannelLost(e));
                    }
                    // Held output may go now, and a limit may be due.
                    effects.extend(self.machine.on_tick(Instant::now()));
                }
                Effect::Flag(value) => {
                    if let Some(link) = io.flags.as_mut() {
                        let _ = link.to_forwarder.send(value).await;
                    }
                }
                Effect::End(ending) => return Some(ending),
                other @ (Effect::Decrypt { .. } | Effect::HandshakeDone | Effect::Refuse(_)) => {
                    tracing::debug!(session = %self.session_id, ?other, "Not while the shell runs");
                }
            }
        }
        None
    }

    /// Sends on the websocket, giving up after [`SEND_TIMEOUT`]: a peer that stops reading
    /// must not freeze the session (cancel, limits, acks); the liveness check reopens.
    async fn send_ws(&mut self, m: Message) -> Result<(), String> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(m)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("send timed out".into()),
        }
    }

    /// Sends `agent_session_state` Terminating and closes the socket (§6.6).
    pub async fn finish(mut self, shell_exited: bool) {
        if shell_exited {
            let state = AgentSessionState {
                schema_version: 1,
                session_state: SessionState::Terminating,
                session_id: self.session_id.clone(),
            };
            let _ = self
                .send_ws(Message::Binary(control_frame(
                    MessageType::AgentSessionState,
                    &state,
                )))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// Writes a line into the session as output (notices such as the destinations'
    /// warnings or the agent's stop).
    ///
    /// # Errors
    /// No room in the sender while output is backed up, or the frame could not be sent.
    pub async fn notice(&mut self, text: &str) -> Result<(), String> {
        for effect in self.machine.notice(text, Instant::now())? {
            if let Effect::Send(frame) = effect {
                self.send_ws(Message::Binary(frame)).await?;
            }
        }
        Ok(())
    }
}

/// The keyboard: types queued input into the terminal, the recording first (the
/// terminal's echo state as the bytes reach it decides redaction; under fail-closed,
/// nothing the recording did not take is typed). A task, so a shell that does not read
/// its input holds up only this.
async fn keyboard(
    mut queue: bounded::ByteReceiver<Vec<u8>>,
    mut writer: SessionInput,
    tap: Option<Tap>,
    echo_probe: Box<dyn Fn() -> Option<bool> + Send>,
) {
    while let Some(bytes) = queue.recv().await {
        if let Some(tap) = &tap {
            if !tap.input(&bytes, echo_probe()).await {
                continue;
            }
        }
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
