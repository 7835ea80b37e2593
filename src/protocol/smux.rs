//! smux protocol version 1 (protocol-sessions.md §2.5, §2.6) as pure code: the stream
//! multiplexer that port-forwarding sessions in mux mode run over the data channel.
//!
//! The client (session-manager-plugin) runs an smux *client* and opens one stream per
//! accepted local connection; the agent runs an smux *server* and dials the destination
//! for each stream. Both vendor `github.com/xtaci/smux` v1.5.15/v1.5.16 with protocol
//! version 1; this module is wire-compatible with those.
//!
//! ```text
//! offset len field
//!      0   1 version      1
//!      1   1 cmd          0 SYN, 1 FIN, 2 PSH, 3 NOP, 4 UPD
//!      2   2 length       u16 LE, bytes of data that follow
//!      4   4 stream id    u32 LE
//!      8   n data         PSH: payload; UPD: consumed u32 LE + window u32 LE; others: none
//! ```
//!
//! # Why hand-written, and sans-IO
//!
//! The smux bytes arrive as PayloadType 1 payloads of data-channel messages, split and
//! packed arbitrarily (upstream pumps its smux pipe in 1024-byte pieces), and our replies
//! leave as payloads of messages we sequence and retransmit ourselves. The Rust crates
//! that speak smux (`async_smux`, `tokio_smux`, `smux`) all own an `AsyncRead +
//! AsyncWrite` transport and spawn or require a driving future; using one would mean an
//! in-memory duplex pipe plus a task per session just to turn payloads back into a byte
//! stream, with buffering and back-pressure we could not see. The protocol is small
//! (five commands, no handshake, no flow control in v1), so a state machine with bytes in
//! and events and bytes out is simpler to drive, test and fuzz.
//!
//! # Differences from upstream v1.5.15/v1.5.16
//!
//! None for what an smux peer sends; only for malformed frames and beyond a stream cap:
//!
//! * SYN, FIN and NOP must have length 0 and UPD length 8 ([`SmuxError::UnexpectedData`],
//!   [`SmuxError::BadUpd`]). v1.5.16 ignores the length of SYN/FIN/NOP (and reads exactly
//!   8 bytes for UPD whatever the length says), so such a frame would desynchronise it;
//!   smux ≥ 1.5.56 rejects these frames as `invalid protocol`, as we do. No smux sender
//!   ever writes them.
//! * UPD (a v2 command) is parsed and ignored, as v1.5.16 does (newer smux rejects it in v1).
//! * PSH after the peer's FIN on the same stream is discarded (smux would buffer it behind
//!   the EOF), so no [`MuxEvent::Data`] ever follows [`MuxEvent::Closed`].
//! * [`Mux::new`] takes a cap on open streams; a SYN beyond it is refused with a FIN
//!   ([`MuxEvent::Refused`]). Upstream has no cap (its accept backlog of 1024 blocks its
//!   reader instead).
//!
//! # Memory
//!
//! [`Decoder`] buffers at most one partial frame: [`MAX_BUFFERED`] = 8 + 65535 bytes. The
//! [`Mux`] keeps no per-stream data: [`MuxEvent::Data`] carries received bytes out at once,
//! and per stream it stores one flag, for at most `max_streams` streams. Bytes to send
//! accumulate in one output buffer until [`Mux::take_output`]; its size is whatever the
//! caller wrote since (plus 8 bytes of header per 32768 bytes of data).
//!
//! There is no flow control in v1 and no clock here: keepalive NOPs, if wanted, are the
//! caller's ([`Mux::nop`]), and so is back-pressure (stop feeding [`Mux::receive`]).

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::fmt;

/// The protocol version byte of every frame (smux `Config.Version`).
pub const VERSION: u8 = 1;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest PSH payload we write (smux `DefaultConfig().MaxFrameSize`); longer writes are
/// split. Received PSH frames may carry up to 65535 bytes.
pub const MAX_FRAME_DATA: usize = 32768;
/// Data bytes of an UPD frame.
pub const UPD_LEN: usize = 8;
/// The most a [`Decoder`] buffers: one frame with the largest length the header allows.
pub const MAX_BUFFERED: usize = HEADER_LEN + u16::MAX as usize;

/// A frame command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmd {
    /// Open a stream (no data). There is no acknowledgement.
    Syn,
    /// End of the sender's side of a stream (no data).
    Fin,
    /// Stream data.
    Psh,
    /// Keepalive (no data; stream id 0).
    Nop,
    /// Window update, smux v2 only (8 bytes: consumed u32 LE, window u32 LE).
    Upd,
}

impl Cmd {
    /// The command byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Cmd::Syn => 0,
            Cmd::Fin => 1,
            Cmd::Psh => 2,
            Cmd::Nop => 3,
            Cmd::Upd => 4,
        }
    }

    /// The command for a byte, if it is one.
    pub fn from_u8(b: u8) -> Option<Cmd> {
        Some(match b {
            0 => Cmd::Syn,
            1 => Cmd::Fin,
            2 => Cmd::Psh,
            3 => Cmd::Nop,
            4 => Cmd::Upd,
            _ => return None,
        })
    }

    /// Checks a data length against what this command carries.
    fn check_len(self, len: usize) -> Result<(), SmuxError> {
        match self {
            Cmd::Syn | Cmd::Fin | Cmd::Nop if len != 0 => {
                Err(SmuxError::UnexpectedData { cmd: self, len })
            }
            Cmd::Upd if len != UPD_LEN => Err(SmuxError::BadUpd(len)),
            Cmd::Psh if len > usize::from(u16::MAX) => Err(SmuxError::FrameTooLarge(len)),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cmd::Syn => "SYN",
            Cmd::Fin => "FIN",
            Cmd::Psh => "PSH",
            Cmd::Nop => "NOP",
            Cmd::Upd => "UPD",
        })
    }
}

/// Errors. Those from decoding ([`SmuxError::is_fatal`]) are smux's `invalid protocol`:
/// the session is dead and every later [`Mux::receive`] returns the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmuxError {
    /// The version byte is not 1.
    #[error("invalid smux protocol: frame version {0}, expected {VERSION}")]
    BadVersion(u8),
    /// The command byte is not one of the five commands.
    #[error("invalid smux protocol: unknown command {0}")]
    BadCommand(u8),
    /// A SYN, FIN or NOP with a non-zero length.
    #[error("invalid smux protocol: {cmd} frame with {len} data bytes, expected none")]
    UnexpectedData {
        /// The command.
        cmd: Cmd,
        /// Its length field.
        len: usize,
    },
    /// An UPD whose length is not 8.
    #[error("invalid smux protocol: UPD frame with {0} data bytes, expected {UPD_LEN}")]
    BadUpd(usize),
    /// Encoding only: PSH data longer than the 16-bit length field allows.
    #[error("smux frame data of {0} bytes does not fit the 65535-byte length field")]
    FrameTooLarge(usize),
    /// [`Mux::open`] on a server: in smux as used here only the client opens streams.
    #[error("only the smux client opens streams")]
    NotClient,
    /// [`Mux::open`] with `max_streams` streams open.
    #[error("smux stream limit reached: {0} streams open")]
    TooManyStreams(usize),
    /// [`Mux::open`] after the 32-bit stream id counter ran out (smux's `ErrGoAway`).
    #[error("smux stream ids exhausted")]
    StreamIdsExhausted,
}

impl SmuxError {
    /// Whether the error came from the received bytes, which kills the session.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SmuxError::BadVersion(_)
                | SmuxError::BadCommand(_)
                | SmuxError::UnexpectedData { .. }
                | SmuxError::BadUpd(_)
        )
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub cmd: Cmd,
    /// The stream id (0 for NOP).
    pub sid: u32,
    /// PSH payload, UPD's 8 bytes, or empty.
    pub data: Bytes,
}

impl Frame {
    /// A SYN for `sid`.
    pub fn syn(sid: u32) -> Frame {
        Frame {
            cmd: Cmd::Syn,
            sid,
            data: Bytes::new(),
        }
    }

    /// A FIN for `sid`.
    pub fn fin(sid: u32) -> Frame {
        Frame {
            cmd: Cmd::Fin,
            sid,
            data: Bytes::new(),
        }
    }

    /// A PSH of `data` for `sid`.
    pub fn psh(sid: u32, data: impl Into<Bytes>) -> Frame {
        Frame {
            cmd: Cmd::Psh,
            sid,
            data: data.into(),
        }
    }

    /// A keepalive NOP (stream id 0).
    pub fn nop() -> Frame {
        Frame {
            cmd: Cmd::Nop,
            sid: 0,
            data: Bytes::new(),
        }
    }

    /// Bytes of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }

    /// Appends the encoded frame to `out`. Refuses (writing nothing) what a [`Decoder`]
    /// would reject: data on SYN/FIN/NOP, UPD data other than 8 bytes, PSH data over
    /// 65535 bytes.
    pub fn encode_into(&self, out: &mut BytesMut) -> Result<(), SmuxError> {
        self.cmd.check_len(self.data.len())?;
        let len = u16::try_from(self.data.len())
            .map_err(|_| SmuxError::FrameTooLarge(self.data.len()))?;
        put_header(out, self.cmd, len, self.sid);
        out.put_slice(&self.data);
        Ok(())
    }
}

fn put_header(out: &mut BytesMut, cmd: Cmd, len: u16, sid: u32) {
    out.reserve(HEADER_LEN + usize::from(len));
    out.put_u8(VERSION);
    out.put_u8(cmd.to_u8());
    out.put_u16_le(len);
    out.put_u32_le(sid);
}

/// Validates a header; returns its command, data length and stream id.
fn parse_header(h: &[u8]) -> Result<(Cmd, usize, u32), SmuxError> {
    let &[ver, cmd, l0, l1, s0, s1, s2, s3] = h else {
        // Callers pass exactly HEADER_LEN bytes.
        return Err(SmuxError::BadVersion(h.first().copied().unwrap_or(0)));
    };
    if ver != VERSION {
        return Err(SmuxError::BadVersion(ver));
    }
    let cmd = Cmd::from_u8(cmd).ok_or(SmuxError::BadCommand(cmd))?;
    let len = usize::from(u16::from_le_bytes([l0, l1]));
    cmd.check_len(len)?;
    Ok((cmd, len, u32::from_le_bytes([s0, s1, s2, s3])))
}

/// Incremental frame decoder: bytes in, split and packed arbitrarily across calls, frames
/// out. Holds at most one partial frame ([`MAX_BUFFERED`] bytes). A header is checked as
/// soon as its 8 bytes are in, before its data arrives; after an error every call returns
/// that error.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: BytesMut,
    error: Option<SmuxError>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decodes the next frame from `input`, advancing `input` past the bytes used. On
    /// `Ok(None)` all of `input` has been taken into the partial-frame buffer; call again
    /// with more bytes.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, SmuxError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = self.decode_inner(input);
        if let Err(e) = &r {
            self.error = Some(e.clone());
            self.partial = BytesMut::new();
        }
        r
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, SmuxError> {
        // Fast path: a whole frame at the front of `input`, nothing buffered.
        if self.partial.is_empty() && input.len() >= HEADER_LEN {
            let (cmd, len, sid) = parse_header(&input[..HEADER_LEN])?;
            let total = HEADER_LEN + len;
            if let Some((frame, rest)) = input.split_at_checked(total) {
                *input = rest;
                let data = Bytes::copy_from_slice(&frame[HEADER_LEN..]);
                return Ok(Some(Frame { cmd, sid, data }));
            }
        }
        if self.partial.len() < HEADER_LEN {
            self.take(input, HEADER_LEN);
            if self.partial.len() < HEADER_LEN {
                return Ok(None);
            }
        }
        let (cmd, len, sid) = parse_header(&self.partial[..HEADER_LEN])?;
        let total = HEADER_LEN + len;
        self.take(input, total);
        if self.partial.len() < total {
            return Ok(None);
        }
        let mut frame = self.partial.split_to(total).freeze();
        let data = frame.split_off(HEADER_LEN);
        Ok(Some(Frame { cmd, sid, data }))
    }

    /// Moves bytes from `input` into the buffer until it holds `upto` bytes.
    fn take(&mut self, input: &mut &[u8], upto: usize) {
        let n = upto.saturating_sub(self.partial.len()).min(input.len());
        let (head, rest) = input.split_at(n);
        self.partial.reserve(upto - self.partial.len());
        self.partial.extend_from_slice(head);
        *input = rest;
    }

    /// Bytes of the partial frame held.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// The error that stopped this decoder, if any.
    pub fn error(&self) -> Option<&SmuxError> {
        self.error.as_ref()
    }
}

/// Which end of the smux session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent: accepts the streams the client opens.
    Server,
    /// The plugin: opens streams (ids 3, 5, 7, …).
    Client,
}

/// What [`Mux::receive`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// The peer opened a stream (SYN). The caller connects it and later calls
    /// [`Mux::close`].
    Opened(u32),
    /// Data for an open stream (never empty, never after [`MuxEvent::Closed`]).
    Data(u32, Bytes),
    /// The peer's FIN: end of data on that stream. The stream stays open for writing
    /// until [`Mux::close`].
    Closed(u32),
    /// A SYN arriving with `max_streams` streams open. The Mux has already queued a FIN for
    /// it and does not track it (its data is discarded); [`Mux::close`] on it is a no-op.
    Refused(u32),
}

#[derive(Debug, Clone, Copy, Default)]
struct StreamState {
    /// The peer sent FIN.
    peer_fin: bool,
}

/// One smux session's stream bookkeeping for one side: received bytes in, [`MuxEvent`]s
/// out; stream writes in, bytes for the peer out ([`Mux::take_output`]).
///
/// A stream is open from its SYN (sent by [`Mux::open`] or received) until [`Mux::close`]
/// sends our FIN and forgets it, as smux's `Stream.Close` does; the peer's FIN alone only
/// ends its data ([`MuxEvent::Closed`]). Data, FIN and UPD for unknown or forgotten
/// streams are ignored, as is a SYN for a stream that is open. After a decoding error the
/// Mux is dead: [`Mux::receive`] and [`Mux::open`] return that error and nothing more is
/// written.
#[derive(Debug)]
pub struct Mux {
    role: Role,
    max_streams: usize,
    decoder: Decoder,
    streams: HashMap<u32, StreamState>,
    /// The last id [`Mux::open`] used (smux's `nextStreamID`, starting at 1).
    last_id: u32,
    ids_exhausted: bool,
    output: BytesMut,
}

impl Mux {
    /// A Mux with nothing open that allows `max_streams` streams at a time.
    pub fn new(role: Role, max_streams: usize) -> Mux {
        Mux {
            role,
            max_streams,
            decoder: Decoder::new(),
            streams: HashMap::new(),
            last_id: 1,
            ids_exhausted: false,
            output: BytesMut::new(),
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Feeds bytes from the peer (any split) and returns what they meant.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Vec<MuxEvent>, SmuxError> {
        let mut events = Vec::new();
        self.receive_into(bytes, &mut events)?;
        Ok(events)
    }

    /// [`Mux::receive`] appending to `events`; on an error, the events of the frames
    /// before the bad one are in `events`.
    pub fn receive_into(
        &mut self,
        bytes: &[u8],
        events: &mut Vec<MuxEvent>,
    ) -> Result<(), SmuxError> {
        let mut input = bytes;
        while let Some(frame) = self.decoder.decode(&mut input)? {
            self.handle(frame, events);
        }
        Ok(())
    }

    fn handle(&mut self, frame: Frame, events: &mut Vec<MuxEvent>) {
        let sid = frame.sid;
        match frame.cmd {
            Cmd::Syn => {
                if self.streams.contains_key(&sid) {
                    // Duplicate SYN: ignored, as smux does.
                } else if self.streams.len() >= self.max_streams {
                    put_header(&mut self.output, Cmd::Fin, 0, sid);
                    events.push(MuxEvent::Refused(sid));
                } else {
                    self.streams.insert(sid, StreamState::default());
                    events.push(MuxEvent::Opened(sid));
                }
            }
            Cmd::Fin => {
                if let Some(s) = self.streams.get_mut(&sid) {
                    if !s.peer_fin {
                        s.peer_fin = true;
                        events.push(MuxEvent::Closed(sid));
                    }
                }
            }
            Cmd::Psh => {
                if !frame.data.is_empty() && self.streams.get(&sid).is_some_and(|s| !s.peer_fin) {
                    events.push(MuxEvent::Data(sid, frame.data));
                }
            }
            Cmd::Nop | Cmd::Upd => {}
        }
    }

    /// Opens a stream (client only): queues its SYN and returns its id, 3, 5, 7, … as
    /// smux's client does. Data may follow at once; there is no acknowledgement.
    pub fn open(&mut self) -> Result<u32, SmuxError> {
        if let Some(e) = self.decoder.error() {
            return Err(e.clone());
        }
        if self.role != Role::Client {
            return Err(SmuxError::NotClient);
        }
        if self.streams.len() >= self.max_streams {
            return Err(SmuxError::TooManyStreams(self.streams.len()));
        }
        loop {
            if self.ids_exhausted {
                return Err(SmuxError::StreamIdsExhausted);
            }
            let sid = self.last_id.wrapping_add(2);
            if sid < 2 {
                // Wrapped past u32::MAX: smux's go-away.
                self.ids_exhausted = true;
                continue;
            }
            self.last_id = sid;
            // Skip an id the peer opened itself (no smux server does).
            if self.streams.contains_key(&sid) {
                continue;
            }
            put_header(&mut self.output, Cmd::Syn, 0, sid);
            self.streams.insert(sid, StreamState::default());
            return Ok(sid);
        }
    }

    /// Queues `data` for stream `sid` as PSH frames of at most [`MAX_FRAME_DATA`] bytes
    /// (nothing for empty data, as smux). Returns false, writing nothing, if the stream is
    /// not open or the Mux is dead. Writing after the peer's FIN is allowed.
    pub fn write(&mut self, sid: u32, data: &[u8]) -> bool {
        if self.decoder.error().is_some() || !self.streams.contains_key(&sid) {
            return false;
        }
        for chunk in data.chunks(MAX_FRAME_DATA) {
            #[allow(clippy::cast_possible_truncation)] // chunk.len() <= MAX_FRAME_DATA < 65536
            put_header(&mut self.output, Cmd::Psh, chunk.len() as u16, sid);
            self.output.put_slice(chunk);
        }
        true
    }

    /// Closes stream `sid`: queues its FIN and forgets it. Returns false, writing
    /// nothing, if it is not open (already closed, refused, never opened) or the Mux is
    /// dead.
    pub fn close(&mut self, sid: u32) -> bool {
        if self.decoder.error().is_some() || self.streams.remove(&sid).is_none() {
            return false;
        }
        put_header(&mut self.output, Cmd::Fin, 0, sid);
        true
    }

    /// Queues a keepalive NOP (unless the Mux is dead).
    pub fn nop(&mut self) {
        if self.decoder.error().is_none() {
            put_header(&mut self.output, Cmd::Nop, 0, 0);
        }
    }

    /// Takes the bytes queued for the peer, in order.
    pub fn take_output(&mut self) -> Bytes {
        self.output.split().freeze()
    }

    /// Bytes queued for the peer.
    pub fn pending_output(&self) -> usize {
        self.output.len()
    }

    /// Whether `sid` is open (opened and not yet closed by us).
    pub fn is_open(&self, sid: u32) -> bool {
        self.streams.contains_key(&sid)
    }

    /// Whether the peer has sent FIN for the open stream `sid`.
    pub fn peer_closed(&self, sid: u32) -> bool {
        self.streams.get(&sid).is_some_and(|s| s.peer_fin)
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The decoding error that killed this Mux, if any.
    pub fn error(&self) -> Option<&SmuxError> {
        self.decoder.error()
    }

    /// Bytes of a partial frame held by the decoder (at most [`MAX_BUFFERED`]).
    pub fn buffered_input(&self) -> usize {
        self.decoder.buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SYN3: [u8; 8] = [0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00];
    const PSH3_HI: [u8; 10] = [0x01, 0x02, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x68, 0x69];
    const FIN3: [u8; 8] = [0x01, 0x01, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00];
    const NOP: [u8; 8] = [0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];

    fn encode(frames: &[Frame]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for f in frames {
            f.encode_into(&mut out).unwrap();
        }
        out.to_vec()
    }

    /// Decodes `chunks` in order; panics on an error.
    fn decode_all<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Frame>, Decoder) {
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for chunk in chunks {
            let mut input = chunk;
            while let Some(f) = d.decode(&mut input).unwrap() {
                frames.push(f);
            }
            assert!(input.is_empty());
        }
        (frames, d)
    }

    fn data(sid: u32, b: &[u8]) -> MuxEvent {
        MuxEvent::Data(sid, Bytes::copy_from_slice(b))
    }

    #[test]
    fn doc_examples_both_ways() {
        let cases: [(Frame, &[u8]); 4] = [
            (Frame::syn(3), &SYN3),
            (Frame::psh(3, &b"hi"[..]), &PSH3_HI),
            (Frame::fin(3), &FIN3),
            (Frame::nop(), &NOP),
        ];
        for (frame, bytes) in cases {
            assert_eq!(encode(std::slice::from_ref(&frame)), bytes, "{frame:?}");
            let (frames, d) = decode_all([bytes]);
            assert_eq!(frames, [frame]);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn byte_by_byte_and_packed() {
        let frames = [
            Frame::syn(3),
            Frame::psh(3, &b"hi"[..]),
            Frame::psh(3, Bytes::new()),
            Frame {
                cmd: Cmd::Upd,
                sid: 3,
                data: Bytes::from_static(&[1, 0, 0, 0, 0, 0, 4, 0]),
            },
            Frame::nop(),
            Frame::psh(5, vec![7u8; 1000]),
            Frame::fin(3),
        ];
        let bytes = encode(&frames);
        let (one_by_one, d) = decode_all(bytes.chunks(1));
        assert_eq!(one_by_one, frames);
        assert_eq!(d.buffered(), 0);
        let (packed, _) = decode_all([&bytes[..]]);
        assert_eq!(packed, frames);
        // A partial frame stays buffered until its last byte.
        let (head, d) = decode_all([&bytes[..bytes.len() - 1]]);
        assert_eq!(head, frames[..frames.len() - 1]);
        assert_eq!(d.buffered(), HEADER_LEN - 1);
    }

    #[test]
    fn largest_frame_is_buffered_whole() {
        let f = Frame::psh(9, vec![0xabu8; u16::MAX as usize]);
        let bytes = encode(std::slice::from_ref(&f));
        assert_eq!(bytes.len(), MAX_BUFFERED);
        let mut d = Decoder::new();
        let mut input = &bytes[..MAX_BUFFERED - 1];
        assert_eq!(d.decode(&mut input), Ok(None));
        assert_eq!(d.buffered(), MAX_BUFFERED - 1);
        let mut input = &bytes[MAX_BUFFERED - 1..];
        assert_eq!(d.decode(&mut input), Ok(Some(f)));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn encode_refuses_what_decode_rejects() {
        let mut out = BytesMut::new();
        let bad = [
            (
                Frame {
                    cmd: Cmd::Syn,
                    sid: 3,
                    data: Bytes::from_static(b"x"),
                },
                SmuxError::UnexpectedData {
                    cmd: Cmd::Syn,
                    len: 1,
                },
            ),
            (
                Frame {
                    cmd: Cmd::Upd,
                    sid: 3,
                    data: Bytes::new(),
                },
                SmuxError::BadUpd(0),
            ),
            (
                Frame::psh(3, vec![0u8; 65536]),
                SmuxError::FrameTooLarge(65536),
            ),
        ];
        for (f, e) in bad {
            assert_eq!(f.encode_into(&mut out), Err(e));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn bad_frames_kill_the_mux() {
        let cases: [(&[u8], SmuxError); 5] = [
            (
                &[0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00],
                SmuxError::BadVersion(2),
            ),
            (
                &[0x01, 0x05, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00],
                SmuxError::BadCommand(5),
            ),
            (
                &[0x01, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00],
                SmuxError::UnexpectedData {
                    cmd: Cmd::Syn,
                    len: 1,
                },
            ),
            (
                &[0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
                SmuxError::UnexpectedData {
                    cmd: Cmd::Nop,
                    len: 256,
                },
            ),
            (
                &[0x01, 0x04, 0x04, 0x00, 0x03, 0x00, 0x00, 0x00],
                SmuxError::BadUpd(4),
            ),
        ];
        for (bad, err) in cases {
            assert!(err.is_fatal());
            let mut m = Mux::new(Role::Server, 8);
            let mut events = Vec::new();
            let mut input = SYN3.to_vec();
            input.extend_from_slice(bad);
            assert_eq!(m.receive_into(&input, &mut events), Err(err.clone()));
            assert_eq!(
                events,
                [MuxEvent::Opened(3)],
                "frames before the bad one are reported"
            );
            assert_eq!(m.error(), Some(&err));
            // Dead: everything errors or does nothing.
            assert_eq!(m.receive(&PSH3_HI), Err(err.clone()));
            assert_eq!(m.receive(&[]), Err(err.clone()));
            assert_eq!(m.open(), Err(err.clone()));
            assert!(!m.write(3, b"x"));
            assert!(!m.close(3));
            m.nop();
            assert_eq!(m.pending_output(), 0);
            assert_eq!(m.buffered_input(), 0);
        }
        // The error comes with the header, before the data it announces.
        let mut m = Mux::new(Role::Server, 8);
        assert_eq!(m.receive(&[0x01, 0x09]), Ok(vec![]));
        assert_eq!(
            m.receive(&[0x00, 0x00, 0x03, 0x00, 0x00, 0x00]),
            Err(SmuxError::BadCommand(9))
        );
    }

    #[test]
    fn error_messages_read_well() {
        assert_eq!(
            SmuxError::BadVersion(2).to_string(),
            "invalid smux protocol: frame version 2, expected 1"
        );
        assert_eq!(
            SmuxError::UnexpectedData {
                cmd: Cmd::Fin,
                len: 3
            }
            .to_string(),
            "invalid smux protocol: FIN frame with 3 data bytes, expected none"
        );
        assert!(!SmuxError::NotClient.is_fatal());
    }

    #[test]
    fn server_stream_life() {
        let mut m = Mux::new(Role::Server, 8);
        let mut input = SYN3.to_vec();
        input.extend_from_slice(&PSH3_HI);
        input.extend_from_slice(&SYN3); // duplicate: ignored
        input.extend_from_slice(&NOP);
        input.extend_from_slice(&[0x01, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00]); // empty PSH
        input.extend_from_slice(&[0x01, 0x02, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, b'z']); // unknown sid
        input.extend_from_slice(&[0x01, 0x01, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00]); // FIN, unknown sid
        input.extend_from_slice(&FIN3);
        input.extend_from_slice(&PSH3_HI); // after FIN: discarded
        input.extend_from_slice(&FIN3); // second FIN: ignored
        assert_eq!(
            m.receive(&input).unwrap(),
            [MuxEvent::Opened(3), data(3, b"hi"), MuxEvent::Closed(3)]
        );
        assert!(m.is_open(3) && m.peer_closed(3));
        assert_eq!(m.open_streams(), 1);
        assert_eq!(m.pending_output(), 0);
        // Writing after the peer's FIN is allowed; closing forgets the stream.
        assert!(m.write(3, b"bye"));
        assert!(m.close(3));
        assert!(!m.close(3));
        assert!(!m.write(3, b"late"));
        assert!(!m.is_open(3));
        assert_eq!(m.open_streams(), 0);
        let mut want = vec![
            0x01, 0x02, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, b'b', b'y', b'e',
        ];
        want.extend_from_slice(&FIN3);
        assert_eq!(m.take_output(), want);
        assert_eq!(m.pending_output(), 0);
        // Late frames for the forgotten stream are ignored.
        assert_eq!(m.receive(&PSH3_HI).unwrap(), []);
        assert_eq!(m.receive(&FIN3).unwrap(), []);
        // Server accepts any id; server cannot open.
        assert_eq!(
            m.receive(&[0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80])
                .unwrap(),
            [MuxEvent::Opened(0x8000_0000)]
        );
        assert_eq!(m.open(), Err(SmuxError::NotClient));
    }

    #[test]
    fn stream_cap_refuses_with_fin() {
        let mut m = Mux::new(Role::Server, 2);
        let syn = |sid: u32| encode(&[Frame::syn(sid)]);
        let psh = |sid: u32| encode(&[Frame::psh(sid, &b"x"[..])]);
        let input = [syn(3), syn(5), syn(7), psh(7), psh(5)].concat();
        assert_eq!(
            m.receive(&input).unwrap(),
            [
                MuxEvent::Opened(3),
                MuxEvent::Opened(5),
                MuxEvent::Refused(7),
                data(5, b"x")
            ]
        );
        assert_eq!(m.take_output(), encode(&[Frame::fin(7)]));
        assert!(!m.close(7), "refused streams are not tracked");
        assert_eq!(m.pending_output(), 0);
        // A peer FIN does not free a slot; our close does.
        assert_eq!(
            m.receive(&encode(&[Frame::fin(3)])).unwrap(),
            [MuxEvent::Closed(3)]
        );
        assert_eq!(m.receive(&syn(9)).unwrap(), [MuxEvent::Refused(9)]);
        assert!(m.close(3));
        assert_eq!(m.receive(&syn(11)).unwrap(), [MuxEvent::Opened(11)]);
        assert_eq!(m.take_output(), encode(&[Frame::fin(9), Frame::fin(3)]));
        // Zero cap: everything refused.
        let mut m = Mux::new(Role::Server, 0);
        assert_eq!(m.receive(&SYN3).unwrap(), [MuxEvent::Refused(3)]);
        assert_eq!(m.take_output(), &FIN3[..]);
    }

    #[test]
    fn client_ids_and_cap() {
        let mut c = Mux::new(Role::Client, 3);
        assert_eq!(c.open(), Ok(3));
        assert_eq!(c.open(), Ok(5));
        assert_eq!(c.open(), Ok(7));
        assert_eq!(c.open(), Err(SmuxError::TooManyStreams(3)));
        assert!(c.close(5));
        assert_eq!(c.open(), Ok(9), "ids are never reused");
        assert_eq!(
            c.take_output(),
            encode(&[
                Frame::syn(3),
                Frame::syn(5),
                Frame::syn(7),
                Frame::fin(5),
                Frame::syn(9)
            ])
        );
    }

    #[test]
    fn client_ids_run_out_like_smux() {
        let mut c = Mux::new(Role::Client, 4);
        c.last_id = u32::MAX - 4;
        assert_eq!(c.open(), Ok(u32::MAX - 2));
        assert_eq!(c.open(), Ok(u32::MAX));
        assert_eq!(c.open(), Err(SmuxError::StreamIdsExhausted));
        assert_eq!(c.open(), Err(SmuxError::StreamIdsExhausted));
        assert!(c.is_open(u32::MAX));
    }

    #[test]
    fn large_writes_split_at_max_frame_data() {
        let mut c = Mux::new(Role::Client, 1);
        let sid = c.open().unwrap();
        let _ = c.take_output();
        let payload: Vec<u8> = (0..2 * MAX_FRAME_DATA + 100)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        assert!(c.write(sid, &payload));
        assert!(c.write(sid, b""), "empty write: no frame");
        let out = c.take_output();
        assert_eq!(out.len(), payload.len() + 3 * HEADER_LEN);
        let (frames, _) = decode_all([&out[..]]);
        let lens: Vec<usize> = frames.iter().map(|f| f.data.len()).collect();
        assert_eq!(lens, [MAX_FRAME_DATA, MAX_FRAME_DATA, 100]);
        assert!(frames.iter().all(|f| f.cmd == Cmd::Psh && f.sid == sid));
        assert_eq!(
            frames
                .iter()
                .flat_map(|f| f.data.iter().copied())
                .collect::<Vec<u8>>(),
            payload
        );
    }

    #[test]
    fn client_and_server_round_trip() {
        let mut c = Mux::new(Role::Client, 16);
        let mut s = Mux::new(Role::Server, 16);
        let a = c.open().unwrap();
        assert!(c.write(a, b"GET / HTTP/1.0\r\n\r\n"));
        let b = c.open().unwrap();
        c.nop();
        let big = vec![0x5au8; 40_000];
        assert!(c.write(b, &big));
        let wire = c.take_output();
        // Delivered in 1024-byte pieces, as the agent's pump does.
        let mut events = Vec::new();
        for piece in wire.chunks(1024) {
            s.receive_into(piece, &mut events).unwrap();
        }
        let mut got_b = Vec::new();
        let mut rest = Vec::new();
        for e in events {
            match e {
                MuxEvent::Data(sid, d) if sid == b => got_b.extend_from_slice(&d),
                e => rest.push(e),
            }
        }
        assert_eq!(got_b, big);
        assert_eq!(
            rest,
            [
                MuxEvent::Opened(a),
                data(a, b"GET / HTTP/1.0\r\n\r\n"),
                MuxEvent::Opened(b)
            ]
        );

        assert!(s.write(a, b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(s.close(a));
        assert!(s.write(b, b"pong"));
        let events = c.receive(&s.take_output()).unwrap();
        assert_eq!(
            events,
            [
                data(a, b"HTTP/1.0 200 OK\r\n\r\n"),
                MuxEvent::Closed(a),
                data(b, b"pong")
            ]
        );
        assert!(c.close(a));
        assert!(c.close(b));
        assert_eq!(s.receive(&c.take_output()).unwrap(), [MuxEvent::Closed(b)]);
        assert!(s.close(b));
        assert_eq!(c.receive(&s.take_output()).unwrap(), []);
        assert_eq!((c.open_streams(), s.open_streams()), (0, 0));
    }

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        let sid = prop_oneof![Just(0u32), Just(3u32), 0u32..64, any::<u32>()];
        prop_oneof![
            sid.clone().prop_map(Frame::syn),
            sid.clone().prop_map(Frame::fin),
            Just(Frame::nop()),
            (sid.clone(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(s, d)| Frame::psh(s, d)),
            (sid.clone(), 0usize..=65535).prop_map(|(s, n)| Frame::psh(s, vec![0xeeu8; n])),
            (sid, any::<[u8; 8]>()).prop_map(|(s, d)| Frame {
                cmd: Cmd::Upd,
                sid: s,
                data: Bytes::copy_from_slice(&d)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn frames_survive_any_split(
            frames in proptest::collection::vec(frame_strategy(), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let bytes = encode(&frames);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            at.push(0);
            at.push(bytes.len());
            at.sort_unstable();
            let chunks = at.windows(2).map(|w| &bytes[w[0]..w[1]]);
            let (decoded, d) = decode_all(chunks);
            prop_assert_eq!(decoded, frames);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn mux_takes_any_bytes(input in proptest::collection::vec(any::<u8>(), 0..400), split in 1usize..40) {
            let mut m = Mux::new(Role::Server, 2);
            let mut failed = None;
            for chunk in input.chunks(split) {
                match m.receive(chunk) {
                    Ok(events) => prop_assert!(failed.is_none() && events.len() <= chunk.len()),
                    Err(e) => {
                        prop_assert!(e.is_fatal());
                        prop_assert!(failed.is_none() || failed.as_ref() == Some(&e));
                        failed = Some(e);
                    }
                }
                prop_assert!(m.open_streams() <= 2);
                prop_assert!(m.buffered_input() <= MAX_BUFFERED);
            }
        }
    }
}
