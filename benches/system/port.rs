//! Port forwarding (issue 18): bytes from a TCP source on loopback read through
//! `session-agent connect`'s local port (`AWS-StartPortForwardingSession`, multiplexed),
//! the gateway, the agent and its forwarder, beside the same bytes read straight from
//! the source in the same run; and the agent's memory per idle forwarded connection.

use crate::stack::{self, Agent, Stack};
use anyhow::{bail, Context, Result};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// A source: every connection gets `each` bytes, then the end.
async fn source(each: u64) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let block = vec![0x5au8; 256 * 1024];
        while let Ok((mut s, _)) = listener.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let mut left = each;
                while left > 0 {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
                    if s.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// Reads everything from `conns` connections to `port` at once; bytes and time.
async fn read_all(port: u16, conns: usize) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(got);
                }
                got += n as u64;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok((total, started.elapsed()))
}

/// `session-agent connect` forwarding `local` to `port` on the agent's instance.
struct Forward {
    child: Child,
    local: u16,
}

impl Forward {
    async fn start(stack: &Stack, agent: &Agent, port: u16) -> Result<Self> {
        let local = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let params = format!(r#"{{"portNumber":["{port}"],"localPortNumber":["{local}"]}}"#);
        let child = Command::new(stack::BIN)
            .args([
                "connect",
                "--endpoint",
                &stack.url,
                "--target",
                &agent.target,
            ])
            .args(["--document-name", "AWS-StartPortForwardingSession"])
            .args(["--parameters", &params])
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", stack::REGION)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting session-agent connect")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", local)).await.is_err() {
            if Instant::now() > deadline {
                bail!("connect never listened on {local}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { child, local })
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// MB/s through the tunnel and straight from the source, `total` bytes over `conns`
/// connections at once.
pub async fn throughput(
    stack: &Stack,
    agent: &Agent,
    total: u64,
    conns: usize,
) -> Result<(f64, f64)> {
    let each = total / conns as u64;
    let port = source(each).await?;
    let (bytes, t) = read_all(port, conns).await?;
    let direct = bytes as f64 / 1e6 / t.as_secs_f64();
    let fwd = Forward::start(stack, agent, port).await?;
    let (bytes, t) = read_all(fwd.local, conns).await?;
    fwd.stop().await;
    if bytes != each * conns as u64 {
        bail!(
            "{bytes} bytes came through the tunnel of {}",
            each * conns as u64
        );
    }
    Ok((bytes as f64 / 1e6 / t.as_secs_f64(), direct))
}

/// The agent's RSS before and after `n` idle connections are open through one session
/// (KiB).
pub async fn idle_connections(
    stack: &Stack,
    agent: &Agent,
    n: usize,
    settle: Duration,
) -> Result<(u64, u64)> {
    // A destination that accepts and holds.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            kept.push(s);
        }
    });
    let fwd = Forward::start(stack, agent, port).await?;
    // One connection first, so the session's own cost is not counted per connection.
    let first = TcpStream::connect(("127.0.0.1", fwd.local)).await?;
    tokio::time::sleep(settle).await;
    let pid = agent.pid();
    let before = stack::status_kib(pid, "VmRSS")?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(("127.0.0.1", fwd.local)).await?);
    }
    tokio::time::sleep(settle).await;
    let after = stack::status_kib(pid, "VmRSS")?;
    drop(conns);
    drop(first);
    fwd.stop().await;
    held.abort();
    Ok((before, after))
}
