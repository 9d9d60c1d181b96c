@echo off
rem cmdrdata-run on Windows: the Python launcher (see the POSIX cmdrdata-run next to it).
"%~dp0cmdrdata-autotrack.exe" run %*
exit /b %ERRORLEVEL%
