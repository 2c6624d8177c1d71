"""Pure decisions, no I/O and no Ray: which versions to aspire, and the next load/unload action."""
