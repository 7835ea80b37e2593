/* TEST-ONLY stand-in for bcryptprimitives.dll, which Debian's Wine 8.0 lacks.
 *
 * Rust's standard library (1.78 and later) imports ProcessPrng from
 * bcryptprimitives.dll on Windows, so without this DLL next to it every Rust .exe fails
 * to load under that Wine ("Library bcryptprimitives.dll not found"). This file gives
 * ProcessPrng on top of advapi32's SystemFunction036 (RtlGenRandom), which Wine has.
 * scripts/test.sh builds it with MinGW and puts it next to the .exe in the private Wine
 * prefix of a test run. It is never shipped: real Windows (10 and later) has the real
 * DLL, and the MSI (packaging/windows/session-agent.wxs) does not name this file.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
