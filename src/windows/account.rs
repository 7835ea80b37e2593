//! The ssm-user local account (protocol §7.2): created at daemon start when missing
//! (never on a domain controller), its password replaced by a fresh random one at every
//! daemon start and every session start, enabled while sessions run and disabled again
//! when the last one ends. Nobody, the agent included, ever knows a password after the
//! logon it was made for.

use super::{check, wide};
use std::io;
use std::sync::{Mutex, PoisonError};
use windows_sys::Win32::Foundation::ERROR_MEMBER_IN_ALIAS;
use windows_sys::Win32::NetworkManagement::NetManagement::{
    NERR_Success, NERR_UserNotFound, NetApiBufferFree, NetLocalGroupAddMembers, NetUserAdd,
    NetUserGetInfo, NetUserSetInfo, LOCALGROUP_MEMBERS_INFO_3, UF_ACCOUNTDISABLE,
    UF_DONT_EXPIRE_PASSWD, UF_SCRIPT, USER_INFO_1, USER_INFO_1003, USER_INFO_1008, USER_PRIV_USER,
};
use windows_sys::Win32::Security::{
    CreateWellKnownSid, LookupAccountSidW, WinBuiltinAdministratorsSid, SECURITY_MAX_SID_SIZE,
    SID_NAME_USE,
};

/// Each leased account: its name, the sessions holding it and the password they share.
/// The account is disabled when the count returns to zero, so one session ending never
/// locks out another one; while it is held, a new session reuses the password (a new one
/// could land between an earlier session's lease and its logon, and fail that logon).
static ACTIVE: Mutex<Vec<Held>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Held {
    name: String,
    sessions: usize,
    password: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Overwrite the shared password before its memory is freed.
        let mut bytes = std::mem::take(&mut self.password).into_bytes();
        bytes.fill(0);
    }
}

/// A NetApi status as an error naming the call and the account.
fn net_error(status: u32, what: &str, name: &str) -> io::Error {
    let os = io::Error::from_raw_os_error(i32::try_from(status).unwrap_or(i32::MAX));
    io::Error::new(
        os.kind(),
        format!("{what} {name}: {os} (NET_API_STATUS {status})"),
    )
}

/// A fresh password by the rules of §7.2.
fn fresh_password() -> String {
    crate::session::password::generate(&mut rand::thread_rng())
}

/// The account's flags (`USER_INFO_1::usri1_flags`); `None` when there is no such user.
///
/// # Errors
/// The account database cannot be read.
pub fn flags(name: &str) -> io::Result<Option<u32>> {
    let user = wide(name);
    let mut buf: *mut u8 = std::ptr::null_mut();
    // SAFETY: `user` is NUL-terminated; on success `buf` receives a USER_INFO_1 allocated
    // by NetApi, freed below.
    let status = unsafe { NetUserGetInfo(std::ptr::null(), user.as_ptr(), 1, &mut buf) };
    if status == NERR_UserNotFound {
        return Ok(None);
    }
    if status != NERR_Success {
        return Err(net_error(status, "NetUserGetInfo", name));
    }
    // SAFETY: level 1 fills a USER_INFO_1; read once, then freed.
    let flags = unsafe { (*buf.cast::<USER_INFO_1>()).usri1_flags };
    // SAFETY: `buf` came from NetUserGetInfo.
    unsafe { NetApiBufferFree(buf.cast()) };
    Ok(Some(flags))
}

/// Creates `name` as a disabled local user with a random password it never learns.
///
/// # Errors
/// NetUserAdd failed.
pub fn create(name: &str) -> io::Result<()> {
    let mut user = wide(name);
    let mut password = wide(fresh_password());
    let info = USER_INFO_1 {
        usri1_name: user.as_mut_ptr(),
        usri1_password: password.as_mut_ptr(),
        usri1_priv: USER_PRIV_USER,
        usri1_flags: UF_SCRIPT | UF_DONT_EXPIRE_PASSWD | UF_ACCOUNTDISABLE,
        ..USER_INFO_1::default()
    };
    let mut bad_field = 0u32;
    // SAFETY: `info` points at NUL-terminated buffers that outlive the call.
    let status = unsafe {
        NetUserAdd(
            std::ptr::null(),
            1,
            std::ptr::addr_of!(info).cast(),
            &mut bad_field,
        )
    };
    password.fill(0);
    if status != NERR_Success {
        return Err(net_error(status, "NetUserAdd", name));
    }
    Ok(())
}

/// The local name of the built-in Administrators group (S-1-5-32-544; localised).
fn administrators_group() -> io::Result<Vec<u16>> {
    let mut sid = [0u8; SECURITY_MAX_SID_SIZE as usize];
    let mut sid_len = SECURITY_MAX_SID_SIZE;
    // SAFETY: `sid` has room for any SID, as its length says.
    check(
        unsafe {
            CreateWellKnownSid(
                WinBuiltinAdministratorsSid,
                std::ptr::null_mut(),
                sid.as_mut_ptr().cast(),
                &mut sid_len,
            )
        },
        "CreateWellKnownSid",
    )?;
    let mut name = vec![0u16; 256];
    let mut name_len = 256u32;
    let mut domain = vec![0u16; 256];
    let mut domain_len = 256u32;
    let mut kind: SID_NAME_USE = 0;
    // SAFETY: both buffers are as long as their lengths say.
    check(
        unsafe {
            LookupAccountSidW(
                std::ptr::null(),
                sid.as_mut_ptr().cast(),
                name.as_mut_ptr(),
                &mut name_len,
                domain.as_mut_ptr(),
                &mut domain_len,
                &mut kind,
            )
        },
        "LookupAccountSidW(Administrators)",
    )?;
    name.truncate(name_len as usize);
    name.push(0);
    Ok(name)
}

/// Adds `name` to the local Administrators group (as upstream does for ssm-user);
/// already a member is fine.
///
/// # Errors
/// The group cannot be found or changed.
pub fn add_to_administrators(name: &str) -> io::Result<()> {
    let group = administrators_group()?;
    let mut member = wide(name);
    let info = LOCALGROUP_MEMBERS_INFO_3 {
        lgrmi3_domainandname: member.as_mut_ptr(),
    };
    // SAFETY: one LOCALGROUP_MEMBERS_INFO_3 pointing at a NUL-terminated name.
    let status = unsafe {
        NetLocalGroupAddMembers(
            std::ptr::null(),
            group.as_ptr(),
            3,
            std::ptr::addr_of!(info).cast(),
            1,
        )
    };
    if status != NERR_Success && status != ERROR_MEMBER_IN_ALIAS {
        return Err(net_error(
            status,
            "NetLocalGroupAddMembers(Administrators)",
            name,
        ));
    }
    Ok(())
}

/// Replaces the account's password.
///
/// # Errors
/// NetUserSetInfo failed (no such user, password policy).
pub fn set_password(name: &str, password: &str) -> io::Result<()> {
    let user = wide(name);
    let mut secret = wide(password);
    let info = USER_INFO_1003 {
        usri1003_password: secret.as_mut_ptr(),
    };
    let mut bad_field = 0u32;
    // SAFETY: `info` points at a NUL-terminated buffer that outlives the call.
    let status = unsafe {
        NetUserSetInfo(
            std::ptr::null(),
            user.as_ptr(),
            1003,
            std::ptr::addr_of!(info).cast(),
            &mut bad_field,
        )
    };
    // Overwrite our copy of the password before the buffer is freed.
    secret.fill(0);
    if status != NERR_Success {
        return Err(net_error(status, "NetUserSetInfo(password)", name));
    }
    Ok(())
}

/// Enables or disables the account (UF_ACCOUNTDISABLE), keeping its other flags.
///
/// # Errors
/// The account is missing or cannot be changed.
pub fn set_disabled(name: &str, disabled: bool) -> io::Result<()> {
    let Some(current) = flags(name)? else {
        return Err(net_error(NERR_UserNotFound, "NetUserGetInfo", name));
    };
    let wanted = if disabled {
        current | UF_ACCOUNTDISABLE
    } else {
        current & !UF_ACCOUNTDISABLE
    };
    if wanted == current {
        return Ok(());
    }
    let user = wide(name);
    let info = USER_INFO_1008 {
        usri1008_flags: wanted,
    };
    let mut bad_field = 0u32;
    // SAFETY: plain structure, NUL-terminated name.
    let status = unsafe {
        NetUserSetInfo(
            std::ptr::null(),
            user.as_ptr(),
            1008,
            std::ptr::addr_of!(info).cast(),
            &mut bad_field,
        )
    };
    if status != NERR_Success {
        return Err(net_error(status, "NetUserSetInfo(flags)", name));
    }
    Ok(())
}

/// Whether this host is a domain controller (the NTDS service runs): there a "local"
/// account is a domain account, so ssm-user is never created (as upstream).
pub fn is_domain_controller() -> bool {
    use windows_service::service::{ServiceAccess, ServiceState};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    let Ok(manager) = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
    else {
        return false;
    };
    manager
        .open_service("NTDS", ServiceAccess::QUERY_STATUS)
        .and_then(|s| s.query_status())
        .is_ok_and(|status| status.current_state == ServiceState::Running)
}

/// An account enabled for a session; dropping it disables the account again once no
/// other session holds it.
#[derive(Debug)]
pub struct Lease {
    name: String,
}

/// Enables `name` for one more session with a fresh password, returned for the logon
/// (and forgotten by the agent after it).
///
/// # Errors
/// The account cannot be changed; it is left disabled unless another session holds it.
pub fn lease(name: &str) -> io::Result<(Lease, String)> {
    let mut active = ACTIVE.lock().unwrap_or_else(PoisonError::into_inner);
    let lease = Lease {
        name: name.to_owned(),
    };
    if let Some(held) = active.iter_mut().find(|h| h.name == name) {
        held.sessions += 1;
        return Ok((lease, held.password.clone()));
    }
    let password = fresh_password();
    set_password(name, &password)?;
    set_disabled(name, false)?;
    active.push(Held {
        name: name.to_owned(),
        sessions: 1,
        password: password.clone(),
    });
    Ok((lease, password))
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(i) = active.iter().position(|h| h.name == self.name) else {
            return;
        };
        active[i].sessions -= 1;
        if active[i].sessions == 0 {
            drop(active.swap_remove(i));
            // A password nobody knows, then disabled: the account cannot log on.
            let _ = set_password(&self.name, &fresh_password());
            if let Err(e) = set_disabled(&self.name, true) {
                tracing::error!(user = %self.name, error = %e, "Cannot disable the session account after its last session");
            }
        }
    }
}
