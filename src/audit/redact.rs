//! Secrets in command lines (issue 19, item 3), removed before an audited argv is
//! written anywhere (pure).
//!
//! Arguments carry passwords (`mysql -pSECRET`, `curl -u user:pass`, `--password=...`,
//! `https://user:pass@host`, `-H 'Authorization: Bearer ...'`). A [`Redactor`] replaces
//! the secret part of such arguments with [`MASK`] and counts what it replaced; the
//! program name and every other argument stay as they were, so the record still says
//! what ran. The rules:
//!
//! * flags whose value is a secret, given as `--flag=value` or `--flag value`
//!   ([`DEFAULT_SECRET_FLAGS`], plus the administrator's);
//! * per program: the MySQL family's `-pSECRET` (attached only: `-p` alone prompts),
//!   `sshpass -p SECRET`, curl/wget's `-u`/`--user user:SECRET`;
//! * anywhere: `NAME=value` where NAME says password/secret/token/key, URLs with a
//!   password, and `Authorization:` / `X-Api-Key:` header values;
//! * the administrator's own patterns (regular expressions; their first capture group,
//!   or the whole match without one, is masked).
//!
//! What it cannot know (a secret in a positional argument, an alias) it does not claim
//! to hide; the command audit's readers are told that rules apply, and the count says
//! when they did.
//!
//! The same rules find secrets in typed text: [`Redactor::secrets_in_line`] reads a
//! command line as the user typed it or as the prompt shows it (shell words, quotes
//! removed, split at `;`, `&&`, `|`, ...; a program found anywhere in a segment, so the
//! prompt in front of a command does not hide it) and returns the secret *literals*; the
//! recording's scrubber (`agent::recording`) masks them in the typed and echoed text, and
//! [`Redactor::redact_with_secrets`] returns those of an argv for the same use. A value
//! that is only a variable reference (`$DB_PASS`, `${TOKEN}`, `$(cat f)`) is not itself a
//! secret and is not returned (the audit sees its expansion in the argv).
//!
//! The built-in rules are always on: a switch to turn them off would make recording
//! passwords one configuration line away, and what they mask is only the value of a
//! secret-named flag, assignment, URL password or header, never the program or the other
//! arguments. The administrator adds flags and patterns (`redact_flags`,
//! `redact_patterns` in the agent's configuration).

use regex::Regex;

/// What a secret is replaced by.
pub const MASK: &str = "[redacted]";

/// Flags whose value is a secret, in every program.
pub const DEFAULT_SECRET_FLAGS: &[&str] = &[
    "--password",
    "--passwd",
    "--pass",
    "--secret",
    "--token",
    "--api-key",
    "--apikey",
    "--access-key",
    "--secret-key",
    "--secret-access-key",
    "--client-secret",
    "--auth-token",
    "--http-password",
    "--ftp-password",
    "--proxy-password",
];

/// The most of a line [`Redactor::secrets_in_line`] reads (bytes).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// How often per command [`Redactor::secrets_in_line`] applies the program rules (a
/// program with rules found after a prompt, `sudo`, `env`, ...).
pub const MAX_PROGRAMS_PER_COMMAND: usize = 8;

/// The MySQL family: `-pSECRET`.
const MYSQL: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mysqlimport",
    "mariadb",
    "mariadb-dump",
];

/// Removes secrets from command lines. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Redactor {
    flags: Vec<String>,
    /// The administrator's flags and patterns, as given (for `config check`).
    extra_flags: Vec<String>,
    patterns: Vec<Regex>,
    assignment: Regex,
    /// A secret flag with its value inside a longer argument (a `sh -c` script).
    embedded_flag: Regex,
    url: Regex,
    header: Regex,
}

impl Default for Redactor {
    fn default() -> Self {
        // The built-in patterns are constants, compiled in every test run.
        Self::new::<&str>(&[], &[]).expect("the built-in redaction patterns compile")
    }
}

impl Redactor {
    /// The built-in rules, plus `extra_flags` (e.g. `--vault-pass`) and `patterns`
    /// (regular expressions, size-bounded).
    ///
    /// # Errors
    /// A pattern that does not compile, named.
    pub fn new<S: AsRef<str>>(extra_flags: &[S], patterns: &[S]) -> Result<Self, String> {
        let compile = |p: &str| {
            regex::RegexBuilder::new(p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("redaction pattern {p:?}: {e}"))
        };
        let mut flags: Vec<String> = DEFAULT_SECRET_FLAGS
            .iter()
            .map(|f| (*f).to_owned())
            .collect();
        flags.extend(extra_flags.iter().map(|f| f.as_ref().to_owned()));
        let alternatives: Vec<String> = flags.iter().map(|f| regex::escape(f)).collect();
        let embedded_flag = compile(&format!(
            r#"(?:^|[\s;&|('"])(?:{})(?:=|\s+)([^\s;&|)'"]+)"#,
            alternatives.join("|")
        ))?;
        Ok(Self {
            flags,
            extra_flags: extra_flags.iter().map(|f| f.as_ref().to_owned()).collect(),
            patterns: patterns
                .iter()
                .map(|p| compile(p.as_ref()))
                .collect::<Result<_, _>>()?,
            // Anywhere in an argument (also inside a `sh -c` script): NAME=value.
            assignment: compile(
                r#"(?i)(?:^|[^A-Za-z0-9_.-])[A-Za-z0-9_.-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)[A-Za-z0-9_.-]*=('[^']*'|"[^"]*"|[^\s;&|'"]+)"#,
            )?,
            embedded_flag,
            url: compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^@\s/]+)@")?,
            header: compile(
                r"(?i)^\s*(?:authorization|proxy-authorization|x-api-key|x-auth-token)\s*:\s*(.+)$",
            )?,
        })
    }

    /// The administrator's extra secret flags, as configured.
    pub fn extra_flags(&self) -> &[String] {
        &self.extra_flags
    }

    /// The administrator's patterns, as configured.
    pub fn patterns(&self) -> Vec<&str> {
        self.patterns.iter().map(Regex::as_str).collect()
    }

    /// `argv` with its secrets masked, and how many were.
    pub fn redact(&self, argv: &[String]) -> (Vec<String>, usize) {
        let mut found = Vec::new();
        self.redact_into(argv, &mut found)
    }

    /// [`redact`](Self::redact), and the secret literals it masked (to be masked wherever
    /// else the session shows them; variable references left out, see the module docs).
    pub fn redact_with_secrets(&self, argv: &[String]) -> (Vec<String>, usize, Vec<String>) {
        let mut found = Vec::new();
        let (out, count) = self.redact_into(argv, &mut found);
        (out, count, literals(found))
    }

    /// The secret literals the rules find in a line of shell text: a command line as it
    /// was typed, or as the prompt shows it (prompt included). Reads at most
    /// [`MAX_LINE_BYTES`] of it, and tries the program rules at most
    /// [`MAX_PROGRAMS_PER_COMMAND`] times per command, so the work is linear in the line.
    pub fn secrets_in_line(&self, line: &str) -> Vec<String> {
        let mut cut = line.len().min(MAX_LINE_BYTES);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let line = &line[..cut];
        let mut found = Vec::new();
        // The rules that need no words, on the text as typed (quotes still there).
        let _ = self.mask_anywhere(line, &mut found);
        for segment in shell_segments(line) {
            let starts = segment
                .iter()
                .enumerate()
                .filter(|(i, word)| *i == 0 || is_program_with_rules(word))
                .take(MAX_PROGRAMS_PER_COMMAND);
            for (i, _) in starts {
                let _ = self.redact_into(&segment[i..], &mut found);
            }
        }
        literals(found)
    }

    fn redact_into(&self, argv: &[String], found: &mut Vec<String>) -> (Vec<String>, usize) {
        let program = program_name(argv.first().map_or("", String::as_str));
        let mut out = Vec::with_capacity(argv.len());
        let mut count = 0;
        let mut next_is_secret = false;
        let mut next_is_userpass = false;
        // sshpass's own `-p` comes before the command it runs (whose `-p` is its own).
        let mut sshpass_options = program == "sshpass";
        for (i, arg) in argv.iter().enumerate() {
            if i == 0 {
                out.push(arg.clone());
                continue;
            }
            if next_is_secret {
                next_is_secret = false;
                found.push(arg.clone());
                out.push(MASK.to_owned());
                count += 1;
                continue;
            }
            if next_is_userpass {
                next_is_userpass = false;
                let (masked, n) = mask_after_colon(arg, found);
                out.push(masked);
                count += n;
                continue;
            }
            // --flag=value / --flag value
            if let Some((flag, value)) = arg.split_once('=') {
                if self.flags.iter().any(|f| f == flag) {
                    found.push(value.to_owned());
                    out.push(format!("{flag}={MASK}"));
                    count += 1;
                    continue;
                }
            } else if self.flags.iter().any(|f| f == arg) {
                out.push(arg.clone());
                next_is_secret = true;
                continue;
            }
            // Program rules.
            if MYSQL.contains(&program)
                && arg.len() > 2
                && arg.starts_with("-p")
                && !arg.starts_with("--")
            {
                found.push(arg[2..].to_owned());
                out.push(format!("-p{MASK}"));
                count += 1;
                continue;
            }
            if sshpass_options {
                if arg == "-p" {
                    out.push(arg.clone());
                    next_is_secret = true;
                    sshpass_options = false;
                    continue;
                }
                if !arg.starts_with('-') {
                    sshpass_options = false;
                }
            }
            if matches!(program, "curl" | "wget") {
                if arg == "-u" || arg == "--user" || arg == "-U" || arg == "--proxy-user" {
                    out.push(arg.clone());
                    next_is_userpass = true;
                    continue;
                }
                if let Some(v) = arg.strip_prefix("--user=") {
                    let (masked, n) = mask_after_colon(v, found);
                    out.push(format!("--user={masked}"));
                    count += n;
                    continue;
                }
            }
            let (masked, n) = self.mask_anywhere(arg, found);
            out.push(masked);
            count += n;
        }
        // A secret flag at the very end has no value to mask.
        (out, count)
    }

    /// The rules that apply to any argument.
    fn mask_anywhere(&self, arg: &str, found: &mut Vec<String>) -> (String, usize) {
        let mut count = 0;
        let mut s = arg.to_owned();
        // Every NAME=value and embedded secret flag, then the header rule.
        for re in [&self.assignment, &self.embedded_flag] {
            let (masked, n) = mask_group_1(re, &s, found);
            s = masked;
            count += n;
        }
        if let Some(m) = self.header.captures(&s).and_then(|c| c.get(1)) {
            found.push(m.as_str().to_owned());
            s.replace_range(m.range(), MASK);
            count += 1;
        }
        // Every URL password in the argument.
        let mut urls = 0;
        let replaced = self.url.replace_all(&s, |c: &regex::Captures<'_>| {
            let whole = c.get(0).map_or("", |m| m.as_str());
            match c.get(1) {
                Some(pass) if pass.as_str() != MASK => {
                    urls += 1;
                    found.push(pass.as_str().to_owned());
                    let start = c.get(0).map_or(0, |m| m.start());
                    let (from, to) = (pass.start() - start, pass.end() - start);
                    format!("{}{MASK}{}", &whole[..from], &whole[to..])
                }
                _ => whole.to_owned(),
            }
        });
        s = replaced.into_owned();
        count += urls;
        for re in &self.patterns {
            let found_at = re
                .captures(&s)
                .and_then(|c| c.get(1).or_else(|| c.get(0)))
                .map(|m| m.range());
            if let Some(r) = found_at.filter(|r| !r.is_empty()) {
                found.push(s[r.clone()].to_owned());
                s.replace_range(r, MASK);
                count += 1;
            }
        }
        (s, count)
    }
}

/// A program's name without its directory.
fn program_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a word names a program with rules of its own (found anywhere in a line, after
/// a prompt, `sudo`, `env`, `time`, ...).
fn is_program_with_rules(word: &str) -> bool {
    let p = program_name(word);
    MYSQL.contains(&p) || matches!(p, "sshpass" | "curl" | "wget")
}

/// The found values worth masking elsewhere: quotes taken off, no empty values, no mask,
/// no bare variable reference or command substitution, each once, and none that is part
/// of another (a quoted value split into words by one rule and whole by another).
fn literals(found: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in found {
        let v = unquote(&v);
        if v.is_empty() || v.contains(MASK) || is_reference(v) {
            continue;
        }
        if !out.iter().any(|o| o == v) {
            out.push(v.to_owned());
        }
    }
    let all = out.clone();
    out.retain(|v| {
        !all.iter()
            .any(|o| o.len() > v.len() && o.contains(v.as_str()))
    });
    out
}

fn unquote(v: &str) -> &str {
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// `$NAME`, `${NAME}`, `$(...)`, `` `...` ``: not a secret itself.
fn is_reference(v: &str) -> bool {
    let name = |n: &str| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !n.as_bytes()[0].is_ascii_digit()
    };
    if let Some(rest) = v.strip_prefix('$') {
        if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            return name(inner);
        }
        return name(rest) || (rest.starts_with('(') && rest.ends_with(')'));
    }
    v.len() >= 2 && v.starts_with('`') && v.ends_with('`')
}

/// A line of shell text as commands of words: quotes removed (an unclosed quote runs to
/// the end, as a line still being typed), backslash escapes honoured, split at unquoted
/// `;`, `&`, `|`, `(`, `)`, `` ` `` and line ends. Tolerant: never fails.
fn shell_segments(line: &str) -> Vec<Vec<String>> {
    let mut segments = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    let end_word = |word: &mut String, words: &mut Vec<String>, in_word: &mut bool| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            ';' | '&' | '|' | '(' | ')' | '`' | '\n' | '\r' => {
                end_word(&mut word, &mut words, &mut in_word);
                if !words.is_empty() {
                    segments.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => end_word(&mut word, &mut words, &mut in_word),
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    end_word(&mut word, &mut words, &mut in_word);
    if !words.is_empty() {
        segments.push(words);
    }
    segments
}

/// Every match of `re` in `s` with its first capture group masked; how many.
fn mask_group_1(re: &Regex, s: &str, found: &mut Vec<String>) -> (String, usize) {
    let mut n = 0;
    let out = re.replace_all(s, |c: &regex::Captures<'_>| {
        let whole = c.get(0).map_or("", |m| m.as_str());
        match c.get(1) {
            Some(v) if v.as_str() != MASK => {
                n += 1;
                found.push(v.as_str().to_owned());
                let start = c.get(0).map_or(0, |m| m.start());
                format!(
                    "{}{MASK}{}",
                    &whole[..v.start() - start],
                    &whole[v.end() - start..]
                )
            }
            _ => whole.to_owned(),
        }
    });
    (out.into_owned(), n)
}

/// `user:pass` → `user:[redacted]`; no colon, nothing secret.
fn mask_after_colon(v: &str, found: &mut Vec<String>) -> (String, usize) {
    match v.split_once(':') {
        Some((user, pass)) if !pass.is_empty() => {
            found.push(pass.to_owned());
            (format!("{user}:{MASK}"), 1)
        }
        _ => (v.to_owned(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    fn redact(s: &[&str]) -> (Vec<String>, usize) {
        Redactor::default().redact(&argv(s))
    }

    #[test]
    fn common_secrets_are_masked_and_everything_else_kept() {
        let cases: &[(&[&str], &[&str], usize)] = &[
            (
                &["mysql", "-uroot", "-pS3cret", "db"],
                &["mysql", "-uroot", "-p[redacted]", "db"],
                1,
            ),
            (&["mysql", "-p", "db"], &["mysql", "-p", "db"], 0),
            (
                &["/usr/bin/curl", "-u", "alice:pw", "https://x"],
                &["/usr/bin/curl", "-u", "alice:[redacted]", "https://x"],
                1,
            ),
            (
                &["curl", "--user=alice:pw", "x"],
                &["curl", "--user=alice:[redacted]", "x"],
                1,
            ),
            (
                &["curl", "-H", "Authorization: Bearer abc.def", "x"],
                &["curl", "-H", "Authorization: [redacted]", "x"],
                1,
            ),
            (
                &["git", "clone", "https://bob:tok@github.com/x.git"],
                &["git", "clone", "https://bob:[redacted]@github.com/x.git"],
                1,
            ),
            (
                &["app", "--password=hunter2", "--token", "t0k", "--name", "n"],
                &[
                    "app",
                    "--password=[redacted]",
                    "--token",
                    "[redacted]",
                    "--name",
                    "n",
                ],
                2,
            ),
            (
                &[
                    "env",
                    "DB_PASSWORD=xyz",
                    "AWS_SECRET_ACCESS_KEY=abc",
                    "PATH=/bin",
                ],
                &[
                    "env",
                    "DB_PASSWORD=[redacted]",
                    "AWS_SECRET_ACCESS_KEY=[redacted]",
                    "PATH=/bin",
                ],
                2,
            ),
            (
                &["sshpass", "-p", "pw", "ssh", "-p", "22", "h"],
                &["sshpass", "-p", "[redacted]", "ssh", "-p", "22", "h"],
                1,
            ),
            (
                &["ssh", "-p", "22", "mkdir", "-p"],
                &["ssh", "-p", "22", "mkdir", "-p"],
                0,
            ),
            (&["app", "--password"], &["app", "--password"], 0),
            (
                &["x", "http://a:1@h,ftp://b:2@g"],
                &["x", "http://a:[redacted]@h,ftp://b:[redacted]@g"],
                2,
            ),
            // Inside a script: every assignment and secret flag.
            (
                &["sh", "-c", "env DB_PASSWORD=hunter2 true; app --token abc && x API_KEY='k'"],
                &["sh", "-c", "env DB_PASSWORD=[redacted] true; app --token [redacted] && x API_KEY=[redacted]"],
                3,
            ),
        ];
        for (input, want, n) in cases {
            let (got, count) = redact(input);
            assert_eq!(got, argv(want), "{input:?}");
            assert_eq!(count, *n, "{input:?}");
        }
    }

    #[test]
    fn the_administrators_rules_apply_and_bad_patterns_are_named() {
        let r = Redactor::new(
            &["--vault-pass"],
            &[r"^vault:(.+)$", r"sk_live_[A-Za-z0-9]+"],
        )
        .unwrap();
        let (got, n) = r.redact(&argv(&[
            "tool",
            "--vault-pass",
            "v",
            "vault:abc",
            "key=sk_live_XYZ1",
        ]));
        assert_eq!(
            got,
            argv(&[
                "tool",
                "--vault-pass",
                "[redacted]",
                "vault:[redacted]",
                "key=[redacted]"
            ])
        );
        assert_eq!(n, 3);
        let e = Redactor::new::<&str>(&[], &["(unclosed"]).unwrap_err();
        assert!(e.contains("(unclosed"), "{e}");
    }

    #[test]
    fn argv_secrets_come_back_as_literals() {
        let (out, n, secrets) = Redactor::default().redact_with_secrets(&argv(&[
            "curl",
            "-u",
            "u:pw1x",
            "-H",
            "Authorization: Bearer t0k",
            "https://a:pw2x@h/",
            "--password=$DB_PASS",
        ]));
        assert_eq!(n, 4);
        assert_eq!(out[2], "u:[redacted]");
        assert_eq!(secrets, ["pw1x", "Bearer t0k", "pw2x"]);
    }

    #[test]
    fn typed_lines_give_their_secrets_with_or_without_a_prompt() {
        let r = Redactor::default();
        let cases: &[(&str, &[&str])] = &[
            ("mysql -uroot -pS3CR3T1 db", &["S3CR3T1"]),
            ("root@host:~# mysql -pS3CR3T1 -e 'select 1'", &["S3CR3T1"]),
            ("$ curl -u u:S3CR3T2 http://127.0.0.1:1/", &["S3CR3T2"]),
            ("export API_TOKEN=S3CR3T3", &["S3CR3T3"]),
            ("echo https://u:S3CR3T4@h/", &["S3CR3T4"]),
            ("export DB_PASSWORD='two words'", &["two words"]),
            ("sudo -u app mysqldump -pS3 x | gzip > y", &["S3"]),
            ("true && sshpass -p pw9 ssh h; ls", &["pw9"]),
            (
                "curl -H 'Authorization: Bearer abc.def' x",
                &["Bearer abc.def"],
            ),
            ("app --token \"t o k\" --name n", &["t o k"]),
            // Variable references are not secrets; their expansion is (in the argv).
            ("mysql -p$DB_PASS; curl -u u:${PW}", &[]),
            ("ls -la; echo hello", &[]),
            // A line still being typed (unclosed quote).
            ("export X_SECRET='abc", &["abc"]),
        ];
        for (line, want) in cases {
            assert_eq!(r.secrets_in_line(line), *want, "{line}");
        }
        let r = Redactor::new(&["--vault-pass"], &[r"sk_live_[A-Za-z0-9]+"]).unwrap();
        assert_eq!(
            r.secrets_in_line("$ tool --vault-pass vp1 k=sk_live_Z9"),
            ["vp1", "sk_live_Z9"]
        );
        assert_eq!(r.extra_flags(), ["--vault-pass"]);
        // A hostile line: read up to its bound, the program rules tried a bounded number
        // of times (this would take minutes if every `curl` restarted the rules).
        let long = "curl -u a:bcd ".repeat(20_000);
        assert_eq!(r.secrets_in_line(&long), ["bcd"]);
        assert_eq!(r.patterns(), [r"sk_live_[A-Za-z0-9]+"]);
    }
}
