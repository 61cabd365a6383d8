"""Reference tables for the README, generated from the code so the docs cannot drift from it."""
from __future__ import annotations


def methods_table() -> str:
    """The merge methods as a markdown table: name, base, parameters (with defaults), formula."""
    from alloy.merge.methods import METHODS

    rows = ["| method | needs base | per-model parameters | global parameters | formula |",
            "| --- | --- | --- | --- | --- |"]
    for name, spec in METHODS.items():
        per_model = ", ".join(f"`{p.name}={p.default}`" for p in spec.model_params) or "—"
        glob = ", ".join(f"`{p.name}={p.default}`" for p in spec.params) or "—"
        formula = spec.formula.replace("|", "\\|")
        rows.append(f"| `{name}` | {'yes' if spec.needs_base else 'no'} | {per_model} | {glob} | `{formula}` |")
    return "\n".join(rows)

