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
    CONSOLE_SCREEN_BUFFER_INFO info;
    if (!GetConsoleScreenBufferInfo(GetStdHandle(STD_OUTPUT_HANDLE), &info)) {
        printf("consize: GetConsoleScreenBufferInfo failed: %lu\n", GetLastError());
        return 1;
    }
    printf("console-size=%dx%d\n", info.srWindow.Right - info.srWindow.Left + 1,
           info.srWindow.Bottom - info.srWindow.Top + 1);
    return 0;
}
