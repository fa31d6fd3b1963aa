"""The arena: suites (TOML) -> runs -> results store (SQLite) -> report."""
