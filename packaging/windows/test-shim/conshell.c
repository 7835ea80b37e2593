/* TEST-ONLY trampoline for Wine 8.0 (see conpty.c, which starts it); never shipped.
 *
 * Wine 8.0 gives a process started on a pseudoconsole no standard handles when its
 * creator passes STARTF_USESTDHANDLES (as portable-pty does), where real Windows gives
 * it the pseudoconsole's. conpty.c starts this program on the pseudoconsole instead,
 * with the original command line after its own name: it opens the console's input and
 * output (CONIN$, CONOUT$), starts the original command with them as its standard
 * handles, inside a job object that kills it when this process ends (the agent ends a
 * session by terminating the process it started), and exits with its exit code.
 */
#include <windows.h>

int main(void)
{
    SECURITY_ATTRIBUTES inheritable = {sizeof(inheritable), NULL, TRUE};
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits = {0};
    STARTUPINFOW si = {sizeof(si)};
    PROCESS_INFORMATION pi;
    HANDLE job;
    DWORD code = 1;
    WCHAR *rest = GetCommandLineW();
    BOOL quoted = FALSE;

    /* Skip our own name (quoted or not) and the blanks after it. */
    for (; *rest && (quoted || (*rest != L' ' && *rest != L'\t')); rest++)
        if (*rest == L'"')
            quoted = !quoted;
    while (*rest == L' ' || *rest == L'\t')
        rest++;

    si.dwFlags = STARTF_USESTDHANDLES;
    si.hStdInput = CreateFileW(L"CONIN$", GENERIC_READ | GENERIC_WRITE,
                               FILE_SHARE_READ | FILE_SHARE_WRITE, &inheritable, OPEN_EXISTING, 0, NULL);
    si.hStdOutput = CreateFileW(L"CONOUT$", GENERIC_READ | GENERIC_WRITE,
                                FILE_SHARE_READ | FILE_SHARE_WRITE, &inheritable, OPEN_EXISTING, 0, NULL);
    si.hStdError = si.hStdOutput;
    if (si.hStdInput == INVALID_HANDLE_VALUE || si.hStdOutput == INVALID_HANDLE_VALUE)
        return 126;

    job = CreateJobObjectW(NULL, NULL);
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    if (!job || !SetInformationJobObject(job, JobObjectExtendedLimitInformation, &limits, sizeof(limits)))
        return 126;
    if (!CreateProcessW(NULL, rest, NULL, NULL, TRUE, CREATE_SUSPENDED, NULL, NULL, &si, &pi))
        return 127;
    AssignProcessToJobObject(job, pi.hProcess);
    ResumeThread(pi.hThread);
    WaitForSingleObject(pi.hProcess, INFINITE);
    GetExitCodeProcess(pi.hProcess, &code);
    return (int)code;
}
