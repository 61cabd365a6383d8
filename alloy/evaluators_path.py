"""`python -m alloy.evaluators_path` prints the folder of alloy's lm-eval tasks, for
`lm_eval --include_path "$(python -m alloy.evaluators_path)"`."""
from __future__ import annotations

import sys


def main() -> int:
    """Print the evaluators folder (or the error, with exit status 2)."""
    from alloy.errors import AlloyError
    from alloy.evaluation.harness import evaluators_dir

    try:
        print(evaluators_dir())
    except AlloyError as exc:
        print(f"alloy.evaluators_path: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
