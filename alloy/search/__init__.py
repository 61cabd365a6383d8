"""Search over merge recipes: search spaces, the Ray Tune + Optuna sweep, the leaderboard and its reports.

Modules: `space` (the search-space YAML and its sampling), `samplers` (the Optuna samplers and the
scalarization), `runner` (what scores one candidate, and the plain worker settings made from a space),
`synthetic` (the known, merge-shaped test objective), `sweep` (Ray Tune + OptunaSearch + ASHA,
resumable), `confirm` (the confirmation stage), `warm_start` (starting points from an earlier sweep),
`records` (the leaderboard rows kept in the study), `lock` (one driver per sweep), `cache` (results by
recipe and rung), `leaderboard` (the Parquet view) and `report` (the HTML report). Imports `alloy.workers`, `alloy.merge` and `alloy.io`;
importing this package is light, each module imports its heavy dependencies itself.
"""
