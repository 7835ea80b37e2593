//! The Windows service: `session-agent service install|uninstall|start|stop` talk to the
//! service control manager (SCM); `service run` is what the SCM starts, and hands the
//! agent to the SCM's dispatcher, which maps Stop and Shutdown to the same graceful stop
//! SIGTERM gives on Linux.
//!
//! * Installed as `session-agent` (LocalSystem, automatic start, own process), with the
//!   command line `"<exe>" service run --config <file>`; restarted by the SCM 5 s after
//!   a failure (three times, counter reset after a day), including a non-zero exit.
//! * State under `%ProgramData%\session-agent` (recordings, the ssm-user marker, the
//!   log `session-agent.log`), made readable by SYSTEM and Administrators only with
//!   `icacls` (inheritance removed, so recordings created later inherit that ACL); the
//!   example configuration is written there as `session-agent.toml` unless one exists.
//! * At every start the service sets again what `install` sets beyond the registration
//!   (the directory's ACL, restart on failure, the preshutdown timeout): the MSI
//!   registers the service through its ServiceInstall table, which cannot express them.
//! * Stop: the agent refuses new sessions, tells running ones, ends their shells and
//!   delivers recordings for up to `shutdown_timeout`; the SCM is told to wait that long
//!   (plus a margin) through StopPending wait hints.

use crate::agent::AgentConfig;
use crate::cli::ServiceCommand;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// The service's name in the SCM.
pub const SERVICE_NAME: &str = "session-agent";
const DISPLAY_NAME: &str = "Session Agent";
const DESCRIPTION: &str = "Session Manager compatible agent: shells for Session Manager sessions, each recorded and delivered to S3 / CloudWatch Logs.";
/// The configuration written at install when none exists.
const EXAMPLE_CONFIG: &str = include_str!("../../config/session-agent.example.toml");
/// How long `start` waits for the service to run.
const WAIT_START: Duration = Duration::from_secs(90);
/// How long `stop` and `uninstall` wait for it to stop: the longest `shutdown_timeout`
/// (10 min) and the margin.
const WAIT_STOP: Duration = Duration::from_secs(620);
/// Margin over `shutdown_timeout` the SCM is asked to wait while the agent stops.
const STOP_MARGIN: Duration = Duration::from_secs(10);

/// `%ProgramData%\session-agent`, the state directory of the LocalSystem service.
pub fn state_dir() -> PathBuf {
    crate::platform::system_state_dir()
}

/// The configuration file the service runs with unless `install --config` names one.
pub fn default_config_file() -> PathBuf {
    state_dir().join("session-agent.toml")
}

#[allow(clippy::print_stdout)]
fn say(text: &str) {
    println!("{text}");
}

#[allow(clippy::print_stderr)]
fn warn(text: &str) {
    eprintln!("session-agent service: {text}");
}

#[allow(clippy::print_stderr)]
fn fail(text: &str) -> ExitCode {
    eprintln!("session-agent service: {text}");
    ExitCode::FAILURE
}

/// `service install|uninstall|start|stop`: one line for what was done, or the error
/// with what to do (exit 1).
pub fn manage(command: &ServiceCommand) -> ExitCode {
    let result = match command {
        ServiceCommand::Install(args) => install(args.config.as_deref()),
        ServiceCommand::Uninstall { purge } => uninstall(*purge),
        ServiceCommand::Start => start(),
        ServiceCommand::Stop => stop(),
        ServiceCommand::Run(_) => {
            Err("`service run` is started by the service control manager".into())
        }
    };
    match result {
        Ok(done) => {
            say(&done);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, String> {
    ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT | access)
        .map_err(|e| format!("cannot open the service control manager: {} (run this from an elevated prompt: Run as administrator)", why(&e)))
}

fn install(config: Option<&Path>) -> Result<String, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    let dir = state_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    restrict_to_administrators(&dir)?;
    let config = config.map_or_else(default_config_file, Path::to_path_buf);
    if !config.exists() {
        std::fs::write(&config, EXAMPLE_CONFIG)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    }
    let info = ServiceInfo {
        name: OsString::from(SERVICE_NAME),
        display_name: OsString::from(DISPLAY_NAME),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: vec![
            OsString::from("service"),
            OsString::from("run"),
            OsString::from("--config"),
            config.clone().into_os_string(),
        ],
        dependencies: vec![],
        account_name: None, // LocalSystem
        account_password: None,
    };
    let scm = manager(ServiceManagerAccess::CREATE_SERVICE)?;
    let service = scm
        .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .map_err(|e| format!("cannot create the service {SERVICE_NAME}: {} (already installed? `session-agent service uninstall` first)", why(&e)))?;
    service
        .set_description(DESCRIPTION)
        .map_err(|e| format!("cannot describe the service: {}", why(&e)))?;
    // The restart policy and the preshutdown timeout are best effort: the service is
    // registered and runs without them, so a failure is a warning that says how to set
    // them by hand, not an error that leaves a half-installed service. Real Windows
    // accepts both; Wine 8's ChangeServiceConfig2W has no failure actions (invalid
    // level), which is how the suite's Wine test sees this path.
    if let Err(e) = set_restart_policy(&service) {
        warn(&format!(
            "warning: the restart-on-failure policy was not set ({}); set it with: sc.exe failure {SERVICE_NAME} reset= 86400 actions= restart/5000/restart/5000/restart/5000",
            why(&e)
        ));
    }
    // At system shutdown, time for the graceful stop of the default shutdown_timeout.
    if let Err(e) = service.set_preshutdown_timeout(Duration::from_secs(30) + STOP_MARGIN) {
        warn(&format!(
            "warning: the preshutdown timeout was not set ({}): at shutdown Windows may end the agent before its recordings are delivered",
            why(&e)
        ));
    }
    Ok(format!(
        "Installed the service {SERVICE_NAME} (automatic start, LocalSystem) with configuration {}; state in {}. Start it with `session-agent service start`.",
        config.display(),
        dir.display()
    ))
}

/// Three restarts 5 s apart after a failure (a non-zero exit included), the count reset
/// after a day.
fn set_restart_policy(
    service: &windows_service::service::Service,
) -> Result<(), windows_service::Error> {
    let restart = ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(5),
    };
    service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart.clone(), restart.clone(), restart]),
    })?;
    service.set_failure_actions_on_non_crash_failures(true)
}

/// A windows-service error with the OS error behind it (its own text is only "IO error
/// in winapi call").
fn why(e: &windows_service::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// SYSTEM and Administrators only, inherited by everything created below.
fn restrict_to_administrators(dir: &Path) -> Result<(), String> {
    let status = std::process::Command::new("icacls")
        .arg(dir)
        .args([
            "/inheritance:r",
            "/grant:r",
            "*S-1-5-18:(OI)(CI)F",
            "/grant:r",
            "*S-1-5-32-544:(OI)(CI)F",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run icacls: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "icacls could not restrict {} to SYSTEM and Administrators ({status})",
            dir.display()
        ))
    }
}

fn uninstall(purge: bool) -> Result<String, String> {
    let scm = manager(ServiceManagerAccess::empty())?;
    let service = scm
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| {
            format!(
                "cannot open the service {SERVICE_NAME}: {} (is it installed?)",
                why(&e)
            )
        })?;
    let running = service
        .query_status()
        .is_ok_and(|s| s.current_state != ServiceState::Stopped);
    if running {
        service
            .stop()
            .map_err(|e| format!("cannot stop the service: {}", why(&e)))?;
        wait_for(&service, ServiceState::Stopped, WAIT_STOP)?;
    }
    service
        .delete()
        .map_err(|e| format!("cannot delete the service: {}", why(&e)))?;
    let dir = state_dir();
    if purge {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(format!(
                    "removed the service, but cannot delete {}: {e}",
                    dir.display()
                ));
            }
        }
        Ok(format!(
            "Removed the service {SERVICE_NAME} and deleted {}.",
            dir.display()
        ))
    } else {
        Ok(format!(
            "Removed the service {SERVICE_NAME}; configuration and recordings stay in {} (`uninstall --purge` deletes them).",
            dir.display()
        ))
    }
}

fn start() -> Result<String, String> {
    let scm = manager(ServiceManagerAccess::empty())?;
    let service = scm
        .open_service(SERVICE_NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::START)
        .map_err(|e| format!("cannot open the service {SERVICE_NAME}: {} (install it first: `session-agent service install`)", why(&e)))?;
    service
        .start::<&str>(&[])
        .map_err(|e| format!("cannot start the service: {}", why(&e)))?;
    wait_for(&service, ServiceState::Running, WAIT_START)?;
    Ok(format!(
        "The service {SERVICE_NAME} is running; its log is {}.",
        state_dir().join("session-agent.log").display()
    ))
}

fn stop() -> Result<String, String> {
    let scm = manager(ServiceManagerAccess::empty())?;
    let service = scm
        .open_service(
            SERVICE_NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP,
        )
        .map_err(|e| format!("cannot open the service {SERVICE_NAME}: {}", why(&e)))?;
    service
        .stop()
        .map_err(|e| format!("cannot stop the service: {}", why(&e)))?;
    wait_for(&service, ServiceState::Stopped, WAIT_STOP)?;
    Ok(format!("The service {SERVICE_NAME} stopped."))
}

fn wait_for(
    service: &windows_service::service::Service,
    state: ServiceState,
    wait: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let status = service
            .query_status()
            .map_err(|e| format!("cannot query the service: {}", why(&e)))?;
        if status.current_state == state {
            return Ok(());
        }
        if status.current_state == ServiceState::Stopped && state == ServiceState::Running {
            return Err(format!(
                "the service stopped instead of running ({:?}); see {}",
                status.exit_code,
                state_dir().join("session-agent.log").display()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the service is still {:?} after {} s",
                status.current_state,
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The configuration `service run` validated, for the dispatcher's thread.
static CONFIG: OnceLock<AgentConfig> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// `service run`: hands this thread to the SCM's dispatcher, which calls back
/// [`service_main`] on its own thread; returns when the service has stopped.
pub fn run(config: AgentConfig) -> ExitCode {
    let _ = CONFIG.set(config);
    match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!(
            "cannot connect to the service control manager: {e} (`service run` is started by Windows; to run the agent in a console use `session-agent run`)"
        )),
    }
}

fn status(state: ServiceState, exit: u32, wait_hint: Duration, checkpoint: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            // Preshutdown, not Shutdown: the system then waits for the graceful stop
            // (up to the preshutdown timeout set at install) instead of a few seconds.
            ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: if exit == 0 {
            ServiceExitCode::Win32(0)
        } else {
            ServiceExitCode::ServiceSpecific(exit)
        },
        checkpoint,
        wait_hint,
        process_id: None,
    }
}

/// What `service install` sets beyond the registration, set again at every start: a
/// service registered by the MSI (whose tables cannot express them) gets the same, and
/// a setting an administrator loosened is restored. Each is idempotent; a failure is a
/// warning in the log and the service runs (on Wine, whose icacls is a stub and whose
/// service manager has no failure actions, that is what happens; real Windows accepts
/// all three).
fn apply_install_settings() {
    let dir = state_dir();
    if dir.is_dir() {
        if let Err(e) = restrict_to_administrators(&dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "Cannot restrict the state directory to SYSTEM and Administrators");
        }
    }
    let service = manager(ServiceManagerAccess::empty()).and_then(|scm| {
        scm.open_service(SERVICE_NAME, ServiceAccess::CHANGE_CONFIG)
            .map_err(|e| format!("cannot open the service: {}", why(&e)))
    });
    let service = match service {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot check the service's restart policy and preshutdown timeout");
            return;
        }
    };
    if let Err(e) = set_restart_policy(&service) {
        tracing::warn!(error = %why(&e), "Cannot set the restart-on-failure policy");
    }
    if let Err(e) = service.set_preshutdown_timeout(Duration::from_secs(30) + STOP_MARGIN) {
        tracing::warn!(error = %why(&e), "Cannot set the preshutdown timeout");
    }
}

fn service_main(_arguments: Vec<OsString>) {
    let Some(config) = CONFIG.get().cloned() else {
        tracing::error!("The service started without a configuration");
        return;
    };
    let stop = CancellationToken::new();
    let on_control = stop.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Preshutdown | ServiceControl::Shutdown => {
            on_control.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = match service_control_handler::register(SERVICE_NAME, handler) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "Cannot register with the service control manager");
            return;
        }
    };
    let stopping_for = config.shutdown_timeout + STOP_MARGIN;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime");
            let _ = handle.set_service_status(status(ServiceState::Stopped, 1, Duration::ZERO, 0));
            return;
        }
    };
    let _ = handle.set_service_status(status(ServiceState::Running, 0, Duration::ZERO, 0));
    // Off the start path: icacls propagates to every recording already there, which may
    // take longer than the SCM waits for a start.
    let _ = std::thread::Builder::new()
        .name("install-settings".into())
        .spawn(apply_install_settings);
    let stop_requested = stop.clone();
    let reporter = handle;
    let shutdown = async move {
        stop_requested.cancelled().await;
        tracing::info!("Stop requested by the service control manager");
        // The SCM waits as long as the hint says for each checkpoint.
        let _ = reporter.set_service_status(status(ServiceState::StopPending, 0, stopping_for, 1));
    };
    let result = runtime.block_on(crate::agent::run(config, shutdown));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let exit = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "The agent could not run");
            1
        }
    };
    let _ = handle.set_service_status(status(ServiceState::Stopped, exit, Duration::ZERO, 0));
}
