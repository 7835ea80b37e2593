/* TEST-ONLY: prints the size of the console it runs on, as "console-size=COLSxROWS".
 *
 * Wine's cmd.exe has no `mode con` and Wine has no PowerShell, so the Wine tests
 * (tests/it/wine.rs) type `consize` in a session's cmd.exe to see that a resize from the
 * client reached the pseudoconsole. Built with MinGW into the test run's private Wine
 * prefix; never shipped.
 */
#include <windows.h>
#include <stdio.h>

int main(void)
{
    HANDLE out = GetStdHandle(STD_OUTPUT_HANDLE);
    CONSOLE_SCREEN_BUFFER_INFO info;
    char line[64];
    DWORD written;
    int n;
    if (!GetConsoleScreenBufferInfo(out, &info))
        n = snprintf(line, sizeof(line), "consize: no console (%lu)\r\n", GetLastError());
    else
        n = snprintf(line, sizeof(line), "console-size=%dx%d\r\n",
                     info.srWindow.Right - info.srWindow.Left + 1,
                     info.srWindow.Bottom - info.srWindow.Top + 1);
    /* One write, so that the console renders the line in one piece. */
    return WriteFile(out, line, (DWORD)n, &written, NULL) ? 0 : 1;
}
