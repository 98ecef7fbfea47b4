"""ui: the widget panel (a widget-free state plus a thin view) and the command line.

Imports records and below.
"""
