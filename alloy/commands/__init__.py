"""The `alloy` subcommands, one module each (`add_arguments(parser)` and `run(args)`; see alloy.cli).

Each module parses its options and calls into the layers below (search, workers, evaluation, merge,
io); `jobs` serves `alloy submit` and the `ray_jobs/` entrypoints, `inspection` renders `alloy
inspect`. Nothing below imports this package.
"""
