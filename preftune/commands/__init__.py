"""CLI glue: one module per pipeline stage, each holding Command objects (config class + run function)."""
