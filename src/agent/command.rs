//! `NonInteractiveCommands` sessions: one program, no terminal (protocol-sessions.md §3).
//!
//! The document's `commands` for this platform are split with shell-like quoting (the
//! `shlex` crate; upstream uses google/shlex: no shell, so `a && b`, pipes and `$VAR`
//! are passed literally as arguments) and the first word runs as the session user, with
//! the others as its arguments, in a process group of its own, standard input at end of
//! file. Its standard output and standard error go to the client as they come
//! (upstream's default mode holds everything until the program exits: here nothing
//! waits): both as output (PayloadType 1), or, with `separateOutputStream`, standard
//! error as StdErr (11) and each with its prefix, then the `EXIT_CODE: n` message (12)
//! once the program has exited and both pipes are read, as upstream. The client's Ctrl-C
//! and Ctrl-\ become SIGINT and SIGQUIT for the program; other keystrokes are dropped.
//! The program leads a session of its own (the `__exec-as` shim's `--setsid`): when the
//! session ends first (terminated, timed out) its group is killed, and when it exits,
//! everything of its session still running (background jobs, other groups) is.
//!
//! Everything shown is recorded like a shell's output. Memory is bounded: each pipe is
//! read in chunks of at most [`CHUNK`] bytes into a channel of [`QUEUE`] chunks, read by
//! the pump only while the data channel has room, so a program that writes faster than
//! the client reads is paused by its full pipe.

use super::session::{SessionInput, SessionIo, SessionOutput, TypedOutput};
use crate::protocol::frame::PayloadType;
use crate::session::pty::ExitStatus;
use bytes::Bytes;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Bytes per read of a pipe (prefix included).
pub(crate) const CHUNK: usize = 16 * 1024;
/// Chunks waiting for the pump.
pub(crate) const QUEUE: usize = 8;
/// After the program exits, how long what it left running may hold its pipes open.
const PIPES_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Prefixes allowed with `separateOutputStream` (upstream's rule).
const PREFIX_MAX: usize = 30;

/// What a `NonInteractiveCommands` document asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandRequest {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// `separateOutputStream`: the prefixes of standard output and standard error.
    pub separate: Option<(String, String)>,
}

/// Reads this platform's block of the properties (upstream's rules, §3.1).
///
/// # Errors
/// What is wrong, for the user.
pub(crate) fn request(block: &serde_json::Value, commands: &str) -> Result<CommandRequest, String> {
    let argv =
        shlex::split(commands).ok_or("Failed to parse commands input (unbalanced quotes?)")?;
    if argv.is_empty() {
        return Err("Commands cannot be empty for session type NonInteractiveCommands".into());
    }
    let separate = match block.get("separateOutputStream") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => match s.trim() {
            "" => false,
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            other => return Err(format!("separateOutputStream {other:?} is not a boolean")),
        },
        Some(other) => return Err(format!("separateOutputStream {other} is not a boolean")),
    };
    let prefix = |key: &str| -> Result<String, String> {
        let p = block.get(key).and_then(|v| v.as_str()).unwrap_or_default();
        let ok = p.len() <= PREFIX_MAX
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '\r' | '\n' | '_' | ':' | '-'));
        if ok {
            Ok(p.to_owned())
        } else {
            Err(format!("invalid {key} {p:?}"))
        }
    };
    let separate = if separate {
        Some((
            prefix("stdOutSeparatorPrefix")?,
            prefix("stdErrSeparatorPrefix")?,
        ))
    } else {
        None
    };
    Ok(CommandRequest { argv, separate })
}

/// A started command: the pump's handles and the task that ends with its exit.
pub(crate) struct Started {
    pub io: SessionIo,
    pub task: tokio::task::JoinHandle<Result<Option<ExitStatus>, String>>,
}

/// Starts `child` (spawned with piped output) and its readers.
pub(crate) fn start(
    mut child: tokio::process::Child,
    separate: Option<(String, String)>,
) -> Started {
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let (keys_tx, keys) = mpsc::channel(16);
    let (exit_tx, exited) = tokio::sync::oneshot::channel();
    let (out_prefix, err_prefix, err_type) = match &separate {
        Some((o, e)) => (o.clone(), e.clone(), PayloadType::StdErr),
        None => (String::new(), String::new(), PayloadType::Output),
    };
    let mut readers = tokio::task::JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        readers.spawn(pipe(
            stdout,
            PayloadType::Output,
            out_prefix,
            out_tx.clone(),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.spawn(pipe(stderr, err_type, err_prefix, out_tx.clone()));
    }
    // Taken now: once the child is waited for, tokio no longer gives its id, and the
    // group (named by it) must still be killed.
    let pid = child.id();
    let task = tokio::spawn(async move {
        let status = supervise(&mut child, pid, keys).await;
        // What the program left running is killed with its group; what still holds the
        // pipes after that is given a moment, then its readers stop.
        // The shim made it a session leader: its session is swept, whatever groups
        // (or daemons) it started.
        if let Some(pid) = pid {
            let _ = tokio::task::spawn_blocking(move || {
                crate::session::pty::kill_session_of(pid);
            })
            .await;
        }
        let drained = tokio::time::timeout(PIPES_AFTER_EXIT, async {
            while readers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            readers.abort_all();
        }
        let status = status?;
        if separate.is_some() {
            let code = status.code.unwrap_or(-1);
            let _ = out_tx
                .send((
                    PayloadType::ExitCode,
                    Bytes::from(format!("EXIT_CODE: {code}")),
                ))
                .await;
        }
        drop(out_tx);
        let _ = exit_tx.send(());
        Ok(Some(status))
    });
    Started {
        io: SessionIo {
            output: SessionOutput::Typed(TypedOutput::new(out_rx)),
            input: SessionInput::Keys(keys_tx),
            resize: Box::new(|_, _| {}),
            exited,
            // Keystrokes are not echoed by anything: recorded as typed (only Ctrl-C and
            // Ctrl-\ do anything).
            echo_probe: Box::new(|| Some(false)),
            flags: None,
        },
        task,
    }
}

/// Waits for the program, passing on the client's signals; kills its group when the
/// session ends first (the keystroke channel closes).
async fn supervise(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    mut keys: mpsc::Receiver<Vec<u8>>,
) -> Result<ExitStatus, String> {
    use nix::sys::signal::Signal;
    let mut session_open = true;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
                return Ok(exit_status(status));
            }
            k = keys.recv(), if session_open => match k {
                Some(bytes) => {
                    // The first of Ctrl-C / Ctrl-\ in the chunk, to the program (upstream).
                    let signal = bytes.iter().find_map(|b| match b {
                        0x03 => Some(Signal::SIGINT),
                        0x1c => Some(Signal::SIGQUIT),
                        _ => None,
                    });
                    if let (Some(signal), Some(pid)) = (signal, pid) {
                        let _ = nix::sys::signal::kill(pid_of(pid), signal);
                    }
                }
                None => {
                    session_open = false;
                    if let Some(pid) = pid {
                        kill_group(pid, Signal::SIGKILL);
                    }
                }
            },
        }
    }
}

fn pid_of(pid: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// Signals the program's process group (it leads its own: `spawn_piped`).
fn kill_group(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(pid_of(pid), signal);
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus {
        code: status.code(),
        signal: status.signal().map(|s| {
            nix::sys::signal::Signal::try_from(s)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {s}"))
        }),
    }
}

/// Reads one pipe into the channel; `prefix` before a chunk that starts a line
/// (upstream's rule: the first chunk, or one after a chunk that ended with a newline).
async fn pipe(
    mut from: impl tokio::io::AsyncRead + Unpin,
    payload_type: PayloadType,
    prefix: String,
    to: mpsc::Sender<(PayloadType, Bytes)>,
) {
    let mut buf = vec![0u8; CHUNK - prefix.len()];
    let mut at_line_start = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut chunk = Vec::with_capacity(prefix.len() + n);
        if at_line_start {
            chunk.extend_from_slice(prefix.as_bytes());
        }
        chunk.extend_from_slice(&buf[..n]);
        at_line_start = buf[n - 1] == b'\n';
        if to.send((payload_type, Bytes::from(chunk))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_split_like_a_shell_without_one() {
        let r = request(&json!({}), "printf '%s|' \"a b\" c && rm -rf / # x").unwrap();
        assert_eq!(
            r.argv,
            ["printf", "%s|", "a b", "c", "&&", "rm", "-rf", "/"]
        );
        assert_eq!(r.separate, None);
        assert!(request(&json!({}), "echo 'unbalanced")
            .unwrap_err()
            .contains("parse"));
        assert!(request(&json!({}), "  # only a comment")
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn separate_streams_and_their_prefixes_as_upstream() {
        let r = request(
            &json!({"separateOutputStream": "true", "stdOutSeparatorPrefix": "OUT:", "stdErrSeparatorPrefix": "ERR:"}),
            "id",
        )
        .unwrap();
        assert_eq!(r.separate, Some(("OUT:".into(), "ERR:".into())));
        assert_eq!(
            request(&json!({"separateOutputStream": true}), "id")
                .unwrap()
                .separate,
            Some((String::new(), String::new()))
        );
        for bad in [
            json!({"separateOutputStream": "yes"}),
            json!({"separateOutputStream": 1}),
            json!({"separateOutputStream": true, "stdOutSeparatorPrefix": "bad prefix"}),
            json!({"separateOutputStream": true, "stdErrSeparatorPrefix": "x".repeat(31)}),
        ] {
            assert!(request(&bad, "id").is_err(), "{bad}");
        }
    }
}
