//! The client's console in raw mode: what `cfmakeraw` is on Unix. Input without line
//! editing, echo or Ctrl-C processing and with virtual-terminal input (so arrow keys
//! arrive as the escape sequences a Unix terminal sends); output with virtual-terminal
//! processing (so the remote shell's escape sequences are drawn, not printed).

use super::check;
use std::io;
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::Console::{
    GetConsoleMode, GetStdHandle, SetConsoleMode, CONSOLE_MODE, DISABLE_NEWLINE_AUTO_RETURN,
    ENABLE_ECHO_INPUT, ENABLE_LINE_INPUT, ENABLE_PROCESSED_INPUT, ENABLE_VIRTUAL_TERMINAL_INPUT,
    ENABLE_VIRTUAL_TERMINAL_PROCESSING, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
};

/// The console modes before raw mode, to put back.
#[derive(Debug, Clone, Copy)]
pub struct Modes {
    input: CONSOLE_MODE,
    output: Option<CONSOLE_MODE>,
}

fn std_handle(which: u32) -> HANDLE {
    // SAFETY: GetStdHandle takes a constant and returns a handle we do not own.
    unsafe { GetStdHandle(which) }
}

fn mode_of(handle: HANDLE) -> io::Result<CONSOLE_MODE> {
    let mut mode: CONSOLE_MODE = 0;
    // SAFETY: `mode` is a valid out pointer; a non-console handle makes the call fail.
    check(
        unsafe { GetConsoleMode(handle, &mut mode) },
        "GetConsoleMode",
    )?;
    Ok(mode)
}

fn set_mode(handle: HANDLE, mode: CONSOLE_MODE) -> io::Result<()> {
    // SAFETY: plain value parameters.
    check(unsafe { SetConsoleMode(handle, mode) }, "SetConsoleMode")
}

/// Puts the console into raw mode; returns the modes to restore.
///
/// # Errors
/// Standard input is not a console, or its mode cannot be changed.
pub fn enter_raw() -> io::Result<Modes> {
    let input = std_handle(STD_INPUT_HANDLE);
    let saved_input = mode_of(input)?;
    let raw_input = (saved_input
        & !(ENABLE_LINE_INPUT | ENABLE_ECHO_INPUT | ENABLE_PROCESSED_INPUT))
        | ENABLE_VIRTUAL_TERMINAL_INPUT;
    set_mode(input, raw_input)?;
    // Output may be redirected: then there is nothing to change or restore.
    let output = std_handle(STD_OUTPUT_HANDLE);
    let saved_output = mode_of(output).ok();
    if let Some(mode) = saved_output {
        let _ = set_mode(
            output,
            mode | ENABLE_VIRTUAL_TERMINAL_PROCESSING | DISABLE_NEWLINE_AUTO_RETURN,
        );
    }
    Ok(Modes {
        input: saved_input,
        output: saved_output,
    })
}

/// Puts the saved modes back.
///
/// # Errors
/// The input mode cannot be set.
pub fn restore(modes: Modes) -> io::Result<()> {
    if let Some(mode) = modes.output {
        let _ = set_mode(std_handle(STD_OUTPUT_HANDLE), mode);
    }
    set_mode(std_handle(STD_INPUT_HANDLE), modes.input)
}
