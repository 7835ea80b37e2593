//! # recorder — the flight recorder of one session (pure)
//!
//! Owns the recording of a shell session: one timed [`Event`] stream (start, output,
//! input, redaction markers, resizes, end), and the artefacts derived from it: a clean
//! text transcript of what the user saw ([`transcript`]), an asciicast v2 file for replay
//! ([`asciicast`]), and the raw stream itself as JSON lines ([`event`]); read back, a
//! recording's summary ([`summary`], `summary.json`) and its process audit as rows a
//! reviewer reads ([`audit_table`], `session-agent audit`).
//!
//! **Pure:** no files, sockets or clocks. Times are parameters (`at_ms`, milliseconds
//! since the session start, whose wall-clock time is [`StartInfo::started_unix_ms`]);
//! every method hands back what it produced (the [`Event`] to persist or stream, lines to
//! ship) and the caller does the I/O. `at_ms` values that go backwards are raised to the
//! previous one, so every derived stream is in chronological order. Every function is
//! total on arbitrary bytes (property-tested).
//!
//! ## Redaction rule
//!
//! Input typed while the PTY has ECHO **off** is not recorded, whatever ICANON says:
//! `stty -echo; read passwd`, `sudo`'s prompt, and also a password read byte by byte in
//! non-canonical mode (`sudo` with `pwfeedback`, `stty -echo -icanon min 1`). (This is
//! stricter than `pam_tty_audit`, which redacts only with ICANON on and so records a
//! non-canonical password.) The caller samples the PTY's termios as each input chunk is
//! written and passes `echo_off`; when it is true the recorder emits
//! [`EventKind::InputRedacted`] with the byte count and the number of line ends (Enter
//! keys) only, and keeps the bytes nowhere (not in the event, the transcript, the
//! asciicast, nor any buffer). Other input is recorded as [`EventKind::Input`]. The
//! transcript is rendered from output only, and a terminal with echo off does not display
//! what is typed.
//!
//! The cost, and the limit: programs that echo for themselves also turn ECHO off (bash's
//! readline at the prompt, editors, pagers), so what is typed into them is recorded only
//! as what they show (output), and as redaction markers with counts and times. Someone
//! who turns echo off and types commands blind (`stty -echo; PS1=''`) leaves markers and
//! the commands' output, not the commands; the kernel-level command audit is what records
//! those.
//!
//! ## Transcript approach and limits
//!
//! Output is rendered by the `vt100` terminal emulator at the session's size; lines are
//! committed as they scroll off the top, when [`Recorder::take_lines`] is called (rows
//! above the cursor), before the screen is erased, and at the end; full-screen programs
//! (alternate screen) appear as `--- screen ---` blocks when they exit and at the end. See
//! [`transcript`] for the details and the limits (rows rewritten after they were
//! committed keep their committed text; the alternate screen is captured as frames only).
//!
//! ## Commands as typed
//!
//! With [`Recorder::with_commands`] the recorder also finds the command line typed at
//! each prompt, read from the same emulator's screen at the echo of Enter
//! ([`commands`]; [`typed_commands`] does it for a recorded stream). Display only: the
//! process audit records what ran.
//!
//! ## Memory
//!
//! The recorder keeps the committed transcript lines (for [`Recorder::transcript_text`];
//! with [`Recorder::forget_taken_lines`] only those not yet taken) and the asciicast lines
//! not yet taken; events are returned, not kept.

pub mod asciicast;
pub mod audit_table;
pub mod commands;
pub mod event;
pub mod playback;
pub mod player;
pub mod summary;
pub mod transcript;

pub use asciicast::{asciicast_header, asciicast_line, AsciicastEncoder};
use commands::Typed;
pub use commands::{CommandTracker, TypedCommand};
pub use event::{Event, EventKind, StartInfo};
pub use transcript::Transcript;

/// Records one session: numbers and times events, redacts password input, and feeds the
/// transcript and asciicast renderers.
#[derive(Debug)]
pub struct Recorder {
    start_event: Event,
    next_seq: u64,
    last_at_ms: u64,
    transcript: Transcript,
    cast: AsciicastEncoder,
    cast_lines: Vec<String>,
    commands: Option<CommandTracker>,
}

impl Recorder {
    /// Starts a recording; the start event (seq 0, `at_ms` 0) is [`Recorder::start_event`].
    pub fn new(start: StartInfo) -> Self {
        let transcript = Transcript::new(start.cols, start.rows);
        let cast_lines = vec![asciicast_header(&start)];
        Self {
            start_event: Event {
                seq: 0,
                at_ms: 0,
                kind: EventKind::Start(start),
            },
            next_seq: 1,
            last_at_ms: 0,
            transcript,
            cast: AsciicastEncoder::new(),
            cast_lines,
            commands: None,
        }
    }

    /// Also finds the command lines typed at prompts ([`commands`]), read from the
    /// transcript's screen; [`Recorder::take_commands`] hands them out.
    #[must_use]
    pub fn with_commands(mut self) -> Self {
        self.commands = Some(CommandTracker::new());
        self
    }

    /// Command lines found since the last call (none without [`Recorder::with_commands`]).
    pub fn take_commands(&mut self) -> Vec<TypedCommand> {
        self.commands
            .as_mut()
            .map(CommandTracker::take)
            .unwrap_or_default()
    }

    /// Streaming mode: transcript lines are dropped once [`Recorder::take_lines`] has
    /// handed them out (the caller writes them out), so memory does not grow with the
    /// length of the session.
    #[must_use]
    pub fn forget_taken_lines(mut self) -> Self {
        self.transcript.forget_taken_lines();
        self
    }

    /// The start event, first in the stream.
    pub fn start_event(&self) -> &Event {
        &self.start_event
    }

    /// The session's start information.
    pub fn start_info(&self) -> Option<&StartInfo> {
        match &self.start_event.kind {
            EventKind::Start(info) => Some(info),
            _ => None,
        }
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The event `kind` would become if recorded now (its sequence number and time),
    /// without recording it: the caller may write it first and [`Recorder::commit`] it
    /// only once it is on disk, so an event that could not be written leaves no trace in
    /// the stream or the renderers.
    pub fn next_event(&self, at_ms: u64, kind: EventKind) -> Event {
        Event {
            seq: self.next_seq,
            at_ms: at_ms.max(self.last_at_ms),
            kind,
        }
    }

    /// Records `event`, which [`Recorder::next_event`] made: advances the stream and feeds
    /// the transcript and asciicast (and the command tracker, when on).
    pub fn commit(&mut self, event: &Event) {
        let started = self.start_info().map_or(0, |s| s.started_unix_ms);
        feed(&mut self.transcript, self.commands.as_mut(), event, started);
        self.last_at_ms = event.at_ms.max(self.last_at_ms);
        self.next_seq = event.seq + 1;
        self.cast_lines.extend(self.cast.lines(event, started));
    }

    /// Records output the shell wrote to the terminal.
    pub fn output(&mut self, at_ms: u64, data: &[u8]) -> Event {
        self.record(
            at_ms,
            EventKind::Output {
                data: data.to_vec(),
            },
        )
    }

    /// Records input typed by the user. With `echo_off` (the PTY has ECHO off) only a
    /// redaction marker is recorded (byte count, line ends) and the bytes are dropped.
    pub fn input(&mut self, at_ms: u64, data: &[u8], echo_off: bool) -> Event {
        if echo_off {
            return self.input_redacted(at_ms, data.len(), event::line_ends(data));
        }
        self.record(
            at_ms,
            EventKind::Input {
                data: data.to_vec(),
            },
        )
    }

    /// Records a redaction marker (what [`Recorder::input`] records for echo-off input;
    /// also how a recording is re-read).
    pub fn input_redacted(&mut self, at_ms: u64, bytes: usize, lines: usize) -> Event {
        self.record(at_ms, EventKind::InputRedacted { bytes, lines })
    }

    /// Records a terminal resize.
    pub fn resize(&mut self, at_ms: u64, cols: u16, rows: u16) -> Event {
        self.record(at_ms, EventKind::Resize { cols, rows })
    }

    /// Records the end of the session and commits the rest of the transcript (with the
    /// [`event::end_note`] of a session cut short).
    pub fn end(&mut self, at_ms: u64, exit_code: Option<i32>, how: impl Into<String>) -> Event {
        self.record(
            at_ms,
            EventKind::End {
                exit_code,
                how: how.into(),
            },
        )
    }

    /// Transcript lines completed since the last call (for streaming).
    pub fn take_lines(&mut self) -> Vec<String> {
        self.transcript.take_lines()
    }

    /// The clean transcript so far (complete after [`Recorder::end`]).
    pub fn transcript_text(&self) -> String {
        self.transcript.transcript_text()
    }

    /// asciicast v2 lines (the header first) produced since the last call, without
    /// trailing newlines.
    pub fn take_asciicast_lines(&mut self) -> Vec<String> {
        std::mem::take(&mut self.cast_lines)
    }

    fn record(&mut self, at_ms: u64, kind: EventKind) -> Event {
        let event = self.next_event(at_ms, kind);
        self.commit(&event);
        event
    }
}

/// Feeds one event to the transcript (and to the command tracker, with the screen it
/// reads): the one place that says what each event does to them, for live recording,
/// re-rendering and [`typed_commands`] alike. `started` dates gap notes.
fn feed(
    transcript: &mut Transcript,
    commands: Option<&mut CommandTracker>,
    event: &Event,
    started: u64,
) {
    match &event.kind {
        EventKind::Output { data } => match commands {
            Some(c) => commands::process_output(transcript, c, data),
            None => transcript.process(data),
        },
        EventKind::Input { data } => {
            if let Some(c) = commands {
                let typed = Typed::Shown(data);
                c.input(
                    transcript.screen(),
                    transcript.scrolled(),
                    event.at_ms,
                    typed,
                );
            }
        }
        EventKind::InputRedacted { bytes, lines } => {
            if let Some(c) = commands {
                let typed = Typed::Hidden {
                    bytes: *bytes,
                    enters: *lines,
                };
                c.input(
                    transcript.screen(),
                    transcript.scrolled(),
                    event.at_ms,
                    typed,
                );
            }
        }
        EventKind::Resize { cols, rows } => transcript.resize(*cols, *rows),
        gap @ EventKind::Gap { .. } => {
            if let Some(c) = commands {
                c.gap();
            }
            if let Some(note) = event::gap_note(gap, started) {
                transcript.process(note.as_bytes());
            }
        }
        EventKind::End { how, .. } => {
            if let Some(c) = commands {
                c.end();
            }
            if let Some(note) = event::end_note(how) {
                transcript.process(note.as_bytes());
            }
            transcript.finish();
        }
        EventKind::Tunnel(t) => transcript.process(format!("{}\r\n", t.note()).as_bytes()),
        EventKind::Start(_) | EventKind::Process(_) => {}
    }
}

/// The size and start time from a recorded stream's start event (80x24 and 0 without one).
fn stream_start(events: &[Event]) -> (u16, u16, u64) {
    events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Start(info) => Some((info.cols, info.rows, info.started_unix_ms)),
            _ => None,
        })
        .unwrap_or((80, 24, 0))
}

/// Re-renders the clean transcript from a recorded event stream (e.g. the raw stream in
/// the state dir); the size comes from its start event (80x24 without one).
pub fn render_transcript(events: &[Event]) -> String {
    let (cols, rows, started) = stream_start(events);
    let mut transcript = Transcript::new(cols, rows);
    for event in events {
        feed(&mut transcript, None, event, started);
    }
    transcript.finish();
    transcript.transcript_text()
}

/// Finds the command lines typed at prompts in a recorded event stream, event by event
/// ([`commands`]), as the recording's deriver finds them live: sessions with a terminal
/// only, before redaction (apply the agent's rules with [`TypedCommand::redact`]). For
/// `session-agent audit`; memory is the screen plus what one event finds.
#[derive(Debug)]
pub struct CommandFinder {
    transcript: Transcript,
    tracker: Option<CommandTracker>,
    started: u64,
}

impl CommandFinder {
    /// A finder for the session `start` describes (its start event's information).
    pub fn new(start: &StartInfo) -> Self {
        let mut transcript = Transcript::new(start.cols, start.rows);
        transcript.forget_taken_lines();
        Self {
            transcript,
            tracker: start.term.is_some().then(CommandTracker::new),
            started: start.started_unix_ms,
        }
    }

    /// The command lines `event` (the stream's next) completes.
    pub fn push(&mut self, event: &Event) -> Vec<TypedCommand> {
        let Some(tracker) = self.tracker.as_mut() else {
            return Vec::new();
        };
        feed(
            &mut self.transcript,
            Some(&mut *tracker),
            event,
            self.started,
        );
        // Nothing of the text is wanted: let the committed lines go.
        let _ = self.transcript.take_lines();
        tracker.take()
    }
}

/// Every command line typed at prompts in a recorded event stream that starts with its
/// start event (see [`CommandFinder`]).
pub fn typed_commands(events: impl IntoIterator<Item = Event>) -> Vec<TypedCommand> {
    let mut events = events.into_iter();
    let Some(first) = events.next() else {
        return Vec::new();
    };
    let EventKind::Start(start) = &first.kind else {
        return Vec::new();
    };
    let mut finder = CommandFinder::new(start);
    events.flat_map(|e| finder.push(&e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(cols: u16, rows: u16) -> StartInfo {
        StartInfo {
            session_id: "s-0abc".into(),
            user: "arn:aws:iam::123456789012:user/alice".into(),
            run_as_user: "ssm-user".into(),
            owner: "arn:aws:iam::123456789012:user/alice".into(),
            target: "i-0123456789abcdef0".into(),
            reason: Some("testing".into()),
            cols,
            rows,
            started_unix_ms: 1_763_000_000_000,
            term: Some("xterm-256color".into()),
            shell: Some("/bin/bash".into()),
        }
    }

    #[test]
    fn a_session_end_to_end() {
        let mut rec = Recorder::new(info(80, 24));
        let mut events = vec![rec.start_event().clone()];
        events.push(rec.output(5, b"$ "));
        events.push(rec.input(1000, b"ls\r", false));
        events.push(rec.output(1001, b"ls\r\n\x1b[01;34mdir\x1b[0m  file\r\n$ "));
        events.push(rec.resize(1500, 100, 30));
        events.push(rec.output(1400, b"exit\r\n")); // clock went backwards: clamped
        events.push(rec.end(2000, Some(0), "exited"));
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5, 6]);
        assert!(events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert_eq!(events[5].at_ms, 1500);
        assert_eq!(rec.transcript_text(), "$ ls\ndir  file\n$ exit\n");
        assert_eq!(render_transcript(&events), rec.transcript_text());
        let cast = rec.take_asciicast_lines();
        assert!(cast[0].starts_with(r#"{"version":2,"width":80,"height":24,"#));
        assert_eq!(cast[1], r#"[0.005, "o", "$ "]"#);
        assert_eq!(cast[2], r#"[1.000, "i", "ls\r"]"#);
        assert!(cast.contains(&r#"[1.500, "r", "100x30"]"#.to_owned()));
        assert_eq!(
            cast.join("\n") + "\n",
            asciicast::asciicast_from_events(&events).unwrap()
        );
        assert!(rec.take_asciicast_lines().is_empty());
    }

    #[test]
    fn commands_found_live_and_from_the_recorded_stream_agree() {
        let mut rec = Recorder::new(info(40, 5)).with_commands();
        let mut events = vec![rec.start_event().clone()];
        let mut live = Vec::new();
        let mut step = |rec: &mut Recorder, e: Event| {
            events.push(e);
            live.extend(rec.take_commands());
        };
        let e = rec.output(1, b"$ ");
        step(&mut rec, e);
        for (i, b) in b"echo hi".iter().enumerate() {
            let at = 10 + u64::try_from(i).unwrap();
            let e = rec.input(at, &[*b], true);
            step(&mut rec, e);
            let e = rec.output(at, &[*b]);
            step(&mut rec, e);
        }
        let e = rec.input(30, b"\r", true);
        step(&mut rec, e);
        let e = rec.output(31, b"\r\nhi\r\n$ ");
        step(&mut rec, e);
        let e = rec.input(40, b"S3CR3T\r", true);
        step(&mut rec, e);
        let e = rec.output(41, b"\r\n$ ");
        step(&mut rec, e);
        let e = rec.end(50, Some(0), "exited");
        step(&mut rec, e);
        assert_eq!(
            live.iter()
                .map(|c| (c.at_ms, c.prompt.as_str(), c.command_line.as_str()))
                .collect::<Vec<_>>(),
            [(30, "$", "echo hi")]
        );
        assert_eq!(typed_commands(events.clone()), live);
        // The transcript is what it was without commands.
        assert_eq!(rec.transcript_text(), render_transcript(&events));
        assert_eq!(rec.transcript_text(), "$ echo hi\nhi\n$\n$\n");
    }

    #[test]
    fn password_typed_with_echo_off_is_in_no_artefact() {
        const SECRET: &str = "hunter2-S3cret";
        let mut rec = Recorder::new(info(40, 5));
        let mut events = vec![rec.start_event().clone()];
        let mut streamed = Vec::new();
        let mut cast = Vec::new();
        events.push(rec.output(1, b"$ "));
        for (i, b) in b"stty -echo; read passwd\r".iter().enumerate() {
            let at = 10 + u64::try_from(i).unwrap();
            events.push(rec.input(at, &[*b], false));
            events.push(rec.output(
                at,
                if *b == b'\r' {
                    b"\r\n"
                } else {
                    std::slice::from_ref(b)
                },
            ));
        }
        streamed.extend(rec.take_lines());
        // Echo is off: the terminal shows nothing while the password is typed, byte by
        // byte and then as a paste.
        for (i, b) in SECRET.bytes().enumerate() {
            events.push(rec.input(100 + u64::try_from(i).unwrap(), &[b], true));
        }
        events.push(rec.input(200, format!("{SECRET}\r").as_bytes(), true));
        events.push(rec.output(201, b"\r\n$ "));
        cast.extend(rec.take_asciicast_lines());
        streamed.extend(rec.take_lines());
        events.push(rec.input(300, b"stty echo\r", false));
        events.push(rec.output(301, b"stty echo\r\n$ "));
        events.push(rec.end(400, Some(0), "exited"));
        streamed.extend(rec.take_lines());
        cast.extend(rec.take_asciicast_lines());

        let redacted: usize = events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::InputRedacted { bytes, .. } => Some(bytes),
                _ => None,
            })
            .sum();
        assert_eq!(redacted, SECRET.len() * 2 + 1);

        let mut artefacts = vec![
            rec.transcript_text(),
            render_transcript(&events),
            streamed.join("\n"),
            cast.join("\n"),
            asciicast::asciicast_from_events(&events).unwrap(),
            format!("{rec:?}"),
        ];
        artefacts.extend(events.iter().map(Event::to_json_line));
        artefacts.extend(events.iter().filter_map(asciicast_line));
        // Raw payloads, decoded, and every byte concatenated in stream order.
        let mut all_bytes = Vec::new();
        for e in &events {
            if let EventKind::Input { data } | EventKind::Output { data } = &e.kind {
                all_bytes.extend_from_slice(data);
            }
        }
        artefacts.push(String::from_utf8_lossy(&all_bytes).into_owned());
        for (i, artefact) in artefacts.iter().enumerate() {
            for needle in [
                SECRET,
                "hunter2",
                "S3cret",
                &event::base64_encode(SECRET.as_bytes()),
            ] {
                assert!(
                    !artefact.contains(needle),
                    "artefact {i} leaks {needle:?}: {artefact}"
                );
            }
        }
        assert!(cast
            .iter()
            .any(|l| l.contains(r#", "m", "input redacted: "#)));
        assert_eq!(
            rec.transcript_text(),
            "$ stty -echo; read passwd\n\n$ stty echo\n$\n"
        );
    }

    #[test]
    fn forgetting_taken_lines_streams_the_same_and_keeps_nothing() {
        let mut keep = Recorder::new(info(20, 4));
        let mut forget = Recorder::new(info(20, 4)).forget_taken_lines();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..200 {
            let chunk = format!("line {i}\r\n");
            keep.output(i, chunk.as_bytes());
            forget.output(i, chunk.as_bytes());
            a.extend(keep.take_lines());
            b.extend(forget.take_lines());
        }
        keep.end(300, Some(0), "exited");
        forget.end(300, Some(0), "exited");
        a.extend(keep.take_lines());
        b.extend(forget.take_lines());
        assert_eq!(a, b);
        assert_eq!(a.len(), 200);
        // Nothing taken is kept.
        assert_eq!(forget.transcript_text(), "");
    }

    fn chunk() -> impl Strategy<Value = Vec<u8>> {
        let fragment = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            Just(b"\x1b[".to_vec()),
            Just(b"\x1b[?1049h".to_vec()),
            Just(b"\x1b[?1049l".to_vec()),
            Just(b"\x1b[?47h".to_vec()),
            Just(b"\x1b[2J".to_vec()),
            Just(b"\x1b[H".to_vec()),
            Just(b"\x1b[J".to_vec()),
            Just(b"\x1bc".to_vec()),
            Just(b"\x1b[3;4r".to_vec()),
            Just(b"\x1b[5;70H".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\x08".to_vec()),
            Just("€世".as_bytes().to_vec()),
            "[ -~]{0,30}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(fragment, 0..6).prop_map(|v| v.concat())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Output(u64, Vec<u8>),
        Input(u64, Vec<u8>, bool),
        Resize(u64, u16, u16),
        Take,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..5000, chunk()).prop_map(|(t, d)| Op::Output(t, d)),
            2 => (0u64..5000, proptest::collection::vec(any::<u8>(), 0..16), any::<bool>())
                .prop_map(|(t, d, r)| Op::Input(t, d, r)),
            1 => (0u64..5000, 0u16..200, 0u16..80).prop_map(|(t, c, r)| Op::Resize(t, c, r)),
            1 => Just(Op::Take),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_sessions_never_panic_and_number_contiguously(
            cols in 0u16..200,
            rows in 0u16..80,
            ops in proptest::collection::vec(op(), 0..30),
            end in any::<bool>(),
        ) {
            let mut rec = Recorder::new(info(cols, rows));
            let mut events = vec![rec.start_event().clone()];
            let mut streamed: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Output(t, d) => events.push(rec.output(t, &d)),
                    Op::Input(t, d, r) => events.push(rec.input(t, &d, r)),
                    Op::Resize(t, c, r) => events.push(rec.resize(t, c, r)),
                    Op::Take => streamed.extend(rec.take_lines()),
                }
            }
            if end {
                events.push(rec.end(9999, None, "terminated"));
            }
            streamed.extend(rec.take_lines());
            for (i, e) in events.iter().enumerate() {
                prop_assert_eq!(e.seq, u64::try_from(i).unwrap());
                let line = e.to_json_line();
                prop_assert_eq!(&Event::from_json_line(&line).unwrap(), e);
                let _ = asciicast_line(e);
            }
            prop_assert!(events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            prop_assert_eq!(rec.next_seq(), u64::try_from(events.len()).unwrap());
            let text = rec.transcript_text();
            prop_assert!(!text.contains('\x1b'));
            if end {
                // Streaming and the final transcript agree once the session has ended.
                let joined: String = streamed.iter().map(|l| format!("{l}\n")).collect();
                prop_assert_eq!(joined, text);
            }
            for line in rec.take_asciicast_lines().iter().skip(1) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                prop_assert!(v.is_array());
            }
            let _ = render_transcript(&events);
        }
    }
}
