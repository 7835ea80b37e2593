//! The table, the machine description, and the results section and plot written into
//! `docs/`.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// One step of the scaling curve: a fresh agent, `n` idle sessions at their prompt
/// (memory), then all of them printing `total / n` bytes at once (throughput).
pub struct Scale {
    pub sessions: usize,
    pub rss_before_kib: u64,
    pub rss_idle_kib: u64,
    pub threads_idle: u64,
    pub aggregate_mb_s: f64,
}

/// Progress and results go to stderr, which `cargo bench` shows as it runs.
#[allow(clippy::print_stderr)]
pub fn say(text: &str) {
    eprintln!("{text}");
}

#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    Met,
    Missed,
}

impl Verdict {
    pub fn at_most(value: f64, limit: f64) -> Self {
        if value <= limit {
            Self::Met
        } else {
            Self::Missed
        }
    }

    pub fn at_least(value: f64, limit: f64) -> Self {
        if value >= limit {
            Self::Met
        } else {
            Self::Missed
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "MISSED",
        }
    }
}

#[derive(Debug)]
pub struct Row {
    figure: String,
    ours: String,
    reference: String,
    target: String,
    verdict: Verdict,
}

impl Row {
    /// A step that could not complete: its error stays in the table.
    pub fn failed(step: &str, error: &anyhow::Error) -> Self {
        say(&format!("step {step} failed: {error:#}"));
        Self::new(step, format!("FAILED: {error:#}"), "", "", Verdict::Missed)
    }

    pub fn new(
        figure: &str,
        ours: String,
        reference: &str,
        target: &str,
        verdict: Verdict,
    ) -> Self {
        Self {
            figure: figure.into(),
            ours,
            reference: reference.into(),
            target: target.into(),
            verdict,
        }
    }
}

pub struct Results {
    pub rows: Vec<Row>,
    pub scale: Vec<Scale>,
    /// MB/s of each run: (ours, script).
    pub flood_runs: (Vec<f64>, Vec<f64>),
}

impl Results {
    /// The table as markdown (readable as plain text too).
    pub fn table(&self) -> String {
        let mut t = String::from(
            "| figure | session-agent | reference | target | |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                r.figure,
                r.ours,
                if r.reference.is_empty() {
                    "–"
                } else {
                    &r.reference
                },
                r.target,
                r.verdict.text()
            );
        }
        let _ = writeln!(
            t,
            "\nThroughput runs (MB/s): session-agent {}; script {}",
            list(&self.flood_runs.0),
            list(&self.flood_runs.1)
        );
        t.push_str("\n| sessions | agent RSS before | agent RSS, all idle | threads | aggregate output MB/s |\n|---|---|---|---|---|\n");
        for s in &self.scale {
            let _ = writeln!(
                t,
                "| {} | {} KiB | {} KiB | {} | {:.0} |",
                s.sessions, s.rss_before_kib, s.rss_idle_kib, s.threads_idle, s.aggregate_mb_s
            );
        }
        t
    }

    /// Rewrites the part of docs/benchmarks.md between the result markers, and the plot.
    pub fn write_docs(&self) -> Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&root)?;
        let md_path = root.join("benchmarks.md");
        let doc = std::fs::read_to_string(&md_path)
            .unwrap_or_else(|_| format!("# Benchmarks\n\n{BEGIN}\n{END}\n"));
        let (head, rest) = doc
            .split_once(BEGIN)
            .with_context(|| format!("{} has no {BEGIN} marker", md_path.display()))?;
        let (_, tail) = rest
            .split_once(END)
            .with_context(|| format!("{} has no {END} marker", md_path.display()))?;
        let section = format!(
            "{BEGIN}\n<!-- Written by `bash scripts/bench.sh`; edits here are overwritten. -->\n\n{}\n{}\n![Aggregate output throughput and agent memory per idle session against the number of concurrent sessions](benchmarks-scaling.svg)\n\n{END}",
            machine(),
            self.table()
        );
        std::fs::write(&md_path, format!("{head}{section}{tail}"))?;
        std::fs::write(root.join("benchmarks-scaling.svg"), self.svg())?;
        say(&format!(
            "wrote {} and benchmarks-scaling.svg",
            md_path.display()
        ));
        Ok(())
    }

    /// Two panels against session count (log scale): aggregate throughput, and memory
    /// per idle session with the 512 KiB target.
    fn svg(&self) -> String {
        let xs: Vec<f64> = self.scale.iter().map(|s| s.sessions as f64).collect();
        let thr: Vec<f64> = self.scale.iter().map(|s| s.aggregate_mb_s).collect();
        let mem: Vec<f64> = self
            .scale
            .iter()
            .map(|s| s.rss_idle_kib.saturating_sub(s.rss_before_kib) as f64 / s.sessions as f64)
            .collect();
        let mut svg = String::from(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"860\" height=\"340\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"860\" height=\"340\" fill=\"white\"/>\n",
        );
        panel(
            &mut svg,
            0.0,
            "Aggregate output throughput",
            "MB/s",
            &xs,
            &thr,
            None,
            "#1f77b4",
        );
        panel(
            &mut svg,
            430.0,
            "Agent memory per idle session",
            "KiB",
            &xs,
            &mem,
            Some((512.0, "target 512 KiB")),
            "#d62728",
        );
        svg.push_str("</svg>\n");
        svg
    }
}

const BEGIN: &str = "<!-- results:begin -->";
const END: &str = "<!-- results:end -->";

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line chart with a log-scale x axis (session count) and a linear y axis from 0.
#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    left: f64,
    title: &str,
    unit: &str,
    xs: &[f64],
    ys: &[f64],
    line: Option<(f64, &str)>,
    colour: &str,
) {
    let (x0, y0, w, h) = (left + 60.0, 40.0, 340.0, 240.0);
    let lx = |x: f64| x.max(1.0).log10();
    let xmax = xs.iter().copied().map(lx).fold(1.0, f64::max);
    let ymax = ys
        .iter()
        .copied()
        .chain(line.map(|(v, _)| v))
        .fold(1.0, f64::max)
        * 1.15;
    let px = |x: f64| x0 + lx(x) / xmax * w;
    let py = |y: f64| y0 + h - y / ymax * h;
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"22\" font-size=\"14\" text-anchor=\"middle\">{title}</text>",
        x0 + w / 2.0
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{x0}\" y=\"{y0}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#888\"/>"
    );
    for i in 0..=4 {
        let v = ymax / 4.0 * f64::from(i);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>",
            x0 - 6.0,
            py(v) + 4.0
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#eee\"/>",
            x0 + w,
            py(v),
            py(v)
        );
    }
    for &x in xs {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
            px(x),
            y0 + h + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">concurrent sessions (log scale)</text>",
        x0 + w / 2.0,
        y0 + h + 34.0
    );
    let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\" text-anchor=\"middle\">{unit}</text>", left + 16.0, y0 + h / 2.0, left + 16.0, y0 + h / 2.0);
    if let Some((v, label)) = line {
        let _ = writeln!(svg, "<line x1=\"{x0}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"6 4\"/>", x0 + w, py(v), py(v));
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#666\">{label}</text>",
            x0 + w - 4.0,
            py(v) - 4.0
        );
    }
    let points: Vec<String> = xs
        .iter()
        .zip(ys)
        .map(|(&x, &y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
        points.join(" ")
    );
    for (&x, &y) in xs.iter().zip(ys) {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>",
            px(x),
            py(y)
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{colour}\">{y:.0}</text>",
            px(x),
            py(y) - 8.0
        );
    }
}

/// CPU model, cores, memory, kernel, OS, compiler.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").map(|v| {
                    v.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0)
                })
            })
        })
        .unwrap_or(0);
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_owned())
            })
        })
        .unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let script = std::process::Command::new("script")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "Machine: {model}, {cores} cores available, {:.1} GiB RAM; Linux {kernel} ({os}); {rustc}; {script}; LocalStack 4.10 on the same machine. Release build of session-agent {}.\n",
        mem_kib as f64 / 1024.0 / 1024.0,
        env!("CARGO_PKG_VERSION")
    )
}
