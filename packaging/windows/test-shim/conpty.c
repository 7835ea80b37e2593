/* TEST-ONLY stand-in for conpty.dll, for Debian's Wine 8.0; never shipped.
 *
 * portable-pty (the crate behind src/session/pty_windows.rs) loads a "sideloaded"
 * conpty.dll in preference to kernel32's pseudoconsole functions when one can be
 * found. scripts/test.sh's Wine tests put this one into their private Wine prefix to
 * work around two gaps of Wine 8.0 that real Windows does not have:
 *
 * 1. portable-pty creates every pseudoconsole with PSEUDOCONSOLE_INHERIT_CURSOR, which
 *    Wine turns into conhost's `--inheritcursor` option, which Wine's own conhost.exe
 *    does not know: it exits at once, and the shell with it (cmd.exe, exit status 1).
 *    CreatePseudoConsole here forwards to kernel32 without that one flag.
 * 2. portable-pty starts the shell with STARTF_USESTDHANDLES and INVALID_HANDLE_VALUE
 *    standard handles (so that it never inherits the agent's own, redirected ones);
 *    real Windows then gives the process its pseudoconsole's handles, Wine 8.0 leaves
 *    it none (cmd.exe prints nothing and ends at its first read), whatever handles are
 *    passed. When loaded, this DLL redirects the agent exe's import of CreateProcessW
 *    to a wrapper that, for exactly that call (a pseudoconsole attribute list and three
 *    INVALID_HANDLE_VALUE handles), starts the test-only trampoline conshell.exe on the
 *    pseudoconsole with the original command line after its name; conshell opens the
 *    console and runs the command with it. Every other call passes through unchanged.
 *
 * Real Windows needs neither and never gets this file: the MSI
 * (packaging/windows/session-agent.wxs) does not name it.
 */
#include <windows.h>

typedef VOID *HPCON_;
typedef HRESULT(WINAPI *create_fn)(COORD, HANDLE, HANDLE, DWORD, HPCON_ *);
typedef HRESULT(WINAPI *resize_fn)(HPCON_, COORD);
typedef VOID(WINAPI *close_fn)(HPCON_);
typedef BOOL(WINAPI *create_process_fn)(LPCWSTR, LPWSTR, LPSECURITY_ATTRIBUTES,
                                        LPSECURITY_ATTRIBUTES, BOOL, DWORD, LPVOID,
                                        LPCWSTR, LPSTARTUPINFOW, LPPROCESS_INFORMATION);

static create_process_fn real_create_process;

static FARPROC kernel32(const char *name)
{
    return GetProcAddress(GetModuleHandleA("kernel32.dll"), name);
}

HRESULT WINAPI CreatePseudoConsole(COORD size, HANDLE input, HANDLE output, DWORD flags,
                                   HPCON_ *console)
{
    create_fn create = (create_fn)kernel32("CreatePseudoConsole");
    if (!create)
        return E_NOTIMPL;
    return create(size, input, output, flags & ~(DWORD)1 /* INHERIT_CURSOR */, console);
}

HRESULT WINAPI ResizePseudoConsole(HPCON_ console, COORD size)
{
    resize_fn resize = (resize_fn)kernel32("ResizePseudoConsole");
    return resize ? resize(console, size) : E_NOTIMPL;
}

VOID WINAPI ClosePseudoConsole(HPCON_ console)
{
    close_fn close = (close_fn)kernel32("ClosePseudoConsole");
    if (close)
        close(console);
}

static BOOL WINAPI create_process(LPCWSTR app, LPWSTR cmdline, LPSECURITY_ATTRIBUTES pa,
                                  LPSECURITY_ATTRIBUTES ta, BOOL inherit, DWORD flags,
                                  LPVOID env, LPCWSTR cwd, LPSTARTUPINFOW si,
                                  LPPROCESS_INFORMATION pi)
{
    if (si && (flags & EXTENDED_STARTUPINFO_PRESENT) && ((STARTUPINFOEXW *)si)->lpAttributeList &&
        (si->dwFlags & STARTF_USESTDHANDLES) && si->hStdInput == INVALID_HANDLE_VALUE &&
        si->hStdOutput == INVALID_HANDLE_VALUE && si->hStdError == INVALID_HANDLE_VALUE &&
        cmdline) {
        WCHAR trampoline[MAX_PATH];
        WCHAR *line;
        size_t len = lstrlenW(cmdline);
        BOOL ok;
        UINT dir = GetSystemDirectoryW(trampoline, MAX_PATH - 16);
        if (!dir || dir >= MAX_PATH - 16)
            return FALSE;
        lstrcatW(trampoline, L"\\conshell.exe");
        line = HeapAlloc(GetProcessHeap(), 0, (len + 16) * sizeof(WCHAR));
        if (!line)
            return FALSE;
        lstrcpyW(line, L"conshell.exe ");
        lstrcatW(line, cmdline);
        ok = real_create_process(trampoline, line, pa, ta, inherit, flags, env, cwd, si, pi);
        HeapFree(GetProcessHeap(), 0, line);
        return ok;
    }
    return real_create_process(app, cmdline, pa, ta, inherit, flags, env, cwd, si, pi);
}

/* Points the main exe's imported CreateProcessW (from kernel32.dll) at the wrapper. */
static void redirect_create_process(void)
{
    BYTE *base = (BYTE *)GetModuleHandleW(NULL);
    IMAGE_NT_HEADERS *nt = (IMAGE_NT_HEADERS *)(base + ((IMAGE_DOS_HEADER *)base)->e_lfanew);
    IMAGE_DATA_DIRECTORY dir = nt->OptionalHeader.DataDirectory[IMAGE_DIRECTORY_ENTRY_IMPORT];
    IMAGE_IMPORT_DESCRIPTOR *imp;
    real_create_process = (create_process_fn)kernel32("CreateProcessW");
    if (!dir.VirtualAddress || !real_create_process)
        return;
    for (imp = (IMAGE_IMPORT_DESCRIPTOR *)(base + dir.VirtualAddress); imp->Name; imp++) {
        IMAGE_THUNK_DATA *names, *slots;
        if (lstrcmpiA((char *)(base + imp->Name), "kernel32.dll") || !imp->OriginalFirstThunk)
            continue;
        names = (IMAGE_THUNK_DATA *)(base + imp->OriginalFirstThunk);
        slots = (IMAGE_THUNK_DATA *)(base + imp->FirstThunk);
        for (; names->u1.AddressOfData; names++, slots++) {
            IMAGE_IMPORT_BY_NAME *by_name;
            DWORD old;
            if (IMAGE_SNAP_BY_ORDINAL(names->u1.Ordinal))
                continue;
            by_name = (IMAGE_IMPORT_BY_NAME *)(base + names->u1.AddressOfData);
            if (lstrcmpA((char *)by_name->Name, "CreateProcessW"))
                continue;
            if (VirtualProtect(&slots->u1.Function, sizeof(slots->u1.Function),
                               PAGE_READWRITE, &old)) {
                slots->u1.Function = (ULONG_PTR)create_process;
                VirtualProtect(&slots->u1.Function, sizeof(slots->u1.Function), old, &old);
            }
        }
    }
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reserved;
    if (reason == DLL_PROCESS_ATTACH)
        redirect_create_process();
    return TRUE;
}
