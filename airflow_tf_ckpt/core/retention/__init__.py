"""Retention: preservation policies, the plan as data, the planner, and the crash-safe GC executor."""
