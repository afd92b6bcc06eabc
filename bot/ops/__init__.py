"""Process-level helpers: interpreter preflight, quiet libraries, allocator, file modes, loop lag, cron."""
