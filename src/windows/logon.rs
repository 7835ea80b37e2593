//! The Windows `__exec-as` shim: started by the agent (LocalSystem) as the process on
//! the session's pseudoconsole, it logs ssm-user on with the session's one-time password
//! and starts the shell as that user, attached to the same console, then waits for it
//! and exits with its exit code.
//!
//! * Logon: `LogonUserW` with a network logon, as upstream, which gives an
//!   administrator's full token without UAC filtering; turned into a primary token with
//!   `DuplicateTokenEx`.
//! * Profile and environment: `LoadUserProfileW` (creates the profile on first use and
//!   loads the user's registry hive) and `CreateEnvironmentBlock` (the user's own
//!   environment, nothing of the agent's); the shell starts in the profile directory.
//! * Containment: the shell is created suspended, put in a job object that kills every
//!   process in it when its last handle closes, then resumed. The shim holds that
//!   handle, so when the agent ends the session by terminating the shim, the whole
//!   process tree of the session goes with it.
//! * The password arrives in the environment variable [`PASSWORD_ENV`] (never on the
//!   command line, which any user can read); the shim removes it from its own
//!   environment at once, and the shell's environment is built fresh.

use super::{check, wide, Owned};
use std::io;
use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{HANDLE, WAIT_OBJECT_0};
use windows_sys::Win32::Security::{
    DuplicateTokenEx, LogonUserW, SecurityImpersonation, TokenPrimary, LOGON32_LOGON_NETWORK,
    LOGON32_PROVIDER_DEFAULT, TOKEN_ALL_ACCESS,
};
use windows_sys::Win32::System::Console::{SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_C_EVENT};
use windows_sys::Win32::System::Environment::{CreateEnvironmentBlock, DestroyEnvironmentBlock};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{
    CreateProcessAsUserW, GetExitCodeProcess, ResumeThread, WaitForSingleObject, CREATE_SUSPENDED,
    CREATE_UNICODE_ENVIRONMENT, INFINITE, PROCESS_INFORMATION, STARTUPINFOW,
};
use windows_sys::Win32::UI::Shell::{
    GetUserProfileDirectoryW, LoadUserProfileW, UnloadUserProfile, PROFILEINFOW,
};

/// The environment variable carrying the one-time password from the agent to the shim.
pub const PASSWORD_ENV: &str = "SESSION_AGENT_EXEC_AS_PASSWORD";

/// `PI_NOUI`: no message boxes while loading the profile (a service has no desktop).
const PI_NOUI: u32 = 1;

/// A loaded user profile, unloaded when dropped.
struct Profile<'a> {
    token: &'a Owned,
    hive: HANDLE,
}

impl Drop for Profile<'_> {
    fn drop(&mut self) {
        // SAFETY: the token and the hive handle LoadUserProfileW returned.
        unsafe { UnloadUserProfile(self.token.0, self.hive) };
    }
}

/// An environment block from CreateEnvironmentBlock, destroyed when dropped.
struct Environment(*mut core::ffi::c_void);

impl Drop for Environment {
    fn drop(&mut self) {
        // SAFETY: the block CreateEnvironmentBlock allocated.
        unsafe { DestroyEnvironmentBlock(self.0) };
    }
}

/// Console control handler of the shim: Ctrl-C and Ctrl-Break are handled (by doing
/// nothing); anything else (close, logoff, shutdown) goes to the default handler.
unsafe extern "system" fn leave_interrupts_to_the_shell(event: u32) -> BOOL {
    BOOL::from(event == CTRL_C_EVENT || event == CTRL_BREAK_EVENT)
}

/// Logs `user` on with `password` and runs `command_line` as them on this console;
/// returns its exit code once it has exited.
///
/// # Errors
/// Each step's failure, naming the step (the shim prints it on the console).
pub fn run_as(user: &str, password: &str, command_line: &str) -> io::Result<u32> {
    // Ctrl-C and Ctrl-Break on the console reach every process attached to it, the shim
    // included, whose default handler would exit and so (through the job) end the whole
    // session. They are for the shell: the shim ignores them. (Not the "ignore" flag of
    // a NULL handler: that one would be inherited by the shell.)
    // SAFETY: a handler function that lives as long as the process.
    check(
        unsafe { SetConsoleCtrlHandler(Some(leave_interrupts_to_the_shell), 1) },
        "SetConsoleCtrlHandler",
    )?;
    let name = wide(user);
    let domain = wide(".");
    let mut secret = wide(password);
    let mut logon: HANDLE = std::ptr::null_mut();
    // SAFETY: NUL-terminated strings that outlive the call; `logon` receives a handle.
    let ok = unsafe {
        LogonUserW(
            name.as_ptr(),
            domain.as_ptr(),
            secret.as_ptr(),
            LOGON32_LOGON_NETWORK,
            LOGON32_PROVIDER_DEFAULT,
            &mut logon,
        )
    };
    secret.fill(0);
    check(ok, "LogonUserW")?;
    let logon = Owned(logon);
    let mut primary: HANDLE = std::ptr::null_mut();
    // SAFETY: `logon` is a token; `primary` receives a new one.
    check(
        unsafe {
            DuplicateTokenEx(
                logon.0,
                TOKEN_ALL_ACCESS,
                std::ptr::null(),
                SecurityImpersonation,
                TokenPrimary,
                &mut primary,
            )
        },
        "DuplicateTokenEx",
    )?;
    let token = Owned(primary);

    let mut user_name = wide(user);
    let mut info = PROFILEINFOW {
        dwSize: u32::try_from(std::mem::size_of::<PROFILEINFOW>()).unwrap_or(0),
        dwFlags: PI_NOUI,
        lpUserName: user_name.as_mut_ptr(),
        ..PROFILEINFOW::default()
    };
    // SAFETY: `info` is a sized PROFILEINFOW pointing at a NUL-terminated name.
    check(
        unsafe { LoadUserProfileW(token.0, &mut info) },
        "LoadUserProfileW",
    )?;
    let _profile = Profile {
        token: &token,
        hive: info.hProfile,
    };
    let mut dir = vec![0u16; 1024];
    let mut dir_len = 1024u32;
    // SAFETY: `dir` is as long as `dir_len` says.
    check(
        unsafe { GetUserProfileDirectoryW(token.0, dir.as_mut_ptr(), &mut dir_len) },
        "GetUserProfileDirectoryW",
    )?;

    let mut block: *mut core::ffi::c_void = std::ptr::null_mut();
    // SAFETY: `block` receives an allocation freed by `Environment`'s drop.
    check(
        unsafe { CreateEnvironmentBlock(&mut block, token.0, 0) },
        "CreateEnvironmentBlock",
    )?;
    let environment = Environment(block);

    // SAFETY: no name, default security.
    let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if job.is_null() {
        return Err(io::Error::other(format!(
            "CreateJobObjectW: {}",
            io::Error::last_os_error()
        )));
    }
    let job = Owned(job);
    let mut limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    // SAFETY: `limits` is the structure JobObjectExtendedLimitInformation expects.
    check(
        unsafe {
            SetInformationJobObject(
                job.0,
                JobObjectExtendedLimitInformation,
                std::ptr::addr_of!(limits).cast(),
                u32::try_from(std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>())
                    .unwrap_or(0),
            )
        },
        "SetInformationJobObject",
    )?;

    let mut line = wide(command_line);
    // An empty desktop name: the shell gets an invisible window station of its own logon
    // session instead of the service's, which ssm-user may not open (a console program
    // then dies at start with 0xC0000142).
    let mut desktop = wide("");
    let startup = STARTUPINFOW {
        cb: u32::try_from(std::mem::size_of::<STARTUPINFOW>()).unwrap_or(0),
        lpDesktop: desktop.as_mut_ptr(),
        ..STARTUPINFOW::default()
    };
    let mut process = PROCESS_INFORMATION::default();
    // SAFETY: the command line is a mutable NUL-terminated buffer (CreateProcess may
    // write to it); the environment block is Unicode as the flag says; the profile
    // directory is NUL-terminated. No handles are inherited: the shell attaches to this
    // process's console, the session's pseudoconsole.
    check(
        unsafe {
            CreateProcessAsUserW(
                token.0,
                std::ptr::null(),
                line.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                0,
                CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT,
                environment.0,
                dir.as_ptr(),
                &startup,
                &mut process,
            )
        },
        "CreateProcessAsUserW",
    )?;
    let child = Owned(process.hProcess);
    let thread = Owned(process.hThread);
    // SAFETY: both handles were just returned by CreateProcessAsUserW.
    if unsafe { AssignProcessToJobObject(job.0, child.0) } == 0 {
        let e = io::Error::last_os_error();
        // The suspended child never ran; end it rather than leave it outside the job.
        // SAFETY: the child's handle.
        unsafe { windows_sys::Win32::System::Threading::TerminateProcess(child.0, 1) };
        return Err(io::Error::other(format!("AssignProcessToJobObject: {e}")));
    }
    // SAFETY: the child's main thread, created suspended.
    unsafe { ResumeThread(thread.0) };
    drop(thread);
    // SAFETY: the child's handle; INFINITE: the shim lives exactly as long as the shell.
    if unsafe { WaitForSingleObject(child.0, INFINITE) } != WAIT_OBJECT_0 {
        return Err(io::Error::other(format!(
            "WaitForSingleObject: {}",
            io::Error::last_os_error()
        )));
    }
    let mut code = 0u32;
    // SAFETY: `code` is a valid out pointer.
    check(
        unsafe { GetExitCodeProcess(child.0, &mut code) },
        "GetExitCodeProcess",
    )?;
    // Dropping `job` (last handle) kills whatever the shell left running.
    drop(job);
    Ok(code)
}
