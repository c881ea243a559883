"""`python -m asyncmtl_operator [kopf run options]`: run the operator (default: all namespaces)."""
from __future__ import annotations

import sys


def main() -> None:
    from kopf.cli import main as kopf_main

    args = sys.argv[1:] or ["--all-namespaces"]
    sys.argv = ["kopf", "run", "-m", "asyncmtl_operator.handlers", *args]
    kopf_main()


if __name__ == "__main__":
    main()
