"""One module per process. Each has main() and a CONFIG type the launcher validates before start."""
