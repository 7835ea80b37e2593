//! Each figure of the table: what it runs and what it returns. Times are taken in this
//! process, the client's end, as a user would see them.

use crate::baseline::{self, KEYS, KILL_LINE, LINE};
use crate::client::Session;
pub use crate::report::Scale;
use crate::stack::{self, Agent, Stack};
use crate::Plan;
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

const PROMPT: &[u8] = b"$ ";
const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_secs(30);

/// The throughput command: lines of text, as a build log or `cat` of a file prints.
pub fn flood_command(bytes: u64) -> String {
    format!("yes 'The quick brown fox jumps over the lazy dog. 0123456789 ABCDEFGHIJ' | head -c {bytes}")
}

/// Runs the throughput command in `s` and reads until its end marker: the bytes
/// received, at least `bytes`.
async fn flood(s: &mut Session, bytes: u64) -> Result<u64> {
    s.send(format!("{}; echo flood-$((40+2))-end\n", flood_command(bytes)).as_bytes())
        .await?;
    let got = s.read_until(b"flood-42-end", LONG).await?;
    ensure!(got >= bytes, "only {got} of {bytes} bytes arrived");
    Ok(got)
}

/// Opens a session and waits for the prompt.
pub async fn open(stack: &Stack, agent: &Agent) -> Result<Session> {
    let mut s = Session::start(&stack.api, &agent.target).await?;
    s.read_until(PROMPT, SHORT).await?;
    Ok(s)
}

/// Output throughput of one session printing `bytes`: (bytes received, elapsed).
pub async fn session_throughput(
    stack: &Stack,
    agent: &Agent,
    bytes: u64,
) -> Result<(u64, Duration)> {
    let mut s = open(stack, agent).await?;
    let started = Instant::now();
    let got = flood(&mut s, bytes).await?;
    let elapsed = started.elapsed();
    s.exit().await?;
    Ok((got, elapsed))
}

/// The same command under `script -qfc` (blocking, on a thread of its own).
pub async fn script_throughput(stack: &Stack, bytes: u64) -> Result<(u64, Duration)> {
    let dir = stack.dir.path().to_owned();
    let cmd = flood_command(bytes);
    tokio::task::spawn_blocking(move || baseline::script_throughput(&cmd, &dir)).await?
}

/// Keystroke echo through the whole path: client → gateway → agent → PTY and back.
pub async fn session_echo(
    stack: &Stack,
    agent: &Agent,
    keystrokes: usize,
) -> Result<Vec<Duration>> {
    let mut s = open(stack, agent).await?;
    let mut samples = Vec::with_capacity(keystrokes);
    for i in 0..keystrokes {
        let key = KEYS[i % KEYS.len()];
        let t = Instant::now();
        s.send(&[key]).await?;
        loop {
            let chunk = s.next_output(SHORT).await?.context("session closed")?;
            if chunk.contains(&key) {
                break;
            }
        }
        samples.push(t.elapsed());
        if (i + 1) % LINE == 0 {
            s.send(KILL_LINE).await?;
        }
    }
    s.send(KILL_LINE).await?;
    s.exit().await?;
    Ok(samples)
}

/// The bare-PTY echo reference (blocking, on a thread of its own).
pub async fn bare_echo(keystrokes: usize) -> Result<Vec<Duration>> {
    tokio::task::spawn_blocking(move || baseline::bare_pty_echo(keystrokes)).await?
}

/// Pastes `bytes` of text lines into `cat > FILE` in one go (as a terminal hands a
/// paste to the client) and checks the file: (elapsed until cat finished, intact).
pub async fn paste(stack: &Stack, agent: &Agent, bytes: usize) -> Result<(Duration, bool)> {
    let dir = stack::world_writable_dir(stack.dir.path())?;
    let file = dir.join("paste.txt");
    let mut text = Vec::with_capacity(bytes);
    let mut n = 0u64;
    while text.len() < bytes {
        let line = format!("paste line {n:08} {}\n", "x".repeat(48));
        text.extend_from_slice(line.as_bytes());
        n += 1;
    }
    text.truncate(bytes - 1);
    text.push(b'\n');
    let mut s = open(stack, agent).await?;
    s.send(format!("cat > {}\n", file.display()).as_bytes())
        .await?;
    // cat must be reading before the paste starts, or the shell would get part of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    s.send(&text).await?;
    // Ctrl-D on an empty line: end of file for cat; then a marker from the shell.
    s.send(b"\x04echo paste-$((5+5))-done\n").await?;
    s.read_until(b"paste-10-done", LONG).await?;
    let elapsed = started.elapsed();
    s.exit().await?;
    let written = std::fs::read(&file).unwrap_or_default();
    let intact = Sha256::digest(&written) == Sha256::digest(&text);
    if !intact {
        crate::report::say(&format!(
            "paste: {} bytes written of {} sent; first difference at {:?}",
            written.len(),
            text.len(),
            written.iter().zip(&text).position(|(a, b)| a != b)
        ));
    }
    Ok((elapsed, intact))
}

/// Idle daemon: RSS after settling, and CPU time used over `window` with no session.
pub async fn idle(agent: &Agent, window: Duration) -> Result<(u64, Duration, u64)> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.pid();
    let cpu0 = stack::cpu_time(pid)?;
    tokio::time::sleep(window).await;
    let cpu1 = stack::cpu_time(pid)?;
    let rss = stack::status_kib(pid, "VmRSS")?;
    let threads = stack::threads(pid)?;
    Ok((rss, cpu1.saturating_sub(cpu0), threads))
}

/// StartSession to the first output byte (the prompt), `count` times in a row.
pub async fn start_latency(stack: &Stack, agent: &Agent, count: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let mut s = Session::start(&stack.api, &agent.target).await?;
        let first = s
            .next_output(SHORT)
            .await?
            .context("closed before any output")?;
        samples.push(t.elapsed());
        if !first.ends_with(PROMPT) {
            s.read_until(PROMPT, SHORT).await?;
        }
        s.exit().await?;
    }
    Ok(samples)
}

/// Output seen by the client to the event being readable from CloudWatch Logs
/// (LocalStack), `count` markers in one session, polled every 20 ms.
pub async fn streaming_delay(stack: &Stack, agent: &Agent, count: usize) -> Result<Vec<Duration>> {
    let mut s = open(stack, agent).await?;
    let mut token: Option<String> = None;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let mark = format!("cwl-{}-mark", 1000 + i);
        s.send(format!("echo cwl-$((1000+{i}))-mark\n").as_bytes())
            .await?;
        s.read_until(mark.as_bytes(), SHORT).await?;
        let seen = Instant::now();
        'poll: loop {
            let mut req = stack
                .logs
                .get_log_events()
                .log_group_name(&stack.log_group)
                .log_stream_name(&s.id)
                .start_from_head(true);
            if let Some(t) = &token {
                req = req.next_token(t);
            }
            if let Ok(page) = req.send().await {
                if let Some(t) = page.next_forward_token() {
                    token = Some(t.to_owned());
                }
                for e in page.events() {
                    if e.message()
                        .is_some_and(|m| m.contains(&format!("\"{mark}\"")))
                    {
                        break 'poll;
                    }
                }
            }
            if seen.elapsed() > SHORT {
                bail!("{mark} never appeared in {}/{}", stack.log_group, s.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples.push(seen.elapsed());
        // Spread the markers over the agent's batching window.
        let pause = rand::random::<u64>() % 300;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    s.exit().await?;
    Ok(samples)
}

pub async fn scale(stack: &Stack, n: usize, total: u64, plan: &Plan) -> Result<Scale> {
    let agent = stack.agent(&format!("bench-scale-{n}")).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = agent.pid();
    let rss_before_kib = stack::status_kib(pid, "VmRSS")?;
    let mut sessions = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for _ in 0..n {
        pending.push(open(stack, &agent));
        if pending.len() == plan.open_parallel {
            for s in futures_util::future::join_all(pending.drain(..)).await {
                sessions.push(s?);
            }
        }
    }
    for s in futures_util::future::join_all(pending).await {
        sessions.push(s?);
    }
    tokio::time::sleep(plan.settle).await;
    let rss_idle_kib = stack::status_kib(pid, "VmRSS")?;
    let threads_idle = stack::threads(pid)?;

    let each = (total / n as u64).max(1);
    let started = Instant::now();
    let runs = sessions.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let got = flood(&mut s, each).await?;
            Ok::<_, anyhow::Error>((got, s))
        })
    });
    let results = futures_util::future::join_all(runs).await;
    let elapsed = started.elapsed();
    let mut bytes = 0u64;
    let mut done = Vec::with_capacity(n);
    for r in results {
        let (got, s) = r??;
        bytes += got;
        done.push(s);
    }
    let aggregate_mb_s = bytes as f64 / 1e6 / elapsed.as_secs_f64();
    let exits = done.into_iter().map(|s| tokio::spawn(s.exit()));
    for r in futures_util::future::join_all(exits).await {
        r??;
    }
    agent.wait_delivered(Duration::from_secs(300)).await?;
    stack.empty_log_group().await?;
    Ok(Scale {
        sessions: n,
        rss_before_kib,
        rss_idle_kib,
        threads_idle,
        aggregate_mb_s,
    })
}

/// p-th percentile (nearest rank) of durations, in milliseconds.
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation)] // a rank within the sample count
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A fork-heavy workload in one session: a shell loop of `n` `/bin/true` (each a fork, an
/// exec and an exit the command audit records); the time until its end marker.
pub async fn fork_loop(stack: &Stack, agent: &Agent, n: u32) -> Result<Duration> {
    let mut s = open(stack, agent).await?;
    let started = Instant::now();
    s.send(
        format!(
            "i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done; echo loop-$((40+2))-end\n"
        )
        .as_bytes(),
    )
    .await?;
    s.read_until(b"loop-42-end", LONG).await?;
    let took = started.elapsed();
    s.exit().await?;
    Ok(took)
}
