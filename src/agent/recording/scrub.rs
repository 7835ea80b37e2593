//! The recording's scrubber (issue 19, item 3): secrets masked in what was typed and
//! what the terminal echoed, before either reaches the spool (pure: bytes and times in,
//! bytes out; no I/O, no clock).
//!
//! A password typed on a command line (`mysql -pS3CR3T`, `curl -u u:S3CR3T`,
//! `export API_TOKEN=S3CR3T`, `https://u:S3CR3T@host`) reaches the recording twice: as
//! the keys typed (input events, when the terminal echoes) and as what the terminal shows
//! (output: the echo of a canonical-mode shell, or readline drawing the line itself while
//! the keys are recorded as echo-off markers). The command audit masks the argv
//! (`audit::redact`); this masks the text, with the same rules.
//!
//! ## How
//!
//! The writer task (`mod.rs`) hands every event to a [`Scrubber`] in arrival order, and
//! writes what comes out, in the same order, with the same times (`at_ms`).
//!
//! * **A typed line is held until it ends.** From the first key of a line (typed with
//!   echo on or off), its keys and everything the session shows meanwhile (the echo) are
//!   held. Keys typed quickly reach the recorder before their echo does (the recorder
//!   sees a key before the terminal gets it), so after Enter (or Ctrl-C) the line waits
//!   for its echo's line feed, at most [`ECHO_MS`]. Then the rules
//!   ([`Redactor::secrets_in_line`]) read the line three ways: as typed (a line editor over the keys: Backspace, Ctrl-U, Ctrl-W), as the
//!   terminal shows it (a one-line terminal model over the echo, wrapped at the session's
//!   width, with the prompt in front: readline's redraws, history recall), and as the raw
//!   keys (a pasted line longer than the models keep). Each secret found is replaced by
//!   the mask in the held keys and echo: as a literal wherever it occurs, and over the
//!   span of bytes that drew it where the line was edited (`S3CX⌫R3T` is masked whole,
//!   the typo and the erasing included). Then everything held is written.
//! * **Learned secrets are masked from then on.** A secret of at least [`MIN_LEARNED`]
//!   bytes is kept for the rest of the session (at most [`MAX_SECRETS`], [`MAX_SECRET_BYTES`]
//!   each, the oldest forgotten first) and masked in all later input, output and process
//!   records, found with one Aho-Corasick pass. The command audit adds the secrets it
//!   masked in an argv ([`super::Tap::secrets_blocking`]), so a password given in a
//!   script is also masked where a program prints it back. A literal split across two
//!   output events is still found: an event that ends with the beginning of a secret
//!   keeps that end (at most the longest secret less one byte) until the next output.
//!   With no learned secret, output not inside a typed line passes untouched and
//!   unscanned: sessions without secrets pay a move and a look for the last line feed.
//! * **Echo later than the wait.** When a line is read without its echo's line feed,
//!   the last characters' echo can still be on its way: when what the terminal shows
//!   ends with the beginning of a secret of the line, that part is masked and the rest
//!   expected in the next output, where it is masked too.
//!
//! Why here and not in the tap: the writer task is the one place that sees input,
//! output and the audit's records in one order, owns its state without a lock, and is
//! off the path to the client. Why hold whole lines rather than mask keys as they come:
//! a rule needs its context (`-p` after `mysql`, `user:` after `-u`), which is typed
//! before the secret but is not known to be one until the line is read.
//!
//! Under `fail-closed`, a held key is answered (and so typed) once it is held, not once
//! it is written: a key that ends a line reaches the shell before its line is on disk, by
//! at most the echo wait. A crash in that window loses the line like the events queued in
//! the tap; a disk that fails then still ends the session, and nothing typed after the
//! failure reaches the shell.
//!
//! ## Bounds, and nothing lost
//!
//! Held events are bounded in bytes ([`HOLD_BYTES`]) and time: a line without Enter is
//! released after [`IDLE_MS`] without a key or [`MAX_AGE_MS`] in all (full-screen
//! programs such as vi are never held long; every event checks the deadlines, so a
//! steady stream of keys or output cannot keep them), an output end kept for a split
//! secret after [`TAIL_MS`]. The models keep lines of at most 2,048 characters (the
//! line being typed, the last eight typed and shown, under 1 MiB in all), and the
//! output's last 2 KiB before a line starts; a line is read with at most [`MAX_SECRETS`]
//! secrets, and every search is linear in what is held, so what a session types or
//! prints cannot make the writer task's work grow faster than its bytes. A release before the line's end applies the rules to the line as typed so
//! far, masks what they find, writes everything held, and is counted
//! ([`Stats::early_releases`]); the line is still read whole at its Enter, and what is
//! still held then is masked with what is found. Nothing is dropped: every event comes
//! out, in order, with its time; only the bytes of a secret are replaced (by
//! [`MASK`](crate::audit::redact::MASK)).
//!
//! Only the recording is scrubbed: the client sees the session as it is.
//!
//! ## Cost
//!
//! Measured on the 2-vCPU build VM (2026-12-03; a throwaway microbench of [`Scrubber::push`],
//! this crate at opt-level 3, dependencies at the dev profile's 1), 64 MiB of log lines
//! in 16 KiB output events outside a typed line, per event: copying the event alone
//! 0.4 µs; no learned secret 0.5 µs (the look for the last line feed); one learned
//! secret 1.9 µs (8 GB/s); 8 secrets 2.3 µs; 64 secrets 7.7 µs (2 GB/s). The recorder
//! behind it (vt100 rendering, `benches/recorder.rs`) costs orders of magnitude more per
//! byte. A typed line costs the rules once per line (a few regular expressions over
//! each reading of it).
//!
//! ## Limits
//!
//! A secret is masked only where a rule recognises it (a secret flag, an assignment, a
//! URL password, a header, a program rule, the administrator's patterns) or once it was
//! learned. Not masked: a password typed as a plain argument no rule knows (`myapp
//! S3CR3T`); a secret a program prints in another form (base64, split over lines, with
//! colours inside); a secret shorter than [`MIN_LEARNED`] bytes outside its own line; a
//! line the idle release cut inside a secret before any rule could see it (a URL
//! password typed, then a pause of [`IDLE_MS`], before the `@`); secrets beyond the
//! bounds above. The terminal model knows lines, wrapping and the common cursor
//! movements, not full-screen positioning.

use crate::audit::redact::{Redactor, MASK};
use aho_corasick::{AhoCorasick, MatchKind};
use std::collections::VecDeque;
use std::sync::Arc;

/// Bytes of events held while a line is typed (keys, echo, other events counted at
/// [`OTHER_WEIGHT`]); past it, everything held is released.
pub(crate) const HOLD_BYTES: usize = 64 * 1024;
/// A typed line without a key for this long is released (ms).
pub(crate) const IDLE_MS: u64 = 2_000;
/// A typed line is held at most this long in all (ms).
pub(crate) const MAX_AGE_MS: u64 = 10_000;
/// An output end kept for a secret split across events waits this long for the rest (ms).
pub(crate) const TAIL_MS: u64 = 500;
/// After Enter, the line's echo (its line feed) is waited for this long (ms).
pub(crate) const ECHO_MS: u64 = 300;
/// Secrets a session keeps masking (the oldest is forgotten first).
pub(crate) const MAX_SECRETS: usize = 64;
/// Longest secret kept (bytes); a longer one is masked in its own line only.
pub(crate) const MAX_SECRET_BYTES: usize = 4096;
/// Shortest secret kept: shorter ones are masked in their own line only (masking every
/// `ab` a session prints would make the recording unreadable).
pub(crate) const MIN_LEARNED: usize = 4;
/// Characters the line models keep of one line.
const LINE_CELLS: usize = 2048;
/// Lines ended and not yet read that the models keep (the raw keys cover the rest).
const DONE_LINES: usize = 8;
/// Output bytes kept after the last line feed (the prompt a line starts behind).
const TAIL_BYTES: usize = 2048;
/// What a held event without bytes (a resize, a process) counts against [`HOLD_BYTES`].
const OTHER_WEIGHT: usize = 256;

/// An event as the scrubber sees it; `T` is the writer's own event, passed through.
#[derive(Debug)]
pub(crate) enum Item<T> {
    /// Keys typed with echo on.
    Input { at: u64, data: Vec<u8> },
    /// What the terminal showed.
    Output { at: u64, data: Vec<u8> },
    /// Keys typed with echo off (no bytes): they open a line, their Enter keys end it.
    Hidden { lines: usize, item: T },
    /// Anything else, kept in its place.
    Other(T),
}

/// What the scrubber did, for the recording's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Secrets replaced by the mask in typed and echoed text (and process records).
    pub masked: u64,
    /// Secrets learned (kept for the rest of the session).
    pub learned: u64,
    /// Secrets forgotten to stay within the bounds.
    pub forgotten: u64,
    /// Typed lines released before their end (bound or idle).
    pub early_releases: u64,
}

struct Held<T> {
    item: Item<T>,
    /// Input/Output: where its bytes start in their stream.
    start: u64,
}

impl<T> Held<T> {
    fn weight(&self) -> usize {
        match &self.item {
            Item::Input { data, .. } | Item::Output { data, .. } => data.len(),
            _ => OTHER_WEIGHT,
        }
    }
}

impl Line {
    /// `ends` line ends were typed at `now`.
    fn ended(&mut self, ends: usize, now: u64) {
        if ends > 0 {
            self.awaiting = (self.awaiting + ends).min(64);
            self.ended_at = now;
        }
    }
}

/// The open typed line.
struct Line {
    typed: Typed,
    screen: Screen,
    last_input: u64,
    /// Line ends typed whose echo (a line feed in the output) has not come yet.
    awaiting: usize,
    /// When the last line end was typed.
    ended_at: u64,
}

/// See the [module docs](self).
pub(crate) struct Scrubber<T> {
    rules: Arc<Redactor>,
    secrets: Secrets,
    held: VecDeque<Held<T>>,
    held_bytes: usize,
    /// When the first of the held events came.
    held_since: u64,
    line: Option<Line>,
    width: usize,
    /// Bytes of each stream seen so far.
    in_pos: u64,
    out_pos: u64,
    /// Output since the last line feed (ends at `out_pos`).
    tail: Vec<u8>,
    /// The rest of a secret whose echo had begun when its line was read.
    expect: Option<Vec<u8>>,
    stats: Stats,
}

impl<T> std::fmt::Debug for Scrubber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The typed line ended: read it, then write everything (a split secret's start kept).
    LineEnd,
    /// Bound or idle inside a line: read it as far as typed, write everything.
    Early,
    /// Output outside a line: learned secrets masked, a split secret's start kept.
    Tail,
    /// Everything out (the tail's time is up, the session ended).
    Flush,
}

impl<T> Scrubber<T> {
    /// A scrubber with `rules`, for a terminal `cols` wide.
    pub(crate) fn new(rules: Arc<Redactor>, cols: u16) -> Self {
        Self {
            rules,
            secrets: Secrets::default(),
            held: VecDeque::new(),
            held_bytes: 0,
            held_since: 0,
            line: None,
            width: usize::from(cols.max(1)),
            in_pos: 0,
            out_pos: 0,
            tail: Vec::new(),
            expect: None,
            stats: Stats::default(),
        }
    }

    /// What it did so far.
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    /// The terminal's new width (call in the event's place).
    pub(crate) fn resize(&mut self, cols: u16) {
        self.width = usize::from(cols.max(1));
        if let Some(line) = &mut self.line {
            line.screen.width = self.width;
        }
    }

    /// Secrets found elsewhere (the command audit's argv), masked from now on.
    pub(crate) fn learn<S: AsRef<str>>(&mut self, secrets: &[S]) {
        for s in secrets {
            self.keep(s.as_ref());
        }
    }

    fn keep(&mut self, s: &str) {
        if s.len() < MIN_LEARNED || s.len() > MAX_SECRET_BYTES || s.contains(MASK) {
            return;
        }
        match self.secrets.add(s.as_bytes()) {
            Added::New { forgot } => {
                self.stats.learned += 1;
                self.stats.forgotten += forgot;
            }
            Added::Known => {}
        }
    }

    /// `s` with the learned secrets masked, and how many were; `None` when none occurs
    /// (or none is known: then nothing is scanned).
    pub(crate) fn mask_text(&mut self, s: &str) -> Option<(String, usize)> {
        let ac = self.secrets.automaton()?;
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        let mut n = 0;
        for m in ac.find_iter(s) {
            out.push_str(&s[last..m.start()]);
            out.push_str(MASK);
            last = m.end();
            n += 1;
        }
        if n == 0 {
            return None;
        }
        out.push_str(&s[last..]);
        self.stats.masked += n as u64;
        Some((out, n))
    }

    /// When [`tick`](Self::tick) has something to release (session ms).
    pub(crate) fn deadline(&self) -> Option<u64> {
        if self.held.is_empty() {
            return None;
        }
        Some(match &self.line {
            Some(line) if line.awaiting > 0 => {
                (line.ended_at + ECHO_MS).min(self.held_since + MAX_AGE_MS)
            }
            Some(line) => (line.last_input + IDLE_MS).min(self.held_since + MAX_AGE_MS),
            None => self.held_since + TAIL_MS,
        })
    }

    /// Releases what has been held too long at `now` (session ms) into `out`.
    pub(crate) fn tick(&mut self, now: u64, out: &mut Vec<Item<T>>) {
        if self.deadline().is_some_and(|d| d <= now) {
            let kind = self.bound_release();
            self.release(kind, out);
        }
        // A line left without a key for long is forgotten (its text is still in the
        // output the next line starts behind).
        if self.held.is_empty()
            && self
                .line
                .as_ref()
                .is_some_and(|l| l.last_input + MAX_AGE_MS <= now)
        {
            self.line = None;
        }
    }

    /// How what is held goes out when a bound is reached: a line whose end was typed is
    /// read as ended (its echo did not come in time), one still being typed as far as
    /// typed.
    fn bound_release(&self) -> Release {
        match &self.line {
            Some(line) if line.awaiting > 0 => Release::LineEnd,
            Some(_) => Release::Early,
            None => Release::Flush,
        }
    }

    /// Everything held, out (the session ended): the open line read as far as typed.
    pub(crate) fn finish(&mut self, out: &mut Vec<Item<T>>) {
        if self.line.is_some() {
            let kind = self.bound_release();
            self.release(kind, out);
        }
        self.release(Release::Flush, out);
        self.line = None;
    }

    /// Takes one event at `now` (session ms); what can be written goes to `out`, in order.
    pub(crate) fn push(&mut self, item: Item<T>, now: u64, out: &mut Vec<Item<T>>) {
        // What is overdue goes first, whatever else keeps coming.
        self.tick(now, out);
        match item {
            Item::Input { at, data } => {
                let start = self.in_pos;
                self.in_pos += data.len() as u64;
                let line = self.open_line(now);
                let ends = line.typed.feed(&data, start);
                line.ended(ends, now);
                self.hold(Item::Input { at, data }, start, now);
            }
            Item::Hidden { lines, item } => {
                let line = self.open_line(now);
                if lines > 0 {
                    line.typed.end_line();
                }
                line.ended(lines, now);
                self.hold(Item::Hidden { lines, item }, 0, now);
            }
            Item::Output { at, data } => {
                let data = self.expected(data);
                let start = self.out_pos;
                self.out_pos += data.len() as u64;
                self.follow_tail(&data);
                // Inside a line being typed (keys in the last IDLE_MS, or an Enter whose
                // echo is awaited), output is the echo: held with the keys.
                let mut echoed = false;
                let typing = match &mut self.line {
                    Some(line) => {
                        line.screen.feed(&data, start);
                        if line.awaiting > 0 {
                            let feeds = data.iter().filter(|&&b| b == b'\n').count();
                            line.awaiting = line.awaiting.saturating_sub(feeds);
                            echoed = line.awaiting == 0;
                            true
                        } else {
                            now < line.last_input + IDLE_MS
                        }
                    }
                    None => false,
                };
                if typing {
                    self.hold(Item::Output { at, data }, start, now);
                    if echoed {
                        self.release(Release::LineEnd, out);
                    }
                } else if self.held.is_empty() && self.secrets.is_empty() {
                    // The fast path: nothing to look for.
                    out.push(Item::Output { at, data });
                    return;
                } else {
                    self.hold(Item::Output { at, data }, start, now);
                    self.release(Release::Tail, out);
                }
            }
            Item::Other(t) => {
                if self.held.is_empty() {
                    out.push(Item::Other(t));
                    return;
                }
                self.hold(Item::Other(t), 0, now);
            }
        }
        if self.held_bytes > HOLD_BYTES {
            let kind = self.bound_release();
            self.release(kind, out);
        }
    }

    fn hold(&mut self, item: Item<T>, start: u64, now: u64) {
        if self.held.is_empty() {
            self.held_since = now;
        }
        let held = Held { item, start };
        self.held_bytes += held.weight();
        self.held.push_back(held);
    }

    fn open_line(&mut self, now: u64) -> &mut Line {
        let width = self.width;
        let tail_start = self.out_pos - self.tail.len() as u64;
        let tail = &self.tail;
        let line = self.line.get_or_insert_with(|| {
            let mut screen = Screen::new(width);
            screen.feed(tail, tail_start);
            Line {
                typed: Typed::default(),
                screen,
                last_input: now,
                awaiting: 0,
                ended_at: now,
            }
        });
        line.last_input = now;
        line
    }

    /// Keeps the output after the last line feed (bounded).
    fn follow_tail(&mut self, data: &[u8]) {
        match data.iter().rposition(|&b| b == b'\n') {
            Some(p) => {
                self.tail.clear();
                self.tail.extend_from_slice(&data[p + 1..]);
            }
            None => self.tail.extend_from_slice(data),
        }
        if self.tail.len() > TAIL_BYTES {
            let cut = self.tail.len() - TAIL_BYTES;
            self.tail.drain(..cut);
        }
    }

    /// Masks the expected rest of a secret at the start of `data`.
    fn expected(&mut self, data: Vec<u8>) -> Vec<u8> {
        let Some(rest) = self.expect.take() else {
            return data;
        };
        let k = rest.iter().zip(&data).take_while(|(a, b)| a == b).count();
        if k == 0 || (k < rest.len() && k < data.len()) {
            return data;
        }
        if k < rest.len() {
            self.expect = Some(rest[k..].to_vec());
        }
        self.stats.masked += 1;
        let mut out = MASK.as_bytes().to_vec();
        out.extend_from_slice(&data[k..]);
        out
    }

    /// Reads, masks and writes what is held (see [`Release`]).
    fn release(&mut self, kind: Release, out: &mut Vec<Item<T>>) {
        let mut marks_in: Vec<(u64, u64)> = Vec::new();
        let mut marks_out: Vec<(u64, u64)> = Vec::new();
        if matches!(kind, Release::LineEnd | Release::Early) {
            self.read_line(kind, &mut marks_in, &mut marks_out);
        }
        // Every learned secret (this line's included) wherever it occurs; shorter ones
        // only where the line drew them (above).
        if let Some(ac) = self.secrets.automaton().filter(|_| !self.held.is_empty()) {
            for (input, marks) in [(true, &mut marks_in), (false, &mut marks_out)] {
                if let Some((start, bytes)) = self.concat(input) {
                    marks.extend(
                        ac.find_iter(&bytes)
                            .map(|m| (start + m.start() as u64, start + m.end() as u64)),
                    );
                }
            }
        }
        // A split secret's start stays, unmasked, until the rest comes.
        let mut carry = None;
        if matches!(kind, Release::LineEnd | Release::Tail) {
            if let Some(Held {
                item: Item::Output { at, data },
                start,
            }) = self.held.back()
            {
                let k = self.secrets.carry(data);
                let end = start + data.len() as u64;
                let from = end - k as u64;
                if k > 0 && !marks_out.iter().any(|&(a, b)| a < end && b > from) {
                    let at = *at;
                    if let Some(Held {
                        item: Item::Output { data, .. },
                        ..
                    }) = self.held.back_mut()
                    {
                        let rest = data.split_off(data.len() - k);
                        carry = Some(Held {
                            item: Item::Output { at, data: rest },
                            start: from,
                        });
                    }
                }
            }
        }
        let runs_in = runs(marks_in, self.held_start(true));
        let runs_out = runs(marks_out, self.held_start(false));
        let held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let mut masked = 0;
        for Held { item, start } in held {
            match item {
                Item::Input { at, data } => {
                    let data = apply(data, start, &runs_in, &mut masked);
                    if !data.is_empty() {
                        out.push(Item::Input { at, data });
                    }
                }
                Item::Output { at, data } => {
                    let data = apply(data, start, &runs_out, &mut masked);
                    if !data.is_empty() {
                        out.push(Item::Output { at, data });
                    }
                }
                other => out.push(other),
            }
        }
        self.stats.masked += masked;
        if let Some(c) = carry {
            self.held_since = match &c.item {
                Item::Output { at, .. } => *at,
                _ => self.held_since,
            };
            self.held_bytes = c.weight();
            self.held.push_back(c);
        }
    }

    /// Reads the open line (as typed, as shown, as the raw keys), learns its secrets and
    /// marks the bytes that drew them.
    fn read_line(
        &mut self,
        kind: Release,
        marks_in: &mut Vec<(u64, u64)>,
        marks_out: &mut Vec<(u64, u64)>,
    ) {
        let mut found: Vec<String> = Vec::new();
        let Some(line) = &mut self.line else {
            return;
        };
        if kind == Release::Early && !self.held.is_empty() {
            self.stats.early_releases += 1;
        }
        let mut texts: Vec<String> = line.typed.done.iter().map(|l| text(l)).collect();
        texts.push(text(&line.typed.cells));
        texts.extend(line.screen.done.iter().map(|l| row_text(l)));
        texts.push(row_text(&line.screen.cells));
        // The raw keys (a pasted line longer than the models keep).
        let mut raw = Vec::new();
        for h in &self.held {
            if let Item::Input { data, .. } = &h.item {
                raw.extend_from_slice(data);
            }
        }
        if !raw.is_empty() {
            let raw = String::from_utf8_lossy(&raw);
            texts.extend(
                raw.split(['\r', '\n'])
                    .filter(|l| !l.is_empty())
                    .map(|l| l.replace(|c: char| c.is_control(), " ")),
            );
        }
        'texts: for t in &texts {
            for s in self.rules.secrets_in_line(t) {
                if found.len() >= MAX_SECRETS {
                    break 'texts;
                }
                if !found.contains(&s) {
                    found.push(s);
                }
            }
        }
        let typed: Vec<Vec<Option<Cell>>> = line
            .typed
            .done
            .iter()
            .chain([&line.typed.cells])
            .map(|l| l.iter().copied().map(Some).collect())
            .collect();
        for s in found.iter() {
            for cells in &typed {
                marks_in.extend(spans(cells, s));
            }
            for cells in line.screen.done.iter().chain([&line.screen.cells]) {
                marks_out.extend(spans(cells, s));
            }
        }
        // The end of the shown line may be a secret whose last characters' echo is
        // still on its way.
        if kind == Release::LineEnd {
            if let Some((span, rest)) = line.screen.unfinished(&found) {
                marks_out.push(span);
                self.expect = Some(rest);
            }
        }
        let ended = kind == Release::LineEnd;
        line.typed.done.clear();
        line.screen.done.clear();
        if ended {
            line.awaiting = 0;
        }
        let open = !line.typed.cells.is_empty();
        if ended && !open {
            self.line = None;
        }
        for s in &found {
            self.keep(s);
        }
    }

    /// The held bytes of one stream, and where they start (`None`: none held).
    fn concat(&self, input: bool) -> Option<(u64, Vec<u8>)> {
        let mut start = None;
        let mut bytes = Vec::new();
        for h in &self.held {
            match (&h.item, input) {
                (Item::Input { data, .. }, true) | (Item::Output { data, .. }, false) => {
                    start.get_or_insert(h.start);
                    bytes.extend_from_slice(data);
                }
                _ => {}
            }
        }
        start.map(|s| (s, bytes))
    }

    /// Where the held bytes of one stream start.
    fn held_start(&self, input: bool) -> Option<u64> {
        self.held.iter().find_map(|h| match (&h.item, input) {
            (Item::Input { .. }, true) | (Item::Output { .. }, false) => Some(h.start),
            _ => None,
        })
    }
}

/// Marked ranges merged into sorted, disjoint runs, none before `from` (what is already
/// written cannot be masked; a run that began there is masked from `from` on).
fn runs(mut marks: Vec<(u64, u64)>, from: Option<u64>) -> Vec<(u64, u64)> {
    let Some(from) = from else {
        return Vec::new();
    };
    for m in &mut marks {
        m.0 = m.0.max(from);
    }
    marks.retain(|(a, b)| a < b);
    marks.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in marks {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `u64` offsets into a held event (always within it).
fn idx(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

/// `data` (starting at `start` of its stream) with every run replaced: the mask where a
/// run starts, nothing for the rest of it (a run that began in an earlier event has its
/// mask there). Untouched data is returned as it came.
fn apply(data: Vec<u8>, start: u64, runs: &[(u64, u64)], masked: &mut u64) -> Vec<u8> {
    let end = start + data.len() as u64;
    let mut overlapping = runs
        .iter()
        .filter(|(a, b)| *a < end && *b > start)
        .peekable();
    if overlapping.peek().is_none() {
        return data;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut at = start;
    for &(a, b) in overlapping {
        let from = a.max(start);
        if from > at {
            out.extend_from_slice(&data[idx(at - start)..idx(from - start)]);
        }
        if a >= start {
            out.extend_from_slice(MASK.as_bytes());
            *masked += 1;
        }
        at = b.min(end);
    }
    if at < end {
        out.extend_from_slice(&data[idx(at - start)..]);
    }
    out
}

/// The spans of bytes that drew each occurrence of `secret` in a line of cells (an
/// empty cell reads as a space). Linear in the line (`str::match_indices`).
fn spans(cells: &[Option<Cell>], secret: &str) -> Vec<(u64, u64)> {
    let mut text = String::with_capacity(cells.len());
    // Where each cell's character starts in `text`.
    let mut starts = Vec::with_capacity(cells.len());
    for c in cells {
        starts.push(text.len());
        text.push(c.map_or(' ', |c| c.ch));
    }
    let mut out = Vec::new();
    if secret.is_empty() {
        return out;
    }
    for (at, m) in text.match_indices(secret) {
        let (Ok(from), Ok(to)) = (
            starts.binary_search(&at),
            starts.binary_search(&(at + m.len())).or_else(|i| {
                if i == starts.len() {
                    Ok(i)
                } else {
                    Err(i)
                }
            }),
        ) else {
            continue;
        };
        let drawn = cells[from..to].iter().flatten();
        let first = drawn.clone().map(|c| c.first).min();
        let last = drawn.map(|c| c.last).max();
        if let (Some(a), Some(z)) = (first, last) {
            out.push((a, z + 1));
        }
    }
    out
}

/// The longest `k` below `pat.len()` such that `text` ends with `pat[..k]`: how much of
/// `pat` has begun at the end of `text`. Linear (Knuth-Morris-Pratt), whatever the input.
fn overlap<T: PartialEq>(text: &[T], pat: &[T]) -> usize {
    let m = pat.len();
    if m < 2 || text.is_empty() {
        return 0;
    }
    let mut fail = vec![0usize; m];
    let mut k = 0;
    for i in 1..m {
        while k > 0 && pat[i] != pat[k] {
            k = fail[k - 1];
        }
        if pat[i] == pat[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut j = 0;
    for t in &text[text.len().saturating_sub(m - 1)..] {
        while j > 0 && (j == m || pat[j] != *t) {
            j = fail[j - 1];
        }
        if pat[j] == *t {
            j += 1;
        }
    }
    j.min(m - 1)
}

fn text(cells: &[Cell]) -> String {
    cells.iter().map(|c| c.ch).collect()
}

fn row_text(cells: &[Option<Cell>]) -> String {
    cells.iter().map(|c| c.map_or(' ', |c| c.ch)).collect()
}

/// One character on a line, and the bytes that drew it: the first byte of the first
/// write, the last byte of the latest (everything between is masked with it).
#[derive(Debug, Clone, Copy)]
struct Cell {
    ch: char,
    first: u64,
    last: u64,
}

/// What a byte stream means to the models.
enum Act {
    Print(char, u64, u64),
    Control(u8),
    /// A CSI sequence: its numeric parameters, whether private (`?`...), its final byte.
    Csi(Vec<u16>, bool, u8),
}

/// Bytes to [`Act`]s: UTF-8, C0 controls, CSI sequences; OSC and other escapes skipped.
#[derive(Default)]
struct Decoder {
    state: DecState,
    params: Vec<u16>,
    private: bool,
    utf8: Vec<u8>,
    utf8_start: u64,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum DecState {
    #[default]
    Ground,
    Escape,
    Csi,
    /// SS3 (`ESC O x`: keypad and function keys): one more byte.
    Ss3,
    /// OSC, DCS and the like, up to BEL or ST.
    String,
    StringEscape,
}

impl Decoder {
    fn feed(&mut self, b: u8, pos: u64) -> Option<Act> {
        match self.state {
            DecState::Ground => {}
            DecState::Escape => {
                self.state = match b {
                    b'[' => {
                        self.params.clear();
                        self.private = false;
                        DecState::Csi
                    }
                    b']' | b'P' | b'_' | b'^' | b'X' => DecState::String,
                    b'O' => DecState::Ss3,
                    _ => DecState::Ground,
                };
                return None;
            }
            DecState::Csi => {
                match b {
                    b'0'..=b'9' => {
                        if self.params.is_empty() {
                            self.params.push(0);
                        }
                        if let Some(p) = self.params.last_mut() {
                            *p = p.saturating_mul(10).saturating_add(u16::from(b - b'0'));
                        }
                    }
                    b';' => {
                        if self.params.is_empty() {
                            self.params.push(0);
                        }
                        if self.params.len() < 16 {
                            self.params.push(0);
                        }
                    }
                    b'?' | b'>' | b'<' | b'=' => self.private = true,
                    0x40..=0x7e => {
                        self.state = DecState::Ground;
                        return Some(Act::Csi(std::mem::take(&mut self.params), self.private, b));
                    }
                    0x18 | 0x1a => self.state = DecState::Ground,
                    _ => {}
                }
                return None;
            }
            DecState::Ss3 => {
                self.state = DecState::Ground;
                return None;
            }
            DecState::String => {
                match b {
                    0x07 | 0x18 | 0x1a => self.state = DecState::Ground,
                    0x1b => self.state = DecState::StringEscape,
                    _ => {}
                }
                return None;
            }
            DecState::StringEscape => {
                self.state = if b == b'\\' {
                    DecState::Ground
                } else {
                    DecState::String
                };
                return None;
            }
        }
        if b >= 0x80 {
            if b >= 0xc0 || self.utf8.is_empty() {
                self.utf8.clear();
                self.utf8_start = pos;
            }
            self.utf8.push(b);
            let need = match self.utf8[0] {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            if self.utf8.len() >= need {
                let ch = std::str::from_utf8(&self.utf8)
                    .ok()
                    .and_then(|s| s.chars().next())
                    .unwrap_or('\u{fffd}');
                self.utf8.clear();
                return Some(Act::Print(ch, self.utf8_start, pos));
            }
            return None;
        }
        self.utf8.clear();
        match b {
            0x1b => {
                self.state = DecState::Escape;
                None
            }
            0x00..=0x1f | 0x7f => Some(Act::Control(b)),
            _ => Some(Act::Print(char::from(b), pos, pos)),
        }
    }
}

/// The line being typed, from the keys, as a terminal in canonical mode edits it
/// (Backspace, Ctrl-U, Ctrl-W; Enter and Ctrl-C end it; escape sequences ignored).
#[derive(Default)]
struct Typed {
    dec: Decoder,
    cells: Vec<Cell>,
    /// Lines ended since the last release.
    done: Vec<Vec<Cell>>,
}

impl Typed {
    /// How many lines ended.
    fn feed(&mut self, data: &[u8], start: u64) -> usize {
        let mut ended = 0;
        for (i, &b) in data.iter().enumerate() {
            match self.dec.feed(b, start + i as u64) {
                Some(Act::Print(ch, a, z)) if self.cells.len() < LINE_CELLS => {
                    self.cells.push(Cell {
                        ch,
                        first: a,
                        last: z,
                    });
                }
                Some(Act::Control(b'\r' | b'\n' | 0x03)) => {
                    self.end_line();
                    ended += 1;
                }
                Some(Act::Control(0x7f | 0x08)) => {
                    self.cells.pop();
                }
                Some(Act::Control(0x15)) => self.cells.clear(),
                Some(Act::Control(0x17)) => {
                    while self.cells.last().is_some_and(|c| c.ch == ' ') {
                        self.cells.pop();
                    }
                    while self.cells.last().is_some_and(|c| c.ch != ' ') {
                        self.cells.pop();
                    }
                }
                _ => {}
            }
        }
        ended
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.cells);
        if !line.is_empty() {
            if self.done.len() >= DONE_LINES {
                self.done.remove(0);
            }
            self.done.push(line);
        }
    }
}

/// The line the terminal shows, from the output: a row of cells per screen row, wrapped
/// at the width (with the deferred wrap of VT100 terminals), overwritten in place; CR,
/// BS, TAB, cursor movement within the line, erasing and inserting. A line feed starts a
/// new line.
struct Screen {
    dec: Decoder,
    cells: Vec<Option<Cell>>,
    /// Lines ended by a line feed since the last release (the last few).
    done: Vec<Vec<Option<Cell>>>,
    width: usize,
    row: usize,
    col: usize,
    /// The last column was written: the next character goes to the next row.
    pending: bool,
}

impl Screen {
    fn new(width: usize) -> Self {
        Self {
            dec: Decoder::default(),
            cells: Vec::new(),
            done: Vec::new(),
            width: width.max(1),
            row: 0,
            col: 0,
            pending: false,
        }
    }

    fn feed(&mut self, data: &[u8], start: u64) {
        for (i, &b) in data.iter().enumerate() {
            match self.dec.feed(b, start + i as u64) {
                Some(Act::Print(ch, a, z)) => self.print(ch, a, z),
                Some(Act::Control(c)) => self.control(c),
                Some(Act::Csi(params, private, fin)) if !private => self.csi(&params, fin),
                _ => {}
            }
        }
    }

    fn at(&self) -> usize {
        self.row * self.width + self.col
    }

    fn print(&mut self, ch: char, a: u64, z: u64) {
        if self.pending {
            self.pending = false;
            self.row = (self.row + 1).min(LINE_CELLS);
            self.col = 0;
        }
        let i = self.at();
        if i < LINE_CELLS {
            if self.cells.len() <= i {
                self.cells.resize(i + 1, None);
            }
            let first = self.cells[i].map_or(a, |c| c.first.min(a));
            self.cells[i] = Some(Cell { ch, first, last: z });
        }
        if self.col + 1 >= self.width {
            self.pending = true;
        } else {
            self.col += 1;
        }
    }

    fn control(&mut self, c: u8) {
        match c {
            b'\r' => {
                self.col = 0;
                self.pending = false;
            }
            b'\n' => {
                if self.done.len() >= DONE_LINES {
                    self.done.remove(0);
                }
                self.done.push(std::mem::take(&mut self.cells));
                self.row = 0;
                self.pending = false;
            }
            0x08 => {
                if self.pending {
                    self.pending = false;
                } else {
                    self.col = self.col.saturating_sub(1);
                }
            }
            b'\t' => {
                self.col = ((self.col / 8 + 1) * 8).min(self.width - 1);
                self.pending = false;
            }
            _ => {}
        }
    }

    fn csi(&mut self, params: &[u16], fin: u8) {
        let n = usize::from(params.first().copied().unwrap_or(0).max(1));
        let p0 = params.first().copied().unwrap_or(0);
        let row_start = self.row * self.width;
        let row_end = row_start + self.width;
        self.pending = false;
        match fin {
            b'C' => self.col = (self.col + n).min(self.width - 1),
            b'D' => self.col = self.col.saturating_sub(n),
            b'G' => self.col = (n - 1).min(self.width - 1),
            b'A' => self.row = self.row.saturating_sub(n),
            b'B' => self.row = (self.row + n).min(LINE_CELLS),
            b'H' | b'f' => {
                let c = usize::from(params.get(1).copied().unwrap_or(1).max(1));
                self.col = (c - 1).min(self.width - 1);
            }
            b'K' => {
                let (from, to) = match p0 {
                    0 => (self.at(), row_end),
                    1 => (row_start, self.at() + 1),
                    _ => (row_start, row_end),
                };
                self.clear(from, to);
            }
            b'X' => {
                let at = self.at();
                self.clear(at, (at + n).min(row_end));
            }
            b'P' => {
                let at = self.at();
                for _ in 0..n.min(self.width) {
                    if at < self.cells.len() {
                        let end = row_end.min(self.cells.len());
                        if at < end {
                            self.cells.remove(at);
                            self.cells.insert(end - 1, None);
                        }
                    }
                }
            }
            b'@' => {
                let at = self.at();
                for _ in 0..n.min(self.width) {
                    if at < self.cells.len() {
                        let end = row_end.min(self.cells.len());
                        if at < end {
                            self.cells.remove(end - 1);
                            self.cells.insert(at, None);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn clear(&mut self, from: usize, to: usize) {
        let to = to.min(self.cells.len());
        for c in self.cells.iter_mut().take(to).skip(from) {
            *c = None;
        }
    }

    /// Where the cursor is, the end of what the line shows so far.
    fn end(&self) -> usize {
        if self.pending {
            self.at() + 1
        } else {
            self.at()
        }
    }

    /// When the line ends (at the cursor) with the beginning of one of `secrets`: the
    /// span of bytes that drew that beginning, and the rest of the secret.
    fn unfinished(&self, secrets: &[String]) -> Option<((u64, u64), Vec<u8>)> {
        let end = self.end().min(self.cells.len());
        let shown: Vec<Option<char>> = self.cells[..end].iter().map(|c| c.map(|c| c.ch)).collect();
        let mut best: Option<((u64, u64), Vec<u8>, usize)> = None;
        for s in secrets {
            let chars: Vec<Option<char>> = s.chars().map(Some).collect();
            let k = overlap(&shown, &chars);
            if k == 0 || best.as_ref().is_some_and(|b| b.2 >= k) {
                continue;
            }
            let drawn = self.cells[end - k..end].iter().flatten();
            let first = drawn.clone().map(|c| c.first).min();
            let last = drawn.map(|c| c.last).max();
            if let (Some(a), Some(z)) = (first, last) {
                let rest: String = s.chars().skip(k).collect();
                best = Some(((a, z + 1), rest.into_bytes(), k));
            }
        }
        best.map(|(span, rest, _)| (span, rest))
    }
}

/// The learned secrets and their automaton.
#[derive(Default)]
struct Secrets {
    list: VecDeque<Vec<u8>>,
    bytes: usize,
    ac: Option<AhoCorasick>,
}

enum Added {
    New { forgot: u64 },
    Known,
}

/// Total bytes of learned secrets kept.
const MAX_SECRETS_TOTAL: usize = 64 * 1024;

fn build(patterns: &[&[u8]]) -> Option<AhoCorasick> {
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(patterns)
        .ok()
}

impl Secrets {
    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn automaton(&self) -> Option<&AhoCorasick> {
        self.ac.as_ref()
    }

    fn add(&mut self, s: &[u8]) -> Added {
        if self.list.iter().any(|k| k == s) {
            return Added::Known;
        }
        let mut forgot = 0;
        while !self.list.is_empty()
            && (self.list.len() >= MAX_SECRETS || self.bytes + s.len() > MAX_SECRETS_TOTAL)
        {
            if let Some(old) = self.list.pop_front() {
                self.bytes -= old.len();
                forgot += 1;
            }
        }
        self.bytes += s.len();
        self.list.push_back(s.to_vec());
        let patterns: Vec<&[u8]> = self.list.iter().map(Vec::as_slice).collect();
        self.ac = build(&patterns);
        Added::New { forgot }
    }

    /// How many bytes at the end of `data` begin a secret (and are not a whole one).
    fn carry(&self, data: &[u8]) -> usize {
        self.list
            .iter()
            .map(|s| overlap(data, s))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Out = Vec<Item<&'static str>>;

    fn scrubber() -> Scrubber<&'static str> {
        Scrubber::new(Arc::new(Redactor::default()), 80)
    }

    /// What came out, as the two streams' bytes (in order) and the other events.
    fn streams(out: &Out) -> (String, String, Vec<&'static str>) {
        let (mut i, mut o, mut others) = (Vec::new(), Vec::new(), Vec::new());
        for item in out {
            match item {
                Item::Input { data, .. } => i.extend_from_slice(data),
                Item::Output { data, .. } => o.extend_from_slice(data),
                Item::Hidden { item, .. } | Item::Other(item) => others.push(*item),
            }
        }
        (
            String::from_utf8_lossy(&i).into_owned(),
            String::from_utf8_lossy(&o).into_owned(),
            others,
        )
    }

    fn input(s: &mut Scrubber<&'static str>, at: u64, data: &str, out: &mut Out) {
        s.push(
            Item::Input {
                at,
                data: data.as_bytes().to_vec(),
            },
            at,
            out,
        );
    }

    fn output(s: &mut Scrubber<&'static str>, at: u64, data: &str, out: &mut Out) {
        s.push(
            Item::Output {
                at,
                data: data.as_bytes().to_vec(),
            },
            at,
            out,
        );
    }

    /// Types `line` one key at a time, each echoed as a terminal in canonical mode does.
    fn type_echoed(s: &mut Scrubber<&'static str>, t: &mut u64, line: &str, out: &mut Out) {
        for c in line.chars() {
            *t += 1;
            let key = c.to_string();
            input(s, *t, &key, out);
            let echo = match c {
                '\r' => "\r\n".to_owned(),
                '\x7f' => "\x08 \x08".to_owned(),
                c => c.to_string(),
            };
            output(s, *t, &echo, out);
        }
    }

    fn times(out: &Out) -> Vec<u64> {
        out.iter()
            .filter_map(|i| match i {
                Item::Input { at, .. } | Item::Output { at, .. } => Some(*at),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_line_typed_key_by_key_is_masked_in_keys_and_echo() {
        let mut s = scrubber();
        let mut out = Vec::new();
        output(&mut s, 0, "$ ", &mut out);
        let mut t = 0;
        type_echoed(&mut s, &mut t, "mysql -uroot -pS3CR3T1 db\r", &mut out);
        output(&mut s, 100, "ERROR 2002\r\n$ ", &mut out);
        let (i, o, _) = streams(&out);
        assert_eq!(i, "mysql -uroot -p[redacted] db\r");
        assert_eq!(o, "$ mysql -uroot -p[redacted] db\r\nERROR 2002\r\n$ ");
        // Times never go back; every key's event is kept unless all of it was secret.
        assert!(times(&out).windows(2).all(|w| w[0] <= w[1]));
        // Learned: a later mention is masked too.
        output(&mut s, 200, "pw was S3CR3T1!\r\n", &mut out);
        let (_, o, _) = streams(&out);
        assert!(o.ends_with("pw was [redacted]!\r\n"), "{o}");
        assert_eq!(s.stats().learned, 1);
        assert!(s.deadline().is_none());
    }

    #[test]
    fn a_pasted_line_and_its_later_echo_are_masked() {
        let mut s = scrubber();
        let mut out = Vec::new();
        output(&mut s, 0, "$ ", &mut out);
        input(
            &mut s,
            1,
            "curl -u u:S3CR3T2 http://127.0.0.1:1/\r",
            &mut out,
        );
        // The line ended with the keys; its echo is awaited.
        assert_eq!(s.deadline(), Some(1 + ECHO_MS));
        assert_eq!(out.len(), 1);
        // The echo comes after, in two pieces split inside the secret.
        output(&mut s, 2, "curl -u u:S3CR", &mut out);
        output(
            &mut s,
            3,
            "3T2 http://127.0.0.1:1/\r\ncurl: (7) Failed\r\n$ ",
            &mut out,
        );
        let (i, o, _) = streams(&out);
        assert_eq!(i, "curl -u u:[redacted] http://127.0.0.1:1/\r");
        assert_eq!(
            o,
            "$ curl -u u:[redacted] http://127.0.0.1:1/\r\ncurl: (7) Failed\r\n$ "
        );
        for secret in ["S3CR3T2", "S3CR", "3T2"] {
            assert!(!o.contains(secret) && !i.contains(secret));
        }
    }

    #[test]
    fn backspace_edits_are_masked_whole() {
        let mut s = scrubber();
        let mut out = Vec::new();
        output(&mut s, 0, "$ ", &mut out);
        let mut t = 0;
        // A typo inside the secret, erased and retyped.
        type_echoed(&mut s, &mut t, "export API_TOKEN=S3CX\x7fR3T3\r", &mut out);
        let (i, o, _) = streams(&out);
        assert_eq!(i, "export API_TOKEN=[redacted]\r");
        assert_eq!(o, "$ export API_TOKEN=[redacted]\r\n");
        // Ctrl-U and Ctrl-W edit the line as a terminal does.
        let mut s = scrubber();
        let mut out = Vec::new();
        input(
            &mut s,
            1,
            "junk\x15ls \x17echo DB_PASSWORD=abc12345\r",
            &mut out,
        );
        // No echo comes (echo on, but nothing shown): released when the wait is over.
        assert!(out.is_empty());
        s.tick(1 + ECHO_MS, &mut out);
        let (i, _, _) = streams(&out);
        assert!(!i.contains("abc12345"), "{i}");
    }

    #[test]
    fn readline_drawing_the_line_is_read_from_the_screen() {
        // bash: the keys are recorded as echo-off markers (no bytes); readline draws the
        // line, wraps it at the width with " \r", and redraws after a cursor movement.
        let mut s = Scrubber::new(Arc::new(Redactor::default()), 20);
        let mut out = Vec::new();
        output(&mut s, 0, "\x1b[?2004h$ ", &mut out);
        let shown = [
            "e",
            "c",
            "h",
            "o",
            " ",
            "m",
            "y",
            "s",
            "q",
            "l",
            " ",
            "-",
            "p",
            "S",
            "3",
            "C",
            "R",
            "3 \r",
            "T",
            "1",
            "\x08",
            "\x08",
            "X",
            "T1\x08\x08",
            "\x1b[C",
            "\x1b[C",
        ];
        for (n, piece) in shown.iter().enumerate() {
            let at = n as u64 + 1;
            s.push(
                Item::Hidden {
                    lines: 0,
                    item: "key",
                },
                at,
                &mut out,
            );
            output(&mut s, at, piece, &mut out);
        }
        s.push(
            Item::Hidden {
                lines: 1,
                item: "enter",
            },
            50,
            &mut out,
        );
        output(
            &mut s,
            51,
            "\r\n\x1b[?2004l\rmysql -pS3CR3XT1\r\n$ ",
            &mut out,
        );
        let (_, o, others) = streams(&out);
        assert_eq!(others.len(), shown.len() + 1);
        // The line shown was "echo mysql -pS3CR3XT1": the secret as the rules read it
        // is "S3CR3XT1", masked where it was drawn (across the wrap) and where echoed.
        assert!(!o.contains("S3CR"), "{o:?}");
        assert!(!o.contains("XT1"), "{o:?}");
        assert!(o.contains("[redacted]"), "{o:?}");
    }

    #[test]
    fn the_last_keys_echo_after_enter_is_masked_too() {
        for late in [false, true] {
            let mut s = scrubber();
            let mut out = Vec::new();
            output(&mut s, 0, "$ ", &mut out);
            // Keys typed faster than the echo: the echo of "T1" and Enter comes after.
            input(&mut s, 1, "mysql -pS3CR3", &mut out);
            output(&mut s, 2, "mysql -pS3CR3", &mut out);
            input(&mut s, 3, "T1\r", &mut out);
            if late {
                // Later than the wait: the line is read without it, and the rest of
                // the secret is expected.
                s.tick(3 + ECHO_MS, &mut out);
                assert!(s.deadline().is_none());
            }
            output(&mut s, 400, "T", &mut out);
            output(&mut s, 401, "1\r\n", &mut out);
            let (i, o, _) = streams(&out);
            assert!(!i.contains("S3CR") && !i.contains("T1"), "{i}");
            assert!(!o.contains("S3CR") && !o.contains("T1"), "{o}");
            assert!(o.starts_with("$ mysql -p[redacted]"), "{o}");
        }
    }

    #[test]
    fn a_learned_secret_split_across_output_events_is_masked() {
        let mut s = scrubber();
        let mut out = Vec::new();
        s.learn(&["hunter2-x"]);
        output(&mut s, 1, "the password is hun", &mut out);
        // The end that could begin the secret is kept back...
        let (_, o, _) = streams(&out);
        assert_eq!(o, "the password is ");
        assert_eq!(s.deadline(), Some(1 + TAIL_MS));
        // ...until the rest comes.
        output(&mut s, 2, "ter2-x, said so\r\n", &mut out);
        let (_, o, _) = streams(&out);
        assert_eq!(o, "the password is [redacted], said so\r\n");
        // An end that was not a secret after all goes out when its time is up, intact.
        output(&mut s, 3, "hunt", &mut out);
        s.push(Item::Other("resize"), 4, &mut out);
        let before = out.len();
        s.tick(3 + TAIL_MS - 1, &mut out);
        assert_eq!(out.len(), before);
        s.tick(3 + TAIL_MS, &mut out);
        let (_, o, others) = streams(&out);
        assert!(o.ends_with("said so\r\nhunt"), "{o}");
        assert_eq!(others, ["resize"]);
        // Process records and other text.
        assert_eq!(
            s.mask_text("--opt=hunter2-x"),
            Some(("--opt=[redacted]".to_owned(), 1))
        );
        assert_eq!(s.mask_text("nothing"), None);
    }

    #[test]
    fn without_secrets_events_pass_byte_identical_and_in_order() {
        let mut s = scrubber();
        let mut out = Vec::new();
        let mut fed: Vec<(bool, u64, Vec<u8>)> = Vec::new();
        let mut t = 0;
        for (n, line) in ["ls -la\r", "echo hi; cat /etc/hostname\r", "vi x\r"]
            .iter()
            .enumerate()
        {
            output(&mut s, t, "$ ", &mut out);
            fed.push((false, t, b"$ ".to_vec()));
            for c in line.chars() {
                t += 1;
                input(&mut s, t, &c.to_string(), &mut out);
                fed.push((true, t, c.to_string().into_bytes()));
                let echo = if c == '\r' {
                    "\r\n".into()
                } else {
                    c.to_string()
                };
                output(&mut s, t, &echo, &mut out);
                fed.push((false, t, echo.into_bytes()));
            }
            let big = format!("output {n} \x1b[1mbold\x1b[0m é\r\n").repeat(100);
            output(&mut s, t, &big, &mut out);
            fed.push((false, t, big.into_bytes()));
        }
        s.finish(&mut out);
        let got: Vec<(bool, u64, Vec<u8>)> = out
            .into_iter()
            .map(|i| match i {
                Item::Input { at, data } => (true, at, data),
                Item::Output { at, data } => (false, at, data),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(got, fed);
        assert_eq!(s.stats(), Stats::default());
    }

    #[test]
    fn a_full_screen_program_without_enter_is_released_by_idle_and_bound_with_nothing_lost() {
        let mut s = scrubber();
        let mut out = Vec::new();
        // vi: keys without Enter, screens drawn in answer.
        input(&mut s, 10, "i", &mut out);
        output(&mut s, 11, "\x1b[24;1H-- INSERT --", &mut out);
        input(&mut s, 12, "hello", &mut out);
        output(&mut s, 13, "hello", &mut out);
        assert!(out.is_empty());
        assert_eq!(s.deadline(), Some(12 + IDLE_MS));
        s.tick(12 + IDLE_MS, &mut out);
        let (i, o, _) = streams(&out);
        assert_eq!(i, "ihello");
        assert_eq!(o, "\x1b[24;1H-- INSERT --hello");
        assert_eq!(s.stats().early_releases, 1);
        // Keys that never pause: the age bound (checked at every event, so a steady
        // stream of keys cannot keep them held).
        let released = out.len();
        let mut t = 20_000;
        while out.len() == released {
            t += 100;
            assert!(t <= 20_100 + MAX_AGE_MS, "still held at {t}");
            input(&mut s, t, "j", &mut out);
        }
        assert_eq!(t, 20_100 + MAX_AGE_MS);
        s.tick(t + IDLE_MS, &mut out);
        assert!(s.deadline().is_none());
        // A flood of output while a key is held: the byte bound.
        input(&mut s, 40_000, ":", &mut out);
        let chunk = "x".repeat(16 * 1024);
        for n in 0..5 {
            output(&mut s, 40_001 + n, &chunk, &mut out);
        }
        assert!(s.held_bytes <= HOLD_BYTES);
        s.finish(&mut out);
        let (i, o, _) = streams(&out);
        let typed = i.matches('j').count();
        assert_eq!(i.len(), "ihello".len() + typed + 1);
        assert_eq!(o.matches('x').count(), 5 * 16 * 1024);
        assert!(times(&out).windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_secret_typed_across_an_early_release_is_masked_in_both_parts() {
        let mut s = scrubber();
        let mut out = Vec::new();
        input(&mut s, 1, "mysql -pS3C", &mut out);
        output(&mut s, 1, "mysql -pS3C", &mut out);
        // A pause: released with what the rules find so far.
        s.tick(1 + IDLE_MS, &mut out);
        input(&mut s, 5000, "R3T1\r", &mut out);
        output(&mut s, 5000, "R3T1\r\n", &mut out);
        let (i, o, _) = streams(&out);
        assert_eq!(i, "mysql -p[redacted][redacted]\r");
        assert!(!o.contains("S3C") && !o.contains("R3T1"), "{o}");
    }

    #[test]
    fn secrets_from_the_audit_and_the_bounds_of_what_is_kept() {
        let mut s = scrubber();
        let mut out = Vec::new();
        s.learn(&["abc", "x".repeat(MAX_SECRET_BYTES + 1).as_str()]);
        assert_eq!(s.stats().learned, 0);
        for n in 0..MAX_SECRETS + 3 {
            s.learn(&[format!("secret-{n:04}")]);
        }
        assert_eq!(s.stats().learned, (MAX_SECRETS + 3) as u64);
        assert_eq!(s.stats().forgotten, 3);
        output(&mut s, 1, "secret-0000 secret-0066\r\n", &mut out);
        let (_, o, _) = streams(&out);
        assert_eq!(o, "secret-0000 [redacted]\r\n");
        // Input outside a line (a key with no secret) is held, then its line read.
        input(&mut s, 2, "echo secret-0066\r", &mut out);
        s.tick(2 + ECHO_MS, &mut out);
        let (i, _, _) = streams(&out);
        assert_eq!(i, "echo [redacted]\r");
    }

    #[test]
    fn overlap_finds_the_begun_part_of_a_pattern() {
        assert_eq!(overlap(b"the password is hun", b"hunter2"), 3);
        assert_eq!(overlap(b"hunter2", b"hunter2"), 0);
        assert_eq!(overlap(b"xhunter", b"hunter2"), 6);
        assert_eq!(overlap(b"abab", b"ababc"), 4);
        assert_eq!(overlap(b"aaaa", b"aab"), 2);
        assert_eq!(overlap(b"", b"ab"), 0);
        assert_eq!(overlap(b"a", b"a"), 0);
        // Linear on the worst case for a naive search.
        let text = vec![b'a'; 1 << 20];
        let mut pat = vec![b'a'; 4095];
        pat.push(b'b');
        assert_eq!(overlap(&text, &pat), 4095);
    }

    #[test]
    fn hostile_bytes_never_panic_and_stay_bounded() {
        let mut s = Scrubber::new(Arc::new(Redactor::default()), 1);
        let mut out = Vec::new();
        s.learn(&["S3CR3T-Z"]);
        let mut seed: u32 = 7;
        for n in 0..2000u64 {
            let len = (seed % 300) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let b = seed.to_le_bytes()[2];
                    [b, 0x1b, b'[', b'\r', b'\x08', b'S', b'3', 0xe2][(seed % 8) as usize]
                })
                .collect();
            let item = match n % 3 {
                0 => Item::Input { at: n, data },
                1 => Item::Output { at: n, data },
                _ => Item::Hidden {
                    lines: (seed % 2) as usize,
                    item: "h",
                },
            };
            s.push(item, n, &mut out);
            if n % 97 == 0 {
                s.resize(u16::try_from(seed % 300).unwrap());
                s.tick(n + IDLE_MS, &mut out);
            }
            assert!(s.held_bytes <= HOLD_BYTES + 300);
        }
        s.finish(&mut out);
        assert!(s.deadline().is_none());
    }
}
