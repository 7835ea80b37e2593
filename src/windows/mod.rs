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
    GetTokenInformation, TokenElevation, TOKEN_ELEVATION, TOKEN_QUERY,
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

/// Whether this process's token is elevated (LocalSystem, or an administrator past UAC).
pub fn token_is_elevated() -> bool {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a new handle.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return false;
    }
    let token = Owned(token);
    let mut elevation = TOKEN_ELEVATION::default();
    let mut len = 0u32;
    let size = u32::try_from(std::mem::size_of::<TOKEN_ELEVATION>()).unwrap_or(4);
    // SAFETY: `elevation` is a TOKEN_ELEVATION of `size` bytes, as TokenElevation needs.
    let ok = unsafe {
        GetTokenInformation(
            token.0,
            TokenElevation,
            std::ptr::addr_of_mut!(elevation).cast(),
            size,
            &mut len,
        )
    };
    ok != 0 && elevation.TokenIsElevated != 0
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
