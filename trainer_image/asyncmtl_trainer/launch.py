"""`asyncmtl-launch`: torchrun for the trainer, keeping the failed rank's exit status.

It takes torchrun's own arguments (https://pytorch.org/docs/stable/elastic/run.html) and runs
`torch.distributed.run` in-process. torchrun ends with status 1 whichever way a rank failed; the
trainer's statuses mean more (asyncmtl.termination: 2 bad spec or data, 3 storage fault: neither is
retried by the local runtime, and a cluster's `podFailurePolicy` fails the Job on them), so each
failing rank records its status in the run's workdir (`termination.write_exit_code`) and this launcher
exits with it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from asyncmtl import termination


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every rank finished; else the status a failed rank recorded, or 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(argv)
    workdir = _flag(args.training_script_args, "--workdir")
    if workdir is not None:
        termination.clear_exit_code(Path(workdir))
    try:
        run(args)
    except ChildFailedError as exc:
        print(f"asyncmtl-launch: {exc}", file=sys.stderr)
        return termination.recorded_exit_code(Path(workdir), 1) if workdir is not None else 1
    return 0


def _flag(args: list[str], name: str) -> str | None:
    """The value of `name VALUE` or `name=VALUE` in a rank's arguments."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


if __name__ == "__main__":
    sys.exit(main())
