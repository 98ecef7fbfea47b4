"""engine: models and data in, a measured run out.

Run configs, the training loop and the sinks it reports to, the per-run worker process,
memory accounting, sweeps. Imports lora and util.
"""
