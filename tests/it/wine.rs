//! The Windows build, run: `session-agent.exe` (cross-compiled for
//! `x86_64-pc-windows-gnu`) under Wine, against the Linux gateway, client and LocalStack
//! of the rest of the suite, on loopback.
//!
//! `scripts/test.sh` builds the exe and names it in `SESSION_AGENT_WINDOWS_EXE`, and
//! gives each run a fresh private Wine prefix in `SESSION_AGENT_WINEPREFIX` (without it,
//! `<CARGO_TARGET_TMPDIR>/wine-prefix` is made once and reused). Without the exe or Wine
//! every test here prints `SKIPPED <name>: <why>`, so a plain `cargo test` still works.
//!
//! Into the prefix's `system32` go test-only programs built with MinGW from
//! `packaging/windows/test-shim/` (never shipped; each file says why):
//! `bcryptprimitives.dll`, which Debian's Wine 8 lacks and every Rust exe imports;
//! `conpty.dll` and `conshell.exe`, which work around two gaps of Wine 8's pseudoconsoles
//! (conhost rejects portable-pty's inherit-cursor flag; a process started on a
//! pseudoconsole with STARTF_USESTDHANDLES gets no console handles); and `consize.exe`,
//! which prints its console's size (Wine's cmd.exe has no `mode con`).
//!
//! What Wine cannot show (a logon as another user, LocalSystem) is listed in the
//! README's Windows section.

use crate::client::Term;
use crate::recording::{gateway, LocalStack, LOCALSTACK, REGION};
use crate::support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// How long Wine may take to start a program and the agent to come online: Wine's first
/// start in a prefix runs its own services, on a loaded two-core machine.
const WINE_WAIT: Duration = Duration::from_secs(90);

#[allow(clippy::print_stderr)]
fn skipped(name: &str, why: &str) {
    eprintln!("SKIPPED {name}: {why}");
}

/// Wine and the Windows exe, ready to run.
pub struct Wine {
    /// The `wine64` loader.
    wine: PathBuf,
    /// `session-agent.exe` (a Linux path; Wine takes those for the program).
    exe: PathBuf,
    /// The private prefix (`WINEPREFIX`).
    prefix: PathBuf,
}

static WINE: OnceLock<Result<Wine, String>> = OnceLock::new();

/// Wine with the exe, or `None` after printing why the test `name` is skipped. The
/// first call makes the prefix (`wineboot`, seconds): off the test's runtime.
pub async fn wine(name: &str) -> Option<&'static Wine> {
    let ready = tokio::task::spawn_blocking(|| WINE.get_or_init(setup))
        .await
        .unwrap();
    match ready {
        Ok(w) => Some(w),
        Err(why) => {
            skipped(name, why);
            None
        }
    }
}

fn find_wine() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("wine64"))
            .find(|p| p.is_file())
    });
    // Debian's wine64 package installs the loader here without a link on PATH (that is
    // the `wine` package's wrapper).
    on_path.or_else(|| Some(PathBuf::from("/usr/lib/wine/wine64")).filter(|p| p.is_file()))
}

fn setup() -> Result<Wine, String> {
    let exe = PathBuf::from(std::env::var_os("SESSION_AGENT_WINDOWS_EXE").ok_or(
        "SESSION_AGENT_WINDOWS_EXE is not set (scripts/test.sh builds the Windows binary and sets it)",
    )?);
    assert!(
        exe.is_file(),
        "SESSION_AGENT_WINDOWS_EXE={} is not a file",
        exe.display()
    );
    let wine = find_wine().ok_or("wine64 is not installed (Debian's wine64 package)")?;
    let prefix = std::env::var_os("SESSION_AGENT_WINEPREFIX").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("wine-prefix"),
        PathBuf::from,
    );
    let w = Wine { wine, exe, prefix };
    if !w.prefix.join("system.reg").is_file() {
        std::fs::create_dir_all(&w.prefix).unwrap();
        let out = w.std_command("wineboot").arg("-i").output().unwrap();
        assert!(
            out.status.success() && w.prefix.join("system.reg").is_file(),
            "wineboot -i failed in {}: {}",
            w.prefix.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let system32 = w.prefix.join("drive_c/windows/system32");
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/windows/test-shim");
    for (sources, output, flags) in [
        (
            &["bcryptprimitives.c", "bcryptprimitives.def"][..],
            "bcryptprimitives.dll",
            &["-shared", "-ladvapi32"][..],
        ),
        (
            &["conpty.c", "conpty.def"][..],
            "conpty.dll",
            &["-shared"][..],
        ),
        (&["conshell.c"][..], "conshell.exe", &[][..]),
        (&["consize.c"][..], "consize.exe", &[][..]),
    ] {
        let out = std::process::Command::new("x86_64-w64-mingw32-gcc")
            .args(["-O2", "-s", "-o"])
            .arg(system32.join(output))
            .args(sources.iter().map(|s| shim.join(s)))
            .args(flags)
            .output()
            .map_err(|e| format!("x86_64-w64-mingw32-gcc cannot run ({e}): install Debian's gcc-mingw-w64-x86-64"))?;
        assert!(
            out.status.success(),
            "building {output}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(w)
}

/// `Z:\...` for a Linux path: Wine maps drive Z: to `/`.
pub fn win_path(p: &Path) -> String {
    let abs = std::path::absolute(p).unwrap();
    format!("Z:{}", abs.display()).replace('/', "\\")
}

impl Wine {
    fn std_command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(&self.wine);
        c.arg(program);
        for (k, v) in self.env() {
            c.env(k, v);
        }
        c.env_remove("DISPLAY").stdin(Stdio::null());
        c
    }

    /// The environment of every Wine process: the private prefix, no Wine debug
    /// output, no Mono/Gecko installers (they would ask on a display), no display.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WINEPREFIX", self.prefix.display().to_string()),
            ("WINEDEBUG", "-all".into()),
            ("WINEDLLOVERRIDES", "mscoree,mshtml=".into()),
            ("AWS_ENDPOINT_URL", LOCALSTACK.into()),
            ("AWS_ACCESS_KEY_ID", "AKIAWINETEST00001234".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// `wine64 PROGRAM` (a Windows program of the prefix, e.g. `sc.exe`, or a Linux
    /// path to an exe).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(&self.wine);
        c.arg(program.as_ref());
        c.envs(self.env())
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// `session-agent.exe ARGS`: exit code, stdout, stderr.
    pub async fn agent(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(WINE_WAIT, self.command(&self.exe).args(args).output())
            .await
            .unwrap_or_else(|_| panic!("session-agent.exe {args:?} did not finish"))
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The agent daemon under Wine, online at `gw` as `target`, its state in `state`.
    pub async fn start_agent(&self, gw: &Gateway, target: &str, state: &Path) -> WineAgent {
        let log = std::fs::File::create(state.join("agent.log")).unwrap();
        let mut child = self
            .command(&self.exe)
            .args(["run", "--endpoint", &gw.http_url(), "--target-id", target])
            .args(["--state-dir", &win_path(state), "--shell", "sh"])
            // Debug for the agent's own module: a failed resize is logged there.
            .env("SESSION_AGENT_LOG", "info,session_agent::agent=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WINE_WAIT;
        loop {
            let (_, v) = gw
                .api(
                    "DescribeInstanceInformation",
                    json!({"Filters": [{"Key": "InstanceIds", "Values": [target]}]}),
                )
                .await;
            if v["InstanceInformationList"][0]["PingStatus"] == "Online" {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the agent under Wine exited ({status}); log:\n{}",
                    std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent under Wine never came online; log:\n{}",
                std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        WineAgent {
            _child: child,
            state: state.to_owned(),
        }
    }
}

/// The agent daemon running under Wine; killed on drop.
pub struct WineAgent {
    /// Held only to be killed on drop.
    _child: tokio::process::Child,
    state: PathBuf,
}

impl WineAgent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }
}

/// Waits for `path` to hold JSON; panics with `log()` after `within`.
pub async fn wait_json(path: &Path, within: Duration, log: impl Fn() -> String) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no {}; log:\n{}",
            path.display(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The only recording in `state`: its session id and directory.
fn only_recording(state: &Path) -> (String, PathBuf) {
    let dirs: Vec<_> = std::fs::read_dir(state.join("recordings"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    (
        dirs[0].file_name().to_string_lossy().into_owned(),
        dirs[0].path(),
    )
}

/// The Linux binary on `args` (blocking: off the test's runtime).
async fn linux(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_session-agent"))
        .args(args)
        .env("AWS_ENDPOINT_URL", LOCALSTACK)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn wine_the_windows_exe_prints_its_version_checks_the_example_config_and_runs_doctor() {
    let name = "wine_the_windows_exe_prints_its_version_checks_the_example_config_and_runs_doctor";
    let Some(w) = wine(name).await else { return };

    // The same version line as the Linux binary.
    let (code, out, err) = w.agent(&["--version"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, linux_version) = linux(&["--version"]).await;
    assert_eq!(out, linux_version);

    // The documented example configuration is valid on Windows too.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/session-agent.example.toml");
    let (code, out, err) = w
        .agent(&["config", "check", "--config", &win_path(&example)])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("shell = "), "{out}");

    // doctor against the Linux gateway and LocalStack: a token is issued, the AWS
    // credentials and both sinks pass.
    let ls = LocalStack::get().await;
    let gw = gateway(json!({})).await;
    let state = tempfile::tempdir().unwrap();
    let bucket = ls.bucket(true).await;
    let group = ls.log_group(false).await;
    let document = state.path().join("document.json");
    std::fs::write(
        &document,
        crate::recording::preferences(json!({
            "s3BucketName": bucket, "s3EncryptionEnabled": true,
            "cloudWatchLogGroupName": group,
        }))
        .to_string(),
    )
    .unwrap();
    let config = state.path().join("agent.toml");
    std::fs::write(&config, "target_id = \"wine-doctor\"\n").unwrap();
    let (code, report, err) = w
        .agent(&[
            "doctor",
            "--endpoint",
            &gw.http_url(),
            "--config",
            &win_path(&config),
            "--state-dir",
            &win_path(state.path()),
            "--document",
            &win_path(&document),
        ])
        .await;
    assert_eq!(code, 0, "{report}{err}");
    let line = |start: &str| {
        report
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{report}"))
            .to_owned()
    };
    assert!(line("ok    gateway").contains("token for wine-doctor was issued"));
    assert!(line("ok    AWS credentials").contains("AKIA…1234"));
    assert!(line("ok    recordings").contains("writable"));
    line(&format!("ok    S3 bucket {bucket}"));
    line(&format!("ok    CloudWatch Logs log group {group}"));
    assert!(line("WARN  privileges").contains("not running as LocalSystem"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wine_the_agent_serves_a_cmd_session_through_conpty_recorded_and_delivered() {
    let name = "wine_the_agent_serves_a_cmd_session_through_conpty_recorded_and_delivered";
    let Some(w) = wine(name).await else { return };
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(false).await;
    let group = ls.log_group(false).await;
    let gw = gateway(json!({
        "s3BucketName": bucket,
        "cloudWatchLogGroupName": group,
        "cloudWatchStreamingEnabled": true,
    }))
    .await;
    let state = tempfile::tempdir().unwrap();
    let agent = w.start_agent(&gw, "wine-node", state.path()).await;

    // A Linux `connect` on a real terminal; cmd.exe on the far side through ConPTY. The
    // typed line holds `%ERRORLEVEL%`, so only cmd's expansion can print `win-0`.
    let mut term = Term::connect(&gw, "wine-node");
    term.expect_within(">", WINE_WAIT)
        .await
        .unwrap_or_else(|| panic!("no cmd prompt: {:?}\n{}", term.text_since(0), agent.log()));
    term.type_text("echo win-%ERRORLEVEL%\r");
    term.expect("win-0").await;
    term.type_text("cmd /c exit 3\r");
    term.type_text("echo win-%ERRORLEVEL%\r");
    term.expect("win-3").await;

    // The console has the terminal's size; a resize reaches the agent, which resizes the
    // pseudoconsole. Wine 8's ResizePseudoConsole is a stub (E_NOTIMPL, 0x80004001 =
    // -2147467263): there the agent's call and Wine's answer are what can be seen; on a
    // Wine that implements it, the console's new size.
    term.type_text("consize\r");
    term.expect("console-size=80x24").await;
    term.resize(100, 30);
    let mut resized = None;
    for _ in 0..40 {
        term.type_text("consize\r");
        if term
            .expect_within("console-size=100x30", Duration::from_millis(500))
            .await
            .is_some()
        {
            resized = Some("the console is 100x30");
            break;
        }
        let log = agent.log();
        if log.contains("failed to resize console to 100x30: HRESULT: -2147467263") {
            resized = Some("Wine's ResizePseudoConsole answered E_NOTIMPL");
            break;
        }
    }
    assert!(
        resized.is_some(),
        "the resize never reached the console: {:?}\n{}",
        term.text_since(0),
        agent.log()
    );

    // `exit` ends cmd, and with it the session, cleanly.
    term.type_text("exit\r");
    term.expect("Exiting session with sessionId: ").await;
    let (code, _) = term.client_exit().await;
    assert_eq!(code, 0, "{:?}", term.text_since(0));

    // Recorded: the spool's chain intact (checked by the Linux binary), the transcript
    // holds what cmd printed, and the delivery reached S3 and CloudWatch Logs.
    let (sid, dir) = only_recording(state.path());
    let report = wait_json(&dir.join("delivery.json"), WINE_WAIT, || agent.log()).await;
    assert_eq!(report["complete"], true, "{report}");
    let spool = dir.join("events.spool");
    let (code, said) = linux(&["verify", spool.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("intact and complete: "), "{said}");
    let (code, transcript) = linux(&["transcript", spool.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{transcript}");
    assert!(
        transcript.contains("win-0") && transcript.contains("win-3"),
        "{transcript}"
    );
    let log = String::from_utf8(ls.object(&bucket, &format!("{sid}.log"), WAIT).await).unwrap();
    assert!(log.contains("win-3"), "{log}");
    let events = ls.events(&group, &sid).await.join("\n");
    assert!(events.contains("win-3"), "{events}");
    let (code, said) = linux(&["verify", &format!("s3://{bucket}/{sid}.spool")]).await;
    assert_eq!(code, 0, "{said}");
    drop(agent);
    gw.stop().await;
}

/// The prefix has one service control manager: the tests that register the
/// `session-agent` service (by hand and from the MSI) take turns.
static SCM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Wine {
    /// `wine64 PROGRAM ARGS` (a Windows program of the prefix): exit code and the
    /// output (stdout, then stderr).
    pub async fn run(&self, program: &str, args: &[&str]) -> (i32, String) {
        let out = tokio::time::timeout(WINE_WAIT, self.command(program).args(args).output())
            .await
            .unwrap_or_else(|_| panic!("{program} {args:?} did not finish under Wine"))
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// A path inside the prefix's drive C:, e.g. `ProgramData/session-agent`.
    pub fn drive_c(&self, path: &str) -> PathBuf {
        self.prefix.join("drive_c").join(path)
    }

    /// Polls `sc query session-agent` until its STATE line names `state`.
    pub async fn wait_service_state(&self, state: &str, log: impl Fn() -> String) {
        let deadline = Instant::now() + WINE_WAIT;
        loop {
            let (_, out) = self.run("sc.exe", &["query", "session-agent"]).await;
            if out
                .lines()
                .any(|l| l.contains("STATE") && l.contains(state))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the service never reached {state}: {out}\nlog:\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Keeps one ordinary Wine process running: Wine stops its services (and its service
/// control manager) when the last ordinary process of the prefix exits, which a Windows
/// machine never does. `cmd.exe` reading a pipe nobody writes to; killed on drop.
struct KeepAlive {
    /// Held only to be killed on drop.
    _child: tokio::process::Child,
}

impl KeepAlive {
    fn start(w: &Wine) -> Self {
        Self {
            _child: w
                .command("cmd.exe")
                .arg("/k")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        }
    }
}

/// Deletes the `session-agent` service on drop, whatever the test did: later tests in
/// the prefix must not find it (it would start with the prefix, as an automatic one).
struct ServiceGuard<'a>(&'a Wine);

impl Drop for ServiceGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .std_command("sc.exe")
            .args(["stop", "session-agent"])
            .output();
        let _ = self
            .0
            .std_command("sc.exe")
            .args(["delete", "session-agent"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wine_the_service_runs_under_the_scm_and_its_stop_delivers_the_recording() {
    let name = "wine_the_service_runs_under_the_scm_and_its_stop_delivers_the_recording";
    let Some(w) = wine(name).await else { return };
    let _scm = SCM.lock().await;
    let _alive = KeepAlive::start(w);
    let ls = LocalStack::get().await;
    let bucket = ls.bucket(false).await;
    let gw = gateway(json!({"s3BucketName": bucket})).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "endpoint = \"{}\"\ntarget_id = \"wine-service\"\nstate_dir = '{}'\nshell = \"sh\"\nshutdown_timeout = \"10s\"\n",
            gw.http_url(),
            win_path(&state)
        ),
    )
    .unwrap();
    let log = || std::fs::read_to_string(state.join("session-agent.log")).unwrap_or_default();

    // Registered with the SCM as `service install` documents it.
    let _guard = ServiceGuard(w);
    let (code, out, err) = w
        .agent(&["service", "install", "--config", &win_path(&config)])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("Installed the service session-agent"),
        "{out}"
    );
    // Wine has no failure actions: install says so and how to set them, and goes on.
    assert!(
        err.is_empty() || err.contains("restart-on-failure policy was not set"),
        "{err}"
    );
    let (code, entry) = w
        .run(
            "reg.exe",
            &[
                "query",
                r"HKLM\System\CurrentControlSet\Services\session-agent",
            ],
        )
        .await;
    assert_eq!(code, 0, "{entry}");
    let value = |name: &str| {
        entry
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in {entry}"))
            .to_owned()
    };
    assert!(
        value("ImagePath").ends_with(&format!(
            "{} service run --config {}",
            win_path(&w.exe),
            win_path(&config)
        )),
        "{entry}"
    );
    assert!(value("Start").ends_with("0x2"), "automatic start: {entry}");
    assert!(value("ObjectName").ends_with("LocalSystem"), "{entry}");
    assert!(
        value("PreshutdownTimeout").ends_with("0x9c40"),
        "40 s: {entry}"
    );

    // The service's environment is the SCM's, not this test's (and Wine's SCM ignores a
    // service's Environment value): the AWS settings (here LocalStack's) go into the
    // service user's AWS files, as an administrator gives an on-premises service its
    // credentials (on Windows, LocalSystem's profile: ...\systemprofile\.aws).
    let (code, profile) = w.run("cmd.exe", &["/c", "echo %USERPROFILE%"]).await;
    assert_eq!(code, 0, "{profile}");
    let profile = profile
        .trim()
        .strip_prefix(r"C:\")
        .unwrap_or_else(|| panic!("{profile}"));
    let aws = w.drive_c(&profile.replace('\\', "/")).join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("config"),
        format!("[default]\nregion = {REGION}\nendpoint_url = {LOCALSTACK}\n"),
    )
    .unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .unwrap();

    // Started by Wine's SCM (net start); the dispatcher runs the agent, which comes
    // online and serves a session.
    let (code, said) = w.run("net.exe", &["start", "session-agent"]).await;
    assert_eq!(code, 0, "{said}\n{}", log());
    w.wait_service_state("RUNNING", log).await;
    let deadline = Instant::now() + WINE_WAIT;
    loop {
        let (_, v) = gw
            .api(
                "DescribeInstanceInformation",
                json!({"Filters": [{"Key": "InstanceIds", "Values": ["wine-service"]}]}),
            )
            .await;
        if v["InstanceInformationList"][0]["PingStatus"] == "Online" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service never came online:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut term = Term::connect(&gw, "wine-service");
    term.expect_within(">", WINE_WAIT)
        .await
        .unwrap_or_else(|| panic!("no cmd prompt: {:?}\n{}", term.text_since(0), log()));
    term.type_text("echo win-%ERRORLEVEL%\r");
    term.expect("win-0").await;

    // Stopped through the SCM (sc stop): the graceful stop tells the client, ends the
    // session and delivers its recording before the service reports STOPPED.
    let (code, said) = w.run("sc.exe", &["stop", "session-agent"]).await;
    assert_eq!(code, 0, "{said}");
    term.expect("The agent on this instance is stopping").await;
    let (code, _) = term.client_exit().await;
    assert_eq!(code, 1, "an interrupted session: {:?}", term.text_since(0));
    w.wait_service_state("STOPPED", log).await;
    let service_log = log();
    assert!(
        service_log.contains("Stop requested by the service control manager")
            && service_log.contains(
                "Stopped: every session ended and every recording was handed to its destinations"
            ),
        "{service_log}"
    );
    let (sid, rec) = only_recording(&state);
    let report = wait_json(&rec.join("delivery.json"), WAIT, log).await;
    assert_eq!(report["complete"], true, "{report}");
    let text = String::from_utf8(ls.object(&bucket, &format!("{sid}.log"), WAIT).await).unwrap();
    assert!(text.contains("win-0"), "{text}");
    let spool = rec.join("events.spool");
    let (code, said) = linux(&["verify", spool.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{said}");

    // Removed: the SCM no longer knows it; the configuration stays.
    let (code, out, err) = w.agent(&["service", "uninstall"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("Removed the service session-agent"),
        "{out}"
    );
    let (code, said) = w.run("sc.exe", &["query", "session-agent"]).await;
    assert_ne!(code, 0, "{said}");
    assert!(config.is_file());
    gw.stop().await;
}

/// `msiinfo export MSI TABLE`: the table's rows (after the three header lines), as tab
/// separated fields.
async fn msi_table(msi: &Path, table: &str) -> Vec<Vec<String>> {
    let out = Command::new("msiinfo")
        .args(["export"])
        .arg(msi)
        .arg(table)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "msiinfo export {table}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(3)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// `packaging/windows/build-msi EXE DIR [VERSION]`: the .msi's path.
async fn build_msi(exe: &Path, dir: &Path, version: Option<&str>) -> PathBuf {
    let out =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/windows/build-msi"))
            .arg(exe)
            .arg(dir)
            .args(version)
            .output()
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "build-msi: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[tokio::test]
async fn wine_the_msi_installs_the_service_keeps_the_configuration_on_upgrade_and_uninstalls() {
    let name =
        "wine_the_msi_installs_the_service_keeps_the_configuration_on_upgrade_and_uninstalls";
    let Some(w) = wine(name).await else { return };
    if Command::new("wixl")
        .arg("--version")
        .output()
        .await
        .is_err()
    {
        skipped(name, "wixl is not installed (Debian's wixl package)");
        return;
    }
    let _scm = SCM.lock().await;
    let _alive = KeepAlive::start(w);
    let _guard = ServiceGuard(w);
    // A configuration left by an earlier run would be kept (that is the point).
    let _ = std::fs::remove_dir_all(w.drive_c("ProgramData/session-agent"));
    let out = tempfile::tempdir().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let msi = build_msi(&w.exe, out.path(), None).await;
    assert_eq!(
        msi.file_name().unwrap().to_str().unwrap(),
        format!("session-agent-{version}-x86_64.msi")
    );

    // What the package holds: the exe, the docs, the example configuration; never a
    // test shim.
    let files: Vec<String> = msi_table(&msi, "File")
        .await
        .into_iter()
        .map(|row| row[2].clone())
        .collect();
    assert_eq!(
        files,
        [
            "session-agent.exe",
            "README.md",
            "LICENSE",
            "session-agent.toml"
        ],
        "{files:?}"
    );
    // The service entry: LocalSystem, own process (16), automatic (2), the command line
    // `service install` registers; stopped on install and uninstall, removed on
    // uninstall (162 = 2 + 32 + 128).
    let services = msi_table(&msi, "ServiceInstall").await;
    assert_eq!(services.len(), 1, "{services:?}");
    let s = &services[0];
    assert_eq!(
        (&s[1][..], &s[3][..], &s[4][..], &s[8][..], &s[11][..]),
        ("session-agent", "16", "2", "LocalSystem", "Agent"),
        "{s:?}"
    );
    assert_eq!(
        s[10],
        r#"service run --config "[CommonAppDataFolder]session-agent\session-agent.toml""#
    );
    let controls = msi_table(&msi, "ServiceControl").await;
    assert_eq!(controls[0][1..3], ["session-agent", "162"], "{controls:?}");
    // The configuration under %ProgramData%\session-agent, permanent and never
    // overwritten (256 64-bit + 16 + 128): an administrator's edits survive upgrades.
    let components = msi_table(&msi, "Component").await;
    let config = components.iter().find(|c| c[0] == "Config").unwrap();
    assert_eq!(
        (&config[2][..], &config[3][..]),
        ("STATEDIR", "400"),
        "{config:?}"
    );
    let dirs = msi_table(&msi, "Directory").await;
    assert!(dirs
        .iter()
        .any(|d| d[..3] == ["STATEDIR", "CommonAppDataFolder", "session-agent"]));

    // Installed by Wine's msiexec: files in place, the service registered, the
    // installed exe runs.
    let (code, said) = w.run("msiexec.exe", &["/i", &win_path(&msi), "/qn"]).await;
    assert_eq!(code, 0, "msiexec /i: {said}");
    let installed = w.drive_c("Program Files/session-agent");
    assert_eq!(
        std::fs::metadata(installed.join("session-agent.exe"))
            .unwrap()
            .len(),
        std::fs::metadata(&w.exe).unwrap().len()
    );
    assert!(installed.join("README.md").is_file() && installed.join("LICENSE").is_file());
    let config_file = w.drive_c("ProgramData/session-agent/session-agent.toml");
    let example = include_str!("../../config/session-agent.example.toml");
    assert!(
        std::fs::read_to_string(&config_file).unwrap() == example,
        "{} is not the example",
        config_file.display()
    );
    let (code, entry) = w
        .run(
            "reg.exe",
            &[
                "query",
                r"HKLM\System\CurrentControlSet\Services\session-agent",
            ],
        )
        .await;
    assert_eq!(code, 0, "{entry}");
    // Wine's msiexec writes the exe's path unquoted (Windows Installer quotes a path
    // with spaces; not verified here): either form names the installed exe.
    let image = entry
        .lines()
        .find(|l| l.trim_start().starts_with("ImagePath"))
        .unwrap_or_else(|| panic!("{entry}"));
    assert!(
        image.contains(r"C:\Program Files\session-agent\session-agent.exe")
            && image.ends_with(r#"session-agent.exe service run --config "C:\ProgramData\session-agent\session-agent.toml""#)
            || image.ends_with(r#"session-agent.exe" service run --config "C:\ProgramData\session-agent\session-agent.toml""#),
        "{entry}"
    );
    let (code, said) = w
        .run(
            r"C:\Program Files\session-agent\session-agent.exe",
            &["--version"],
        )
        .await;
    assert_eq!(
        (code, said.trim()),
        (0, &*format!("session-agent {version}"))
    );

    // An upgrade (a higher version) keeps the administrator's configuration.
    let edited = format!("{example}\n# edited by the administrator\n");
    std::fs::write(&config_file, &edited).unwrap();
    let upgrade_dir = out.path().join("upgrade");
    let (base, patch) = version.rsplit_once('.').unwrap();
    let higher = format!("{base}.{}", patch.parse::<u32>().unwrap() + 1);
    let upgrade = build_msi(&w.exe, &upgrade_dir, Some(&higher)).await;
    let (code, said) = w
        .run("msiexec.exe", &["/i", &win_path(&upgrade), "/qn"])
        .await;
    assert_eq!(code, 0, "msiexec /i (upgrade): {said}");
    let kept = |when: &str| {
        assert!(
            std::fs::read_to_string(&config_file).unwrap() == edited,
            "the administrator's configuration was replaced {when}"
        );
    };
    kept("on upgrade");
    assert!(installed.join("session-agent.exe").is_file());

    // Uninstalled: the program and the service go, the configuration stays.
    let (code, said) = w
        .run("msiexec.exe", &["/x", &win_path(&upgrade), "/qn"])
        .await;
    assert_eq!(code, 0, "msiexec /x: {said}");
    assert!(!installed.join("session-agent.exe").exists());
    let (code, said) = w.run("sc.exe", &["query", "session-agent"]).await;
    assert_ne!(code, 0, "the service is still registered: {said}");
    kept("on uninstall");
    std::fs::remove_dir_all(w.drive_c("ProgramData/session-agent")).unwrap();
}
