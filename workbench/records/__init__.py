"""records: runs that keep their record.

The run store, reports, and wb.train / wb.run_sweep (the engine with the store attached).
Imports viz and below.
"""
