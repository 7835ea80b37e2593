//! Users on Windows (protocol §7.2): the ssm-user local account and the choice of the
//! user a session runs as. The same names as the Unix `session::user` for what the agent
//! uses; the account calls themselves are in `crate::windows::account`.
//!
//! * At daemon start (as LocalSystem): ssm-user is created when missing — disabled, with a
//!   password nobody knows, and (with `sudo_policy = "nopasswd"`, the default) in the
//!   Administrators group, as upstream — never on a domain controller, and never again
//!   once an administrator removed it (the `ssm-user.provisioned` marker, as on Linux).
//!   An existing ssm-user gets a fresh unknown password and is disabled.
//! * Per session: the shell's spawn leases the account (`session::pty`): a fresh
//!   password for that one logon, enabled; disabled again when its last session ends.
//! * RunAs is not supported on Windows (as upstream): a document enabling it is refused
//!   with a message saying so.

use std::io;
use std::path::PathBuf;

pub use super::spec::{valid_user_name, SudoPolicy};

/// The user sessions run as when the daemon is LocalSystem.
pub const SSM_USER: &str = "ssm-user";
/// Suffix of the marker file `<state_dir>/<user>.provisioned`.
const MARKER_SUFFIX: &str = ".provisioned";
/// Windows' limit on local user names.
const MAX_WINDOWS_NAME_LEN: usize = 20;

/// A local user, reduced to what a session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Account name.
    pub name: String,
    /// Profile directory when known (the logon shim finds it for ssm-user).
    pub home: PathBuf,
    /// The shell: PowerShell.
    pub shell: PathBuf,
}

fn powershell() -> PathBuf {
    std::env::var_os("SystemRoot")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\Windows"))
        .join(r"System32\WindowsPowerShell\v1.0\powershell.exe")
}

/// Looks a local account up. `Ok(None)` when there is none; an invalid name is an error
/// and never reaches the account database.
pub fn lookup(name: &str) -> Result<Option<UserInfo>, UserError> {
    if !valid_user_name(name) || name.len() > MAX_WINDOWS_NAME_LEN {
        return Err(UserError::InvalidName {
            name: name.to_owned(),
        });
    }
    let found = crate::windows::account::flags(name).map_err(|source| UserError::Account {
        name: name.to_owned(),
        source,
    })?;
    Ok(found.map(|_| UserInfo {
        name: name.to_owned(),
        home: PathBuf::new(),
        shell: powershell(),
    }))
}

/// The daemon's own user (`%USERNAME%`; `SYSTEM` for the service).
pub fn daemon_user() -> Result<UserInfo, UserError> {
    Ok(UserInfo {
        name: std::env::var("USERNAME").unwrap_or_else(|_| "SYSTEM".into()),
        home: std::env::var_os("USERPROFILE")
            .map(PathBuf::from)
            .unwrap_or_default(),
        shell: powershell(),
    })
}

/// The user a session runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    /// The account.
    pub info: UserInfo,
    /// Whether the shell is started as this account through the logon shim; false when
    /// the daemon is not LocalSystem and the shell simply runs as the daemon's user.
    pub switch: bool,
}

/// Chooses the session user: the daemon's own when it is not LocalSystem; else ssm-user,
/// which must exist. RunAs is refused (not supported on Windows).
pub fn resolve_session_user(
    run_as_enabled: bool,
    _run_as_default_user: &str,
    _message_run_as_user: &str,
    daemon_is_root: bool,
    daemon_user: &UserInfo,
) -> Result<SessionUser, UserError> {
    if !daemon_is_root {
        return Ok(SessionUser {
            info: daemon_user.clone(),
            switch: false,
        });
    }
    if run_as_enabled {
        return Err(UserError::RunAsUnsupported);
    }
    let info = lookup(SSM_USER)?.ok_or(UserError::SsmUserMissing)?;
    Ok(SessionUser { info, switch: true })
}

/// What [`Provisioner::ensure_ssm_user`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionOutcome {
    /// Created (disabled, unknown password; Administrators per the policy).
    Created,
    /// Existed: given a fresh unknown password and disabled until a session needs it.
    Existing,
    /// Missing although we created it once: an administrator removed it; not re-added.
    RemovedByAdministrator,
    /// Missing on a domain controller, where it is never created.
    DomainController,
}

/// Creates ssm-user at daemon start (see the module docs).
#[derive(Debug, Clone)]
pub struct Provisioner {
    state_dir: PathBuf,
    policy: SudoPolicy,
}

impl Provisioner {
    /// For the daemon's state directory (home of the marker) and policy.
    pub fn new(state_dir: impl Into<PathBuf>, policy: SudoPolicy) -> Self {
        Self {
            state_dir: state_dir.into(),
            policy,
        }
    }

    /// Path of the marker that says "we created this user".
    pub fn marker_path(&self) -> PathBuf {
        self.state_dir.join(format!("{SSM_USER}{MARKER_SUFFIX}"))
    }

    /// Makes sure ssm-user exists, disabled, with a password nobody knows.
    ///
    /// # Errors
    /// The account database or the marker could not be read or written.
    pub fn ensure_ssm_user(&self) -> Result<ProvisionOutcome, UserError> {
        use crate::windows::account;
        let account = |source| UserError::Account {
            name: SSM_USER.into(),
            source,
        };
        if account::flags(SSM_USER).map_err(account)?.is_some() {
            let password = crate::session::password::generate(&mut rand::thread_rng());
            account::set_password(SSM_USER, &password).map_err(account)?;
            account::set_disabled(SSM_USER, true).map_err(account)?;
            return Ok(ProvisionOutcome::Existing);
        }
        let marker = self.marker_path();
        if marker.exists() {
            return Ok(ProvisionOutcome::RemovedByAdministrator);
        }
        if account::is_domain_controller() {
            return Ok(ProvisionOutcome::DomainController);
        }
        account::create(SSM_USER).map_err(account)?;
        // The marker first: the account is ours from here on, whatever fails next.
        std::fs::create_dir_all(&self.state_dir)
            .and_then(|()| std::fs::write(&marker, b"created by session-agent\r\n"))
            .map_err(|source| UserError::Marker {
                path: marker,
                source,
            })?;
        if self.policy == SudoPolicy::NoPasswd {
            account::add_to_administrators(SSM_USER).map_err(account)?;
        }
        Ok(ProvisionOutcome::Created)
    }
}

/// Why a user could not be looked up, provisioned or chosen.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Not a name we accept.
    #[error("{name:?} is not a valid user name: use 1 to 20 characters from [a-z0-9_-], not starting with a digit or '-'")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The account database failed.
    #[error("the local account {name} cannot be read or changed: {source}")]
    Account {
        /// The account.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// RunAs was asked for.
    #[error("RunAs is not supported on Windows instances: sessions run as ssm-user; turn runAsEnabled off in the session preferences")]
    RunAsUnsupported,
    /// ssm-user is missing.
    #[error("ssm-user does not exist on this instance: the agent creates it when it starts (not on a domain controller, and never again after an administrator removed it); create the local user ssm-user or restart the agent")]
    SsmUserMissing,
    /// The provisioning marker could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Marker {
        /// The marker.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}
