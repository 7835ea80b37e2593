//! Commands as typed (issue 19, item 2): the command line the user entered at each
//! prompt, read from the terminal emulator's screen when Enter is pressed, with the
//! prompt cut off, and its time (pure).
//!
//! This is what a reviewer reads first ("what did they type?"). It is **display only**:
//! the kernel's process audit ([`super::event::Process`]) is the record of what ran.
//!
//! ## How
//!
//! [`CommandTracker`] is fed the recording's events in order, beside the transcript's
//! emulator ([`super::Transcript`]), whose screen it reads (no second emulator: a cursor
//! lookup per keystroke, a row or two per Enter):
//!
//! 1. **The first keystroke of a line** (input after the previous Enter, or after the
//!    output moved to a new line) sets the line's *anchor*: where the prompt ends. It is
//!    the position of the last OSC 133 `B` mark (input start) when the shell writes those
//!    marks (fish and nushell do, bash and zsh with an integration script), else the
//!    cursor's position: where the output stopped before the user typed.
//! 2. **Enter** (CR or LF in the typed bytes; for input typed with echo off, the Enter
//!    count the redaction marker keeps) queues the line.
//! 3. **The echo of Enter** (the next line feed in the output, before the emulator
//!    applies it) takes the line from the screen: the rows of the cursor's logical line
//!    (wrapped rows joined), the part after the anchor is the command line, the part
//!    before it the prompt. A line whose anchor is lost (the screen was redrawn: Ctrl-L,
//!    a prompt redrawn elsewhere) or unknown (typed ahead: several lines pasted at once,
//!    keys typed before the prompt appeared) is matched instead by the text typed, when
//!    it was echoed by the terminal and holds no control keys, or by the last prompt seen
//!    at the start of the line; an unknown one that never matches is given up after
//!    [`MAX_WAIT_LINES`] lines ([`CommandTracker::unresolved`]). fish's
//!    `C;cmdline_url=` mark, when it comes before the echo, gives the line directly.
//!
//! ## What never becomes a command
//!
//! Nothing typed is ever copied into a command: the text is what the **screen** shows
//! after the program echoed it, which the transcript holds anyway. So input typed with
//! echo off (a password) yields no command: nothing was shown (an Enter typed after keys
//! that moved nothing on screen is dropped at once; one whose line is empty on screen
//! gives nothing; a line of `*` only, `sudo`'s `pwfeedback`, gives nothing). A line typed
//! with echo off in one piece with its Enter (pasted, or sent at once by a client) counts
//! only if what its line then shows is as long as the bytes typed or shorter by at most
//! half (keys that edited it): a command typed blind after `stty -echo` shows only its
//! output, which is not taken for the command. Bash's
//! readline also turns echo off (it echoes for itself): its lines are read from the
//! screen like any other. Nothing is taken while a full-screen program (alternate
//! screen: `vi`, `less`, `top`) is shown. Empty lines give nothing.
//!
//! ## Limits
//!
//! * **Forgeable and evadable.** The screen and the marks are the session's to write:
//!   `printf '\e]133;C;cmdline_url=ls\e\\'` or a crafted prompt can show anything, and
//!   `exec sh; stty -echo; PS1=''` or keys sent by a program leave no line on screen.
//!   Use the process audit to know what ran.
//! * **Readline redraws** (Ctrl-R search, completion menus, vi mode, a prompt redrawn on
//!   resize): the line is what the screen shows at the echo of Enter, which readline has
//!   redrawn with the normal prompt by then in the usual cases; a redraw that moves the
//!   line (Ctrl-L) loses the anchor and falls back on the last prompt.
//! * **Multi-line commands** (`for ...; do` then `> ...`, heredocs, a backslash at the
//!   end of a line) are reported one line per Enter, each with its own prompt (`>`).
//!   A multi-row prompt gives its last row as the prompt.
//! * **A line typed to a foreground program** (`mysql>`, `>>>` in python, `read`) is
//!   reported with that program's prompt: it is what was typed at a prompt, not a shell
//!   command.
//! * A line that output from a background job interrupted, and keys typed while output
//!   is still arriving, may be cut at the wrong place (the prompt guessed from the cursor
//!   is then wrong).
//! * A line typed blind and sent in one piece with its Enter (a pasted password: no keys
//!   before the Enter to show that nothing moved) waits for the next line feed; if the
//!   program then prints on the same line first (`read -s pw; echo done`) something about
//!   as long as what was typed, that output is taken as the line. The password itself
//!   never is (it was never shown), and typed key by key it gives nothing. The length
//!   rule also drops a line pasted into readline whose completion (Tab) made it longer.
//!
//! ## Memory
//!
//! Bounded in bytes whatever the input: at most [`MAX_PENDING`] Enters waiting for their
//! echo, each command line at most [`MAX_COMMAND_BYTES`] (cut and marked `truncated`) and
//! each prompt at most [`MAX_PROMPT_BYTES`], typed text kept for matching at most
//! [`MAX_TYPED_BYTES`] a line, and at most [`MAX_READY`] commands not yet taken (the
//! oldest are dropped and counted). Every function is total on arbitrary bytes
//! (property-tested).

use super::transcript::{LineFeeds, PromptMark, Transcript};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Longest command line kept, in bytes (cut on a character boundary, `truncated` set).
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Longest prompt kept, in bytes (its end is kept: the part next to the command).
pub const MAX_PROMPT_BYTES: usize = 1024;
/// Most Enters waiting for their echo; beyond, the oldest is dropped.
pub const MAX_PENDING: usize = 64;
/// Most commands held until [`CommandTracker::take`]; beyond, the oldest are dropped.
pub const MAX_READY: usize = 1024;
/// Typed text kept per line to recognise its echo.
pub const MAX_TYPED_BYTES: usize = 4096;
/// Output lines an Enter whose prompt is unknown waits for its line before it is given up.
pub const MAX_WAIT_LINES: u32 = 200;

/// How the prompt was told from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFrom {
    /// The shell's OSC 133 marks (input start, or fish's `cmdline_url`).
    Osc133,
    /// Where the cursor stood before the first keystroke of the line.
    Cursor,
    /// The typed text found at the end of the line.
    Echo,
    /// The last prompt seen, found at the start of the line.
    LastPrompt,
    /// Not told: the whole line is the command line, and the prompt is empty.
    Unknown,
}

/// One command line typed at a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypedCommand {
    /// When Enter was typed (session milliseconds).
    pub at_ms: u64,
    /// The prompt as shown before it (its logical line only; empty when unknown).
    pub prompt: String,
    /// The command line as the screen showed it, prompt cut off, trimmed.
    pub command_line: String,
    /// How the prompt was separated.
    pub prompt_from: PromptFrom,
    /// Cut at [`MAX_COMMAND_BYTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Parts masked by the redaction rules ([`TypedCommand::redact`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redactions: usize,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TypedCommand {
    /// Masks secrets in the command line with `redact`, an argv redactor (the agent's
    /// `audit::redact::Redactor::redact`), through [`redact_command_line`].
    pub fn redact(&mut self, redact: impl Fn(&[String]) -> (Vec<String>, usize)) {
        let (line, n) = redact_command_line(&self.command_line, redact);
        self.command_line = line;
        self.redactions += n;
    }
}

/// What was typed, as the recorder kept it.
#[derive(Debug, Clone, Copy)]
pub enum Typed<'a> {
    /// Typed with echo on: the bytes.
    Shown(&'a [u8]),
    /// Typed with echo off: only how many bytes and Enters (the bytes were never kept).
    Hidden {
        /// Bytes typed.
        bytes: usize,
        /// Line ends typed.
        enters: usize,
    },
}

/// A screen position that survives scrolling: the row counts rows scrolled off before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    row: u64,
    col: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    pos: Pos,
    from: PromptFrom,
}

/// The line being typed.
#[derive(Debug, Clone)]
struct Line {
    anchor: Option<Anchor>,
    /// The cursor at the first keystroke, and whether it moved by a later one.
    first: Pos,
    moved: bool,
    /// Input events of the line so far.
    events: u32,
    /// The text typed with echo on and without control keys; `None` when unknown.
    typed: Option<String>,
}

/// An Enter waiting for its echo.
#[derive(Debug, Clone)]
struct Pending {
    at_ms: u64,
    anchor: Option<Anchor>,
    typed: Option<String>,
    echo_off: bool,
    /// A line typed with echo off in one piece with its Enter: the bytes before the
    /// Enter, which the line the program shows must match in length (see `emit`).
    typed_len: Option<usize>,
    waited: u32,
}

/// Finds the command lines of a session; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct CommandTracker {
    line: Option<Line>,
    pending: VecDeque<Pending>,
    /// A line feed was seen in the output since the last input.
    lf_since_input: bool,
    /// The last prompt told by the cursor or a mark.
    last_prompt: Option<String>,
    /// The last OSC 133 `B` mark not used yet.
    mark_b: Option<Pos>,
    ready: VecDeque<TypedCommand>,
    unresolved: u64,
    dropped: u64,
}

/// The screen's facts for one step: the screen, and the rows scrolled off before it.
struct View<'a> {
    screen: &'a vt100::Screen,
    scrolled: u64,
}

impl View<'_> {
    fn cursor(&self) -> Pos {
        let (row, col) = self.screen.cursor_position();
        Pos {
            row: self.scrolled.saturating_add(u64::from(row)),
            col,
        }
    }

    /// The cursor's logical line: its first and last screen rows (wrapped rows joined).
    fn logical_line(&self) -> (u16, u16) {
        let (rows, _) = self.screen.size();
        let (cursor, _) = self.screen.cursor_position();
        let mut first = cursor;
        while first > 0 && self.screen.row_wrapped(first - 1) {
            first -= 1;
        }
        let mut last = cursor;
        while last + 1 < rows.get() && self.screen.row_wrapped(last) {
            last += 1;
        }
        (first, last)
    }

    /// `pos` on screen, if it is in the rows `first..=last`.
    fn within(&self, pos: Pos, (first, last): (u16, u16)) -> Option<(u16, u16)> {
        let row = pos.row.checked_sub(self.scrolled)?;
        let row = u16::try_from(row).ok()?;
        // (A column from before a narrowing resize is past the edge now.)
        let col = pos.col.min(self.screen.size().1.get());
        (first <= row && row <= last).then_some((row, col))
    }

    /// Text from (`row`, `col`) to the end of row `last`.
    fn text_from(&self, row: u16, col: u16, last: u16) -> String {
        let (_, cols) = self.screen.size();
        self.screen.contents_between(row, col, last, cols.get())
    }

    /// Text from the start of row `first` to (`row`, `col`).
    fn text_to(&self, first: u16, row: u16, col: u16) -> String {
        self.screen.contents_between(first, 0, row, col)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary: (kept, whether cut). With
/// `keep_end`, the end is kept instead of the start.
fn cut(s: &str, max: usize, keep_end: bool) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    if keep_end {
        let mut i = s.len() - max;
        while !s.is_char_boundary(i) {
            i += 1;
        }
        (s[i..].to_owned(), true)
    } else {
        let mut i = max;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        (s[..i].to_owned(), true)
    }
}

impl CommandTracker {
    /// A tracker at the start of a session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Commands found since the last call, in order.
    pub fn take(&mut self) -> Vec<TypedCommand> {
        self.ready.drain(..).collect()
    }

    /// Enters given up: their line never showed (at most [`MAX_WAIT_LINES`] lines later),
    /// or the recording had a gap or ended first.
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }

    /// Enters and commands dropped to keep memory bounded ([`MAX_PENDING`],
    /// [`MAX_READY`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Input, as the recorder kept it, before it reaches the terminal; `screen` as the
    /// output so far left it, `scrolled` its [`Transcript::scrolled`].
    pub fn input(&mut self, screen: &vt100::Screen, scrolled: u64, at_ms: u64, typed: Typed<'_>) {
        let view = View { screen, scrolled };
        let lf = std::mem::take(&mut self.lf_since_input);
        if screen.alternate_screen() {
            self.line = None;
            return;
        }
        let cursor = view.cursor();
        let bounds = view.logical_line();
        let continues = self.line.as_ref().is_some_and(|l| {
            !lf || l
                .anchor
                .is_none_or(|a| view.within(a.pos, bounds).is_some())
        });
        if continues {
            if let Some(l) = self.line.as_mut() {
                l.moved |= cursor != l.first;
            }
        } else {
            self.start_line(&view, cursor, bounds);
        }
        match typed {
            Typed::Shown(bytes) => self.shown(at_ms, cursor, bytes),
            Typed::Hidden { bytes, enters } => self.hidden(at_ms, cursor, bytes, enters),
        }
        if let Some(l) = self.line.as_mut() {
            l.events = l.events.saturating_add(1);
        }
    }

    fn start_line(&mut self, view: &View<'_>, cursor: Pos, bounds: (u16, u16)) {
        let mark = self
            .mark_b
            .take()
            .filter(|b| *b <= cursor && view.within(*b, bounds).is_some());
        let mut anchor = Some(match mark {
            Some(pos) => Anchor {
                pos,
                from: PromptFrom::Osc133,
            },
            None => Anchor {
                pos: cursor,
                from: PromptFrom::Cursor,
            },
        });
        if let Some(last) = self.pending.back().and_then(|p| p.anchor) {
            if anchor.is_some_and(|a| a.pos == last.pos) {
                // Typed before the previous line's echo arrived: where this prompt ends
                // is not known yet.
                anchor = None;
            } else if anchor.is_some_and(|a| a.pos > last.pos)
                && view.within(last.pos, bounds).is_some()
            {
                // The previous Enter moved nothing to a new line (a password read without
                // echo, then a prompt on the same line): it has no line of its own.
                self.pending.pop_back();
            }
        }
        self.line = Some(Line {
            anchor,
            first: cursor,
            moved: false,
            events: 0,
            typed: Some(String::new()),
        });
    }

    fn push(&mut self, pending: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(pending);
    }

    /// Input typed with echo on: each Enter queues the line so far.
    fn shown(&mut self, at_ms: u64, cursor: Pos, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let line = self.line.get_or_insert_with(|| Line {
                anchor: None,
                first: cursor,
                moved: false,
                events: 1,
                typed: Some(String::new()),
            });
            match c {
                '\r' | '\n' => {
                    if c == '\r' && chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    let Some(line) = self.line.take() else {
                        continue;
                    };
                    self.push(Pending {
                        at_ms,
                        anchor: line.anchor,
                        typed: line.typed,
                        echo_off: false,
                        typed_len: None,
                        waited: 0,
                    });
                }
                c if c.is_control() => line.typed = None,
                c => {
                    if let Some(t) = line.typed.as_mut() {
                        if t.len() + c.len_utf8() <= MAX_TYPED_BYTES {
                            t.push(c);
                        } else {
                            line.typed = None;
                        }
                    }
                }
            }
        }
    }

    /// Input typed with echo off: only Enters and the byte count are known.
    fn hidden(&mut self, at_ms: u64, cursor: Pos, bytes: usize, enters: usize) {
        let Some(line) = self.line.as_mut() else {
            return;
        };
        line.typed = None;
        if enters == 0 {
            return;
        }
        let Some(line) = self.line.take() else { return };
        // Keys typed in earlier events moved nothing on screen: typed blind (a password).
        let blind = line.events > 0 && !line.moved && cursor == line.first;
        if blind {
            return;
        }
        // The whole line in this one piece: nothing on screen shows whether the program
        // echoed it (readline) or not (typed blind); the length of what it shows tells.
        let typed_len = (line.events == 0 && enters == 1).then(|| bytes.saturating_sub(1));
        for i in 0..enters.min(MAX_PENDING) {
            self.push(Pending {
                at_ms,
                anchor: if i == 0 { line.anchor } else { None },
                typed: None,
                echo_off: true,
                typed_len,
                waited: 0,
            });
        }
    }

    /// OSC 133 marks the output brought (in order).
    pub fn marks(&mut self, marks: &[PromptMark], screen: &vt100::Screen, scrolled: u64) {
        for mark in marks {
            let pos = Pos {
                row: mark.scrolled.saturating_add(u64::from(mark.row)),
                col: mark.col,
            };
            match mark.kind {
                b'B' => {
                    // The prompt of a line typed ahead, or of the next one.
                    match self.pending.iter_mut().find(|p| p.anchor.is_none()) {
                        Some(p) => {
                            p.anchor = Some(Anchor {
                                pos,
                                from: PromptFrom::Osc133,
                            });
                        }
                        None => self.mark_b = Some(pos),
                    }
                }
                b'C' => {
                    let Some(cmdline) = &mark.cmdline else {
                        continue;
                    };
                    let Some(p) = self.pending.pop_front() else {
                        continue;
                    };
                    let view = View { screen, scrolled };
                    let bounds = view.logical_line();
                    let prompt = p
                        .anchor
                        .and_then(|a| view.within(a.pos, bounds))
                        .map(|(row, col)| view.text_to(bounds.0, row, col))
                        .unwrap_or_default();
                    self.emit(&p, &prompt, cmdline, PromptFrom::Osc133);
                }
                _ => {}
            }
        }
    }

    /// A line feed in the output, before the emulator applies it: the echo of the
    /// oldest Enter waiting, if its line is on screen.
    fn echo(&mut self, screen: &vt100::Screen, scrolled: u64) {
        self.lf_since_input = true;
        let Some(mut p) = self.pending.pop_front() else {
            return;
        };
        if screen.alternate_screen() {
            return;
        }
        let view = View { screen, scrolled };
        let bounds = view.logical_line();
        if let Some((row, col)) = p.anchor.and_then(|a| view.within(a.pos, bounds)) {
            let prompt = view.text_to(bounds.0, row, col);
            let command = view.text_from(row, col, bounds.1);
            let from = p.anchor.map_or(PromptFrom::Cursor, |a| a.from);
            let prompt = prompt.trim_end().to_owned();
            if !prompt.is_empty() {
                self.last_prompt = Some(cut(&prompt, MAX_PROMPT_BYTES, true).0);
            }
            self.emit(&p, &prompt, &command, from);
            return;
        }
        let whole = view.text_from(bounds.0, 0, bounds.1);
        let whole = whole.trim_end();
        let typed = p.typed.as_deref().map(str::trim);
        if let Some(t) = typed.filter(|t| !t.is_empty() && whole.ends_with(*t)) {
            let prompt = whole[..whole.len() - t.len()].to_owned();
            self.emit(&p, &prompt, t, PromptFrom::Echo);
        } else if let Some(rest) = self
            .last_prompt
            .as_deref()
            .and_then(|lp| whole.strip_prefix(lp))
        {
            let prompt = self.last_prompt.clone().unwrap_or_default();
            let rest = rest.to_owned();
            self.emit(&p, &prompt, &rest, PromptFrom::LastPrompt);
        } else if p.anchor.is_some() {
            // Its line, redrawn elsewhere: the prompt cannot be told.
            self.emit(&p, "", whole, PromptFrom::Unknown);
        } else if typed == Some("") {
            // Enter on an empty line.
        } else {
            p.waited += 1;
            if p.waited > MAX_WAIT_LINES {
                self.unresolved += 1;
            } else {
                self.pending.push_front(p);
            }
        }
    }

    fn emit(&mut self, p: &Pending, prompt: &str, command: &str, from: PromptFrom) {
        let shown = command.trim_end().len();
        let command = command.trim();
        if command.is_empty() || (p.echo_off && command.chars().all(|c| c == '*')) {
            return;
        }
        // A line typed blind in one piece, then output on its line: what is shown is
        // not what was typed. An echoed line is as long as the bytes typed, or shorter
        // by the keys that edited it (at most half of them: each key erases one).
        if p.typed_len
            .is_some_and(|typed| shown > typed || shown * 2 < typed)
        {
            return;
        }
        let (command_line, truncated) = cut(command, MAX_COMMAND_BYTES, false);
        if self.ready.len() >= MAX_READY {
            self.ready.pop_front();
            self.dropped += 1;
        }
        self.ready.push_back(TypedCommand {
            at_ms: p.at_ms,
            prompt: cut(prompt.trim(), MAX_PROMPT_BYTES, true).0,
            command_line,
            prompt_from: from,
            truncated,
            redactions: 0,
        });
    }

    /// Part of the session was not recorded: the screen cannot be trusted for the lines
    /// waiting, which are given up.
    pub fn gap(&mut self) {
        self.unresolved += self.pending.len() as u64;
        self.pending.clear();
        self.line = None;
        self.mark_b = None;
    }

    /// The session ended: lines still waiting are given up.
    pub fn end(&mut self) {
        self.gap();
    }
}

/// Feeds terminal output to the transcript, stopping before each line feed while an
/// Enter waits for its echo, so the tracker reads the line as it stood.
pub fn process_output(transcript: &mut Transcript, tracker: &mut CommandTracker, data: &[u8]) {
    transcript.process_with(data, Some(&mut *tracker));
    let marks = transcript.take_marks();
    tracker.marks(&marks, transcript.screen(), transcript.scrolled());
    if data.contains(&b'\n') {
        tracker.lf_since_input = true;
    }
}

/// Line feeds matter while an Enter waits for its echo.
impl LineFeeds for CommandTracker {
    fn wants_line_feeds(&self) -> bool {
        !self.pending.is_empty()
    }

    fn line_feed(&mut self, screen: &vt100::Screen, scrolled: u64, marks: Vec<PromptMark>) {
        self.marks(&marks, screen, scrolled);
        self.echo(screen, scrolled);
    }
}

/// One word of a command line: where it is, and its text with the shell's quoting
/// removed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    start: usize,
    end: usize,
    text: String,
}

/// Splits a command line into simple commands (at unquoted `;`, `&`, `|`, `(`, `)`,
/// newlines) of words (at unquoted blanks), removing quotes and backslashes the way the
/// shell would for plain words. Never fails: unbalanced quotes run to the end.
fn split_commands(line: &str) -> Vec<Vec<Word>> {
    let mut out = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut current: Option<Word> = None;
    let mut chars = line.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        let end = i + c.len_utf8();
        if let Some(q) = quote {
            let w = current.get_or_insert_with(|| Word {
                start: i,
                end,
                text: String::new(),
            });
            w.end = end;
            if c == q {
                quote = None;
            } else if q == '"' && c == '\\' {
                if let Some(&(j, n)) = chars.peek() {
                    chars.next();
                    w.end = j + n.len_utf8();
                    if !matches!(n, '"' | '\\' | '$' | '`') {
                        w.text.push('\\');
                    }
                    w.text.push(n);
                }
            } else {
                w.text.push(c);
            }
            continue;
        }
        match c {
            ' ' | '\t' => words.extend(current.take()),
            ';' | '&' | '|' | '(' | ')' | '\n' | '\r' => {
                words.extend(current.take());
                if !words.is_empty() {
                    out.push(std::mem::take(&mut words));
                }
            }
            _ => {
                let w = current.get_or_insert_with(|| Word {
                    start: i,
                    end,
                    text: String::new(),
                });
                w.end = end;
                match c {
                    '\'' | '"' => quote = Some(c),
                    '\\' => {
                        if let Some(&(j, n)) = chars.peek() {
                            chars.next();
                            w.end = j + n.len_utf8();
                            w.text.push(n);
                        }
                    }
                    c => w.text.push(c),
                }
            }
        }
    }
    words.extend(current);
    if !words.is_empty() {
        out.push(words);
    }
    out
}

/// Programs that run the rest of their arguments as a command (their own options, words
/// starting with `-`, skipped).
const WRAPPERS: &[&str] = &[
    "sudo", "doas", "exec", "nohup", "time", "command", "env", "nice", "ionice", "builtin",
];

/// A typed command line with its secrets masked by `redact`, an argv redactor (the
/// agent's `audit::redact::Redactor::redact`), and how many words it masked. The line is cut
/// into simple commands and words as the shell would (quotes, backslashes); each simple
/// command's words are given to `redact` as an argv — its leading `NAME=value`
/// assignments as arguments of `env`, and after a wrapper (`sudo`, `nohup`, `env`, ...)
/// the wrapped program's words again — and a word `redact` changed is replaced in the
/// line by its masked form (quoted when it holds blanks); everything else stays as typed.
///
/// Limits: a secret the argv rules do not recognise (a positional password, a variable
/// set earlier, `sudo -u root mysql`) is not masked; the process audit's argv of the
/// program that ran is masked by the same rules.
pub fn redact_command_line(
    line: &str,
    redact: impl Fn(&[String]) -> (Vec<String>, usize),
) -> (String, usize) {
    let mut replaced: Vec<(usize, usize, String)> = Vec::new();
    let mut apply = |words: &[&Word], argv: Vec<String>| {
        let (masked, n) = redact(&argv);
        if n == 0 {
            return;
        }
        for (word, new) in words
            .iter()
            .zip(masked.iter().skip(argv.len() - words.len()))
        {
            if *new != word.text && !replaced.iter().any(|r| r.0 == word.start) {
                let shown = if new.chars().any(char::is_whitespace) {
                    format!("'{}'", new.replace('\'', r"'\''"))
                } else {
                    new.clone()
                };
                replaced.push((word.start, word.end, shown));
            }
        }
    };
    for command in split_commands(line) {
        let assignments = command
            .iter()
            .take_while(|w| {
                w.text.split_once('=').is_some_and(|(name, _)| {
                    !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && !name.starts_with(|c: char| c.is_ascii_digit())
                })
            })
            .count();
        if assignments > 0 {
            let words: Vec<&Word> = command[..assignments].iter().collect();
            let argv = std::iter::once("env".to_owned())
                .chain(words.iter().map(|w| w.text.clone()))
                .collect();
            apply(&words, argv);
        }
        let mut program = assignments;
        while program < command.len() {
            let words: Vec<&Word> = command[program..].iter().collect();
            let argv = words.iter().map(|w| w.text.clone()).collect();
            apply(&words, argv);
            let name = command[program].text.rsplit('/').next().unwrap_or_default();
            if !WRAPPERS.contains(&name) {
                break;
            }
            program += 1;
            while program < command.len() && command[program].text.starts_with('-') {
                program += 1;
            }
        }
    }
    let count = replaced.len();
    replaced.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out = line.to_owned();
    for (start, end, text) in replaced {
        if out.is_char_boundary(start) && out.is_char_boundary(end) && start <= end {
            out.replace_range(start..end, &text);
        }
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A terminal with the tracker beside it, as the recorder runs them.
    struct Term {
        t: Transcript,
        c: CommandTracker,
        at: u64,
    }

    impl Term {
        fn new(cols: u16, rows: u16) -> Self {
            Self {
                t: Transcript::new(cols, rows),
                c: CommandTracker::new(),
                at: 0,
            }
        }
        fn out(&mut self, bytes: &[u8]) -> &mut Self {
            process_output(&mut self.t, &mut self.c, bytes);
            self
        }
        fn typed(&mut self, bytes: &[u8]) -> &mut Self {
            self.at += 10;
            let (s, n) = (self.t.screen(), self.t.scrolled());
            self.c.input(s, n, self.at, Typed::Shown(bytes));
            self
        }
        fn hidden(&mut self, enters: usize) -> &mut Self {
            self.hidden_bytes(enters.max(1), enters)
        }
        fn hidden_bytes(&mut self, bytes: usize, enters: usize) -> &mut Self {
            self.at += 10;
            let (s, n) = (self.t.screen(), self.t.scrolled());
            self.c.input(s, n, self.at, Typed::Hidden { bytes, enters });
            self
        }
        /// Typed with echo off, echoed by the program itself (readline).
        fn readline(&mut self, keys: &[u8], echo: &[u8]) -> &mut Self {
            self.hidden_bytes(keys.len(), crate::recorder::event::line_ends(keys));
            self.out(echo)
        }
        fn lines(&mut self) -> Vec<(String, String)> {
            self.c
                .take()
                .into_iter()
                .map(|c| (c.prompt, c.command_line))
                .collect()
        }
    }

    fn pair(p: &str, c: &str) -> (String, String) {
        (p.to_owned(), c.to_owned())
    }

    #[test]
    fn sh_with_the_terminal_echoing() {
        let mut t = Term::new(80, 24);
        t.out(b"$ ");
        for b in b"echo hello" {
            t.typed(&[*b]).out(&[*b]);
        }
        t.typed(b"\r").out(b"\r\nhello\r\n$ ");
        t.typed(b"ls /\r").out(b"ls /\r\nbin  etc\r\n$ ");
        assert_eq!(t.lines(), [pair("$", "echo hello"), pair("$", "ls /")]);
        let c = t.c.clone().take();
        assert!(c.is_empty());
    }

    #[test]
    fn bash_readline_with_a_real_prompt_key_by_key() {
        // Bytes as bash 5.2 wrote them on a PTY (captured): bracketed paste on, echo
        // off, readline echoing each key.
        let mut t = Term::new(80, 24);
        t.out(b"\x1b[?2004hroot@web-1:/tmp# ");
        for b in b"echo hi" {
            t.readline(&[*b], &[*b]);
        }
        t.readline(b"\r", b"\r\n")
            .out(b"\x1b[?2004l\rhi\r\n\x1b[?2004h")
            .out(b"root@web-1:/tmp# ");
        let cmds = t.c.take();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].prompt, "root@web-1:/tmp#");
        assert_eq!(cmds[0].command_line, "echo hi");
        assert_eq!(cmds[0].prompt_from, PromptFrom::Cursor);
        assert_eq!(cmds[0].at_ms, 80);
    }

    #[test]
    fn a_long_line_wrapped_by_readline_is_joined() {
        // Captured at 20 columns: readline writes the character that wraps, then a CR,
        // then the rest again.
        let mut t = Term::new(20, 10);
        t.out(b"\x1b[?2004hu@h:/tmp$ ");
        t.readline(b"echo ", b"echo ");
        t.readline(b"0123456789abcdefghij", b"012345\r56789abcdefghij");
        t.readline(b"XYZ", b"XYZ");
        t.readline(b"\r", b"\r\n")
            .out(b"\x1b[?2004l\r0123456789abcdefghijXYZ\r\n\x1b[?2004hu@h:/tmp$ ");
        assert_eq!(
            t.lines(),
            [pair("u@h:/tmp$", "echo 0123456789abcdefghijXYZ")]
        );
    }

    #[test]
    fn a_line_cut_by_ctrl_c_is_no_command_and_the_next_is_whole() {
        // Captured: `ech`, `o x`, Ctrl-C, then `ls /` with two backspaces and `/`.
        let mut t = Term::new(80, 24);
        t.out(b"\x1b[?2004hu@h:/tmp$ ");
        t.readline(b"ech", b"ech").readline(b"o x", b"o x");
        t.readline(b"\x03", b"^C")
            .out(b"\x1b[?2004l\r")
            .out(b"\x1b[?2004h\x1b[?2004l\r\r\n\x1b[?2004hu@h:/tmp$ ");
        t.readline(b"ls /\x7f\x7f/", b"ls /")
            .out(b"\x08 \x08\x08 \x08")
            .out(b"/");
        t.readline(b"\r", b"\r\n")
            .out(b"\x1b[?2004l\rbash: ls/: No such file or directory\r\n");
        assert_eq!(t.lines(), [pair("u@h:/tmp$", "ls/")]);
    }

    #[test]
    fn a_password_typed_with_echo_off_is_never_a_command() {
        let mut t = Term::new(80, 24);
        // sudo: keys one by one, nothing shown, then its own newline.
        t.out(b"$ ")
            .typed(b"sudo -k true\r")
            .out(b"sudo -k true\r\n");
        t.out(b"[sudo] password for alice: ");
        for _ in 0..8 {
            t.hidden(0);
        }
        t.hidden(1).out(b"\r\n$ ");
        // `read -s` pasted in one go, and a prompt on the same line after it.
        t.typed(b"read -s pw\r").out(b"read -s pw\r\n");
        t.hidden_bytes(12, 1).out(b"$ ");
        t.typed(b"echo done\r").out(b"echo done\r\ndone\r\n$ ");
        // pwfeedback: asterisks.
        t.out(b"Password: ");
        t.hidden(0)
            .out(b"*")
            .hidden(0)
            .out(b"*")
            .hidden(1)
            .out(b"\r\n$ ");
        assert_eq!(
            t.lines(),
            [
                pair("$", "sudo -k true"),
                pair("$", "read -s pw"),
                pair("$", "echo done"),
            ]
        );
    }

    #[test]
    fn a_line_typed_blind_in_one_piece_is_not_its_output() {
        let mut t = Term::new(80, 24);
        t.out(b"$ ").typed(b"stty -echo\r").out(b"stty -echo\r\n$ ");
        // `printf 'hidden-%s\n' 42` typed (or pasted) with echo off: the shell shows
        // only its output, on the prompt's line.
        t.hidden_bytes(23, 1).out(b"hidden-42\r\n$ ");
        // Key by key, the same: nothing moved on screen before the Enter.
        t.hidden(0).hidden(0).hidden(1).out(b"uid=0(root)\r\n$ ");
        assert_eq!(t.lines(), [pair("$", "stty -echo")]);
        // Readline in one piece, edited with backspaces: shown shorter than typed.
        t.out(b"\r\nu@h$ ")
            .readline(b"echo abcd\x7f\x7fX\r", b"echo abcd\x08 \x08\x08 \x08X\r\n");
        assert_eq!(t.lines(), [pair("u@h$", "echo abX")]);
    }

    #[test]
    fn a_full_screen_program_gives_no_commands() {
        let mut t = Term::new(80, 24);
        t.out(b"$ ")
            .typed(b"vi x\r")
            .out(b"vi x\r\n\x1b[?1049h\x1b[H\x1b[2J~\r\n~");
        t.typed(b"ihello\r").out(b"hello\r\n");
        t.typed(b"\x1b:wq\r").out(b"\x1b[?1049l").out(b"$ ");
        t.typed(b"id\r").out(b"id\r\nuid=0\r\n$ ");
        assert_eq!(t.lines(), [pair("$", "vi x"), pair("$", "id")]);
    }

    #[test]
    fn osc_133_marks_tell_the_prompt_and_lines_typed_ahead() {
        let mut t = Term::new(80, 24);
        let prompt = b"\x1b]133;A\x07> weird $ prompt # \x1b]133;B\x07";
        t.out(prompt);
        // Two lines pasted at once: the second's prompt comes later, marked.
        t.typed(b"echo a\recho b\r");
        t.out(b"echo a\r\n\x1b]133;C\x07a\r\n\x1b]133;D;0\x07");
        t.out(prompt)
            .out(b"echo b\r\n\x1b]133;C\x07b\r\n")
            .out(prompt);
        let cmds = t.c.take();
        assert_eq!(
            cmds.iter()
                .map(|c| (c.prompt.as_str(), c.command_line.as_str(), c.prompt_from))
                .collect::<Vec<_>>(),
            [
                ("> weird $ prompt #", "echo a", PromptFrom::Osc133),
                ("> weird $ prompt #", "echo b", PromptFrom::Osc133),
            ]
        );
    }

    #[test]
    fn fish_cmdline_url_gives_the_line() {
        let mut t = Term::new(80, 24);
        t.out(b"\x1b]133;A\x07~> ");
        t.typed(b"ls -la\r")
            .out(b"ls -la\x1b]133;C;cmdline_url=ls%20-la%3B%20echo%20%E2%9C%93\x07\r\nx\r\n");
        assert_eq!(t.lines(), [pair("~>", "ls -la; echo ✓")]);
    }

    #[test]
    fn pasted_lines_without_marks_are_found_by_their_echo_or_prompt() {
        // sh (the terminal echoes the whole paste at once).
        let mut t = Term::new(80, 24);
        t.out(b"$ ").typed(b"echo a\recho b\r");
        t.out(b"echo a\r\necho b\r\na\r\n$ b\r\n$ ");
        assert_eq!(t.lines(), [pair("$", "echo a"), pair("", "echo b")]);
        // bash (readline echoes each line when it reads it, after the prompt).
        let mut t = Term::new(80, 24);
        t.out(b"u@h$ ");
        t.readline(b"echo a\recho b\r", b"echo a\r\n")
            .out(b"a\r\nu@h$ echo b\r\nb\r\nu@h$ ");
        assert_eq!(t.lines(), [pair("u@h$", "echo a"), pair("u@h$", "echo b")]);
    }

    #[test]
    fn multi_line_commands_are_one_line_per_enter() {
        let mut t = Term::new(80, 24);
        t.out(b"$ ")
            .typed(b"for i in 1 2; do\r")
            .out(b"for i in 1 2; do\r\n> ");
        t.typed(b"echo $i; done\r")
            .out(b"echo $i; done\r\n1\r\n2\r\n$ ");
        assert_eq!(
            t.lines(),
            [pair("$", "for i in 1 2; do"), pair(">", "echo $i; done")]
        );
    }

    #[test]
    fn a_scrolling_screen_keeps_the_anchor() {
        let mut t = Term::new(20, 3);
        t.out(b"a\r\nb\r\nc\r\n$ ");
        // The line wraps on the last row: the screen scrolls under the anchor.
        t.readline(b"echo 0123456789abcdefghij", b"echo 0123456789abcdefghij");
        t.readline(b"\r", b"\r\n");
        assert_eq!(t.lines(), [pair("$", "echo 0123456789abcdefghij")]);
    }

    #[test]
    fn a_redrawn_line_falls_back_on_the_last_prompt() {
        let mut t = Term::new(80, 24);
        t.out(b"u@h$ ").typed(b"true\r").out(b"true\r\nu@h$ ");
        // Ctrl-L: readline clears the screen and redraws the prompt and line at the top.
        t.readline(b"ech", b"ech");
        t.readline(b"\x0c", b"\x1b[H\x1b[2Ju@h$ ech");
        t.readline(b"o x\r", b"o x\r\n");
        assert_eq!(t.lines(), [pair("u@h$", "true"), pair("u@h$", "echo x")]);
    }

    #[test]
    fn bounds_hold_for_huge_lines_and_many_enters() {
        let mut t = Term::new(1000, 500);
        t.out(b"$ ");
        let long = "x".repeat(100_000);
        t.typed(long.as_bytes()).out(long.as_bytes());
        t.typed(b"\r").out(b"\r\n");
        let cmds = t.c.take();
        assert_eq!(cmds.len(), 1);
        assert!(cmds[0].truncated);
        assert!(cmds[0].command_line.len() <= MAX_COMMAND_BYTES);
        // Enters that never see their line.
        let enters = "\r".repeat(10_000);
        t.hidden(10_000).typed(enters.as_bytes());
        assert!(t.c.pending.len() <= MAX_PENDING);
        assert!(t.c.dropped() > 0);
    }

    #[test]
    fn command_lines_are_redacted_word_by_word() {
        let r = crate::audit::redact::Redactor::default();
        let redact = |line: &str| redact_command_line(line, |a| r.redact(a));
        assert_eq!(
            redact("mysql -uroot -pS3CR3T db; echo ok"),
            ("mysql -uroot -p[redacted] db; echo ok".into(), 1)
        );
        assert_eq!(
            redact("curl -u 'bob:S3 CR3T' https://x && ls"),
            ("curl -u bob:[redacted] https://x && ls".into(), 1)
        );
        assert_eq!(
            redact("DB_PASSWORD=S3CR3T ./run --password=\"a b\""),
            (
                "DB_PASSWORD=[redacted] ./run --password=[redacted]".into(),
                2
            )
        );
        assert_eq!(
            redact("sudo mysql -pS3CR3T | tee x"),
            ("sudo mysql -p[redacted] | tee x".into(), 1)
        );
        assert_eq!(redact("echo 'unbalanced"), ("echo 'unbalanced".into(), 0));
        assert_eq!(redact("ls -la"), ("ls -la".into(), 0));
    }

    #[test]
    fn words_split_as_the_shell_would() {
        let texts = |line: &str| {
            split_commands(line)
                .into_iter()
                .map(|c| c.into_iter().map(|w| w.text).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            texts(r#"a "b c" 'd;e' f\ g;h|i&&j (k)"#),
            [
                vec!["a", "b c", "d;e", "f g"],
                vec!["h"],
                vec!["i"],
                vec!["j"],
                vec!["k"]
            ]
        );
        assert_eq!(texts(r#"x "a\"b\$c\d""#), [vec!["x", r#"a"b$c\d"#]]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            steps in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(any::<u8>(), 0..200)), 0..60),
            cols in 1u16..120, rows in 1u16..40,
        ) {
            let mut t = Term::new(cols, rows);
            for (kind, bytes) in &steps {
                match kind {
                    0 => { t.out(bytes); }
                    1 => { t.typed(bytes); }
                    2 => { t.hidden(bytes.len() % 3); }
                    _ => { t.t.resize(cols.saturating_add(u16::try_from(bytes.len() % 7).unwrap_or(0)), rows); }
                }
            }
            prop_assert!(t.c.pending.len() <= MAX_PENDING);
            for c in t.c.take() {
                prop_assert!(c.command_line.len() <= MAX_COMMAND_BYTES);
                prop_assert!(c.prompt.len() <= MAX_PROMPT_BYTES);
                prop_assert!(!c.command_line.is_empty());
            }
        }

        #[test]
        fn redaction_never_panics(line in ".{0,120}") {
            let r = crate::audit::redact::Redactor::default();
            let _ = redact_command_line(&line, |a| r.redact(a));
        }

        #[test]
        fn the_transcript_is_the_same_with_commands_tracked(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..30),
        ) {
            let mut plain = Transcript::new(30, 8);
            let mut t = Term::new(30, 8);
            for (i, c) in chunks.iter().enumerate() {
                if i % 3 == 0 {
                    t.typed(b"x\r");
                }
                plain.process(c);
                t.out(c);
            }
            plain.finish();
            t.t.finish();
            prop_assert_eq!(plain.transcript_text(), t.t.transcript_text());
        }
    }
}
