"""Promotion of a step to a destination dir, atomically, with aliases."""
