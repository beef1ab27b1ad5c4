"""Workflows shared by the CLI and the operators: each chains core steps (lease, verify,
quarantine, ...) under one set of rules, and returns a result its callers only format."""
