//! The references the figures are measured against, in the same run: `script -qfc`
//! (a PTY plus recording to a file, no network) for throughput, and a bare PTY running
//! the same shell for keystroke echo.

use anyhow::{bail, Context, Result};
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` under `script -qfc COMMAND FILE`, reading its output as a terminal
/// would; returns (bytes read, elapsed).
pub fn script_throughput(command: &str, dir: &Path) -> Result<(u64, Duration)> {
    let file = dir.join(format!("script-{}.log", uuid::Uuid::new_v4().simple()));
    let started = Instant::now();
    let mut child = Command::new("script")
        .args(["-qfc", command])
        .arg(&file)
        // Kept open and silent, as a terminal would be.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running script(1) from util-linux")?;
    let mut out = child.stdout.take().context("script's stdout")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let status = child.wait()?;
    let elapsed = started.elapsed();
    let recorded = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&file);
    if !status.success() || recorded < total / 2 {
        bail!("script failed ({status}) or recorded only {recorded} of {total} bytes");
    }
    Ok((total, elapsed))
}

/// Keystroke echo on a bare PTY running `/bin/sh` at its prompt: one byte written to the
/// master, time until it is read back. Blocking I/O on this thread: the best case.
pub fn bare_pty_echo(keystrokes: usize) -> Result<Vec<Duration>> {
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: 40,
            cols: 120,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("openpty: {e}"))?;
    let mut cmd = CommandBuilder::new("/bin/sh");
    cmd.env("PS1", "$ ");
    let mut child = pair
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("spawning sh: {e}"))?;
    drop(pair.slave);
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut writer = pair
        .master
        .take_writer()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.ends_with(b"$ ") {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            bail!("sh exited before its prompt");
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let mut samples = Vec::with_capacity(keystrokes);
    for i in 0..keystrokes {
        let key = KEYS[i % KEYS.len()];
        let t = Instant::now();
        writer.write_all(&[key])?;
        writer.flush()?;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                bail!("sh exited");
            }
            if buf[..n].contains(&key) {
                break;
            }
        }
        samples.push(t.elapsed());
        if (i + 1) % LINE == 0 {
            writer.write_all(KILL_LINE)?;
        }
    }
    writer.write_all(b"\x15exit\n")?;
    let _ = child.wait();
    Ok(samples)
}

/// The keys typed, in turn.
pub const KEYS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
/// Ctrl-U after this many keys, so a line never nears the 4095-byte canonical limit.
pub const LINE: usize = 200;
/// Ctrl-U: the terminal discards the line typed so far.
pub const KILL_LINE: &[u8] = b"\x15";
