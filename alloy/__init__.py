"""alloy: distributed search over merges of large language models.

Layers, with imports running one way (commands → search → workers → evaluation, merge → io):
`commands/` the CLI, `search/` spaces, sweep and leaderboard, `workers/` the Ray store and candidate
workers, `evaluation/` lm-eval on live models, `merge/` recipes, plans and methods, `io/` checkpoint
files. `branch/` makes expert parents, `demo/` the local demo; `sandbox` confines model-written code.
"""
