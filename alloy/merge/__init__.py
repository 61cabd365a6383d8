"""The merge core: recipes, merge plans, the streaming executor, tensor groups and the methods.

`recipe` parses mergekit-style recipes (plus alloy's `groups:` block) into a canonical, hashed form;
`groups` maps tensor names to tensor groups; `plan` checks a recipe against its parents and lists
every output tensor; `executor` runs a plan from disk to a new checkpoint; `stats` measures parent
distances; `methods/` holds one file per method family. Imports `alloy.io` and nothing above it.
"""
