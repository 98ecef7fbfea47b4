"""viz: figures from results, as matplotlib Figure objects in one house style.

Imports engine, lora and util.
"""
