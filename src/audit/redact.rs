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

    /// `argv` with its secrets masked, and how many were.
    pub fn redact(&self, argv: &[String]) -> (Vec<String>, usize) {
        let program = argv
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
            .unwrap_or_default();
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
                out.push(MASK.to_owned());
                count += 1;
                continue;
            }
            if next_is_userpass {
                next_is_userpass = false;
                let (masked, n) = mask_after_colon(arg);
                out.push(masked);
                count += n;
                continue;
            }
            // --flag=value / --flag value
            if let Some((flag, _)) = arg.split_once('=') {
                if self.flags.iter().any(|f| f == flag) {
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
            if MYSQL.contains(&program.as_str())
                && arg.len() > 2
                && arg.starts_with("-p")
                && !arg.starts_with("--")
            {
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
            if matches!(program.as_str(), "curl" | "wget") {
                if arg == "-u" || arg == "--user" || arg == "-U" || arg == "--proxy-user" {
                    out.push(arg.clone());
                    next_is_userpass = true;
                    continue;
                }
                if let Some(v) = arg.strip_prefix("--user=") {
                    let (masked, n) = mask_after_colon(v);
                    out.push(format!("--user={masked}"));
                    count += n;
                    continue;
                }
            }
            let (masked, n) = self.mask_anywhere(arg);
            out.push(masked);
            count += n;
        }
        // A secret flag at the very end has no value to mask.
        (out, count)
    }

    /// The rules that apply to any argument.
    fn mask_anywhere(&self, arg: &str) -> (String, usize) {
        let mut count = 0;
        let mut s = arg.to_owned();
        // Every NAME=value and embedded secret flag, then the header rule.
        for re in [&self.assignment, &self.embedded_flag] {
            let (masked, n) = mask_group_1(re, &s);
            s = masked;
            count += n;
        }
        if let Some(m) = self.header.captures(&s).and_then(|c| c.get(1)) {
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
            let found = re
                .captures(&s)
                .and_then(|c| c.get(1).or_else(|| c.get(0)))
                .map(|m| m.range());
            if let Some(r) = found.filter(|r| !r.is_empty()) {
                s.replace_range(r, MASK);
                count += 1;
            }
        }
        (s, count)
    }
}

/// Every match of `re` in `s` with its first capture group masked; how many.
fn mask_group_1(re: &Regex, s: &str) -> (String, usize) {
    let mut n = 0;
    let out = re.replace_all(s, |c: &regex::Captures<'_>| {
        let whole = c.get(0).map_or("", |m| m.as_str());
        match c.get(1) {
            Some(v) if v.as_str() != MASK => {
                n += 1;
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
fn mask_after_colon(v: &str) -> (String, usize) {
    match v.split_once(':') {
        Some((user, pass)) if !pass.is_empty() => (format!("{user}:{MASK}"), 1),
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
}
