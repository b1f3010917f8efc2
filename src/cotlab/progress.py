"""Progress bars (tqdm) for every long step: counts, rate and ETA on stderr.

On a terminal a bar redraws every second; in a log (CI, `dvc repro > log`) every 30 s (TQDM_MININTERVAL, which
tqdm reads for every bar in the process, the Trainer's included), so the log stays readable. COTLAB_PROGRESS=0
turns bars off.
"""

from __future__ import annotations

import os
import sys


def progress_disabled() -> bool:
    return os.environ.get("COTLAB_PROGRESS") == "0"


def quiet_bars_in_logs() -> None:
    """Called once per stage: bars in a log print a line every 30 s instead of redrawing 10 times a second."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_MININTERVAL", "30")


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=progress_disabled(), **kwargs)
