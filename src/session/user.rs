//! Users: strict name validation, passwd lookups, `ssm-user` provisioning at daemon
//! start and the choice of the user a session runs as (protocol §6.2, §7.1).
//!
//! Differences from upstream, all deliberate:
//! * users are looked up through the passwd database (NSS, `getpwnam_r`), never by
//!   running `id` through a shell;
//! * `useradd` and `visudo` run with separate arguments, never through a shell, and the
//!   user name is validated strictly before anything runs;
//! * `ssm-user` is provisioned once when the daemon starts, not lazily per session, and
//!   never re-added once an administrator removed it (a marker in the state directory
//!   remembers that we created it);
//! * the sudoers drop-in is written atomically, validated with `visudo -c` where
//!   present, and its sudo policy is configurable ([`SudoPolicy`]);
//! * root (uid 0 or gid 0) is refused as a session user, whatever the document says.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::unistd::{Uid, User};

pub use super::spec::{valid_user_name, SudoPolicy};

/// The user sessions run as when RunAs is disabled and the daemon is root.
pub const SSM_USER: &str = "ssm-user";
/// Upstream's sudoers drop-in directory.
pub const DEFAULT_SUDOERS_DIR: &str = "/etc/sudoers.d";
/// Upstream's sudoers drop-in file name (inside [`DEFAULT_SUDOERS_DIR`]).
pub const DEFAULT_SUDOERS_FILE_NAME: &str = "ssm-agent-users";
/// Suffix of the marker file `<state_dir>/<user>.provisioned`.
const MARKER_SUFFIX: &str = ".provisioned";
/// Mode of the sudoers drop-in (sudo ignores group- or world-writable files).
const SUDOERS_MODE: u32 = 0o440;

/// A passwd entry, reduced to what a session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// User id (`nix::unistd::Uid::from_raw` turns it back into a `Uid`).
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell; an empty passwd field is reported as `/bin/sh`, as passwd(5) says.
    pub shell: PathBuf,
}

impl UserInfo {
    fn from_passwd(user: User) -> Self {
        let shell = if user.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            user.shell
        };
        Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell,
        }
    }

    /// Whether this is a root identity (uid 0 or gid 0), which never runs a session.
    pub fn is_root(&self) -> bool {
        self.uid == 0 || self.gid == 0
    }
}

/// Looks `name` up in the passwd database (NSS). `Ok(None)` when there is no such user;
/// an invalid name is an error and is never passed to the name services.
pub fn lookup(name: &str) -> Result<Option<UserInfo>, UserError> {
    if !valid_user_name(name) {
        return Err(UserError::InvalidName {
            name: name.to_owned(),
        });
    }
    User::from_name(name)
        .map(|found| found.map(UserInfo::from_passwd))
        .map_err(|source| UserError::Lookup {
            name: name.to_owned(),
            source,
        })
}

/// Looks a user id up in the passwd database. `Ok(None)` when no entry has it.
pub fn lookup_uid(uid: u32) -> Result<Option<UserInfo>, UserError> {
    User::from_uid(Uid::from_raw(uid))
        .map(|found| found.map(UserInfo::from_passwd))
        .map_err(|source| UserError::Lookup {
            name: format!("uid {uid}"),
            source,
        })
}

/// The passwd entry of the daemon's effective user (for [`resolve_session_user`]).
pub fn daemon_user() -> Result<UserInfo, UserError> {
    let uid = nix::unistd::geteuid().as_raw();
    lookup_uid(uid)?.ok_or(UserError::UnknownUid { uid })
}

/// What [`Provisioner::ensure_ssm_user`] did to the sudoers drop-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SudoersChange {
    /// Nothing written or removed.
    Unchanged,
    /// The drop-in was validated and installed (mode 0440).
    Installed,
    /// Policy is `none` and the drop-in we (or upstream) wrote earlier was removed.
    Removed,
    /// Policy is `none` but the drop-in exists with content we did not write (or is not
    /// a regular file); it was left in place for the administrator to decide.
    KeptForeign,
    /// Policy is `nopasswd` but the sudoers directory does not exist (sudo is probably
    /// not installed); nothing was written.
    NoSudoersDir,
}

/// What [`Provisioner::ensure_ssm_user`] found and did, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionOutcome {
    /// The user already existed; it was not touched.
    Existing {
        /// What happened to the sudoers drop-in.
        sudoers: SudoersChange,
    },
    /// The user did not exist; it was created and the marker written.
    Created {
        /// What happened to the sudoers drop-in.
        sudoers: SudoersChange,
    },
    /// The user is missing although we created it earlier (the marker exists): an
    /// administrator removed it, so it is not re-added and sessions without RunAs fail.
    RemovedByAdmin {
        /// What happened to the sudoers drop-in.
        sudoers: SudoersChange,
    },
}

impl ProvisionOutcome {
    /// The sudoers part of the outcome.
    pub fn sudoers(self) -> SudoersChange {
        match self {
            ProvisionOutcome::Existing { sudoers }
            | ProvisionOutcome::Created { sudoers }
            | ProvisionOutcome::RemovedByAdmin { sudoers } => sudoers,
        }
    }
}

impl fmt::Display for ProvisionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProvisionOutcome::Existing { .. } => f.write_str("session user already exists")?,
            ProvisionOutcome::Created { .. } => f.write_str("session user created")?,
            ProvisionOutcome::RemovedByAdmin { .. } => f.write_str(
                "session user was removed by an administrator after the agent created it; \
                 it is not re-added, so sessions without RunAs will fail \
                 (create the user by hand to allow them again)",
            )?,
        }
        match self.sudoers() {
            SudoersChange::Unchanged => Ok(()),
            SudoersChange::Installed => f.write_str("; sudoers drop-in installed"),
            SudoersChange::Removed => {
                f.write_str("; stale sudoers drop-in removed (sudo policy is none)")
            }
            SudoersChange::KeptForeign => f.write_str(
                "; sudo policy is none but the sudoers drop-in has content the agent did \
                 not write, so it was left in place",
            ),
            SudoersChange::NoSudoersDir => {
                f.write_str("; no sudoers directory, so no sudo rule was written")
            }
        }
    }
}

/// Creates `ssm-user` (and its sudoers drop-in) once, at daemon start, when the daemon
/// runs as root. See [`Provisioner::ensure_ssm_user`].
#[derive(Debug, Clone)]
pub struct Provisioner {
    /// The user to provision; [`SSM_USER`] except in tests.
    pub user_name: String,
    /// The daemon's state directory, home of the `<user>.provisioned` marker.
    pub state_dir: PathBuf,
    /// Directory of sudoers drop-ins ([`DEFAULT_SUDOERS_DIR`]).
    pub sudoers_dir: PathBuf,
    /// Name of the drop-in inside `sudoers_dir` ([`DEFAULT_SUDOERS_FILE_NAME`]).
    pub sudoers_file_name: String,
    /// Whether the created user gets passwordless sudo.
    pub policy: SudoPolicy,
    /// The `useradd` program.
    pub useradd: PathBuf,
    /// The `visudo` program used to validate the drop-in; `None` skips validation.
    pub visudo: Option<PathBuf>,
}

impl Provisioner {
    /// Defaults as upstream: [`SSM_USER`], `/etc/sudoers.d/ssm-agent-users`, `useradd`
    /// and `visudo` found on `PATH` or in the usual sbin directories.
    pub fn new(state_dir: impl Into<PathBuf>, policy: SudoPolicy) -> Self {
        Self {
            user_name: SSM_USER.to_owned(),
            state_dir: state_dir.into(),
            sudoers_dir: PathBuf::from(DEFAULT_SUDOERS_DIR),
            sudoers_file_name: DEFAULT_SUDOERS_FILE_NAME.to_owned(),
            policy,
            useradd: find_program("useradd").unwrap_or_else(|| PathBuf::from("useradd")),
            visudo: find_program("visudo"),
        }
    }

    /// Path of the marker that says "we created this user".
    pub fn marker_path(&self) -> PathBuf {
        self.state_dir
            .join(format!("{}{MARKER_SUFFIX}", self.user_name))
    }

    /// Path of the sudoers drop-in.
    pub fn sudoers_path(&self) -> PathBuf {
        self.sudoers_dir.join(&self.sudoers_file_name)
    }

    /// The drop-in's exact content.
    pub fn sudoers_content(&self) -> String {
        format!(
            "# User rules for {name}\n{name} ALL=(ALL) NOPASSWD:ALL\n",
            name = self.user_name
        )
    }

    /// Makes sure the session user exists; call once at daemon start, as root.
    ///
    /// * The user exists → nothing is created.
    /// * It is missing and the marker exists → an administrator removed it after we
    ///   created it: it is not re-added ([`ProvisionOutcome::RemovedByAdmin`]).
    /// * It is missing and there is no marker → `useradd -m -s <shell> <user>` (bash if
    ///   present, else sh), then the marker, then — with [`SudoPolicy::NoPasswd`] and no
    ///   drop-in yet — the sudoers drop-in, validated before it is installed.
    /// * With [`SudoPolicy::None`] a drop-in with exactly our content is removed.
    ///
    /// Idempotent: a second call changes nothing.
    pub fn ensure_ssm_user(&self) -> Result<ProvisionOutcome, UserError> {
        let name = self.user_name.as_str();
        if !valid_user_name(name) {
            return Err(UserError::InvalidName {
                name: name.to_owned(),
            });
        }
        if !valid_file_name(&self.sudoers_file_name) {
            return Err(UserError::InvalidSudoersFileName {
                name: self.sudoers_file_name.clone(),
            });
        }
        let sudoers_cleanup = if self.policy == SudoPolicy::None {
            self.remove_stale_sudoers()?
        } else {
            SudoersChange::Unchanged
        };

        if lookup(name)?.is_some() {
            return Ok(ProvisionOutcome::Existing {
                sudoers: sudoers_cleanup,
            });
        }
        let marker = self.marker_path();
        if exists_no_follow(&marker).map_err(|source| io_error("check", &marker, source))? {
            return Ok(ProvisionOutcome::RemovedByAdmin {
                sudoers: sudoers_cleanup,
            });
        }

        self.run_useradd()?;
        self.write_marker()?;

        let sudoers = match self.policy {
            SudoPolicy::None => sudoers_cleanup,
            SudoPolicy::NoPasswd => self.install_sudoers()?,
        };
        Ok(ProvisionOutcome::Created { sudoers })
    }

    fn run_useradd(&self) -> Result<(), UserError> {
        let shell = default_login_shell();
        let output = Command::new(&self.useradd)
            .arg("-m")
            .arg("-s")
            .arg(shell)
            .arg(&self.user_name)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| UserError::Spawn {
                program: self.useradd.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(UserError::UseraddFailed {
                name: self.user_name.clone(),
                status: output.status,
                stderr: trimmed_output(&output.stderr),
            })
        }
    }

    fn write_marker(&self) -> Result<(), UserError> {
        let marker = self.marker_path();
        fs::create_dir_all(&self.state_dir)
            .map_err(|source| io_error("create the state directory", &self.state_dir, source))?;
        let content = format!(
            "{} was created by session-agent; while this file exists it is never re-added\n",
            self.user_name
        );
        let write = || -> io::Result<()> {
            let mut tmp = tempfile::Builder::new()
                .prefix(".marker.")
                .tempfile_in(&self.state_dir)?;
            tmp.write_all(content.as_bytes())?;
            tmp.as_file().sync_all()?;
            tmp.persist(&marker).map_err(|e| e.error)?;
            sync_dir(&self.state_dir)
        };
        write().map_err(|source| io_error("write the provisioning marker", &marker, source))
    }

    /// Policy `none`: removes a drop-in whose content is exactly ours.
    fn remove_stale_sudoers(&self) -> Result<SudoersChange, UserError> {
        let path = self.sudoers_path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SudoersChange::Unchanged),
            Err(source) => return Err(io_error("inspect", &path, source)),
        };
        if !meta.is_file() {
            return Ok(SudoersChange::KeptForeign);
        }
        let content = fs::read(&path).map_err(|source| io_error("read", &path, source))?;
        if content != self.sudoers_content().as_bytes() {
            return Ok(SudoersChange::KeptForeign);
        }
        fs::remove_file(&path).map_err(|source| io_error("remove", &path, source))?;
        sync_dir(&self.sudoers_dir)
            .map_err(|source| io_error("sync", &self.sudoers_dir, source))?;
        Ok(SudoersChange::Removed)
    }

    /// Policy `nopasswd`, user just created: installs the drop-in unless one exists.
    fn install_sudoers(&self) -> Result<SudoersChange, UserError> {
        let path = self.sudoers_path();
        if exists_no_follow(&path).map_err(|source| io_error("check", &path, source))? {
            return Ok(SudoersChange::Unchanged);
        }
        if !self.sudoers_dir.is_dir() {
            return Ok(SudoersChange::NoSudoersDir);
        }
        let sudoers_error = |source| UserError::Sudoers {
            name: self.user_name.clone(),
            path: path.clone(),
            source,
        };
        // A leading dot makes sudo's #includedir skip the file while it is incomplete.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", self.sudoers_file_name))
            .tempfile_in(&self.sudoers_dir)
            .map_err(sudoers_error)?;
        tmp.write_all(self.sudoers_content().as_bytes())
            .map_err(sudoers_error)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(SUDOERS_MODE))
            .map_err(sudoers_error)?;
        tmp.as_file().sync_all().map_err(sudoers_error)?;

        if let Some(visudo) = &self.visudo {
            // On any early return `tmp` is dropped, which deletes the temporary file.
            let output = Command::new(visudo)
                .arg("-c")
                .arg("-f")
                .arg(tmp.path())
                .stdin(Stdio::null())
                .output()
                .map_err(|source| UserError::Spawn {
                    program: visudo.clone(),
                    source,
                })?;
            if !output.status.success() {
                let mut text = trimmed_output(&output.stderr);
                if text.is_empty() {
                    text = trimmed_output(&output.stdout);
                }
                return Err(UserError::SudoersInvalid {
                    name: self.user_name.clone(),
                    path,
                    status: output.status,
                    output: text,
                });
            }
        }

        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            // Someone installed one meanwhile: theirs wins, ours is deleted with `tmp`.
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                return Ok(SudoersChange::Unchanged)
            }
            Err(e) => return Err(sudoers_error(e.error)),
        }
        sync_dir(&self.sudoers_dir).map_err(sudoers_error)?;
        Ok(SudoersChange::Installed)
    }
}

/// The user a session runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    /// Its passwd entry.
    pub info: UserInfo,
    /// Whether the child must drop privileges to it (setgid, initgroups, setuid) before
    /// exec; false when the daemon is not root and the shell simply inherits its user.
    pub switch: bool,
}

/// Chooses the session user (§6.2, stricter):
/// * daemon not root → the daemon's own user, no switch (RunAs settings are ignored);
/// * RunAs enabled → the message's RunAs user if non-blank, else `run_as_default_user`;
///   both blank is an error; the name must be valid and exist (never created);
/// * RunAs disabled → [`SSM_USER`], which must exist (provisioned at daemon start);
/// * a user with uid 0 or gid 0 is refused.
pub fn resolve_session_user(
    run_as_enabled: bool,
    run_as_default_user: &str,
    message_run_as_user: &str,
    daemon_is_root: bool,
    daemon_user: &UserInfo,
) -> Result<SessionUser, UserError> {
    resolve_with(
        run_as_enabled,
        run_as_default_user,
        message_run_as_user,
        daemon_is_root,
        daemon_user,
        lookup,
    )
}

fn resolve_with(
    run_as_enabled: bool,
    run_as_default_user: &str,
    message_run_as_user: &str,
    daemon_is_root: bool,
    daemon_user: &UserInfo,
    lookup: impl Fn(&str) -> Result<Option<UserInfo>, UserError>,
) -> Result<SessionUser, UserError> {
    if !daemon_is_root {
        return Ok(SessionUser {
            info: daemon_user.clone(),
            switch: false,
        });
    }
    let info = if run_as_enabled {
        let message_user = message_run_as_user.trim();
        let name = if message_user.is_empty() {
            run_as_default_user.trim()
        } else {
            message_user
        };
        if name.is_empty() {
            return Err(UserError::RunAsUnset);
        }
        if !valid_user_name(name) {
            return Err(UserError::InvalidName {
                name: name.to_owned(),
            });
        }
        lookup(name)?.ok_or_else(|| UserError::NoSuchRunAsUser {
            name: name.to_owned(),
        })?
    } else {
        lookup(SSM_USER)?.ok_or(UserError::SsmUserMissing)?
    };
    if info.is_root() {
        return Err(UserError::RootRefused {
            name: info.name,
            uid: info.uid,
            gid: info.gid,
        });
    }
    Ok(SessionUser { info, switch: true })
}

/// Why a user could not be looked up, provisioned or chosen.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name does not match `[a-z_][a-z0-9_-]{0,31}`.
    #[error("{name:?} is not a valid user name: use 1 to 32 characters from [a-z0-9_-], not starting with a digit or '-'")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The passwd database (NSS) failed.
    #[error("looking up user {name} in the passwd database failed: {source}; check /etc/nsswitch.conf and the name services it uses")]
    Lookup {
        /// The name (or `uid N`) looked up.
        name: String,
        /// The error from getpwnam_r/getpwuid_r.
        #[source]
        source: nix::errno::Errno,
    },
    /// The daemon's own uid has no passwd entry.
    #[error("the daemon's uid {uid} has no passwd entry: run the daemon as a user listed in the passwd database")]
    UnknownUid {
        /// The daemon's effective uid.
        uid: u32,
    },
    /// RunAs is enabled but neither the document nor the message names a user.
    #[error("RunAs is enabled but no RunAs user is set: set runAsDefaultUser in the session preferences or tag the IAM principal with SSMSessionRunAs")]
    RunAsUnset,
    /// The RunAs user is not in the passwd database.
    #[error("RunAs user {name} does not exist on this host: create it first (the agent never creates RunAs users)")]
    NoSuchRunAsUser {
        /// The RunAs user.
        name: String,
    },
    /// RunAs is disabled and ssm-user does not exist.
    #[error("ssm-user does not exist on this host: the agent creates it when it starts as root, but never re-adds it after an administrator removed it; create it (useradd -m ssm-user) or enable RunAs")]
    SsmUserMissing,
    /// The chosen user is root (uid 0 or gid 0).
    #[error("refusing to run a session as {name} (uid {uid}, gid {gid}): sessions never run as root; choose a user with nonzero uid and gid")]
    RootRefused {
        /// The refused user.
        name: String,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// The sudoers file name is not a plain file name sudo would read.
    #[error("invalid sudoers file name {name:?}: use a plain name without '/', '.' or a trailing '~' (sudo ignores such files)")]
    InvalidSudoersFileName {
        /// The rejected name.
        name: String,
    },
    /// `useradd` or `visudo` could not be started.
    #[error("could not run {}: {source}; install it or fix the daemon's PATH", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },
    /// `useradd` ran and failed.
    #[error("useradd failed to create {name} ({status}): {stderr}; create the user by hand or fix the cause and restart the agent")]
    UseraddFailed {
        /// The user.
        name: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// `visudo -c` rejected the drop-in; nothing was installed.
    #[error("visudo rejected the sudoers drop-in for {name} ({status}), so {} was not installed: {output}", path.display())]
    SudoersInvalid {
        /// The user.
        name: String,
        /// Where it would have gone.
        path: PathBuf,
        /// visudo's exit status.
        status: ExitStatus,
        /// visudo's message.
        output: String,
    },
    /// Writing the drop-in failed; nothing was installed.
    #[error("could not install the sudoers drop-in {} for {name}: {source}; check the directory, or set the sudo policy to none", path.display())]
    Sudoers {
        /// The user.
        name: String,
        /// The drop-in's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another file operation failed.
    #[error("could not {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> UserError {
    UserError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A file name sudo's `#includedir` would read: no '/', no '.', no trailing '~'.
fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '.', '\0']) && !name.ends_with('~')
}

/// `/bin/bash` when present, else `/bin/sh`.
fn default_login_shell() -> &'static str {
    if Path::new("/bin/bash").is_file() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// Finds `name` on `PATH` or in the usual sbin/bin directories (daemons often run
/// without `/usr/sbin` on their `PATH`).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn exists_no_follow(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A command's output as one trimmed line of text (lossy UTF-8, at most 2000 bytes).
fn trimmed_output(bytes: &[u8]) -> String {
    const LIMIT: usize = 2000;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn random_hex6() -> String {
        format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff)
    }

    /// A user name that surely does not exist.
    fn absent_name() -> String {
        loop {
            let name = format!("sa-absent-{}", random_hex6());
            if lookup(&name).unwrap().is_none() {
                return name;
            }
        }
    }

    fn fake_user(name: &str, uid: u32, gid: u32) -> UserInfo {
        UserInfo {
            name: name.to_owned(),
            uid,
            gid,
            home: PathBuf::from(format!("/home/{name}")),
            shell: PathBuf::from("/bin/sh"),
        }
    }

    // ---- names ----

    #[test]
    fn good_names() {
        for ok in [
            "a",
            "_",
            "ssm-user",
            "nobody",
            "_apt",
            "systemd-network",
            "a1_-",
            "abcdefghijklmnopqrstuvwxyz012345", // 32
        ] {
            assert!(valid_user_name(ok), "{ok}");
        }
    }

    #[test]
    fn bad_names() {
        let long = "a".repeat(33);
        for bad in [
            "",
            "a;rm",
            "a;rm -rf /",
            "$(id)",
            "`id`",
            "a b",
            " a",
            "a ",
            "a\n",
            "a\0",
            "Root",
            "ROOT",
            "aB",
            "1abc",
            "-abc",
            "a.b",
            "a/b",
            "a$",
            "a|b",
            "a&b",
            "a>b",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    // ---- lookup ----

    #[test]
    fn lookup_root() {
        let root = lookup("root").unwrap().expect("root exists");
        assert_eq!(root.name, "root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.is_root());
        assert!(root.home.is_absolute());
        assert!(!root.shell.as_os_str().is_empty());
    }

    #[test]
    fn lookup_nobody() {
        let nobody = lookup("nobody").unwrap().expect("nobody exists");
        assert_eq!(nobody.name, "nobody");
        assert_ne!(nobody.uid, 0);
        assert!(!nobody.is_root());
    }

    #[test]
    fn lookup_missing_and_invalid() {
        assert_eq!(lookup(&absent_name()).unwrap(), None);
        assert!(matches!(
            lookup("$(id)"),
            Err(UserError::InvalidName { name }) if name == "$(id)"
        ));
    }

    #[test]
    fn lookup_by_uid_and_daemon_user() {
        assert_eq!(lookup_uid(0).unwrap().unwrap().name, "root");
        let me = daemon_user().unwrap();
        assert_eq!(me.uid, nix::unistd::geteuid().as_raw());
    }

    // ---- resolve_session_user ----

    fn daemon() -> UserInfo {
        fake_user("daemon-self", 4242, 4242)
    }

    fn nobody() -> UserInfo {
        lookup("nobody").unwrap().expect("nobody exists")
    }

    #[test]
    fn resolve_not_root_uses_daemon_user() {
        for (enabled, default, message) in [
            (false, "", ""),
            (true, "nobody", ""),
            (true, "", ""),
            (true, "root", "$(id)"),
        ] {
            let got = resolve_session_user(enabled, default, message, false, &daemon()).unwrap();
            assert_eq!(
                got,
                SessionUser {
                    info: daemon(),
                    switch: false
                }
            );
        }
    }

    #[test]
    fn resolve_run_as_default_user() {
        let got = resolve_session_user(true, "nobody", "", true, &daemon()).unwrap();
        assert_eq!(
            got,
            SessionUser {
                info: nobody(),
                switch: true
            }
        );
        // Blank (whitespace) message user falls back to the default.
        let got = resolve_session_user(true, " nobody ", "  ", true, &daemon()).unwrap();
        assert_eq!(got.info, nobody());
    }

    #[test]
    fn resolve_run_as_message_user_wins() {
        let absent = absent_name();
        let got = resolve_session_user(true, &absent, "nobody", true, &daemon()).unwrap();
        assert_eq!(got.info, nobody());
        assert!(got.switch);
    }

    #[test]
    fn resolve_run_as_blank() {
        let err = resolve_session_user(true, " ", "", true, &daemon()).unwrap_err();
        assert!(matches!(err, UserError::RunAsUnset));
        assert_eq!(
            err.to_string(),
            "RunAs is enabled but no RunAs user is set: set runAsDefaultUser in the session \
             preferences or tag the IAM principal with SSMSessionRunAs"
        );
    }

    #[test]
    fn resolve_run_as_invalid_name() {
        for bad in ["a;rm", "$(id)", "Alice", "a b"] {
            let err = resolve_session_user(true, "nobody", bad, true, &daemon()).unwrap_err();
            assert!(
                matches!(&err, UserError::InvalidName { name } if name == bad),
                "{err}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn resolve_run_as_missing_user() {
        let absent = absent_name();
        let err = resolve_session_user(true, &absent, "", true, &daemon()).unwrap_err();
        assert!(matches!(&err, UserError::NoSuchRunAsUser { name } if *name == absent));
        assert!(err
            .to_string()
            .starts_with(&format!("RunAs user {absent} does not exist on this host")));
    }

    #[test]
    fn resolve_run_as_root_refused() {
        let err = resolve_session_user(true, "root", "", true, &daemon()).unwrap_err();
        assert!(
            matches!(err, UserError::RootRefused { uid: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("sessions never run as root"));
        // gid 0 alone is refused too (a fabricated passwd entry).
        let lookup = |name: &str| Ok(Some(fake_user(name, 1000, 0)));
        let err = resolve_with(true, "wheelish", "", true, &daemon(), lookup).unwrap_err();
        assert!(
            matches!(err, UserError::RootRefused { gid: 0, .. }),
            "{err}"
        );
        let lookup = |name: &str| Ok(Some(fake_user(name, 0, 1000)));
        let err = resolve_with(false, "", "", true, &daemon(), lookup).unwrap_err();
        assert!(
            matches!(err, UserError::RootRefused { uid: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn resolve_run_as_disabled_uses_ssm_user() {
        let calls = AtomicU32::new(0);
        let present = |name: &str| {
            calls.fetch_add(1, Ordering::Relaxed);
            assert_eq!(name, SSM_USER);
            Ok(Some(fake_user(name, 1001, 1001)))
        };
        // RunAs settings are ignored when RunAs is disabled.
        let got = resolve_with(false, "nobody", "root", true, &daemon(), present).unwrap();
        assert_eq!(got.info.name, SSM_USER);
        assert!(got.switch);
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        let absent = |_: &str| Ok(None);
        let err = resolve_with(false, "", "", true, &daemon(), absent).unwrap_err();
        assert!(matches!(err, UserError::SsmUserMissing));
        assert!(err.to_string().contains("never re-adds it"));

        // And against the real passwd database, whatever this host has.
        match lookup(SSM_USER).unwrap() {
            Some(info) if !info.is_root() => {
                let got = resolve_session_user(false, "", "", true, &daemon()).unwrap();
                assert_eq!(got, SessionUser { info, switch: true });
            }
            Some(_) => {}
            None => assert!(matches!(
                resolve_session_user(false, "", "", true, &daemon()),
                Err(UserError::SsmUserMissing)
            )),
        }
    }

    #[test]
    fn resolve_lookup_error_propagates() {
        let failing = |name: &str| {
            Err(UserError::Lookup {
                name: name.to_owned(),
                source: nix::errno::Errno::EIO,
            })
        };
        let err = resolve_with(true, "alice", "", true, &daemon(), failing).unwrap_err();
        assert!(matches!(err, UserError::Lookup { .. }));
    }

    // ---- provisioner with fakes ----

    struct Fixture {
        _dir: tempfile::TempDir,
        state: PathBuf,
        sudoers: PathBuf,
        bin: PathBuf,
        log: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let sudoers = dir.path().join("sudoers.d");
            let bin = dir.path().join("bin");
            fs::create_dir(&sudoers).unwrap();
            fs::create_dir(&bin).unwrap();
            let log = dir.path().join("calls.log");
            Self {
                _dir: dir,
                state,
                sudoers,
                bin,
                log,
            }
        }

        /// Writes an executable script `name` that appends `name` and its arguments (one
        /// per line) to the call log, then runs `tail`.
        fn script(&self, name: &str, tail: &str) -> PathBuf {
            let path = self.bin.join(name);
            let body = format!(
                "#!/bin/sh\n\
                 [ -n \"$FAKE_PROBE\" ] && exit 0\n\
                 {{ echo '>{name}'; for a in \"$@\"; do printf '%s\\n' \"$a\"; done; }} >> '{log}'\n\
                 {tail}\n",
                log = self.log.display()
            );
            fs::write(&path, body).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            // Another test thread may fork while our write descriptor is open, and its
            // child holds the descriptor until it execs: exec then fails with ETXTBSY.
            // Wait until one run succeeds; after that no writer can remain.
            for _ in 0..200 {
                match Command::new(&path).env("FAKE_PROBE", "1").status() {
                    Ok(status) => {
                        assert!(status.success());
                        return path;
                    }
                    Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => panic!("probe {}: {e}", path.display()),
                }
            }
            panic!("{} stays busy", path.display());
        }

        /// The recorded calls: (program, args).
        fn calls(&self) -> Vec<(String, Vec<String>)> {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let mut calls: Vec<(String, Vec<String>)> = Vec::new();
            for line in text.lines() {
                if let Some(program) = line.strip_prefix('>') {
                    calls.push((program.to_owned(), Vec::new()));
                } else {
                    calls.last_mut().unwrap().1.push(line.to_owned());
                }
            }
            calls
        }

        fn provisioner(&self, user: &str, policy: SudoPolicy) -> Provisioner {
            Provisioner {
                user_name: user.to_owned(),
                state_dir: self.state.clone(),
                sudoers_dir: self.sudoers.clone(),
                sudoers_file_name: DEFAULT_SUDOERS_FILE_NAME.to_owned(),
                policy,
                useradd: self.script("useradd", "exit 0"),
                visudo: None,
            }
        }

        fn sudoers_entries(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.sudoers)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn provision_creates_user_marker_and_sudoers() {
        let fx = Fixture::new();
        let name = absent_name();
        let mut p = fx.provisioner(&name, SudoPolicy::NoPasswd);
        p.visudo = Some(fx.script("visudo", "exit 0"));

        let outcome = p.ensure_ssm_user().unwrap();
        assert_eq!(
            outcome,
            ProvisionOutcome::Created {
                sudoers: SudoersChange::Installed
            }
        );
        let calls = fx.calls();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0].0, "useradd");
        assert_eq!(
            calls[0].1,
            ["-m", "-s", default_login_shell(), name.as_str()]
        );
        // visudo checked the temporary file in the sudoers directory, before the rename.
        assert_eq!(calls[1].0, "visudo");
        assert_eq!(calls[1].1[..2], ["-c", "-f"]);
        let checked = Path::new(&calls[1].1[2]);
        assert_eq!(checked.parent().unwrap(), fx.sudoers);
        assert!(checked
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with('.'));
        assert!(!checked.exists());

        let marker = fx.state.join(format!("{name}.provisioned"));
        assert_eq!(p.marker_path(), marker);
        assert!(marker.is_file());

        let sudoers = fx.sudoers.join("ssm-agent-users");
        assert_eq!(
            fs::read_to_string(&sudoers).unwrap(),
            format!("# User rules for {name}\n{name} ALL=(ALL) NOPASSWD:ALL\n")
        );
        assert_eq!(mode(&sudoers), 0o440);
        assert_eq!(fx.sudoers_entries(), ["ssm-agent-users"]);
        assert!(outcome.to_string().contains("sudoers drop-in installed"));

        // Second call: the (fake) user still does not exist, but the marker says we
        // created it, so nothing is run or written.
        let before = fs::read(&sudoers).unwrap();
        let outcome = p.ensure_ssm_user().unwrap();
        assert_eq!(
            outcome,
            ProvisionOutcome::RemovedByAdmin {
                sudoers: SudoersChange::Unchanged
            }
        );
        assert_eq!(fx.calls().len(), 2);
        assert_eq!(fs::read(&sudoers).unwrap(), before);
        assert_eq!(fx.sudoers_entries(), ["ssm-agent-users"]);
    }

    #[test]
    fn provision_removed_by_admin_is_not_re_added() {
        let fx = Fixture::new();
        let name = absent_name();
        let p = fx.provisioner(&name, SudoPolicy::NoPasswd);
        fs::create_dir_all(&fx.state).unwrap();
        fs::write(p.marker_path(), "").unwrap();

        let outcome = p.ensure_ssm_user().unwrap();
        assert_eq!(
            outcome,
            ProvisionOutcome::RemovedByAdmin {
                sudoers: SudoersChange::Unchanged
            }
        );
        assert!(outcome.to_string().contains("not re-added"));
        assert!(fx.calls().is_empty(), "useradd must not run");
        assert!(fx.sudoers_entries().is_empty());
    }

    #[test]
    fn provision_existing_user_is_left_alone() {
        let fx = Fixture::new();
        let p = fx.provisioner("nobody", SudoPolicy::NoPasswd);
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Existing {
                sudoers: SudoersChange::Unchanged
            }
        );
        assert!(fx.calls().is_empty());
        assert!(!p.marker_path().exists());
        assert!(fx.sudoers_entries().is_empty());
    }

    #[test]
    fn provision_useradd_failure() {
        let fx = Fixture::new();
        let name = absent_name();
        let mut p = fx.provisioner(&name, SudoPolicy::NoPasswd);
        p.useradd = fx.script(
            "useradd",
            "echo 'useradd: cannot lock /etc/passwd; try again later.' >&2; exit 1",
        );
        let err = p.ensure_ssm_user().unwrap_err();
        assert!(matches!(err, UserError::UseraddFailed { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("useradd: cannot lock /etc/passwd; try again later."),
            "{text}"
        );
        assert!(text.contains(&name), "{text}");
        assert!(!p.marker_path().exists());
        assert!(fx.sudoers_entries().is_empty());
    }

    #[test]
    fn provision_missing_useradd() {
        let fx = Fixture::new();
        let mut p = fx.provisioner(&absent_name(), SudoPolicy::NoPasswd);
        p.useradd = fx.bin.join("no-such-useradd");
        let err = p.ensure_ssm_user().unwrap_err();
        assert!(matches!(err, UserError::Spawn { .. }), "{err}");
        assert!(!p.marker_path().exists());
    }

    #[test]
    fn provision_invalid_sudoers_is_never_installed() {
        let fx = Fixture::new();
        let name = absent_name();
        let mut p = fx.provisioner(&name, SudoPolicy::NoPasswd);
        p.visudo = Some(fx.script(
            "visudo",
            "echo \"$3: syntax error near line 2\" >&2; exit 1",
        ));
        let err = p.ensure_ssm_user().unwrap_err();
        assert!(matches!(err, UserError::SudoersInvalid { .. }), "{err}");
        assert!(
            err.to_string().contains("syntax error near line 2"),
            "{err}"
        );
        // No drop-in, no leftover temporary file.
        assert!(
            fx.sudoers_entries().is_empty(),
            "{:?}",
            fx.sudoers_entries()
        );
        // The user was created, so the marker exists: it is never re-added.
        assert!(p.marker_path().exists());
    }

    #[test]
    fn provision_policy_none_writes_nothing() {
        let fx = Fixture::new();
        let name = absent_name();
        let p = fx.provisioner(&name, SudoPolicy::None);
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Created {
                sudoers: SudoersChange::Unchanged
            }
        );
        assert_eq!(fx.calls().len(), 1);
        assert!(fx.sudoers_entries().is_empty());
    }

    #[test]
    fn provision_policy_none_removes_our_stale_drop_in() {
        let fx = Fixture::new();
        let name = absent_name();
        let p = fx.provisioner(&name, SudoPolicy::NoPasswd);
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Created {
                sudoers: SudoersChange::Installed
            }
        );
        let p = Provisioner {
            policy: SudoPolicy::None,
            ..p
        };
        let outcome = p.ensure_ssm_user().unwrap();
        assert_eq!(
            outcome,
            ProvisionOutcome::RemovedByAdmin {
                sudoers: SudoersChange::Removed
            }
        );
        assert!(outcome
            .to_string()
            .contains("stale sudoers drop-in removed"));
        assert!(fx.sudoers_entries().is_empty());
        assert_eq!(fx.calls().len(), 1);
        // Idempotent.
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::RemovedByAdmin {
                sudoers: SudoersChange::Unchanged
            }
        );
    }

    #[test]
    fn provision_policy_none_keeps_a_foreign_drop_in() {
        let fx = Fixture::new();
        let p = fx.provisioner("nobody", SudoPolicy::None);
        let path = p.sudoers_path();
        fs::write(&path, "nobody ALL=(ALL) /usr/bin/true\n").unwrap();
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Existing {
                sudoers: SudoersChange::KeptForeign
            }
        );
        assert!(path.exists());
    }

    #[test]
    fn provision_existing_drop_in_is_not_overwritten() {
        let fx = Fixture::new();
        let name = absent_name();
        let p = fx.provisioner(&name, SudoPolicy::NoPasswd);
        let path = p.sudoers_path();
        fs::write(&path, "# admin's own\n").unwrap();
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Created {
                sudoers: SudoersChange::Unchanged
            }
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "# admin's own\n");
    }

    #[test]
    fn provision_without_sudoers_dir() {
        let fx = Fixture::new();
        let mut p = fx.provisioner(&absent_name(), SudoPolicy::NoPasswd);
        p.sudoers_dir = fx.sudoers.join("absent");
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Created {
                sudoers: SudoersChange::NoSudoersDir
            }
        );
        assert!(!p.sudoers_dir.exists());
    }

    #[test]
    fn provision_rejects_bad_names_before_running_anything() {
        let fx = Fixture::new();
        let p = fx.provisioner("a;rm -rf /", SudoPolicy::NoPasswd);
        assert!(matches!(
            p.ensure_ssm_user(),
            Err(UserError::InvalidName { .. })
        ));
        let mut p = fx.provisioner(&absent_name(), SudoPolicy::NoPasswd);
        for bad in ["", "a.b", "../x", "x~"] {
            p.sudoers_file_name = bad.to_owned();
            assert!(matches!(
                p.ensure_ssm_user(),
                Err(UserError::InvalidSudoersFileName { .. })
            ));
        }
        assert!(fx.calls().is_empty());
    }

    #[test]
    fn defaults() {
        let p = Provisioner::new("/var/lib/session-agent", SudoPolicy::default());
        assert_eq!(p.user_name, SSM_USER);
        assert_eq!(
            p.marker_path(),
            Path::new("/var/lib/session-agent/ssm-user.provisioned")
        );
        assert_eq!(
            p.sudoers_path(),
            Path::new("/etc/sudoers.d/ssm-agent-users")
        );
        assert_eq!(
            p.sudoers_content(),
            "# User rules for ssm-user\nssm-user ALL=(ALL) NOPASSWD:ALL\n"
        );
        assert_eq!(p.policy, SudoPolicy::NoPasswd);
        assert!(p.useradd.ends_with("useradd"));
    }

    /// With a real visudo on this host, our content must pass its check.
    #[test]
    fn real_visudo_accepts_our_content() {
        let Some(visudo) = find_program("visudo") else {
            return;
        };
        let fx = Fixture::new();
        let mut p = fx.provisioner(&absent_name(), SudoPolicy::NoPasswd);
        p.visudo = Some(visudo);
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Created {
                sudoers: SudoersChange::Installed
            }
        );
    }

    // ---- the real thing, as root only ----

    struct DeleteUser(String);

    impl Drop for DeleteUser {
        fn drop(&mut self) {
            let userdel = find_program("userdel").unwrap_or_else(|| PathBuf::from("userdel"));
            let _ = Command::new(userdel)
                .arg("-r")
                .arg(&self.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    #[test]
    fn real_useradd_as_root() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let Some(useradd) = find_program("useradd") else {
            return;
        };
        let name = loop {
            let name = format!("sa-test-{}", random_hex6());
            if lookup(&name).unwrap().is_none() {
                break name;
            }
        };
        let _cleanup = DeleteUser(name.clone());
        let dir = tempfile::tempdir().unwrap();
        let sudoers_dir = dir.path().join("sudoers.d");
        fs::create_dir(&sudoers_dir).unwrap();
        let p = Provisioner {
            user_name: name.clone(),
            state_dir: dir.path().join("state"),
            sudoers_dir,
            sudoers_file_name: DEFAULT_SUDOERS_FILE_NAME.to_owned(),
            policy: SudoPolicy::NoPasswd,
            useradd,
            visudo: find_program("visudo"),
        };
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Created {
                sudoers: SudoersChange::Installed
            }
        );
        let info = lookup(&name).unwrap().expect("user was created");
        assert!(!info.is_root());
        assert_eq!(info.shell, Path::new(default_login_shell()));
        assert!(info.home.is_dir(), "home {}", info.home.display());
        assert_eq!(mode(&p.sudoers_path()), 0o440);
        assert!(p.marker_path().exists());
        // Idempotent: the user exists now.
        assert_eq!(
            p.ensure_ssm_user().unwrap(),
            ProvisionOutcome::Existing {
                sudoers: SudoersChange::Unchanged
            }
        );
    }
}
