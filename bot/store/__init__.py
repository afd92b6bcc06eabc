"""The SQLite store: logged replies, review decisions, channel personas, privacy."""
