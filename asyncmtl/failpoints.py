"""Failpoints: named places in the storage writers where a test injects an OS error.

The idiom of etcd's gofail and TiKV's fail-rs: production code calls `Failpoints.hit(name, path)` at a
few write sites, which does nothing unless the process was started with `ASYNCMTL_FAILPOINTS` set.
That is how the fault tests fill a disk or make storage read-only on any machine (no loop mounts, no
root): the errors raised are the kernel's own `OSError(errno, strerror, path)`.

Syntax (read once per process, when storage is opened): a comma-separated list of
`NAME=ERRNO[@N]`: from the N-th hit of NAME on (default 1), raise `OSError(ERRNO)`; ERRNO is a
symbolic name from `errno` (`ENOSPC`, `EROFS`, `EACCES`, ...). Names in use:
- `storage.write:<first key component>` — a write under a run's storage, e.g. `storage.write:checkpoints`
  (checkpoint files), `storage.write:reports`, `storage.write:softlabels`;
- `runtime.status` — the local runtime's status.json.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

ENV = "ASYNCMTL_FAILPOINTS"


class FailpointSyntaxError(ValueError):
    """`ASYNCMTL_FAILPOINTS` is malformed (the message names the item)."""


@dataclass
class Failpoint:
    """One armed failpoint: from hit `after` on (1-based), raise OSError(`code`)."""

    code: int
    after: int = 1
    hits: int = 0


@dataclass
class Failpoints:
    """The armed failpoints of this process (empty: every `hit` is a no-op)."""

    points: dict[str, Failpoint] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Failpoints:
        """Parse `NAME=ERRNO[@N],...`.

        Raises:
            FailpointSyntaxError: an item without `=`, an unknown errno name or a bad count.
        """
        points: dict[str, Failpoint] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, sep, action = item.partition("=")
            code_name, _, after = action.partition("@")
            code = getattr(errno, code_name.strip(), None)
            if not sep or not name.strip() or not isinstance(code, int):
                raise FailpointSyntaxError(f"{ENV}: {item!r} is not NAME=ERRNO[@N] with an errno name such as ENOSPC")
            try:
                n = int(after) if after else 1
            except ValueError:
                raise FailpointSyntaxError(f"{ENV}: {item!r}: @N must be a whole number") from None
            points[name.strip()] = Failpoint(code=code, after=max(1, n))
        return cls(points)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Failpoints:
        """The failpoints armed in the environment (`os.environ` by default)."""
        return cls.parse((os.environ if environ is None else environ).get(ENV, ""))

    def hit(self, name: str, path: object) -> None:
        """Pass the failpoint `name` while writing `path`.

        Raises:
            OSError: (code, strerror, path) when `name` is armed and has been hit `after` times or more.
        """
        p = self.points.get(name)
        if p is None:
            return
        p.hits += 1
        if p.hits >= p.after:
            raise OSError(p.code, os.strerror(p.code), str(path))
