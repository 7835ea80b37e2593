//! # The system benchmark (issue 8)
//!
//! Starts `session-agent gateway` and `session-agent run` (this build's binary) over
//! loopback, with recording on (the local spool, and CloudWatch Logs streaming to
//! LocalStack), drives sessions with the product's client state machine, and prints a
//! table of figures beside their references and targets:
//!
//! | figure | reference | target |
//! |---|---|---|
//! | output throughput, 200 MB | the same command under `script -qfc` | ≥ 0.5× script |
//! | keystroke echo p50/p99, 1000 keys | a bare PTY running the same shell | p99 ≤ bare + 2 ms |
//! | 1 MB paste into `cat > file` | | intact |
//! | idle daemon RSS / CPU over 60 s | | ≤ 10 MiB / ≤ 0.1 s |
//! | memory per idle session at 1, 100, 1000 | | ≤ 512 KiB |
//! | StartSession → first prompt byte p50/p99 | | p99 ≤ 50 ms |
//! | CloudWatch streaming delay p99 | | ≤ 1.5 s |
//! | port forwarding, 1 GB over 1 and over 8 connections | the same bytes read straight from the source | ≥ 0.5× direct |
//! | memory per idle forwarded connection | | (for comparison) |
//!
//! `cargo bench --bench system` runs it in full (`bash scripts/bench.sh` also starts
//! LocalStack and the criterion benches); `-- --write-docs` also rewrites the results
//! section of `docs/benchmarks.md` and the plot `docs/benchmarks-scaling.svg`.
//! Under `cargo test` (no `--bench` argument) it runs a small smoke version with the
//! debug binary, so the harness cannot rot: it fails if any step fails or a paste
//! arrives damaged, never on a figure.
//!
//! Everything shares the machine: the client (this process), the gateway, the agent,
//! the shells and LocalStack all run on the same cores, as the `script` reference does
//! not. The figures are therefore pessimistic for the agent.

// A binary crate: `pub` only marks what its modules share.
#![allow(unreachable_pub)]

mod baseline;
mod client;
mod measure;
mod port;
mod report;
mod stack;

use anyhow::{ensure, Result};
use measure::percentile_ms;
use report::{Row, Verdict};
use stack::Stack;
use std::process::ExitCode;
use std::time::Duration;

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub full: bool,
    pub flood_bytes: u64,
    pub flood_runs: usize,
    pub keystrokes: usize,
    pub paste_bytes: usize,
    pub idle: Duration,
    pub starts: usize,
    pub markers: usize,
    pub scale: Vec<usize>,
    pub scale_total: u64,
    /// Port forwarding: bytes through one connection, and through eight at once.
    pub port_bytes: u64,
    /// Idle connections through one port session.
    pub port_idle: usize,
    /// Command audit: `/bin/true` runs per loop, and loops each way (interleaved).
    pub fork_loop: u32,
    pub fork_pairs: usize,
    pub open_parallel: usize,
    pub settle: Duration,
    /// `--only STEP[,STEP]`: run just these steps (idle, start, echo, paste, streaming,
    /// throughput, port, audit, scaling), e.g. to profile one.
    pub only: Vec<String>,
}

impl Plan {
    fn full() -> Self {
        Self {
            full: true,
            flood_bytes: 200_000_000,
            flood_runs: 3,
            keystrokes: 1000,
            paste_bytes: 1_000_000,
            idle: Duration::from_secs(60),
            starts: 100,
            markers: 100,
            scale: vec![1, 10, 100, 1000],
            scale_total: 100_000_000,
            port_bytes: 1_000_000_000,
            port_idle: 60,
            fork_loop: 10_000,
            fork_pairs: 5,
            open_parallel: 25,
            settle: Duration::from_secs(3),
            only: Vec::new(),
        }
    }

    fn smoke() -> Self {
        Self {
            full: false,
            flood_bytes: 2_000_000,
            flood_runs: 1,
            keystrokes: 30,
            paste_bytes: 200_000,
            idle: Duration::from_secs(1),
            starts: 3,
            markers: 2,
            scale: vec![1, 4],
            scale_total: 1_000_000,
            port_bytes: 4_000_000,
            port_idle: 4,
            fork_loop: 200,
            fork_pairs: 1,
            open_parallel: 4,
            settle: Duration::from_millis(500),
            only: Vec::new(),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let write_docs = args.iter().any(|a| a == "--write-docs");
    if args.iter().any(|a| a == "--help" || a == "-h") {
        #[allow(clippy::print_stdout)]
        {
            println!(
                "cargo bench --bench system [-- --write-docs] [-- --only STEP,...]\n\n\
                 Needs LocalStack on 127.0.0.1:4566 and root (sessions run as ssm-user).\n\
                 `bash scripts/bench.sh` does all of it. --write-docs rewrites the results\n\
                 in docs/benchmarks.md and docs/benchmarks-scaling.svg. Steps: idle, start,\n\
                 echo, paste, streaming, throughput, port, scaling."
            );
        }
        return ExitCode::SUCCESS;
    }
    let mut plan = if full { Plan::full() } else { Plan::smoke() };
    if let Some(list) = args
        .iter()
        .position(|a| a == "--sessions")
        .and_then(|i| args.get(i + 1))
    {
        plan.scale = list.split(',').filter_map(|n| n.parse().ok()).collect();
    }
    if let Some(i) = args.iter().position(|a| a == "--only") {
        plan.only = args
            .get(i + 1)
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            report::say(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let stack = match rt.block_on(Stack::start(true)) {
        Ok(s) => s,
        Err(e) => {
            report::say(&format!("benchmark failed: {e:#}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&stack, &plan)) {
        Ok(results) => {
            report::say(&results.table());
            if std::env::var_os("BENCH_KEEP").is_some() {
                report::say(&format!("logs kept in {}", stack.dir.keep().display()));
            }
            if write_docs {
                if let Err(e) = results.write_docs() {
                    report::say(&format!("writing docs: {e:#}"));
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let kept = stack.dir.keep();
            report::say(&format!(
                "benchmark failed: {e:#}\nlogs kept in {} (gateway.log, <target>/agent.log)",
                kept.display()
            ));
            ExitCode::FAILURE
        }
    }
}

async fn run(stack: &Stack, plan: &Plan) -> Result<report::Results> {
    let mut rows = Vec::new();
    let progress = |what: &str| report::say(&format!("-- {what}"));

    let mut ours = Vec::new();
    let mut script = Vec::new();
    let mut scale = Vec::new();
    let want = |step: &str| plan.only.is_empty() || plan.only.iter().any(|o| o == step);
    let agent = stack.agent("bench-main").await?;
    if want("idle") {
        let step: Result<()> = async {
            progress("idle daemon");
            let (rss, cpu, threads) = measure::idle(&agent, plan.idle).await?;
            let rss_mib = rss as f64 / 1024.0;
            rows.push(Row::new(
                "idle daemon RSS",
                format!("{rss_mib:.1} MiB ({threads} threads)"),
                "",
                "≤ 10 MiB",
                Verdict::at_most(rss_mib, 10.0),
            ));
            let cpu_s = cpu.as_secs_f64();
            rows.push(Row::new(
                &format!("idle daemon CPU over {} s", plan.idle.as_secs()),
                format!("{cpu_s:.2} s"),
                "",
                "≤ 0.1 s",
                Verdict::at_most(cpu_s, 0.1),
            ));
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("idle", &e));
        }
    }

    if want("start") {
        let step: Result<()> = async {
            progress("session start");
            let starts = measure::start_latency(stack, &agent, plan.starts).await?;
            let (p50, p99) = (percentile_ms(&starts, 50.0), percentile_ms(&starts, 99.0));
            rows.push(Row::new(
                &format!(
                    "session start → first prompt byte ({} starts)",
                    starts.len()
                ),
                format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
                "",
                "p99 ≤ 50 ms",
                Verdict::at_most(p99, 50.0),
            ));
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("start", &e));
        }
    }

    if want("echo") {
        let step: Result<()> = async {
            progress("keystroke echo");
            let ours = measure::session_echo(stack, &agent, plan.keystrokes).await?;
            let bare = measure::bare_echo(plan.keystrokes).await?;
            let (o50, o99) = (percentile_ms(&ours, 50.0), percentile_ms(&ours, 99.0));
            let (b50, b99) = (percentile_ms(&bare, 50.0), percentile_ms(&bare, 99.0));
            rows.push(Row::new(
                &format!("keystroke echo ({} keys)", ours.len()),
                format!("p50 {o50:.2} ms, p99 {o99:.2} ms"),
                &format!("bare PTY: p50 {b50:.2} ms, p99 {b99:.2} ms"),
                "p99 ≤ bare + 2 ms",
                Verdict::at_most(o99, b99 + 2.0),
            ));
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("echo", &e));
        }
    }

    if want("paste") {
        let step: Result<()> = async {
            progress("paste");
            let (took, intact) = measure::paste(stack, &agent, plan.paste_bytes).await?;
            ensure!(intact, "the paste arrived damaged");
            rows.push(Row::new(
                &format!("paste {} KB into `cat > file`", plan.paste_bytes / 1000),
                format!("{:.0} ms, intact (SHA-256 equal)", took.as_secs_f64() * 1e3),
                "",
                "intact",
                Verdict::Met,
            ));
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("paste", &e));
        }
    }

    if want("streaming") {
        let step: Result<()> = async {
            progress("CloudWatch streaming delay");
            let delays = measure::streaming_delay(stack, &agent, plan.markers).await?;
            let (d50, d99) = (percentile_ms(&delays, 50.0), percentile_ms(&delays, 99.0));
            rows.push(Row::new(
                &format!("CloudWatch streaming delay ({} events)", delays.len()),
                format!("p50 {d50:.0} ms, p99 {d99:.0} ms"),
                "",
                "p99 ≤ 1500 ms",
                Verdict::at_most(d99, 1500.0),
            ));
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("streaming", &e));
        }
    }

    if want("throughput") {
        let step: Result<()> = async {
            progress("output throughput");
            for _ in 0..plan.flood_runs {
                let (bytes, t) =
                    measure::session_throughput(stack, &agent, plan.flood_bytes).await?;
                ours.push(bytes as f64 / 1e6 / t.as_secs_f64());
                agent.wait_delivered(Duration::from_secs(600)).await?;
                let (bytes, t) = measure::script_throughput(stack, plan.flood_bytes).await?;
                script.push(bytes as f64 / 1e6 / t.as_secs_f64());
            }
            let (o, s) = (median(&ours), median(&script));
            rows.push(Row::new(
                &format!(
                    "output throughput, {} MB (median of {})",
                    plan.flood_bytes / 1_000_000,
                    ours.len()
                ),
                format!("{o:.0} MB/s ({:.2}× script)", o / s),
                &format!("script -qfc: {s:.0} MB/s"),
                "≥ 0.5× script",
                Verdict::at_least(o / s, 0.5),
            ));
            // The same with CloudWatch streaming off (recording to the local spool only), on
            // a gateway whose preferences say so: what streaming costs.
            let quiet = Stack::start(false).await?;
            let spool_agent = quiet.agent("bench-spool-only").await?;
            let (bytes, t) =
                measure::session_throughput(&quiet, &spool_agent, plan.flood_bytes).await?;
            let q = bytes as f64 / 1e6 / t.as_secs_f64();
            stack.empty_log_group().await?;
            rows.push(Row::new(
                "output throughput, recording to the spool only (no streaming; one run)",
                format!("{q:.0} MB/s ({:.2}× script)", q / s),
                &format!("script -qfc: {s:.0} MB/s"),
                "(for comparison)",
                Verdict::at_least(q / s, 0.5),
            ));
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("throughput", &e));
        }
    }
    if want("port") {
        let step: Result<()> = async {
            progress("port forwarding");
            for conns in [1usize, 8] {
                let (ours, direct) =
                    port::throughput(stack, &agent, plan.port_bytes, conns).await?;
                rows.push(Row::new(
                    &format!(
                        "port forwarding, {} MB over {conns} connection{}",
                        plan.port_bytes / 1_000_000,
                        if conns == 1 { "" } else { "s at once" }
                    ),
                    format!("{ours:.0} MB/s ({:.2}× direct)", ours / direct),
                    &format!("direct loopback TCP: {direct:.0} MB/s"),
                    "≥ 0.5× direct",
                    Verdict::at_least(ours / direct, 0.5),
                ));
            }
            let (before, after) =
                port::idle_connections(stack, &agent, plan.port_idle, plan.settle).await?;
            let per = after.saturating_sub(before) as f64 / plan.port_idle as f64;
            rows.push(Row::new(
                &format!(
                    "memory per idle forwarded connection, {} open",
                    plan.port_idle
                ),
                format!("{per:.0} KiB (agent RSS {before} → {after} KiB)"),
                "",
                "(for comparison)",
                Verdict::Met,
            ));
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("port", &e));
        }
    }
    if want("audit") {
        let step: Result<()> = async {
            progress("command audit on a fork-heavy loop");
            // The main agent audits (the default, as root); a second one does not. The
            // same pair on a gateway that does not stream to CloudWatch: there every exec
            // and exit goes to the spool only, here also to LocalStack, which runs on
            // this machine's cores (a real host streams to a remote service). Runs
            // interleaved, so all see the same machine.
            let off = stack
                .agent_with("bench-audit-off", &["--command-audit", "off"])
                .await?;
            let quiet = Stack::start(false).await?;
            let quiet_on = quiet.agent("bench-audit-spool-on").await?;
            let quiet_off = quiet
                .agent_with("bench-audit-spool-off", &["--command-audit", "off"])
                .await?;
            let mut runs = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..plan.fork_pairs {
                for (i, (st, a)) in [
                    (stack, &off),
                    (stack, &agent),
                    (&quiet, &quiet_off),
                    (&quiet, &quiet_on),
                ]
                .into_iter()
                .enumerate()
                {
                    runs[i].push(
                        measure::fork_loop(st, a, plan.fork_loop)
                            .await?
                            .as_secs_f64(),
                    );
                }
            }
            let spread = |v: &[f64]| {
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(0.0, f64::max);
                format!("{lo:.2}–{hi:.2} s")
            };
            for (what, off_i, on_i) in [
                ("streamed to CloudWatch (LocalStack, same machine)", 0, 1),
                ("spool only", 2, 3),
            ] {
                let (m_on, m_off) = (median(&runs[on_i]), median(&runs[off_i]));
                let slower = (m_on / m_off - 1.0) * 100.0;
                rows.push(Row::new(
                    &format!(
                        "shell loop of {} /bin/true, command audit on, {what} (median of {})",
                        plan.fork_loop, plan.fork_pairs
                    ),
                    format!(
                        "{m_on:.2} s ({slower:+.0}% vs off; runs {})",
                        spread(&runs[on_i])
                    ),
                    &format!("audit off: {m_off:.2} s (runs {})", spread(&runs[off_i])),
                    "≤ 10% slower",
                    Verdict::at_most(slower, 10.0),
                ));
            }
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("audit", &e));
        }
    }
    drop(agent);

    if want("scaling") {
        let step: Result<()> = async {
            progress("scaling");
            for &n in &plan.scale {
                progress(&format!("  {n} sessions"));
                let step = measure::scale(stack, n, plan.scale_total, plan).await?;
                let per = (step.rss_idle_kib.saturating_sub(step.rss_before_kib)) as f64 / n as f64;
                rows.push(Row::new(
                    &format!("memory per idle session, {n} open"),
                    format!(
                        "{per:.0} KiB (agent RSS {} → {} KiB, {} threads)",
                        step.rss_before_kib, step.rss_idle_kib, step.threads_idle
                    ),
                    "",
                    "≤ 512 KiB",
                    Verdict::at_most(per, 512.0),
                ));
                scale.push(step);
            }
            Ok(())
        }
        .await;
        if let Err(e) = step {
            rows.push(Row::failed("scaling", &e));
        }
    }
    Ok(report::Results {
        rows,
        scale,
        flood_runs: (ours, script),
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
