"""util: the bottom layer.

Atomic file writes, the checks on user input, units and number formats, and the one reader of /proc.
"""
