//! Data-channel reliability layer (protocol spec §4) as a pure state machine.
//!
//! Stream data on the data channel (`output_stream_data` from the agent,
//! `input_stream_data` from the client) is sequenced, acknowledged and
//! retransmitted. This module holds that logic with **no I/O and no clock
//! reads**: every method that depends on time takes `now: Instant`, so the
//! agent, the gateway's test peers and the client share one implementation
//! and tests drive time explicitly.
//!
//! ```text
//!  producer ─push─▶ Sender ══ frame(seq) ══▶ wire ══▶ Receiver ─Deliver─▶ consumer
//!                     ▲                                  │
//!                     └─ on_ack(seq) ◀══ acknowledge ◀═══┘ (caller sends the ack)
//! ```
//!
//! # Sender
//!
//! One [`Sender`] per outgoing direction. The caller allocates a sequence
//! number with [`Sender::next_sequence`] (0, 1, 2, …), encodes the frame with
//! it, and hands the encoded bytes to [`Sender::push`]. The sender keeps every
//! unacknowledged frame, ordered by sequence number, with the time it was last
//! put on the wire. An entry goes through these states:
//!
//! ```text
//!  push (running) ──▶ sent ──on_ack──▶ removed
//!  push (paused)  ──▶ unsent ──resume / retransmit_all──▶ sent
//!  sent ──poll_retransmit (head only, overdue) / retransmit_all──▶ sent (time refreshed)
//! ```
//!
//! Retransmission is head-of-line, as upstream: only the oldest unacked frame
//! is considered, and it is resent when `now − last_sent > RTO`. The RTO comes
//! from the Jacobson/Karels estimator in [`RttEstimator`], fed by one sample
//! per acknowledged entry (`now − last_sent` of that entry; Karn's rule is not
//! applied, as upstream).
//!
//! Acknowledge, session-state and control messages are not sequenced (they
//! carry sequence number 0): callers send them directly and never push them.
//!
//! # Receiver
//!
//! One [`Receiver`] per incoming direction, tracking the expected sequence
//! number (starts at 0) and a bounded out-of-order buffer. See
//! [`Receiver::on_frame`] for the exact ack rules attached to each outcome.
//!
//! # Caller rules
//!
//! * **Pause** (spec §4.8): on `pause_publication` call [`Sender::pause`]. Paused
//!   is cleared by `start_publication`, **and by any received
//!   `input_stream_data` or `acknowledge`**, and by a data-channel reconnect.
//!   The sender does not guess which of these the caller saw: call
//!   [`Sender::resume`] (or [`Sender::retransmit_all`] after a reconnect) and
//!   transmit the frames it returns.
//! * **Back-pressure**: stop reading the producer (the PTY) while
//!   [`Sender::has_capacity`] is false or the sender [is paused](Sender::is_paused).
//!   A [`PushOutcome::Full`] consumes nothing: keep the frame *and its sequence
//!   number* and push them again later, otherwise the peer waits forever for
//!   the skipped number.
//! * **Not ready** (spec §4.2, agent before the PTY started): simply do not call
//!   [`Receiver::on_frame`] and do not ack. Nothing advances, and the peer
//!   retransmits later. Likewise, validate a frame before calling `on_frame`:
//!   a `Deliver` outcome has already advanced the expected sequence number.
//! * **Timers**: instead of waking every 100 ms like upstream, sleep until
//!   [`Sender::next_deadline`], then call [`Sender::poll_retransmit`]. Recompute
//!   the deadline after every push, ack, pause or resume.
//!
//! # Upstream behaviour and our deliberate differences
//!
//! | Topic | Upstream (agent) | Here |
//! |---|---|---|
//! | Outgoing buffer full | new frame is sent once and **not stored** (lost if dropped) | [`PushOutcome::Full`]; the caller applies back-pressure |
//! | Outgoing capacity | 100 000 entries | entries **and** a byte budget ([`SenderConfig`]) |
//! | Frames pushed while paused | after unpause, go out only via head-of-line retransmission: one at a time, each once it is the oldest unacked frame | returned by [`Sender::resume`] for immediate transmission |
//! | Resend scheduler | wakes every 100 ms ([`UPSTREAM_RESEND_INTERVAL`]) | [`Sender::next_deadline`] tells when to wake |
//! | Reconnect | clears Paused (§4.8) | [`Sender::retransmit_all`] also resends every unacked frame at once; the receiver's duplicate detection absorbs repeats |
//! | Incoming buffer | 100 000 entries | entries **and** a byte budget ([`ReceiverConfig`]) |
//!
//! The client's quirks (last-sent time not written back on resend, giving up
//! after 3000 resends, evicting the oldest entry when full, silently ignoring
//! duplicates instead of re-acking) are deliberately not reproduced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

/// Smoothed RTT before any sample: 100 ms (upstream constant, both sides).
pub const INITIAL_RTT: Duration = Duration::from_millis(100);

/// RTO before any sample: 200 ms (upstream constant, both sides).
///
/// Note it is *not* what the formula gives for the initial state
/// (100 ms + 10 ms); upstream simply starts here.
pub const INITIAL_RTO: Duration = Duration::from_millis(200);

/// Lower bound of the variance term in the RTO formula: 10 ms.
///
/// Upstream calls it the clock granularity; it keeps the RTO slightly above
/// the smoothed RTT when the measured variance has decayed to zero.
pub const CLOCK_GRANULARITY: Duration = Duration::from_millis(10);

/// Upper bound of the RTO: 1 s (upstream constant).
///
/// A lost frame on an idle channel is therefore retried at least once a
/// second, whatever RTT samples a stalled peer produced.
pub const MAX_RTO: Duration = Duration::from_secs(1);

/// Upstream's resend scheduler period (100 ms). Kept for reference only: this
/// module exposes [`Sender::next_deadline`] so callers sleep exactly as long
/// as needed instead of polling.
pub const UPSTREAM_RESEND_INTERVAL: Duration = Duration::from_millis(100);

/// Default entry capacity of both buffers: 100 000, the upstream agent's value
/// for its outgoing and incoming buffers.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Default byte budget of both buffers: 16 MiB.
///
/// Why: stream payloads are at most 1027 bytes (spec §4.5), so an encoded
/// frame is a little over 1 KiB and 100 000 entries could pin more than
/// 100 MiB per session and direction. 16 MiB still holds about 14 000 full
/// frames — seconds of full-speed output, hours of interactive use — waiting
/// for a slow or paused client, after which the agent stops reading the PTY
/// (the shell blocks on write: the back-pressure we want) instead of growing.
/// The same budget bounds the incoming buffer, where client input is small
/// and it is only ever a ceiling against a misbehaving peer.
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

// Gains of the Jacobson/Karels estimator (spec §4.4): the classic 1/4 and 1/8
// smoothing gains and the factor 4 on the variance. All are exactly
// representable in binary floating point, so no decimal-fraction error creeps in.
const RTTVAR_KEEP: f64 = 0.75;
const RTTVAR_GAIN: f64 = 0.25;
const RTT_KEEP: f64 = 0.875;
const RTT_GAIN: f64 = 0.125;
const RTTVAR_FACTOR: f64 = 4.0;

/// Jacobson/Karels round-trip estimator producing the retransmission timeout.
///
/// Units: internal state is kept in **nanoseconds as `f64`**, like upstream (a
/// Go `float64` of a `time.Duration`); the public API speaks [`Duration`] only.
/// Whole nanosecond counts below 2^53 (about 104 days) convert exactly, and
/// the gains are exact binary fractions, so millisecond-scale samples give
/// exact results (see the tests); any rounding after long sample histories is
/// far below one nanosecond. Durations are read back by truncating the
/// sub-nanosecond fraction, as Go's `time.Duration(float)` conversion does.
#[derive(Debug, Clone, PartialEq)]
pub struct RttEstimator {
    /// Smoothed round-trip time, nanoseconds.
    srtt_ns: f64,
    /// Round-trip time variation, nanoseconds.
    rttvar_ns: f64,
    rto: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl RttEstimator {
    /// Initial state: RTT 100 ms, RTTVAR 0, RTO 200 ms.
    pub fn new() -> Self {
        Self {
            srtt_ns: duration_to_nanos(INITIAL_RTT),
            rttvar_ns: 0.0,
            rto: INITIAL_RTO,
        }
    }

    /// Feeds one round-trip sample:
    ///
    /// ```text
    /// RTTVAR = 0.75·RTTVAR + 0.25·|RTT − sample|   (uses the previous RTT)
    /// RTT    = 0.875·RTT + 0.125·sample
    /// RTO    = min(1 s, RTT + max(10 ms, 4·RTTVAR))
    /// ```
    pub fn on_sample(&mut self, sample: Duration) {
        let sample_ns = duration_to_nanos(sample);
        self.rttvar_ns =
            RTTVAR_KEEP * self.rttvar_ns + RTTVAR_GAIN * (self.srtt_ns - sample_ns).abs();
        self.srtt_ns = RTT_KEEP * self.srtt_ns + RTT_GAIN * sample_ns;
        let variance_term =
            (RTTVAR_FACTOR * self.rttvar_ns).max(duration_to_nanos(CLOCK_GRANULARITY));
        let rto_ns = (self.srtt_ns + variance_term).min(duration_to_nanos(MAX_RTO));
        self.rto = nanos_to_duration(rto_ns);
    }

    /// Current retransmission timeout, in `[10 ms, 1 s]` after any sample.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Current smoothed round-trip time (sub-nanosecond part truncated).
    pub fn srtt(&self) -> Duration {
        nanos_to_duration(self.srtt_ns)
    }

    /// Current round-trip time variation (sub-nanosecond part truncated).
    pub fn rttvar(&self) -> Duration {
        nanos_to_duration(self.rttvar_ns)
    }
}

/// Exact for durations below 2^53 ns; larger ones round to the nearest `f64`.
fn duration_to_nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Truncates toward zero; negative or NaN gives zero, huge values saturate.
fn nanos_to_duration(ns: f64) -> Duration {
    // `as` from f64 to u64 saturates and maps NaN to 0, so this cannot panic;
    // dropping the fraction is the intended (Go-compatible) truncation.
    #[allow(clippy::cast_possible_truncation)]
    let whole = ns as u64;
    Duration::from_nanos(whole)
}

/// Capacity of a [`Sender`]'s unacked buffer.
///
/// An **empty** sender always accepts one frame, whatever these limits say, so
/// a zero limit or a frame larger than `max_bytes` cannot wedge the stream.
/// Otherwise a frame is accepted while fewer than `max_entries` frames and
/// fewer than `max_bytes` bytes are stored; the byte budget is therefore
/// exceeded by at most one frame. This keeps [`Sender::has_capacity`] an exact
/// prediction of [`Sender::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Maximum number of unacked frames. Default [`DEFAULT_MAX_ENTRIES`].
    pub max_entries: usize,
    /// Byte budget for stored frames (sum of encoded frame lengths). Default
    /// [`DEFAULT_MAX_BYTES`].
    pub max_bytes: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What the caller must do after [`Sender::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored; transmit the frame now.
    Transmit,
    /// Stored but paused: do not transmit. [`Sender::resume`] returns it.
    Held,
    /// Not stored, nothing consumed: keep the frame and its sequence number
    /// and push again once acks freed room (stop reading the producer
    /// meanwhile).
    ///
    /// Upstream instead sends such a frame once without storing it, so a
    /// single loss on the wire breaks the stream; we never drop silently.
    Full,
    /// Not stored: a frame with this sequence number is already unacked. This
    /// is a caller bug (sequence numbers must come from
    /// [`Sender::next_sequence`], each pushed once).
    DuplicateSequence,
}

/// Result of [`Sender::on_ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The entry was removed.
    Acked {
        /// Message id stored with the entry (acks are matched by sequence
        /// number only; callers may compare it with `AcknowledgedMessageId`
        /// for diagnostics).
        message_id: Uuid,
        /// RTT sample fed into the estimator; `None` if the frame had never
        /// been transmitted (pushed while paused), in which case no sample is
        /// taken.
        rtt_sample: Option<Duration>,
    },
    /// No unacked entry has this sequence number: a duplicate or stale ack,
    /// or a bogus one. Harmless; nothing changed.
    Unknown,
}

#[derive(Debug, Clone)]
struct Entry {
    message_id: Uuid,
    frame: Bytes,
    /// Last transmission time; the push time for a frame not yet transmitted.
    last_sent: Instant,
    /// False while the frame has never been transmitted (pushed while paused).
    transmitted: bool,
}

/// Outgoing side of one stream direction: sequence allocation, unacked buffer,
/// retransmission timing and pause state. See the [module docs](self).
///
/// Invariant: an entry can be untransmitted only while paused, because leaving
/// the paused state ([`resume`](Self::resume),
/// [`retransmit_all`](Self::retransmit_all)) marks every entry sent.
#[derive(Debug, Clone)]
pub struct Sender {
    config: SenderConfig,
    next_seq: i64,
    /// Keyed by sequence number, so the first entry is the head of line.
    unacked: BTreeMap<i64, Entry>,
    bytes: usize,
    rtt: RttEstimator,
    paused: bool,
}

impl Default for Sender {
    fn default() -> Self {
        Self::new(SenderConfig::default())
    }
}

impl Sender {
    /// Empty, running sender whose first sequence number is 0.
    pub fn new(config: SenderConfig) -> Self {
        Self {
            config,
            next_seq: 0,
            unacked: BTreeMap::new(),
            bytes: 0,
            rtt: RttEstimator::new(),
            paused: false,
        }
    }

    /// Allocates the next sequence number (0, 1, 2, …) for a stream frame.
    ///
    /// Check [`has_capacity`](Self::has_capacity) first, or keep the number
    /// with the frame if `push` returns [`PushOutcome::Full`]: an allocated
    /// number must eventually be pushed, or the peer stalls waiting for it.
    pub fn next_sequence(&mut self) -> i64 {
        let seq = self.next_seq;
        // Saturating: 2^63 frames will never happen, but must not panic.
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    /// True if the next [`push`](Self::push) will be accepted.
    pub fn has_capacity(&self) -> bool {
        self.unacked.is_empty()
            || (self.unacked.len() < self.config.max_entries && self.bytes < self.config.max_bytes)
    }

    /// Stores an encoded stream frame (with sequence number `seq` and message
    /// id `message_id` already written into it) and tells the caller whether to
    /// transmit it now. `now` is recorded as its send time when transmitting.
    pub fn push(&mut self, seq: i64, message_id: Uuid, frame: Bytes, now: Instant) -> PushOutcome {
        if self.unacked.contains_key(&seq) {
            return PushOutcome::DuplicateSequence;
        }
        if !self.has_capacity() {
            return PushOutcome::Full;
        }
        self.bytes = self.bytes.saturating_add(frame.len());
        self.unacked.insert(
            seq,
            Entry {
                message_id,
                frame,
                last_sent: now,
                transmitted: !self.paused,
            },
        );
        if self.paused {
            PushOutcome::Held
        } else {
            PushOutcome::Transmit
        }
    }

    /// Handles an `acknowledge` for sequence number `seq`: removes that entry
    /// and feeds `now − last_sent` into the RTT estimator. Unknown and
    /// duplicate acks are harmless.
    ///
    /// This does **not** clear the paused state; per spec §4.8 the agent
    /// should call [`resume`](Self::resume) after any received ack.
    pub fn on_ack(&mut self, seq: i64, now: Instant) -> AckOutcome {
        let Some(entry) = self.unacked.remove(&seq) else {
            return AckOutcome::Unknown;
        };
        self.bytes = self.bytes.saturating_sub(entry.frame.len());
        let rtt_sample = entry
            .transmitted
            .then(|| now.saturating_duration_since(entry.last_sent));
        if let Some(sample) = rtt_sample {
            self.rtt.on_sample(sample);
        }
        AckOutcome::Acked {
            message_id: entry.message_id,
            rtt_sample,
        }
    }

    /// Head-of-line retransmission: if not paused and the **oldest** unacked
    /// frame was last sent more than one RTO before `now`, marks it sent at
    /// `now` and returns it for transmission. At most one frame per call;
    /// later frames wait until they become the head (upstream agent rule).
    pub fn poll_retransmit(&mut self, now: Instant) -> Option<Bytes> {
        if self.paused {
            return None;
        }
        let rto = self.rtt.rto();
        let (_, head) = self.unacked.iter_mut().next()?;
        if now.saturating_duration_since(head.last_sent) <= rto {
            return None;
        }
        head.last_sent = now;
        head.transmitted = true;
        Some(head.frame.clone())
    }

    /// The earliest instant at which [`poll_retransmit`](Self::poll_retransmit)
    /// will return a frame, or `None` if there is nothing to retransmit
    /// (empty or paused). Because the rule is strictly "more than RTO", this
    /// is `last_sent + RTO + 1 ns`.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.paused {
            return None;
        }
        let (_, head) = self.unacked.iter().next()?;
        head.last_sent
            .checked_add(self.rtt.rto())?
            .checked_add(Duration::from_nanos(1))
    }

    /// Enters the paused state (`pause_publication`): new frames are stored
    /// but not transmitted, and retransmission stops.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Leaves the paused state and returns, in sequence order, the frames
    /// pushed while paused that were never transmitted, marking them sent at
    /// `now`. Transmit them immediately. Returns nothing if not paused.
    ///
    /// Improvement over upstream, where such frames only go out through the
    /// head-of-line resend scheduler, one at a time.
    pub fn resume(&mut self, now: Instant) -> Vec<Bytes> {
        if !self.paused {
            return Vec::new();
        }
        self.paused = false;
        self.unacked
            .values_mut()
            .filter(|entry| !entry.transmitted)
            .map(|entry| {
                entry.last_sent = now;
                entry.transmitted = true;
                entry.frame.clone()
            })
            .collect()
    }

    /// After a data-channel reconnect: leaves the paused state and returns
    /// every unacked frame in sequence order, all marked sent at `now`. The
    /// receiver's duplicate handling absorbs frames it already had.
    pub fn retransmit_all(&mut self, now: Instant) -> Vec<Bytes> {
        self.paused = false;
        self.unacked
            .values_mut()
            .map(|entry| {
                entry.last_sent = now;
                entry.transmitted = true;
                entry.frame.clone()
            })
            .collect()
    }

    /// True when no frame awaits an ack (e.g. before sending `Terminating`).
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Number of unacked frames.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// Total length in bytes of the unacked frames.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rtt.rto()
    }

    /// The RTT estimator, for diagnostics.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// True between [`pause`](Self::pause) and the next
    /// [`resume`](Self::resume) / [`retransmit_all`](Self::retransmit_all).
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

/// Capacity of a [`Receiver`]'s out-of-order buffer. Both limits are hard: a
/// frame that does not fit is refused ([`ReceiveOutcome::Full`]) and left to
/// the sender's retransmission. In-order frames never need buffer space, so a
/// full (even zero-sized) buffer slows the stream down but cannot stall it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Maximum number of buffered out-of-order items. Default
    /// [`DEFAULT_MAX_ENTRIES`].
    pub max_entries: usize,
    /// Byte budget for buffered items (sum of `item.as_ref().len()`). Default
    /// [`DEFAULT_MAX_BYTES`].
    pub max_bytes: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What happened to an incoming stream frame, and whether to ack it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveOutcome<T> {
    /// In order: process `items` in order. The first is the frame just
    /// received — **ack it**; the rest were drained from the out-of-order
    /// buffer and were acked when they were stored, so do not ack them again.
    Deliver {
        /// The received item followed by the consecutive buffered ones.
        items: Vec<T>,
    },
    /// Ahead of the expected number and stored (or already stored, in which
    /// case the new copy was dropped): **ack it**.
    Buffered,
    /// Ahead of the expected number but the buffer has no room: **do not
    /// ack**; the sender retransmits it later.
    Full,
    /// Below the expected number (already delivered), or negative and thus
    /// invalid: dropped. The agent **re-acks** it (upstream agent behaviour;
    /// the peer evidently missed the first ack).
    Duplicate,
}

/// Incoming side of one stream direction: expected sequence number and a
/// bounded out-of-order buffer. `T` is whatever the caller wants back on
/// delivery (raw frame, decoded payload…); its size for the byte budget is
/// `item.as_ref().len()`.
#[derive(Debug, Clone)]
pub struct Receiver<T> {
    config: ReceiverConfig,
    expected: i64,
    buffer: BTreeMap<i64, T>,
    bytes: usize,
}

impl<T: AsRef<[u8]>> Default for Receiver<T> {
    fn default() -> Self {
        Self::new(ReceiverConfig::default())
    }
}

impl<T: AsRef<[u8]>> Receiver<T> {
    /// Empty receiver expecting sequence number 0.
    pub fn new(config: ReceiverConfig) -> Self {
        Self {
            config,
            expected: 0,
            buffer: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Classifies and, where appropriate, stores or delivers an incoming
    /// stream frame with sequence number `seq`. See [`ReceiveOutcome`] for the
    /// ack rule of each outcome.
    ///
    /// Calling this commits: a caller that cannot accept the frame yet
    /// (agent: PTY not started) must not call it at all, and must not ack.
    ///
    /// Negative sequence numbers are invalid on the wire; since the expected
    /// number is never negative they fall in the "below expected" case and
    /// are reported as [`ReceiveOutcome::Duplicate`], exactly as upstream
    /// would treat them.
    pub fn on_frame(&mut self, seq: i64, item: T) -> ReceiveOutcome<T> {
        if seq < self.expected {
            return ReceiveOutcome::Duplicate;
        }
        if seq > self.expected {
            return self.store(seq, item);
        }
        let mut items = vec![item];
        self.expected = self.expected.saturating_add(1);
        while let Some(next) = self.buffer.remove(&self.expected) {
            self.bytes = self.bytes.saturating_sub(next.as_ref().len());
            items.push(next);
            self.expected = self.expected.saturating_add(1);
        }
        ReceiveOutcome::Deliver { items }
    }

    fn store(&mut self, seq: i64, item: T) -> ReceiveOutcome<T> {
        if self.buffer.contains_key(&seq) {
            return ReceiveOutcome::Buffered;
        }
        let size = item.as_ref().len();
        let fits = self.buffer.len() < self.config.max_entries
            && self
                .bytes
                .checked_add(size)
                .is_some_and(|total| total <= self.config.max_bytes);
        if !fits {
            return ReceiveOutcome::Full;
        }
        self.bytes += size;
        self.buffer.insert(seq, item);
        ReceiveOutcome::Buffered
    }

    /// The sequence number that will be delivered next.
    pub fn expected(&self) -> i64 {
        self.expected
    }

    /// Number of buffered out-of-order items.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Total size of buffered out-of-order items, in bytes.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn frame(tag: &str) -> Bytes {
        Bytes::copy_from_slice(tag.as_bytes())
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn small_sender(max_entries: usize, max_bytes: usize) -> Sender {
        Sender::new(SenderConfig {
            max_entries,
            max_bytes,
        })
    }

    fn small_receiver(max_entries: usize, max_bytes: usize) -> Receiver<Bytes> {
        Receiver::new(ReceiverConfig {
            max_entries,
            max_bytes,
        })
    }

    // ---- RTT estimator -------------------------------------------------

    #[test]
    fn estimator_initial_state() {
        let est = RttEstimator::new();
        assert_eq!(est.srtt(), ms(100));
        assert_eq!(est.rttvar(), Duration::ZERO);
        assert_eq!(est.rto(), ms(200));
    }

    #[test]
    fn estimator_exact_values_after_samples() {
        let mut est = RttEstimator::new();
        // RTTVAR = 0, RTT = 100 ms, RTO = 100 + max(10, 0) = 110 ms.
        est.on_sample(ms(100));
        assert_eq!(
            (est.srtt(), est.rttvar(), est.rto()),
            (ms(100), ms(0), ms(110))
        );
        // RTTVAR = 0.25·100 = 25 ms, RTT = 87.5 + 25 = 112.5 ms,
        // RTO = 112.5 + 4·25 = 212.5 ms.
        est.on_sample(ms(200));
        assert_eq!(
            (est.srtt(), est.rttvar(), est.rto()),
            (us(112_500), ms(25), us(212_500))
        );
        // RTTVAR = 18.75 + 0.25·62.5 = 34.375 ms (uses the previous RTT),
        // RTT = 98.4375 + 6.25 = 104.6875 ms, RTO = 104.6875 + 137.5 = 242.1875 ms.
        est.on_sample(ms(50));
        assert_eq!(est.rttvar(), us(34_375));
        assert_eq!(est.srtt(), Duration::from_nanos(104_687_500));
        assert_eq!(est.rto(), Duration::from_nanos(242_187_500));
    }

    #[test]
    fn estimator_ten_ms_floor() {
        let mut est = RttEstimator::new();
        // RTTVAR = 1 ms, 4·RTTVAR = 4 ms < 10 ms: RTO = 100.5 + 10.
        est.on_sample(ms(104));
        assert_eq!(est.rto(), us(110_500));

        // Zero samples drive RTT and RTTVAR toward 0; RTO never drops below 10 ms.
        for _ in 0..500 {
            est.on_sample(Duration::ZERO);
            assert!(est.rto() >= CLOCK_GRANULARITY);
        }
        assert!(est.rto() < ms(11), "rto {:?}", est.rto());
    }

    #[test]
    fn estimator_clamps_at_one_second() {
        let mut est = RttEstimator::new();
        // RTT = 0.6125 s, RTTVAR = 1.225 s: unclamped RTO would be 5.5125 s.
        est.on_sample(Duration::from_secs(5));
        assert_eq!(est.rto(), MAX_RTO);
        est.on_sample(Duration::MAX);
        assert_eq!(est.rto(), MAX_RTO);
        // Recovers once fast samples come back (srtt decays, no sticky clamp).
        let mut est = RttEstimator::new();
        est.on_sample(Duration::from_secs(2));
        for _ in 0..200 {
            est.on_sample(ms(20));
        }
        assert!(est.rto() < ms(50), "rto {:?}", est.rto());
    }

    // ---- Sender ----------------------------------------------------------

    #[test]
    fn sequence_numbers_start_at_zero() {
        let mut s = Sender::default();
        assert_eq!(
            (s.next_sequence(), s.next_sequence(), s.next_sequence()),
            (0, 1, 2)
        );
    }

    #[test]
    fn push_then_ack_removes_and_samples_rtt() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        assert_eq!(s.push(0, id(10), frame("abc"), t0), PushOutcome::Transmit);
        assert_eq!(s.push(1, id(11), frame("defg"), t0), PushOutcome::Transmit);
        assert_eq!((s.len(), s.bytes(), s.is_empty()), (2, 7, false));

        assert_eq!(
            s.on_ack(0, t0 + ms(100)),
            AckOutcome::Acked {
                message_id: id(10),
                rtt_sample: Some(ms(100)),
            }
        );
        assert_eq!(s.rto(), ms(110));
        assert_eq!((s.len(), s.bytes()), (1, 4));

        // Duplicate and unknown acks change nothing, not even the RTO.
        assert_eq!(s.on_ack(0, t0 + ms(900)), AckOutcome::Unknown);
        assert_eq!(s.on_ack(42, t0 + ms(900)), AckOutcome::Unknown);
        assert_eq!(s.on_ack(-1, t0 + ms(900)), AckOutcome::Unknown);
        assert_eq!((s.len(), s.bytes(), s.rto()), (1, 4, ms(110)));

        assert!(matches!(
            s.on_ack(1, t0 + ms(100)),
            AckOutcome::Acked { .. }
        ));
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.poll_retransmit(t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn ack_before_send_time_is_a_zero_sample() {
        // A clock going "backwards" relative to the stored send time must not panic.
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.push(0, id(0), frame("x"), t0 + ms(50));
        assert_eq!(
            s.on_ack(0, t0),
            AckOutcome::Acked {
                message_id: id(0),
                rtt_sample: Some(Duration::ZERO),
            }
        );
    }

    #[test]
    fn duplicate_sequence_push_is_rejected() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.push(0, id(0), frame("a"), t0);
        assert_eq!(
            s.push(0, id(1), frame("bbbb"), t0),
            PushOutcome::DuplicateSequence
        );
        assert_eq!((s.len(), s.bytes()), (1, 1));
    }

    #[test]
    fn head_of_line_retransmit_timing() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.push(0, id(0), frame("f0"), t0);
        s.push(1, id(1), frame("f1"), t0 + ms(10));

        // Strictly more than RTO (200 ms) after the last send.
        let due = t0 + ms(200) + Duration::from_nanos(1);
        assert_eq!(s.next_deadline(), Some(due));
        assert_eq!(s.poll_retransmit(t0 + ms(200)), None);
        assert_eq!(s.poll_retransmit(due), Some(frame("f0")));
        // Only the head, once: f1 is overdue too but waits its turn.
        assert_eq!(s.poll_retransmit(t0 + ms(300)), None);
        // The head's send time was refreshed (agent behaviour).
        let due2 = due + ms(200) + Duration::from_nanos(1);
        assert_eq!(s.next_deadline(), Some(due2));
        assert_eq!(s.poll_retransmit(due2), Some(frame("f0")));

        // Acking the head 50 ms after that resend makes f1 the head; its
        // deadline uses the new RTO.
        let ack_at = due2 + ms(50);
        assert_eq!(
            s.on_ack(0, ack_at),
            AckOutcome::Acked {
                message_id: id(0),
                rtt_sample: Some(ms(50)),
            }
        );
        // RTTVAR = 0.25·50 = 12.5, RTT = 87.5 + 6.25 = 93.75, RTO = 143.75 ms.
        assert_eq!(s.rto(), us(143_750));
        let f1_due = t0 + ms(10) + us(143_750) + Duration::from_nanos(1);
        assert_eq!(s.next_deadline(), Some(f1_due));
        assert_eq!(s.poll_retransmit(ack_at), Some(frame("f1")));
    }

    #[test]
    fn pause_holds_frames_and_resume_returns_unsent_ones() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        assert_eq!(s.push(0, id(0), frame("sent"), t0), PushOutcome::Transmit);
        s.pause();
        assert!(s.is_paused());
        assert_eq!(s.push(1, id(1), frame("held1"), t0), PushOutcome::Held);
        assert_eq!(s.push(2, id(2), frame("held2"), t0), PushOutcome::Held);

        // Nothing goes out while paused, however late it gets.
        let late = t0 + Duration::from_secs(10);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.poll_retransmit(late), None);

        // An ack for a held frame takes no RTT sample.
        s.push(3, id(3), frame("held3"), t0);
        assert_eq!(
            s.on_ack(3, late),
            AckOutcome::Acked {
                message_id: id(3),
                rtt_sample: None,
            }
        );
        assert_eq!(s.rto(), INITIAL_RTO);

        // Only the never-transmitted frames, in order.
        assert_eq!(s.resume(late), vec![frame("held1"), frame("held2")]);
        assert!(!s.is_paused());
        assert_eq!(s.resume(late), Vec::<Bytes>::new());
        // The already-sent head is long overdue and goes out on the next poll.
        assert_eq!(s.poll_retransmit(late), Some(frame("sent")));
        s.on_ack(0, late);
        // The resumed frames count as sent at `late`.
        assert_eq!(
            s.next_deadline(),
            Some(late + s.rto() + Duration::from_nanos(1))
        );
    }

    #[test]
    fn retransmit_all_resends_everything_and_unpauses() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        s.push(0, id(0), frame("a"), t0);
        s.pause();
        s.push(1, id(1), frame("b"), t0);
        s.push(2, id(2), frame("c"), t0);
        s.on_ack(1, t0 + ms(5));
        let t1 = t0 + ms(20);
        assert_eq!(s.retransmit_all(t1), vec![frame("a"), frame("c")]);
        assert!(!s.is_paused());
        assert_eq!(
            s.next_deadline(),
            Some(t1 + ms(200) + Duration::from_nanos(1))
        );
        assert_eq!(s.resume(t1), Vec::<Bytes>::new());
    }

    #[test]
    fn capacity_by_entries() {
        let t0 = Instant::now();
        let mut s = small_sender(2, usize::MAX);
        let seqs: Vec<i64> = (0..3).map(|_| s.next_sequence()).collect();
        assert_eq!(
            s.push(seqs[0], id(0), frame("a"), t0),
            PushOutcome::Transmit
        );
        assert!(s.has_capacity());
        assert_eq!(
            s.push(seqs[1], id(1), frame("b"), t0),
            PushOutcome::Transmit
        );
        assert!(!s.has_capacity());
        assert_eq!(s.push(seqs[2], id(2), frame("c"), t0), PushOutcome::Full);
        assert_eq!((s.len(), s.bytes()), (2, 2));
        // Room after an ack; the same sequence number is pushed again.
        s.on_ack(seqs[0], t0 + ms(1));
        assert!(s.has_capacity());
        assert_eq!(
            s.push(seqs[2], id(2), frame("c"), t0),
            PushOutcome::Transmit
        );
    }

    #[test]
    fn capacity_by_bytes_is_soft_by_one_frame() {
        let t0 = Instant::now();
        let mut s = small_sender(100, 10);
        assert_eq!(s.push(0, id(0), frame("123456"), t0), PushOutcome::Transmit);
        assert!(s.has_capacity());
        // 6 < 10 stored, so one more frame fits even though it overshoots.
        assert_eq!(s.push(1, id(1), frame("123456"), t0), PushOutcome::Transmit);
        assert_eq!(s.bytes(), 12);
        assert!(!s.has_capacity());
        assert_eq!(s.push(2, id(2), frame("1"), t0), PushOutcome::Full);
        s.on_ack(0, t0);
        assert!(s.has_capacity());
    }

    #[test]
    fn empty_sender_always_accepts_one_frame() {
        let t0 = Instant::now();
        let mut s = small_sender(0, 0);
        assert!(s.has_capacity());
        assert_eq!(
            s.push(0, id(0), frame("too big"), t0),
            PushOutcome::Transmit
        );
        assert!(!s.has_capacity());
        assert_eq!(s.push(1, id(1), frame(""), t0), PushOutcome::Full);
        s.on_ack(0, t0);
        assert_eq!(s.push(1, id(1), frame(""), t0), PushOutcome::Transmit);
    }

    #[test]
    fn full_while_paused_is_still_full() {
        let t0 = Instant::now();
        let mut s = small_sender(1, usize::MAX);
        s.pause();
        assert_eq!(s.push(0, id(0), frame("a"), t0), PushOutcome::Held);
        assert_eq!(s.push(1, id(1), frame("b"), t0), PushOutcome::Full);
    }

    // ---- Receiver --------------------------------------------------------

    fn delivered(items: &[&str]) -> ReceiveOutcome<Bytes> {
        ReceiveOutcome::Deliver {
            items: items.iter().map(|s| frame(s)).collect(),
        }
    }

    #[test]
    fn receiver_in_order() {
        let mut r = Receiver::default();
        assert_eq!(r.expected(), 0);
        assert_eq!(r.on_frame(0, frame("a")), delivered(&["a"]));
        assert_eq!(r.on_frame(1, frame("b")), delivered(&["b"]));
        assert_eq!(r.expected(), 2);
        assert_eq!(r.buffered_len(), 0);
    }

    #[test]
    fn receiver_out_of_order_then_drain() {
        let mut r = Receiver::default();
        assert_eq!(r.on_frame(2, frame("c")), ReceiveOutcome::Buffered);
        assert_eq!(r.on_frame(1, frame("b")), ReceiveOutcome::Buffered);
        assert_eq!(r.on_frame(4, frame("e")), ReceiveOutcome::Buffered);
        assert_eq!((r.buffered_len(), r.buffered_bytes()), (3, 3));
        assert_eq!(r.on_frame(0, frame("a")), delivered(&["a", "b", "c"]));
        assert_eq!(r.expected(), 3);
        assert_eq!((r.buffered_len(), r.buffered_bytes()), (1, 1));
        assert_eq!(r.on_frame(3, frame("d")), delivered(&["d", "e"]));
        assert_eq!(r.expected(), 5);
        assert_eq!((r.buffered_len(), r.buffered_bytes()), (0, 0));
    }

    #[test]
    fn receiver_duplicates() {
        let mut r = Receiver::default();
        r.on_frame(0, frame("a"));
        assert_eq!(r.on_frame(0, frame("a")), ReceiveOutcome::Duplicate);
        // Duplicate of a buffered frame: Buffered again, stored once.
        assert_eq!(r.on_frame(3, frame("ddd")), ReceiveOutcome::Buffered);
        assert_eq!(r.on_frame(3, frame("other")), ReceiveOutcome::Buffered);
        assert_eq!((r.buffered_len(), r.buffered_bytes()), (1, 3));
        r.on_frame(2, frame("c"));
        // The first copy wins.
        assert_eq!(r.on_frame(1, frame("b")), delivered(&["b", "c", "ddd"]));
    }

    #[test]
    fn receiver_invalid_sequence_numbers_do_not_panic() {
        let mut r = Receiver::default();
        assert_eq!(r.on_frame(-1, frame("x")), ReceiveOutcome::Duplicate);
        assert_eq!(r.on_frame(i64::MIN, frame("x")), ReceiveOutcome::Duplicate);
        assert_eq!(r.on_frame(i64::MAX, frame("x")), ReceiveOutcome::Buffered);
        assert_eq!(r.expected(), 0);
        assert_eq!(r.on_frame(0, frame("a")), delivered(&["a"]));
    }

    #[test]
    fn receiver_full_by_entries() {
        let mut r = small_receiver(2, usize::MAX);
        assert_eq!(r.on_frame(1, frame("b")), ReceiveOutcome::Buffered);
        assert_eq!(r.on_frame(2, frame("c")), ReceiveOutcome::Buffered);
        assert_eq!(r.on_frame(3, frame("d")), ReceiveOutcome::Full);
        // A duplicate of a stored frame is still recognised when full.
        assert_eq!(r.on_frame(2, frame("c")), ReceiveOutcome::Buffered);
        // In-order frames never need room.
        assert_eq!(r.on_frame(0, frame("a")), delivered(&["a", "b", "c"]));
        assert_eq!(r.on_frame(3, frame("d")), delivered(&["d"]));
    }

    #[test]
    fn receiver_full_by_bytes_is_hard() {
        let mut r = small_receiver(100, 5);
        assert_eq!(r.on_frame(1, frame("bbb")), ReceiveOutcome::Buffered);
        assert_eq!(r.on_frame(2, frame("ccc")), ReceiveOutcome::Full);
        assert_eq!(r.on_frame(2, frame("cc")), ReceiveOutcome::Buffered);
        assert_eq!(r.buffered_bytes(), 5);
        assert_eq!(r.on_frame(3, frame("")), ReceiveOutcome::Buffered);
        assert_eq!(
            r.on_frame(0, frame("a")),
            delivered(&["a", "bbb", "cc", ""])
        );
    }

    #[test]
    fn zero_capacity_receiver_still_delivers_in_order() {
        let mut r = small_receiver(0, 0);
        assert_eq!(r.on_frame(1, frame("")), ReceiveOutcome::Full);
        assert_eq!(r.on_frame(0, frame("a")), delivered(&["a"]));
        assert_eq!(r.on_frame(1, frame("b")), delivered(&["b"]));
    }

    // ---- Simulation over a hostile channel -------------------------------

    /// Frame format of the simulation: 8-byte big-endian sequence number, then
    /// the payload. Stands in for the real AgentMessage encoding.
    fn encode(seq: i64, payload: &[u8]) -> Bytes {
        let mut out = seq.to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    fn decode(frame: &Bytes) -> (i64, Bytes) {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&frame[..8]);
        (i64::from_be_bytes(seq), frame.slice(8..))
    }

    #[derive(Debug, Clone, Copy)]
    struct Link {
        drop_pct: u32,
        dup_pct: u32,
    }

    /// Puts `msg` on a wire: maybe lost, maybe duplicated. Reordering comes
    /// from delivering a random subset of what is in flight at each step.
    fn send<M: Clone>(rng: &mut StdRng, wire: &mut Vec<M>, msg: M, link: Option<Link>) {
        if let Some(link) = link {
            if rng.gen_range(0..100) < link.drop_pct {
                return;
            }
            if rng.gen_range(0..100) < link.dup_pct {
                wire.push(msg.clone());
            }
        }
        wire.push(msg);
    }

    fn arrivals<M>(rng: &mut StdRng, wire: &mut Vec<M>) -> Vec<M> {
        wire.shuffle(rng);
        let keep = rng.gen_range(0..=wire.len());
        wire.split_off(keep)
    }

    #[derive(Debug, Clone)]
    struct Scenario {
        payloads: Vec<Vec<u8>>,
        seed: u64,
        link: Link,
        sender: SenderConfig,
        receiver: ReceiverConfig,
        flow_control: bool,
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..48),
            any::<u64>(),
            (0u32..60, 0u32..40),
            (0usize..8, 0usize..160),
            (0usize..6, 0usize..80),
            any::<bool>(),
        )
            .prop_map(
                |(
                    payloads,
                    seed,
                    (drop_pct, dup_pct),
                    (s_entries, s_bytes),
                    (r_entries, r_bytes),
                    flow_control,
                )| Scenario {
                    payloads,
                    seed,
                    link: Link { drop_pct, dup_pct },
                    sender: SenderConfig {
                        max_entries: s_entries,
                        max_bytes: s_bytes,
                    },
                    receiver: ReceiverConfig {
                        max_entries: r_entries,
                        max_bytes: r_bytes,
                    },
                    flow_control,
                },
            )
    }

    /// Steps with a hostile link (loss, duplication, reordering, pauses,
    /// reconnects); afterwards the link only reorders and delays, so the run
    /// must converge.
    const HOSTILE_STEPS: usize = 400;
    /// Generous bound for the calm phase: every frame may need one head-of-line
    /// retransmission (RTO ≤ 1 s) at 20 ms average steps.
    const MAX_STEPS: usize = HOSTILE_STEPS + 20_000;

    fn run(sc: &Scenario) -> Result<(), TestCaseError> {
        let mut rng = StdRng::seed_from_u64(sc.seed);
        let mut sender = Sender::new(sc.sender);
        let mut receiver: Receiver<Bytes> = Receiver::new(sc.receiver);
        let mut data_wire: Vec<Bytes> = Vec::new();
        let mut ack_wire: Vec<i64> = Vec::new();
        let mut delivered: Vec<Bytes> = Vec::new();
        let mut next_payload = 0;
        let mut pending: Option<(i64, Bytes)> = None;
        let mut now = Instant::now();

        for step in 0..MAX_STEPS {
            let hostile = step < HOSTILE_STEPS;
            let link = hostile.then_some(sc.link);
            now += Duration::from_millis(rng.gen_range(1..=40));

            if hostile && sc.flow_control {
                if rng.gen_bool(0.05) {
                    sender.pause();
                }
                if rng.gen_bool(0.01) {
                    // Reconnect: everything in flight is lost.
                    data_wire.clear();
                    ack_wire.clear();
                    for f in sender.retransmit_all(now) {
                        send(&mut rng, &mut data_wire, f, link);
                    }
                }
            }
            if !hostile || rng.gen_bool(0.1) {
                // start_publication
                for f in sender.resume(now) {
                    send(&mut rng, &mut data_wire, f, link);
                }
            }

            // Producer: a few frames per step, deliberately ignoring
            // has_capacity so that the Full-and-retry path is exercised.
            for _ in 0..rng.gen_range(0..4) {
                let (seq, f) = match pending.take() {
                    Some(p) => p,
                    None if next_payload < sc.payloads.len() => {
                        let seq = sender.next_sequence();
                        let f = encode(seq, &sc.payloads[next_payload]);
                        next_payload += 1;
                        (seq, f)
                    }
                    None => break,
                };
                let expect_accept = sender.has_capacity();
                let outcome = sender.push(seq, Uuid::nil(), f.clone(), now);
                prop_assert_eq!(expect_accept, outcome != PushOutcome::Full);
                match outcome {
                    PushOutcome::Transmit => send(&mut rng, &mut data_wire, f, link),
                    PushOutcome::Held => {}
                    PushOutcome::Full => {
                        pending = Some((seq, f));
                        break;
                    }
                    PushOutcome::DuplicateSequence => prop_assert!(false, "duplicate push"),
                }
            }

            for f in arrivals(&mut rng, &mut data_wire) {
                let (seq, payload) = decode(&f);
                match receiver.on_frame(seq, payload) {
                    ReceiveOutcome::Deliver { items } => {
                        delivered.extend(items);
                        send(&mut rng, &mut ack_wire, seq, link);
                    }
                    ReceiveOutcome::Buffered | ReceiveOutcome::Duplicate => {
                        send(&mut rng, &mut ack_wire, seq, link)
                    }
                    ReceiveOutcome::Full => {}
                }
            }

            for seq in arrivals(&mut rng, &mut ack_wire) {
                sender.on_ack(seq, now);
                // Agent rule: any received ack clears the pause.
                for f in sender.resume(now) {
                    send(&mut rng, &mut data_wire, f, link);
                }
            }

            if let Some(f) = sender.poll_retransmit(now) {
                send(&mut rng, &mut data_wire, f, link);
            }
            if let Some(deadline) = sender.next_deadline() {
                prop_assert!(deadline > now);
            }

            // Bounded state at every step.
            prop_assert!(sender.len() <= sc.sender.max_entries.max(1));
            prop_assert!(receiver.buffered_len() <= sc.receiver.max_entries);
            prop_assert!(receiver.buffered_bytes() <= sc.receiver.max_bytes);
            prop_assert!(delivered.len() <= sc.payloads.len());

            if next_payload == sc.payloads.len() && pending.is_none() && sender.is_empty() {
                break;
            }
        }

        prop_assert!(
            sender.is_empty(),
            "sender never drained: {} left",
            sender.len()
        );
        prop_assert_eq!(sender.bytes(), 0);
        prop_assert!(pending.is_none());
        prop_assert_eq!(receiver.buffered_len(), 0);
        let expected_count = i64::try_from(sc.payloads.len()).unwrap_or(i64::MAX);
        prop_assert_eq!(receiver.expected(), expected_count);
        let delivered: Vec<Vec<u8>> = delivered.iter().map(|b| b.to_vec()).collect();
        prop_assert_eq!(&delivered, &sc.payloads);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn lossy_reordering_duplicating_channel_delivers_exactly_once(sc in scenario()) {
            run(&sc)?;
        }

        #[test]
        fn receiver_survives_arbitrary_input(
            frames in prop::collection::vec(
                (prop_oneof![-3i64..40, any::<i64>()], 0usize..8),
                0..300,
            ),
            max_entries in 0usize..10,
            max_bytes in 0usize..40,
        ) {
            let mut r: Receiver<Vec<u8>> = Receiver::new(ReceiverConfig { max_entries, max_bytes });
            let mut next = 0i64;
            for (seq, len) in frames {
                let mut item = seq.to_be_bytes().to_vec();
                item.resize(8 + len, 0);
                if let ReceiveOutcome::Deliver { items } = r.on_frame(seq, item) {
                    // Delivered items are exactly the consecutive numbers.
                    for item in items {
                        prop_assert_eq!(&item[..8], &next.to_be_bytes()[..]);
                        next += 1;
                    }
                }
                prop_assert_eq!(r.expected(), next);
                prop_assert!(r.buffered_len() <= max_entries);
                prop_assert!(r.buffered_bytes() <= max_bytes);
            }
        }

        #[test]
        fn sender_survives_arbitrary_acks(
            acks in prop::collection::vec((any::<i64>(), 0u64..3_000), 0..200),
            pushes in 0usize..20,
        ) {
            let t0 = Instant::now();
            let mut s = small_sender(8, 64);
            for n in 0..pushes {
                let seq = s.next_sequence();
                s.push(seq, Uuid::nil(), Bytes::from(vec![0u8; n]), t0);
            }
            for (seq, at) in acks {
                s.on_ack(seq % 24, t0 + ms(at));
                s.poll_retransmit(t0 + ms(at));
                prop_assert!(s.rto() <= MAX_RTO && s.rto() >= CLOCK_GRANULARITY);
                prop_assert!(s.len() <= 8);
            }
        }
    }
}
