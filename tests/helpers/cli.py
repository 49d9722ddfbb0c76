"""The `saturn` command run in-process, as the CLI tests drive it: argv in, (exit code, everything
printed, seconds) out. One helper so every CLI test reads exit codes the same way."""

from __future__ import annotations

import sys
import time

import pytest


def saturn_cli(argv, capsys) -> tuple[int, str, float]:
    from saturn.cli.main import run

    old = sys.argv
    sys.argv = ["saturn", *map(str, argv)]
    t0 = time.monotonic()
    try:
        with pytest.raises(SystemExit) as e:
            run()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    code = e.value.code if isinstance(e.value.code, int) else (0 if e.value.code is None else 1)
    return code, out.out + out.err, time.monotonic() - t0
