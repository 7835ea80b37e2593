//! Windows command lines: Windows passes a program one string, which the C runtime splits
//! back into arguments (`CommandLineToArgvW` rules). [`windows_command_line`] quotes so
//! that the split gives back exactly the arguments given. Pure, so tested on every
//! build; used by the Windows logon shim (`CreateProcessAsUserW`).

/// `program` and `args` joined into one command line that splits back into exactly
/// these arguments. An argument with a NUL cannot be passed and is `None`.
pub fn windows_command_line(program: &str, args: &[String]) -> Option<String> {
    let mut line = String::new();
    for (i, arg) in std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .enumerate()
    {
        if arg.contains('\0') {
            return None;
        }
        if i > 0 {
            line.push(' ');
        }
        quote_into(arg, &mut line);
    }
    Some(line)
}

fn quote_into(arg: &str, line: &mut String) {
    let plain = !arg.is_empty() && !arg.contains([' ', '\t', '\n', '\x0b', '"']);
    if plain {
        line.push_str(arg);
        return;
    }
    line.push('"');
    let mut backslashes = 0usize;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                // Backslashes before a quote are doubled, and the quote escaped.
                line.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                line.push('"');
                backslashes = 0;
            }
            _ => {
                line.extend(std::iter::repeat_n('\\', backslashes));
                backslashes = 0;
                line.push(c);
            }
        }
    }
    // Backslashes before the closing quote are doubled.
    line.extend(std::iter::repeat_n('\\', backslashes * 2));
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CommandLineToArgvW`'s splitting (for arguments after the program), written from
    /// its documented rules, to check the quoting against.
    fn split(line: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut chars = line.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            if chars.peek().is_none() {
                return args;
            }
            let mut arg = String::new();
            let mut quoted = false;
            while let Some(&c) = chars.peek() {
                if !quoted && (c == ' ' || c == '\t') {
                    break;
                }
                chars.next();
                match c {
                    '\\' => {
                        let mut n = 1;
                        while chars.peek() == Some(&'\\') {
                            chars.next();
                            n += 1;
                        }
                        if chars.peek() == Some(&'"') {
                            arg.extend(std::iter::repeat_n('\\', n / 2));
                            if n % 2 == 1 {
                                chars.next();
                                arg.push('"');
                            }
                        } else {
                            arg.extend(std::iter::repeat_n('\\', n));
                        }
                    }
                    '"' => {
                        if quoted && chars.peek() == Some(&'"') {
                            chars.next();
                            arg.push('"');
                        } else {
                            quoted = !quoted;
                        }
                    }
                    c => arg.push(c),
                }
            }
            args.push(arg);
        }
    }

    #[test]
    fn arguments_survive_the_round_trip() {
        let cases: Vec<Vec<&str>> = vec![
            vec!["-NoLogo"],
            vec!["a b", "", "c"],
            vec![r#"say "hi""#, r"C:\Program Files\x\", r"\\server\share\"],
            vec![r#"\"#, r#"\""#, r#"a\\"b"#, "tab\there", "new\nline"],
            vec!["-Command", r#"Write-Host "a\b" 'c d'"#],
        ];
        for args in cases {
            let owned: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
            let line = windows_command_line(r"C:\Windows\System32\x.exe", &owned).unwrap();
            let split = split(&line);
            assert_eq!(split[0], r"C:\Windows\System32\x.exe", "{line}");
            assert_eq!(split[1..], owned[..], "{line}");
        }
    }

    #[test]
    fn plain_arguments_are_not_quoted_and_nul_is_refused() {
        assert_eq!(
            windows_command_line("powershell.exe", &["-NoLogo".into()]).unwrap(),
            "powershell.exe -NoLogo"
        );
        assert_eq!(
            windows_command_line(r"C:\Program Files\p.exe", &[]).unwrap(),
            r#""C:\Program Files\p.exe""#
        );
        assert!(windows_command_line("p", &["a\0b".into()]).is_none());
    }
}
