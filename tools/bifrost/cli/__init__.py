"""The `bifrost` command line."""
