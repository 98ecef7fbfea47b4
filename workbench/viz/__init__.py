"""viz: figures from results, as matplotlib Figure objects in one house style.

    style           the house style and palette every figure uses (lessons' figures too)
    run_figures     loss curves, parameters against rank, accuracy against parameters, the live curve
    memory_figures  memory by component per run, memory against batch size and sequence length
    output          the comparison set (report, panel), figures as files or PNG bytes

Imports engine, lora and util.
"""
