//! The Windows layer, kept thin: the service control manager (`service`), the ssm-user
//! local account (`account`), the logon shim a session's PowerShell starts through
//! (`logon`) and the client's console modes (`console`), plus the two host facts
//! `platform` asks for. Everything else in the crate is the same code on every platform.
//!
//! # Unsafe code
//!
//! The crate denies `unsafe`; this module is the one exception, because the Win32 APIs
//! it needs (NetUserAdd, LogonUserW, CreateProcessAsUserW, job objects, console modes)
//! have no safe wrappers in the crates we use. Every `unsafe` block is one FFI call (or
//! the reading of a buffer the call filled) with a `SAFETY` comment, every handle is
//! owned by an [`Owned`] that closes it, and every string passed in is a NUL-terminated
//! UTF-16 buffer that outlives the call.
//!
//! # Not tested here
//!
//! CI runs on Linux: this code is type-checked and linted for `x86_64-pc-windows-gnu`
//! on every run (`scripts/test.sh`), but it has never run. The README says so.
#![allow(unsafe_code)]

pub mod account;
pub mod console;
pub mod logon;
pub mod service;

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::path::Path;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::Security::{
    CreateWellKnownSid, EqualSid, GetTokenInformation, TokenUser, WinLocalSystemSid,
    SECURITY_MAX_SID_SIZE, TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

/// A NUL-terminated UTF-16 copy of `s`, for `PCWSTR` parameters.
pub(crate) fn wide(s: impl AsRef<OsStr>) -> Vec<u16> {
    s.as_ref().encode_wide().chain(std::iter::once(0)).collect()
}

/// A handle closed when dropped.
#[derive(Debug)]
pub(crate) struct Owned(pub(crate) HANDLE);

// SAFETY: a kernel handle is an index into the process's handle table, usable from any
// thread; `Owned` only closes it, once.
unsafe impl Send for Owned {}
// SAFETY: as above; shared references only read the value.
unsafe impl Sync for Owned {}

impl Drop for Owned {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the handle was returned open by the API that created it and is
            // closed only here.
            unsafe { CloseHandle(self.0) };
        }
    }
}

/// `Err(last OS error)` when a BOOL-returning call failed.
pub(crate) fn check(ok: i32, what: &str) -> io::Result<()> {
    if ok == 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

/// Whether this process runs as LocalSystem (S-1-5-18), as the service does. Only
/// LocalSystem holds the privileges `CreateProcessAsUserW` needs
/// (SeAssignPrimaryToken, SeIncreaseQuota) to start a shell as ssm-user; an elevated
/// administrator does not, so an agent run from an elevated prompt runs sessions as
/// that administrator instead.
pub fn is_local_system() -> bool {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a new handle.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return false;
    }
    let token = Owned(token);
    // TOKEN_USER followed by the SID it points to; u64s for the pointer's alignment.
    let mut buf = [0u64; 64];
    let mut len = 0u32;
    let size = u32::try_from(std::mem::size_of_val(&buf)).unwrap_or(0);
    // SAFETY: `buf` is `size` bytes, aligned for TOKEN_USER.
    let ok =
        unsafe { GetTokenInformation(token.0, TokenUser, buf.as_mut_ptr().cast(), size, &mut len) };
    if ok == 0 {
        return false;
    }
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID points into it.
    let user_sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    let mut system = [0u8; SECURITY_MAX_SID_SIZE as usize];
    let mut system_len = SECURITY_MAX_SID_SIZE;
    // SAFETY: `system` has room for any SID, as its length says.
    let made = unsafe {
        CreateWellKnownSid(
            WinLocalSystemSid,
            std::ptr::null_mut(),
            system.as_mut_ptr().cast(),
            &mut system_len,
        )
    };
    // SAFETY: two valid SIDs.
    made != 0 && unsafe { EqualSid(user_sid, system.as_mut_ptr().cast()) } != 0
}

/// The exit code of `child` once it has exited (`None` while it runs): asks its
/// process handle's wait state, so a program that exits with 259 (`STILL_ACTIVE`) is not
/// mistaken for a running one, as portable-pty's `try_wait` would.
///
/// # Errors
/// The child has no process handle, or it cannot be queried.
pub fn child_exit_code(child: &dyn portable_pty::Child) -> io::Result<Option<u32>> {
    use windows_sys::Win32::Foundation::WAIT_OBJECT_0;
    use windows_sys::Win32::System::Threading::{GetExitCodeProcess, WaitForSingleObject};
    let Some(handle) = child.as_raw_handle() else {
        return Err(io::Error::other("the process has no handle"));
    };
    // SAFETY: `child` owns the handle and is borrowed for the whole call.
    if unsafe { WaitForSingleObject(handle, 0) } != WAIT_OBJECT_0 {
        return Ok(None);
    }
    let mut code = 0u32;
    // SAFETY: as above; `code` is a valid out pointer.
    check(
        unsafe { GetExitCodeProcess(handle, &mut code) },
        "GetExitCodeProcess",
    )?;
    Ok(Some(code))
}

/// Makes this process load DLLs named without a path only from System32 and the exe's own
/// directory, before anything loads one.
///
/// portable-pty loads a "sideloaded" `conpty.dll` in preference to the system's
/// pseudoconsole when `LoadLibrary` finds one by name, and the default search order also
/// tries the current directory and every directory on PATH, any of which a local user
/// may be able to write to: the LocalSystem service would then run their code. Windows
/// has no `conpty.dll` in System32, so the system's ConPTY is used, as intended. (The
/// suite's Wine tests put a test-only one into their Wine prefix's System32.)
///
/// # Errors
/// The call failed (the search order is then the default one).
pub fn restrict_dll_search() -> io::Result<()> {
    use windows_sys::Win32::System::LibraryLoader::{
        SetDefaultDllDirectories, LOAD_LIBRARY_SEARCH_APPLICATION_DIR, LOAD_LIBRARY_SEARCH_SYSTEM32,
    };
    // SAFETY: takes flags only.
    let ok = unsafe {
        SetDefaultDllDirectories(LOAD_LIBRARY_SEARCH_APPLICATION_DIR | LOAD_LIBRARY_SEARCH_SYSTEM32)
    };
    check(ok, "SetDefaultDllDirectories")
}

/// Bytes available to this process on the volume holding `path`.
///
/// # Errors
/// The volume cannot be queried.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let path = wide(path);
    let mut available = 0u64;
    // SAFETY: `path` is NUL-terminated; the two totals we do not need may be null.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            path.as_ptr(),
            &mut available,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    check(ok, "GetDiskFreeSpaceExW")?;
    Ok(available)
}
