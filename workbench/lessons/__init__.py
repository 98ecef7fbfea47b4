"""lessons: studies built on the layers below (memory, planner, planted rank, inside delta W).

Nothing imports them.
"""
