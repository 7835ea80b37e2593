//! The browser player page (pure): one self-contained HTML file that plays a recording
//! with the vendored asciinema-player (`assets/asciinema-player/`, inlined, so the page
//! needs no network when viewed), with the timeline (the player's control bar, its
//! markers, and a list beside it) and the clean transcript.
//!
//! **The recording is attacker-controlled** (whatever the session printed, typed or
//! ran). Nothing of it reaches the page as markup:
//!
//! * the asciicast and the markers go into one `<script type="application/json">` block
//!   (data, never run) as JSON whose `<`, `>` and `&` are written `\u003c`, `\u003e`,
//!   `\u0026` (and U+2028/U+2029 as escapes too), so no `</script>` or `<!--` can end or
//!   bend the block; the page's own script reads it with `JSON.parse`;
//! * the transcript, the timeline and the facts in the header are HTML-escaped text;
//! * a Content-Security-Policy allows only the page's two scripts (by their SHA-256),
//!   the player's WebAssembly, inline styles and `data:` images; no network at all. It is
//!   the second wall: the escaping is the first, and `page::tests` checks it without it.
//!
//! **Bounds** (the page must stay openable, and memory stays bounded whatever the
//! recording's size): the embedded asciicast at most [`MAX_CAST_BYTES`] (escaped), the
//! transcript at most [`MAX_TRANSCRIPT_BYTES`] (escaped), the timeline at most
//! [`MAX_TIMELINE_ENTRIES`] entries. Past the asciicast's bound the page ends there and
//! says so at the top (the transcript and timeline end at the same point); past the
//! others, they stop and say so. `session-agent replay` / `transcript` / `audit` read
//! a recording whole.
//!
//! **Time.** Pauses longer than the idle limit are shortened for the player (as
//! `replay --idle-limit` does), here, before embedding: the player's clock, its markers
//! and the timeline's links all use the same shortened time, while the timeline shows
//! each entry's real offset into the session (and its wall-clock time on hover).

use crate::recorder::{Event, EventKind, Recorder, StartInfo, Transcript};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The vendored player (see `assets/asciinema-player/README.md`).
const PLAYER_JS: &str = include_str!("../../assets/asciinema-player/asciinema-player.min.js");
/// The player's stylesheet.
const PLAYER_CSS: &str = include_str!("../../assets/asciinema-player/asciinema-player.css");

/// Most bytes of asciicast (as embedded, escaped) a page holds: 32 MiB.
pub const MAX_CAST_BYTES: usize = 32 * 1024 * 1024;
/// Most bytes of transcript (as embedded, HTML-escaped) a page holds: 8 MiB.
pub const MAX_TRANSCRIPT_BYTES: usize = 8 * 1024 * 1024;
/// Most entries in the timeline (typed commands, programs run, notes): 2000.
pub const MAX_TIMELINE_ENTRIES: usize = 2000;

/// A page's bounds (the `MAX_*` constants by default; smaller in tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`MAX_CAST_BYTES`].
    pub cast_bytes: usize,
    /// See [`MAX_TRANSCRIPT_BYTES`].
    pub transcript_bytes: usize,
    /// See [`MAX_TIMELINE_ENTRIES`].
    pub timeline_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cast_bytes: MAX_CAST_BYTES,
            transcript_bytes: MAX_TRANSCRIPT_BYTES,
            timeline_entries: MAX_TIMELINE_ENTRIES,
        }
    }
}

/// What a timeline entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A command line typed at a prompt (as the screen showed it; secrets masked).
    Typed,
    /// A program the session executed (the kernel's process events).
    Ran,
    /// A note of the recording: input withheld (echo off), a port forwarding event.
    Note,
    /// Part of the session was not recorded.
    Gap,
    /// The session ended.
    End,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Typed => "typed",
            Kind::Ran => "ran",
            Kind::Note => "note",
            Kind::Gap => "gap",
            Kind::End => "end",
        }
    }
}

#[derive(Debug)]
struct Entry {
    player_ms: u64,
    real_ms: u64,
    kind: Kind,
    text: String,
    marker: bool,
}

/// Session time to player time, pauses longer than the limit shortened to it.
#[derive(Debug)]
struct IdleCap {
    limit_ms: u64,
    last_in: u64,
    last_out: u64,
}

impl IdleCap {
    fn map(&mut self, at_ms: u64) -> u64 {
        if at_ms >= self.last_in {
            let out = self
                .last_out
                .saturating_add((at_ms - self.last_in).min(self.limit_ms));
            self.last_in = at_ms;
            self.last_out = out;
            out
        } else {
            // Found after later events (a command is known at its Enter's echo): as far
            // before the last as it was, not before the start.
            self.last_out.saturating_sub(self.last_in - at_ms)
        }
    }
}

/// A page being built: asciicast events, timeline entries and transcript lines in,
/// the HTML out ([`Page::render`]).
#[derive(Debug)]
pub struct Page {
    limits: Limits,
    idle: IdleCap,
    cols: u64,
    rows: u64,
    /// The asciicast as a JSON array, escaped, without its closing bracket.
    cast: String,
    /// The player time of the last asciicast event.
    duration_ms: u64,
    /// Where the asciicast stopped (session ms) when it reached its bound.
    cast_full_at: Option<u64>,
    transcript: String,
    transcript_full: bool,
    timeline: Vec<Entry>,
    timeline_dropped: u64,
    title: String,
    facts: Vec<(&'static str, String)>,
    notes: Vec<String>,
    started_unix_ms: u64,
}

impl Page {
    /// A page for a recording whose asciicast v2 header is `header` (a JSON object:
    /// `width` and `height` are read, the rest kept for the player), titled `title`,
    /// pauses shortened to `idle_limit_ms`. `started_unix_ms` (0: unknown) dates the
    /// timeline.
    pub fn new(
        title: &str,
        header: &serde_json::Value,
        started_unix_ms: u64,
        idle_limit_ms: u64,
        limits: Limits,
    ) -> Self {
        let dim = |key: &str, default: u64| {
            header
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .filter(|v| (1..=10_000).contains(v))
                .unwrap_or(default)
        };
        let mut page = Self {
            limits,
            idle: IdleCap {
                limit_ms: idle_limit_ms,
                last_in: 0,
                last_out: 0,
            },
            cols: dim("width", 80),
            rows: dim("height", 24),
            cast: String::from("["),
            duration_ms: 0,
            cast_full_at: None,
            transcript: String::new(),
            transcript_full: false,
            timeline: Vec::new(),
            timeline_dropped: 0,
            title: title.to_owned(),
            facts: Vec::new(),
            notes: Vec::new(),
            started_unix_ms,
        };
        // The player needs version, width and height; keep the few other keys it reads.
        let mut h = serde_json::Map::new();
        h.insert("version".into(), 2.into());
        h.insert("width".into(), page.cols.into());
        h.insert("height".into(), page.rows.into());
        if let Some(t) = header.get("timestamp").and_then(serde_json::Value::as_u64) {
            h.insert("timestamp".into(), t.into());
        }
        page.cast
            .push_str(&script_json(&serde_json::Value::Object(h).to_string()));
        page
    }

    /// A fact shown in the page's header (session, user, target, …).
    pub fn fact(&mut self, name: &'static str, value: impl Into<String>) {
        self.facts.push((name, value.into()));
    }

    /// A note shown at the top of the page (e.g. why the recording ends early).
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Whether the asciicast reached its bound (nothing more is taken).
    pub fn is_full(&self) -> bool {
        self.cast_full_at.is_some()
    }

    /// An asciicast event (`code` "o" output or "r" resize `COLSxROWS`) at `at_ms` of
    /// the session. `false` when the asciicast has reached its bound: the event is not
    /// taken, and the page ends there.
    pub fn event(&mut self, at_ms: u64, code: &str, data: &str) -> bool {
        if self.cast_full_at.is_some() {
            return false;
        }
        let player_ms = self.idle.map(at_ms);
        let line = serde_json::json!([seconds(player_ms), code, data]).to_string();
        let piece = script_json(&line);
        // The closing bracket and the rest of the JSON block are not counted: small.
        if self.cast.len() + 1 + piece.len() > self.limits.cast_bytes {
            self.cast_full_at = Some(at_ms);
            return false;
        }
        self.cast.push(',');
        self.cast.push_str(&piece);
        self.duration_ms = player_ms;
        true
    }

    /// A timeline entry at `at_ms` of the session; `marker` also puts it on the
    /// player's control bar. Past the page's end, or beyond the timeline's bound (then
    /// counted, and the page says how many), it is not shown.
    pub fn entry(&mut self, at_ms: u64, kind: Kind, text: &str, marker: bool) {
        if self.cast_full_at.is_some() {
            return;
        }
        if self.timeline.len() >= self.limits.timeline_entries {
            self.timeline_dropped += 1;
            return;
        }
        let player_ms = self.idle.map(at_ms);
        self.timeline.push(Entry {
            player_ms,
            real_ms: at_ms,
            kind,
            text: text.to_owned(),
            marker,
        });
    }

    /// Transcript lines, in order.
    pub fn transcript_lines(&mut self, lines: impl IntoIterator<Item = String>) {
        for line in lines {
            if self.transcript_full {
                return;
            }
            let escaped = html_escape(&line);
            if self.transcript.len() + escaped.len() + 1 > self.limits.transcript_bytes {
                self.transcript_full = true;
                return;
            }
            self.transcript.push_str(&escaped);
            self.transcript.push('\n');
        }
    }

    /// The page.
    pub fn render(mut self) -> String {
        if let Some(at) = self.cast_full_at {
            self.notes.insert(
                0,
                format!(
                    "This page ends at {} into the session: the recording is larger than a page holds ({} MiB of asciicast). `session-agent replay` plays it all, `session-agent transcript` prints all of its text.",
                    offset(at),
                    self.limits.cast_bytes / (1024 * 1024)
                ),
            );
        }
        if self.transcript_full {
            self.notes.push(format!(
                "The transcript below is cut at {} MiB; `session-agent transcript` prints it all.",
                self.limits.transcript_bytes / (1024 * 1024)
            ));
        }
        if self.timeline_dropped > 0 {
            self.notes.push(format!(
                "The timeline shows the first {} entries; {} more are not shown (`session-agent audit` lists them all).",
                self.timeline.len(),
                self.timeline_dropped
            ));
        }
        // Entries found late (commands) are placed by time.
        self.timeline.sort_by_key(|e| e.player_ms);
        let markers: Vec<(f64, String)> = self
            .timeline
            .iter()
            .filter(|e| e.marker)
            .map(|e| {
                (
                    ms_f64(e.player_ms),
                    format!("{}: {}", e.kind.label(), e.text),
                )
            })
            .collect();
        self.cast.push(']');
        let data = format!(
            "{{\"cols\":{},\"rows\":{},\"duration\":{},\"markers\":{},\"cast\":{}}}",
            self.cols,
            self.rows,
            ms_f64(self.duration_ms),
            script_json(&serde_json::to_string(&markers).unwrap_or_else(|_| "[]".into())),
            self.cast
        );
        let mut html = String::with_capacity(
            PLAYER_JS.len() + PLAYER_CSS.len() + data.len() + self.transcript.len() + 16 * 1024,
        );
        let title = html_escape(&self.title);
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n\
             <meta name=\"referrer\" content=\"no-referrer\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title}</title>\n<style>\n{PLAYER_CSS}\n</style>\n<style>\n{PAGE_CSS}\n</style>\n</head>\n<body>\n\
             <header>\n<h1>{title}</h1>\n<dl class=\"facts\">",
            csp = content_security_policy(),
        );
        for (name, value) in &self.facts {
            let _ = write!(
                html,
                "<div><dt>{}</dt><dd>{}</dd></div>",
                html_escape(name),
                html_escape(value)
            );
        }
        html.push_str("</dl>\n");
        for note in &self.notes {
            let _ = writeln!(html, "<p class=\"note\">{}</p>", html_escape(note));
        }
        html.push_str(
            "</header>\n<main>\n<section class=\"player-pane\">\n<div id=\"player\"></div>\n\
             <noscript><p class=\"note\">The player needs JavaScript; the transcript is beside it.</p></noscript>\n\
             <p class=\"help\">Space: play/pause · ←/→: back/forward 5 s · [ and ]: previous/next marker · \
             , and .: step a frame (paused) · 0–9: jump to 0–90 % · f: full screen. \
             Add <code>#t=SECONDS</code> or <code>#t=end</code> to the address to start there.</p>\n\
             </section>\n<aside>\n<h2>Timeline</h2>\n",
        );
        if self.timeline.is_empty() {
            html.push_str(
                "<p class=\"empty\">No typed commands, programs or notes recorded.</p>\n",
            );
        }
        html.push_str("<ol id=\"timeline\">\n");
        for e in &self.timeline {
            let t = ms_f64(e.player_ms);
            let wall = if self.started_unix_ms == 0 {
                String::new()
            } else {
                format!(
                    " title=\"{}\"",
                    crate::timefmt::rfc3339(self.started_unix_ms.saturating_add(e.real_ms), true)
                )
            };
            let _ = writeln!(
                html,
                "<li class=\"k-{kind}\"><a href=\"#t={t}\" data-t=\"{t}\"{wall}>{off}</a> <span class=\"kind\">{kind}</span> <code>{text}</code></li>",
                kind = e.kind.label(),
                off = offset(e.real_ms),
                text = html_escape(&e.text),
            );
        }
        html.push_str("</ol>\n<h2>Transcript</h2>\n<pre id=\"transcript\">");
        html.push_str(&self.transcript);
        html.push_str("</pre>\n</aside>\n</main>\n");
        let _ = write!(
            html,
            "<script type=\"application/json\" id=\"recording\">{data}</script>\n\
             <script>{PLAYER_JS}</script>\n<script>{PAGE_JS}</script>\n</body>\n</html>\n"
        );
        html
    }
}

/// The Content-Security-Policy of every page: nothing from the network, the page's own
/// two scripts only (by hash), the player's WebAssembly, inline styles.
fn content_security_policy() -> String {
    format!(
        "default-src 'none'; script-src '{}' '{}' 'wasm-unsafe-eval'; style-src 'unsafe-inline'; img-src data:; font-src data:; base-uri 'none'; form-action 'none'",
        sha256_source(PLAYER_JS),
        sha256_source(PAGE_JS)
    )
}

fn sha256_source(script: &str) -> String {
    use base64::Engine;
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()))
    )
}

/// JSON text made safe inside a `<script>` element: `<`, `>`, `&`, U+2028 and U+2029 as
/// `\u` escapes. Valid for JSON as serde_json writes it, where these characters occur
/// only inside strings (where the escapes mean the same characters).
pub fn script_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Text made safe as HTML element content or a quoted attribute value.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // NUL is not allowed in HTML text; the parser would replace it anyway.
            '\0' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[allow(clippy::cast_precision_loss)] // milliseconds of a session: far below 2^53
fn ms_f64(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Exact seconds with millisecond precision, as the asciicast writes them.
fn seconds(ms: u64) -> serde_json::Value {
    serde_json::Number::from_f64(ms_f64(ms)).map_or(serde_json::Value::Null, Into::into)
}

/// `+M:SS` or `+H:MM:SS` into the session.
fn offset(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("+{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("+{}:{:02}", s / 60, s % 60)
    }
}

/// The page of a recorded event stream (the spool or an `events.jsonl`): the events go
/// through the recorder as the agent's deriver renders them (same transcript, same
/// asciicast, same typed commands, masked by the built-in rules), plus the programs run.
#[derive(Debug)]
pub struct EventPage {
    recorder: Recorder,
    page: Page,
    redactor: crate::audit::redact::Redactor,
    ended: bool,
    last_at_ms: u64,
}

impl EventPage {
    /// A page for the session `start` describes.
    pub fn new(start: &StartInfo, idle_limit_ms: u64, limits: Limits) -> Self {
        let mut recorder = Recorder::new(start.clone()).forget_taken_lines();
        // As `audit` finds them: sessions with a terminal only.
        if start.term.is_some() {
            recorder = recorder.with_commands();
        }
        let header = recorder
            .take_asciicast_lines()
            .first()
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or(serde_json::Value::Null);
        let mut page = Page::new(
            &format!("Session {}", start.session_id),
            &header,
            start.started_unix_ms,
            idle_limit_ms,
            limits,
        );
        page.fact("session", start.session_id.clone());
        page.fact("owner", start.owner.clone());
        if start.user != start.owner {
            page.fact("user", start.user.clone());
        }
        page.fact("run as", start.run_as_user.clone());
        page.fact("target", start.target.clone());
        page.fact(
            "started",
            crate::timefmt::rfc3339(start.started_unix_ms, true),
        );
        if let Some(reason) = &start.reason {
            page.fact("reason", reason.clone());
        }
        Self {
            recorder,
            page,
            redactor: crate::audit::redact::Redactor::default(),
            ended: false,
            last_at_ms: 0,
        }
    }

    /// The stream's next event. `false` when the page is full: stop reading (the page
    /// ends at this event, and says so).
    pub fn push(&mut self, event: &Event) -> bool {
        if self.ended || self.page.is_full() {
            return false;
        }
        self.last_at_ms = self.last_at_ms.max(event.at_ms);
        match &event.kind {
            EventKind::Start(_) => return true,
            EventKind::Process(p) if p.phase == crate::recorder::event::ProcessPhase::Exec => {
                let program = if p.argv.is_empty() {
                    p.executable.clone().unwrap_or_else(|| "?".into())
                } else {
                    p.argv.join(" ")
                };
                let user = p
                    .user
                    .as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default();
                let text = crate::recorder::audit_table::escape(&format!(
                    "pid {}{user}: {program}",
                    p.pid
                ));
                self.page.entry(event.at_ms, Kind::Ran, &text, false);
            }
            gap @ EventKind::Gap { .. } => {
                if let Some(note) = crate::recorder::event::gap_note(gap, 0) {
                    self.page.entry(event.at_ms, Kind::Gap, note.trim(), true);
                }
            }
            EventKind::End { how, .. } => {
                self.page.fact("ended", how.clone());
                self.page.entry(
                    event.at_ms,
                    Kind::End,
                    &format!("session ended: {how}"),
                    true,
                );
            }
            _ => {}
        }
        self.recorder.commit(event);
        if matches!(event.kind, EventKind::End { .. }) {
            self.ended = true;
        }
        let full = !self.drain(event.at_ms);
        if full {
            // Commit what the screen holds up to here to the transcript.
            let _ = self
                .recorder
                .end(event.at_ms, None, "the exported page ends here");
            let _ = self.recorder.take_asciicast_lines();
            self.page.transcript_lines(self.recorder.take_lines());
            return false;
        }
        true
    }

    /// Moves what the recorder produced for one event into the page; `false` when the
    /// asciicast became full.
    fn drain(&mut self, at_ms: u64) -> bool {
        let mut room = true;
        for line in self.recorder.take_asciicast_lines() {
            let Ok((_, code, data)) = serde_json::from_str::<(f64, String, String)>(&line) else {
                continue;
            };
            match code.as_str() {
                "o" | "r" if room => room = self.page.event(at_ms, &code, &data),
                "m" => self.page.entry(at_ms, Kind::Note, &data, true),
                // Input is the same as its echo in the output; the player does not need it.
                _ => {}
            }
        }
        for mut command in self.recorder.take_commands() {
            command.redact(|argv| self.redactor.redact(argv));
            let text = crate::recorder::audit_table::escape(&command.command_line);
            self.page.entry(command.at_ms, Kind::Typed, &text, true);
        }
        self.page.transcript_lines(self.recorder.take_lines());
        room
    }

    /// Adds a note at the top of the page.
    pub fn note(&mut self, text: impl Into<String>) {
        self.page.note(text);
    }

    /// The page. A stream without an end (the session still running, or cut short) is
    /// rendered to where it stops, and the page says so.
    pub fn render(mut self) -> String {
        if !self.ended && !self.page.is_full() {
            let at = self.last_at_ms;
            let _ = self.recorder.end(at, None, "recording has no end");
            let _ = self.recorder.take_asciicast_lines();
            self.page.transcript_lines(self.recorder.take_lines());
            self.page.note(
                "The recording has no end: the session was still running when this page was written, or the agent stopped (its next start recovers it).",
            );
        }
        self.page.render()
    }
}

/// The page of an asciicast v2 file (`ID.cast`, as S3 holds it): its output and resizes
/// played, its markers on the timeline, the transcript rendered from its output.
#[derive(Debug)]
pub struct CastPage {
    page: Page,
    transcript: Transcript,
}

impl CastPage {
    /// A page for the asciicast whose header line is `header`.
    ///
    /// # Errors
    /// The line is not an asciicast v2 header.
    pub fn new(header: &str, idle_limit_ms: u64, limits: Limits) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(header)
            .map_err(|e| format!("line 1: not an asciicast header (not JSON: {e})"))?;
        if value.get("version").and_then(serde_json::Value::as_u64) != Some(2) {
            return Err("line 1: not an asciicast v2 header".into());
        }
        let started = value
            .get("timestamp")
            .and_then(serde_json::Value::as_u64)
            .map_or(0, |s| s.saturating_mul(1000));
        let title = value
            .get("title")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("Session recording")
            .to_owned();
        let mut page = Page::new(&title, &value, started, idle_limit_ms, limits);
        if started > 0 {
            page.fact("started", crate::timefmt::rfc3339(started, false));
        }
        let (cols, rows) = (page.cols, page.rows);
        let mut transcript = Transcript::new(
            u16::try_from(cols).unwrap_or(80),
            u16::try_from(rows).unwrap_or(24),
        );
        transcript.forget_taken_lines();
        Ok(Self { page, transcript })
    }

    /// Line `n` (1-based) of the file. `Ok(false)` when the page is full: stop.
    ///
    /// # Errors
    /// The line is not an asciicast event (named by its number).
    pub fn push_line(&mut self, n: usize, line: &str) -> Result<bool, String> {
        if self.page.is_full() {
            return Ok(false);
        }
        if line.trim().is_empty() {
            return Ok(true);
        }
        let (t, code, data): (f64, String, serde_json::Value) = serde_json::from_str(line)
            .map_err(|e| format!("line {n}: not an asciicast event: {e}"))?;
        if !(t.is_finite() && t >= 0.0) {
            return Err(format!("line {n}: bad time {t}"));
        }
        // Finite and non-negative; whole milliseconds, capped at ~3 years of session.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let at_ms = (t.min(1e11) * 1000.0).round() as u64;
        let text = match &data {
            serde_json::Value::String(s) => s.clone(),
            other => other
                .get("label")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        };
        match code.as_str() {
            "o" => {
                if !self.page.event(at_ms, "o", &text) {
                    return Ok(false);
                }
                self.transcript.process(text.as_bytes());
            }
            "r" => {
                let size = text
                    .split_once('x')
                    .and_then(|(c, r)| Some((c.parse::<u16>().ok()?, r.parse::<u16>().ok()?)))
                    .filter(|(c, r)| (1..=10_000).contains(c) && (1..=10_000).contains(r));
                let Some((cols, rows)) = size else {
                    return Err(format!("line {n}: bad resize {text:?}"));
                };
                if !self.page.event(at_ms, "r", &text) {
                    return Ok(false);
                }
                self.transcript.resize(cols, rows);
            }
            "m" => self.page.entry(at_ms, Kind::Note, &text, true),
            _ => {}
        }
        self.page.transcript_lines(self.transcript.take_lines());
        Ok(true)
    }

    /// The page.
    pub fn render(mut self) -> String {
        self.transcript.finish();
        self.page.transcript_lines(self.transcript.take_lines());
        self.page.render()
    }
}

/// The page's own stylesheet.
const PAGE_CSS: &str = r"
body { margin: 0; font-family: system-ui, sans-serif; background: #f6f6f4; color: #1d1d1b; }
header { padding: 0.8em 1.2em; background: #232629; color: #eee; }
header h1 { font-size: 1.2em; margin: 0 0 0.4em 0; word-break: break-all; }
dl.facts { display: flex; flex-wrap: wrap; gap: 0.3em 1.5em; margin: 0; font-size: 0.9em; }
dl.facts div { display: flex; gap: 0.4em; }
dl.facts dt { color: #aaa; }
dl.facts dd { margin: 0; word-break: break-all; }
p.note { background: #fff3cd; color: #533f03; padding: 0.4em 0.8em; margin: 0.5em 0 0 0; border-radius: 3px; }
main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(18em, 2fr); gap: 1em; padding: 1em; }
@media (max-width: 900px) { main { grid-template-columns: minmax(0, 1fr); } }
p.help { font-size: 0.8em; color: #555; }
aside { min-width: 0; }
aside h2 { font-size: 1em; margin: 0.2em 0 0.4em 0; }
ol#timeline { list-style: none; padding: 0; margin: 0 0 1em 0; max-height: 30vh; overflow: auto; font-size: 0.85em; background: #fff; border: 1px solid #ddd; }
ol#timeline li { padding: 0.15em 0.5em; border-bottom: 1px solid #eee; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
ol#timeline a { font-family: monospace; text-decoration: none; color: #0b57d0; }
ol#timeline .kind { display: inline-block; min-width: 3.5em; color: #666; }
ol#timeline li.k-typed .kind { color: #0a7d32; font-weight: bold; }
ol#timeline li.k-gap .kind, ol#timeline li.k-end .kind { color: #b3261e; font-weight: bold; }
pre#transcript { background: #fff; border: 1px solid #ddd; padding: 0.5em; max-height: 60vh; overflow: auto; font-size: 0.8em; white-space: pre-wrap; word-break: break-all; }
";

/// The page's own script: reads the embedded recording and starts the player; `#t=`
/// in the address starts there (`end`: the last frame); the timeline's links seek.
const PAGE_JS: &str = r#"
(function () {
  "use strict";
  var rec = JSON.parse(document.getElementById("recording").textContent);
  var opts = { cols: rec.cols, rows: rec.rows, markers: rec.markers, fit: "width" };
  var m = /^#t=(end|[0-9]+(?:\.[0-9]+)?)$/.exec(window.location.hash);
  if (m) {
    opts.autoPlay = true;
    opts.startAt = m[1] === "end" ? rec.duration + 1 : parseFloat(m[1]);
  }
  var player = AsciinemaPlayer.create({ data: rec.cast }, document.getElementById("player"), opts);
  document.body.setAttribute("data-player", "ready");
  document.getElementById("timeline").addEventListener("click", function (e) {
    var a = e.target.closest("a[data-t]");
    if (!a) { return; }
    e.preventDefault();
    player.seek(parseFloat(a.getAttribute("data-t")));
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::event::{Process, ProcessPhase};

    const PAYLOAD: &str =
        "</script><script>document.title='PWNED'</script><!-- <img src=x onerror=\"document.title='PWNED2'\"> \u{2028}&amp;";

    fn start() -> StartInfo {
        StartInfo {
            session_id: "s-1".into(),
            user: "alice".into(),
            run_as_user: "ssm-user".into(),
            owner: "alice".into(),
            target: "<b>i-1</b>".into(),
            reason: None,
            cols: 80,
            rows: 24,
            started_unix_ms: 1_700_000_000_000,
            term: Some("xterm".into()),
            shell: None,
        }
    }

    fn ev(seq: u64, at_ms: u64, kind: EventKind) -> Event {
        Event { seq, at_ms, kind }
    }

    fn out(seq: u64, at_ms: u64, text: &str) -> Event {
        ev(
            seq,
            at_ms,
            EventKind::Output {
                data: text.as_bytes().to_vec(),
            },
        )
    }

    /// The page's `<script …>` and `</script>` tags, and everything between the JSON
    /// block's tags.
    fn scripts(html: &str) -> (usize, usize) {
        (
            html.matches("<script").count(),
            html.matches("</script").count(),
        )
    }

    #[test]
    fn the_player_and_the_page_script_cannot_end_their_own_element() {
        for s in [PLAYER_JS, PAGE_JS] {
            assert!(!s.to_ascii_lowercase().contains("</script"));
            assert!(!s.contains("<!--"));
        }
        assert!(!PLAYER_CSS.to_ascii_lowercase().contains("</style"));
    }

    #[test]
    fn recorded_markup_stays_data_and_text() {
        let mut page = EventPage::new(&start(), 2000, Limits::default());
        assert!(page.push(&out(1, 10, &format!("{PAYLOAD}\r\n$ "))));
        assert!(page.push(&ev(
            2,
            20,
            EventKind::Process(Process {
                phase: ProcessPhase::Exec,
                pid: 7,
                ppid: None,
                user: None,
                uid: None,
                euid: None,
                cwd: None,
                executable: None,
                argv: vec!["echo".into(), PAYLOAD.into()],
                argv_truncated: false,
                redactions: 0,
                details_unavailable: None,
                login_uid: None,
                audit_session: None,
                exit_code: None,
                signal: None,
                duration_ms: None,
            })
        )));
        assert!(page.push(&ev(
            3,
            30,
            EventKind::End {
                exit_code: Some(0),
                how: PAYLOAD.into()
            }
        )));
        let html = page.render();
        // Exactly the page's three script elements: the JSON block, the player, the glue.
        assert_eq!(scripts(&html), (3, 3), "{html}");
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>"));
        // Between the JSON block's tags there is no '<' at all, and it parses.
        let json = html
            .split("<script type=\"application/json\" id=\"recording\">")
            .nth(1)
            .and_then(|rest| rest.split("</script>").next())
            .unwrap();
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
        assert!(!json.contains('\u{2028}'));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let cast = v["cast"].as_array().unwrap();
        assert_eq!(cast[0]["version"], 2);
        assert!(cast[1][2].as_str().unwrap().starts_with(PAYLOAD));
        // The transcript and the timeline show it as text.
        assert!(html.contains("&lt;/script&gt;&lt;script&gt;document.title=&#39;PWNED&#39;"));
        assert!(html.contains("&lt;b&gt;i-1&lt;/b&gt;"));
        assert!(html.contains("<span class=\"kind\">ran</span> <code>pid 7: echo &lt;/script&gt;"));
    }

    #[test]
    fn typed_commands_and_redacted_input_become_markers() {
        let mut page = EventPage::new(&start(), 2000, Limits::default());
        for e in [
            out(1, 0, "$ "),
            ev(
                2,
                1000,
                EventKind::Input {
                    data: b"ls".to_vec(),
                },
            ),
            out(3, 1001, "ls"),
            ev(
                4,
                1500,
                EventKind::Input {
                    data: b"\r".to_vec(),
                },
            ),
            out(5, 1501, "\r\nfile\r\n$ "),
            ev(6, 9000, EventKind::InputRedacted { bytes: 5, lines: 1 }),
            ev(
                7,
                9500,
                EventKind::End {
                    exit_code: Some(0),
                    how: "exited".into(),
                },
            ),
        ] {
            assert!(page.push(&e));
        }
        let html = page.render();
        assert!(
            html.contains("<span class=\"kind\">typed</span> <code>ls</code>"),
            "{html}"
        );
        assert!(html.contains("input redacted: 5 bytes, 1 Enter"));
        assert!(html.contains("$ ls\nfile\n"), "{html}");
        // The idle pause of 7.5 s is 2 s for the player: the redaction marker at 3.501 s.
        assert!(
            html.contains("[3.501,\"note: input redacted: 5 bytes, 1 Enter\"]"),
            "{html}"
        );
        assert!(html.contains("<a href=\"#t=3.501\" data-t=\"3.501\""));
        // ...but shown at its real offset.
        assert!(html.contains(">+0:09</a> <span class=\"kind\">note</span>"));
        assert!(!html.contains("The recording has no end"));
    }

    #[test]
    fn a_recording_past_the_bound_ends_early_and_says_so() {
        let limits = Limits {
            cast_bytes: 4096,
            transcript_bytes: 1 << 20,
            timeline_entries: 10,
        };
        let mut page = EventPage::new(&start(), 2000, limits);
        let mut n = 0;
        let mut seq = 1;
        // Each '<' costs six bytes embedded: the bound counts what is embedded.
        while page.push(&out(seq, seq * 10, &format!("line {seq} <<<<<<<<<<\r\n"))) {
            seq += 1;
            n += 1;
            assert!(n < 1000, "never full");
        }
        // The rest is refused.
        assert!(!page.push(&out(seq + 1, seq * 10 + 10, "more\r\n")));
        for i in 0..20 {
            page.page.entry(1, Kind::Note, &format!("n{i}"), false);
        }
        let html = page.render();
        assert!(
            html.contains("This page ends at +0:00 into the session"),
            "{html}"
        );
        assert!(!html.contains("more\n"));
        // The transcript has the lines up to the end of the page.
        assert!(html.contains(&format!("line {n} &lt;")));
        let json = html.split("id=\"recording\">").nth(1).unwrap();
        assert!(json.split("</script>").next().unwrap().len() < 4096 + 200);
    }

    #[test]
    fn long_timelines_and_transcripts_are_cut_and_counted() {
        let limits = Limits {
            cast_bytes: 1 << 20,
            transcript_bytes: 100,
            timeline_entries: 3,
        };
        let mut page = Page::new("t", &serde_json::json!({"version": 2}), 0, 1000, limits);
        for i in 0..5 {
            page.entry(i, Kind::Ran, "x", false);
        }
        page.transcript_lines((0..50).map(|i| format!("transcript line {i}")));
        let html = page.render();
        assert!(html.contains("first 3 entries; 2 more are not shown"));
        assert!(html.contains("The transcript below is cut at 0 MiB"));
        assert!(html.contains("transcript line 0\n") && !html.contains("transcript line 9"));
    }

    #[test]
    fn a_stream_without_an_end_says_so() {
        let mut page = EventPage::new(&start(), 2000, Limits::default());
        assert!(page.push(&out(1, 5, "still here")));
        let html = page.render();
        assert!(html.contains("The recording has no end"));
        assert!(html.contains("still here\n"));
    }

    #[test]
    fn an_asciicast_file_is_played_and_checked() {
        let mut page = CastPage::new(
            r#"{"version": 2, "width": 20, "height": 5, "timestamp": 1700000000, "title": "<t>"}"#,
            2000,
            Limits::default(),
        )
        .unwrap();
        assert!(page.push_line(2, r#"[0.5, "o", "hello <x>\r\n"]"#).unwrap());
        assert!(page.push_line(3, r#"[0.6, "r", "30x6"]"#).unwrap());
        assert!(page.push_line(4, r#"[0.7, "m", "mark"]"#).unwrap());
        assert!(page.push_line(5, "").unwrap());
        assert!(page.push_line(6, r#"[0.8, "r", "0x6"]"#).is_err());
        assert!(page.push_line(7, r#"[-1, "o", "x"]"#).is_err());
        assert!(page
            .push_line(8, "nonsense")
            .unwrap_err()
            .starts_with("line 8:"));
        let html = page.render();
        assert!(html.contains("<title>&lt;t&gt;</title>"));
        assert!(html.contains("hello &lt;x&gt;\n"));
        assert!(html.contains("<code>mark</code>"));
        assert!(CastPage::new(r#"{"version": 1}"#, 0, Limits::default()).is_err());
        assert!(CastPage::new("[", 0, Limits::default()).is_err());
    }

    #[test]
    fn the_policy_names_the_scripts_the_page_has() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none';"));
        assert!(csp.contains(&sha256_source(PLAYER_JS)));
        assert!(csp.contains(&sha256_source(PAGE_JS)));
        assert!(!csp.contains("unsafe-eval'") || csp.contains("'wasm-unsafe-eval'"));
        assert!(!csp.contains("http"));
    }

    #[test]
    fn idle_pauses_are_capped_and_late_entries_placed_before() {
        let mut cap = IdleCap {
            limit_ms: 1000,
            last_in: 0,
            last_out: 0,
        };
        assert_eq!(cap.map(500), 500);
        assert_eq!(cap.map(10_500), 1500);
        assert_eq!(cap.map(10_200), 1200);
        assert_eq!(cap.map(10_700), 1700);
        assert_eq!(cap.map(0), 0);
    }

    #[test]
    fn escapes() {
        assert_eq!(
            script_json(r#"["</script>&\u2028"]"#.replace("\\u2028", "\u{2028}").as_str()),
            r#"["\u003c/script\u003e\u0026\u2028"]"#
        );
        assert_eq!(
            html_escape("<a href=\"x\">'&\0"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;\u{fffd}"
        );
        assert_eq!(offset(3_723_000), "+1:02:03");
        assert_eq!(offset(61_000), "+1:01");
    }
}
