//! What `session-agent replay` needs to play a recording safely in a terminal, as pure
//! code (no terminal I/O here; `replay` does it):
//!
//! * [`QueryFilter`]: takes out of the replayed stream the sequences that make a terminal
//!   *answer* (device attributes `ESC [ c`, status and cursor reports `ESC [ 6 n`, mode
//!   and setting reports, window reports, colour queries `ESC ] 11 ; ?`, `ENQ`, ...) and
//!   the clipboard (OSC 52: a recording must not read or set the viewer's clipboard).
//!   The terminal's answers would otherwise arrive as input and, after the replay, be
//!   typed into the user's shell (`2RR84;0;0c`). It also follows whether the stream left
//!   the terminal in the alternate screen. An escape sequence is held until its end, at
//!   most [`MAX_HELD`] bytes; a longer one goes through as it is.
//! * [`KeyReader`]: the player's keys from the terminal's input, with the terminal's own
//!   answers and mouse reports skipped.
//! * [`restore_sequence`]: what puts the terminal back whatever the recording left on.
//! * [`Controls`]: pause, speed, step and skip.

/// Longest escape sequence [`QueryFilter`] holds to decide on it, in bytes.
pub const MAX_HELD: usize = 4096;

/// Fastest and slowest speed the keys reach.
pub const MAX_SPEED: f64 = 64.0;
/// See [`MAX_SPEED`].
pub const MIN_SPEED: f64 = 1.0 / 64.0;
/// How far the right arrow skips, in recorded milliseconds.
pub const SKIP_MS: u64 = 5_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FilterState {
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// In a CSI sequence.
    Csi,
    /// In an OSC, DCS, APC, PM or SOS string, until BEL (OSC) or ST.
    Str,
    /// In a string, after ESC (ST is `ESC \`).
    StrEsc,
    /// A sequence longer than [`MAX_HELD`]: passed through until its end.
    Pass,
    /// In [`FilterState::Pass`] inside a string, after ESC.
    PassEsc,
}

/// Removes the sequences that make a terminal answer (see the module docs).
#[derive(Debug, Default)]
pub struct QueryFilter {
    state: FilterState,
    /// Whether the sequence being passed through is a string (ends with BEL or ST).
    pass_string: bool,
    held: Vec<u8>,
    alternate: bool,
}

impl QueryFilter {
    /// A filter at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stream so far left the terminal in the alternate screen.
    pub fn in_alternate_screen(&self) -> bool {
        self.alternate
    }

    /// Appends to `out` what of `input` may reach the terminal.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    /// Appends a sequence still held (cut by the end of the stream) to `out`: it never
    /// completes, so the terminal ignores it as it would have.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if matches!(self.state, FilterState::Esc) {
            // A lone ESC would swallow the restore sequence's first byte; drop it.
            self.held.clear();
        }
        out.append(&mut self.held);
        self.state = FilterState::Ground;
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        use FilterState as S;
        match self.state {
            S::Ground => match b {
                0x1b => {
                    self.held.push(b);
                    self.state = S::Esc;
                }
                // ENQ: the terminal sends its answerback message.
                0x05 => {}
                _ => out.push(b),
            },
            S::Esc => {
                self.held.push(b);
                match b {
                    b'[' => self.state = S::Csi,
                    b']' | b'P' | b'_' | b'^' | b'X' => self.state = S::Str,
                    // ESC Z: DECID, an old form of device attributes.
                    b'Z' => self.drop_held(),
                    // ESC followed by an intermediate: one more byte (charset choices).
                    0x20..=0x2f => {}
                    0x1b => {
                        // ESC ESC: the first stands alone.
                        self.held.pop();
                        out.append(&mut self.held);
                        self.held.push(0x1b);
                    }
                    _ => self.emit_held(out),
                }
            }
            S::Csi => {
                self.held.push(b);
                match b {
                    0x40..=0x7e => {
                        if self.csi_is_query() {
                            self.drop_held();
                        } else {
                            self.track_modes();
                            self.emit_held(out);
                        }
                    }
                    // CAN and SUB cancel the sequence; ESC starts another.
                    0x18 | 0x1a => self.emit_held(out),
                    0x1b => {
                        self.held.pop();
                        out.append(&mut self.held);
                        self.held.push(0x1b);
                        self.state = S::Esc;
                    }
                    _ => self.check_length(out, false),
                }
            }
            S::Str => {
                self.held.push(b);
                match b {
                    0x07 => self.end_string(out),
                    0x1b => self.state = S::StrEsc,
                    0x18 | 0x1a => self.emit_held(out),
                    _ => self.check_length(out, true),
                }
            }
            S::StrEsc => {
                self.held.push(b);
                if b == b'\\' {
                    self.end_string(out);
                } else {
                    // Another sequence starts: the string ended without ST.
                    self.held.truncate(self.held.len() - 2);
                    self.end_string(out);
                    self.held.push(0x1b);
                    self.state = S::Esc;
                    self.byte(b, out);
                }
            }
            S::Pass => {
                out.push(b);
                match b {
                    0x07 if self.pass_string => self.state = S::Ground,
                    0x1b if self.pass_string => self.state = S::PassEsc,
                    0x40..=0x7e if !self.pass_string => self.state = S::Ground,
                    0x18 | 0x1a => self.state = S::Ground,
                    _ => {}
                }
            }
            S::PassEsc => {
                out.push(b);
                self.state = if b == b'\\' { S::Ground } else { S::Pass };
            }
        }
    }

    fn check_length(&mut self, out: &mut Vec<u8>, string: bool) {
        if self.held.len() >= MAX_HELD {
            out.append(&mut self.held);
            self.pass_string = string;
            self.state = FilterState::Pass;
        }
    }

    fn emit_held(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.state = FilterState::Ground;
    }

    fn drop_held(&mut self) {
        self.held.clear();
        self.state = FilterState::Ground;
    }

    fn end_string(&mut self, out: &mut Vec<u8>) {
        if self.string_is_query() {
            self.drop_held();
        } else {
            self.emit_held(out);
        }
    }

    /// The CSI sequence held (`ESC [` ... final byte): parameters, private marker,
    /// intermediates and final.
    fn csi_parts(&self) -> (Option<u8>, Vec<u16>, Vec<u8>, u8) {
        let body = self.held.get(2..).unwrap_or_default();
        let (&fin, body) = body.split_last().unwrap_or((&0, &[]));
        let private = body.first().copied().filter(|b| (0x3c..=0x3f).contains(b));
        let body = if private.is_some() { &body[1..] } else { body };
        let inter: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| (0x20..=0x2f).contains(b))
            .collect();
        let params = body
            .iter()
            .copied()
            .filter(|b| !(0x20..=0x2f).contains(b))
            .collect::<Vec<u8>>()
            .split(|&b| b == b';' || b == b':')
            .map(|p| {
                p.iter().fold(0u16, |n, &d| {
                    n.saturating_mul(10)
                        .saturating_add(u16::from(d.wrapping_sub(b'0')).min(9))
                })
            })
            .collect();
        (private, params, inter, fin)
    }

    fn csi_is_query(&self) -> bool {
        let (private, params, inter, fin) = self.csi_parts();
        let first = params.first().copied().unwrap_or(0);
        match (private, inter.as_slice(), fin) {
            // Device attributes (primary, secondary `>`, tertiary `=`).
            (_, [], b'c') => true,
            // Device status and cursor position reports (ANSI and DEC `?`).
            (_, [], b'n') => true,
            // DECRQM: request a mode's state (ANSI and DEC).
            (_, [b'$'], b'p') => true,
            // XTVERSION `ESC [ > q`.
            (Some(b'>'), [], b'q') => true,
            // The kitty keyboard protocol's query `ESC [ ? u`.
            (Some(b'?'), [], b'u') => true,
            // DECREQTPARM.
            (None, [], b'x') => first <= 1,
            // Window reports: state, position, sizes, title.
            (None, [], b't') => matches!(first, 11 | 13 | 14 | 15 | 16 | 18 | 19 | 20 | 21),
            _ => false,
        }
    }

    fn string_is_query(&self) -> bool {
        let body = self.held.get(2..).unwrap_or_default();
        match self.held.get(1) {
            Some(b']') => {
                let number: Vec<u8> = body
                    .iter()
                    .copied()
                    .take_while(u8::is_ascii_digit)
                    .collect();
                // The clipboard, read or set: never from a recording.
                if number == b"52" {
                    return true;
                }
                // Colour and other queries: a `?` as a parameter.
                body.split(|&b| b == b';' || b == 0x07 || b == 0x1b)
                    .skip(1)
                    .any(|p| p == b"?")
            }
            // DECRQSS `ESC P $ q` and XTGETTCAP `ESC P + q`.
            Some(b'P') => body.starts_with(b"$q") || body.starts_with(b"+q"),
            _ => false,
        }
    }

    fn track_modes(&mut self) {
        let (private, params, inter, fin) = self.csi_parts();
        if private == Some(b'?')
            && inter.is_empty()
            && (fin == b'h' || fin == b'l')
            && params.iter().any(|&p| p == 47 || p == 1047 || p == 1049)
        {
            self.alternate = fin == b'h';
        }
    }
}

/// What puts a terminal back after a replay, whatever the recording switched on: the
/// normal screen (only when the stream left the alternate screen on, since leaving it
/// restores a saved cursor), mouse reporting (1000, 1002, 1003, 1005, 1006, 1015), focus
/// events, bracketed paste, application cursor keys and keypad, modifyOtherKeys and the
/// kitty keyboard mode, the scroll region (cursor saved around it, as setting it homes the
/// cursor), character set, attributes, autowrap and a visible cursor.
pub fn restore_sequence(alternate: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if alternate {
        out.extend_from_slice(b"\x1b[r\x1b[?1049l");
    } else {
        out.extend_from_slice(b"\x1b7\x1b[r\x1b8");
    }
    out.extend_from_slice(
        b"\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1005l\x1b[?1006l\x1b[?1015l\
          \x1b[?1004l\x1b[?2004l\x1b[?1l\x1b>\x1b[>4;0m\x1b[<u\
          \x1b(B\x0f\x1b[0m\x1b[?7h\x1b[?25h",
    );
    out
}

/// A player key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Space: pause or resume.
    Pause,
    /// `+`, `=` or up: twice as fast.
    Faster,
    /// `-`, `_` or down: half as fast.
    Slower,
    /// `.`: the next event at once (and stay paused).
    Step,
    /// Right arrow: skip [`SKIP_MS`] of the recording.
    Skip,
    /// `q`, Ctrl-C, Ctrl-D.
    Quit,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    #[default]
    Ground,
    Esc,
    Csi,
    Ss3,
    Str,
    StrEsc,
    /// An X10 mouse report (`ESC [ M` and three bytes): this many bytes left.
    Mouse(u8),
}

/// Reads [`Key`]s from terminal input, skipping everything else: the terminal's answers
/// (`ESC [ ? 1 ; 2 c`, `ESC [ 12 ; 5 R`, `ESC ] 11 ; rgb:... BEL`, DCS replies), mouse
/// reports and other keys. Holds no more than a sequence's first bytes.
#[derive(Debug, Default)]
pub struct KeyReader {
    state: KeyState,
    /// A CSI sequence's bytes after `ESC [` (at most 32 kept).
    csi: Vec<u8>,
}

impl KeyReader {
    /// A reader at the start of input.
    pub fn new() -> Self {
        Self::default()
    }

    /// The keys in `input`.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Key> {
        let mut keys = Vec::new();
        for &b in input {
            if let Some(k) = self.byte(b) {
                keys.push(k);
            }
        }
        keys
    }

    fn byte(&mut self, b: u8) -> Option<Key> {
        use KeyState as S;
        match self.state {
            S::Ground => match b {
                0x1b => {
                    self.state = S::Esc;
                    None
                }
                b' ' | b'p' => Some(Key::Pause),
                b'+' | b'=' => Some(Key::Faster),
                b'-' | b'_' => Some(Key::Slower),
                b'.' => Some(Key::Step),
                b'q' | b'Q' | 0x03 | 0x04 => Some(Key::Quit),
                _ => None,
            },
            S::Esc => {
                self.state = match b {
                    b'[' => {
                        self.csi.clear();
                        S::Csi
                    }
                    b'O' => S::Ss3,
                    b']' | b'P' | b'_' | b'^' | b'X' => S::Str,
                    0x1b => S::Esc,
                    _ => S::Ground,
                };
                None
            }
            S::Ss3 => {
                self.state = S::Ground;
                Self::arrow(b)
            }
            S::Csi => match b {
                0x40..=0x7e => {
                    self.state = S::Ground;
                    if b == b'M' && self.csi.is_empty() {
                        self.state = S::Mouse(3);
                        return None;
                    }
                    // Only bare arrows (or with a modifier `1;N`) are keys; answers carry
                    // parameters or a private marker.
                    let plain = self.csi.is_empty() || self.csi.starts_with(b"1;");
                    if plain {
                        Self::arrow(b)
                    } else {
                        None
                    }
                }
                0x1b => {
                    self.state = S::Esc;
                    None
                }
                0x18 | 0x1a => {
                    self.state = S::Ground;
                    None
                }
                _ => {
                    if self.csi.len() < 32 {
                        self.csi.push(b);
                    }
                    None
                }
            },
            S::Str => {
                self.state = match b {
                    0x07 | 0x18 | 0x1a => S::Ground,
                    0x1b => S::StrEsc,
                    _ => S::Str,
                };
                None
            }
            S::StrEsc => {
                self.state = if b == b'\\' { S::Ground } else { S::Str };
                None
            }
            S::Mouse(n) => {
                self.state = if n <= 1 { S::Ground } else { S::Mouse(n - 1) };
                None
            }
        }
    }

    fn arrow(b: u8) -> Option<Key> {
        match b {
            b'A' => Some(Key::Faster),
            b'B' => Some(Key::Slower),
            b'C' => Some(Key::Skip),
            _ => None,
        }
    }
}

/// The player's state: what the keys changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Controls {
    /// Playback speed factor.
    pub speed: f64,
    /// Paused: nothing plays until resumed or stepped.
    pub paused: bool,
    /// Events recorded before this time (ms) play without waiting.
    pub skip_until_ms: u64,
    /// One event may play while paused.
    pub step: bool,
    /// Stop now.
    pub quit: bool,
}

impl Controls {
    /// Playing at `speed`.
    pub fn new(speed: f64) -> Self {
        Self {
            speed,
            paused: false,
            skip_until_ms: 0,
            step: false,
            quit: false,
        }
    }

    /// Applies a key; `at_ms` is where the recording is (the last event played).
    pub fn apply(&mut self, key: Key, at_ms: u64) {
        match key {
            Key::Pause => self.paused = !self.paused,
            Key::Faster => self.speed = (self.speed * 2.0).min(MAX_SPEED.max(self.speed)),
            Key::Slower => self.speed = (self.speed / 2.0).max(MIN_SPEED.min(self.speed)),
            Key::Step => {
                if self.paused {
                    self.step = true;
                }
            }
            Key::Skip => {
                self.skip_until_ms = self.skip_until_ms.max(at_ms).saturating_add(SKIP_MS);
            }
            Key::Quit => self.quit = true,
        }
    }

    /// Whether the next event, recorded at `at_ms`, plays now without waiting (skipping
    /// or stepping); a step is used up by it.
    pub fn play_at_once(&mut self, at_ms: u64) -> bool {
        if self.step {
            self.step = false;
            return true;
        }
        at_ms < self.skip_until_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut f = QueryFilter::new();
        let mut out = Vec::new();
        for c in chunks {
            f.filter(c, &mut out);
        }
        f.finish(&mut out);
        (out, f.in_alternate_screen())
    }

    #[test]
    fn queries_are_taken_out_and_the_rest_kept() {
        let stream: &[u8] =
            b"a\x1b[6nb\x1b[cc\x1b[>c\x1b[0c\x1b[?6n\x1b[5n\x1b]10;?\x07\x1b]11;?\x1b\\\
d\x1b[31mred\x1b[0m\x1b[?2004$p\x1b[14t\x1b[22;0;0t\x1bP$qm\x1b\\\x1bP+q544e\x1b\\\x1b[>q\
\x1b]52;c;?\x07\x1b]52;c;aGk=\x07\x1b]0;title\x07\x05\x1bZ\x1b[2J\x1b[H\x1bPzz\x1b\\e";
        let (out, alt) = filtered(&[stream]);
        assert_eq!(
            out,
            b"abcd\x1b[31mred\x1b[0m\x1b[22;0;0t\x1b]0;title\x07\x1b[2J\x1b[H\x1bPzz\x1b\\e"
                .to_vec()
        );
        assert!(!alt);
        // Byte by byte, the same.
        let ones: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(filtered(&ones).0, out);
    }

    #[test]
    fn the_alternate_screen_is_followed() {
        assert!(filtered(&[b"\x1b[?1049h\x1b[?1006;1000h"]).1);
        assert!(!filtered(&[b"\x1b[?1049h x \x1b[?1049l"]).1);
        assert!(filtered(&[b"\x1b[?47h"]).1);
    }

    #[test]
    fn the_real_vim_stream_asks_nothing_of_the_terminal_once_filtered() {
        let bytes = include_bytes!("../../tests/fixtures/vim-insert-two-lines-wq.bin");
        let (out, alt) = filtered(&[bytes]);
        let text = String::from_utf8_lossy(&out);
        for query in ["\x1b[6n", "\x1b[>c", "\x1b]10;?", "\x1b]11;?"] {
            assert!(bytes.windows(query.len()).any(|w| w == query.as_bytes()));
            assert!(!text.contains(query), "{query:?} left in");
        }
        assert!(text.contains("first line") && text.contains("\x1b[?1049l"));
        assert!(!alt);
    }

    #[test]
    fn long_and_cut_sequences_are_bounded_and_pass() {
        let mut long = b"\x1b]0;".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_HELD * 2));
        long.extend_from_slice(b"\x07after");
        let (out, _) = filtered(&[&long]);
        assert_eq!(out, long);
        let mut f = QueryFilter::new();
        let mut out = Vec::new();
        f.filter(&long[..MAX_HELD + 10], &mut out);
        assert!(f.held.len() <= MAX_HELD);
        // A stream cut inside a sequence: what was held goes out, a lone ESC does not.
        assert_eq!(filtered(&[b"x\x1b[3"]).0, b"x\x1b[3".to_vec());
        assert_eq!(filtered(&[b"x\x1b"]).0, b"x".to_vec());
    }

    #[test]
    fn restore_leaves_the_alternate_screen_only_when_in_it() {
        let on = String::from_utf8(restore_sequence(true)).unwrap();
        let off = String::from_utf8(restore_sequence(false)).unwrap();
        assert!(on.contains("\x1b[?1049l") && !off.contains("\x1b[?1049l"));
        for both in [&on, &off] {
            for mode in ["1000", "1002", "1003", "1006", "1015", "2004", "1"] {
                assert!(both.contains(&format!("\x1b[?{mode}l")), "{mode}");
            }
            assert!(both.contains("\x1b[?25h") && both.contains("\x1b[0m"));
            assert!(both.contains("\x1b[r") && both.contains("\x1b>"));
        }
    }

    #[test]
    fn keys_are_read_and_answers_skipped() {
        let mut r = KeyReader::new();
        let keys = r.feed(
            b"\x1b[?1;2c \x1b[12;5R+\x1b]11;rgb:0000/0000/0000\x07-\x1b[A\x1b[B\x1b[C\
\x1bOA.\x1b[<0;10;5M\x1b[M !!q\x1bP1$r0m\x1b\\\x03",
        );
        use Key::*;
        assert_eq!(
            keys,
            [Pause, Faster, Slower, Faster, Slower, Skip, Faster, Step, Quit, Quit]
        );
        // Split anywhere, the same keys.
        let mut r = KeyReader::new();
        let split: Vec<Key> = b"\x1b[?1;2c \x1b[C"
            .iter()
            .flat_map(|b| r.feed(&[*b]))
            .collect();
        assert_eq!(split, [Pause, Skip]);
    }

    #[test]
    fn controls() {
        let mut c = Controls::new(1.0);
        c.apply(Key::Faster, 0);
        c.apply(Key::Faster, 0);
        assert!((c.speed - 4.0).abs() < f64::EPSILON);
        for _ in 0..20 {
            c.apply(Key::Slower, 0);
        }
        assert!((c.speed - MIN_SPEED).abs() < f64::EPSILON);
        c.apply(Key::Step, 0);
        assert!(!c.step, "a step only while paused");
        c.apply(Key::Pause, 0);
        c.apply(Key::Step, 0);
        assert!(c.play_at_once(100) && !c.play_at_once(100));
        c.apply(Key::Skip, 1_000);
        assert!(c.play_at_once(5_999) && !c.play_at_once(6_000));
        c.apply(Key::Quit, 0);
        assert!(c.quit);
    }
}
