"""Processes of this machine, as the tools and admin commands look at them."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running process here: not one that is gone, nor a zombie
    awaiting its parent (it still "exists" for kill); one of another user's counts as
    alive, and so does one this process cannot tell about."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rpartition(")")[2].split()[0] != "Z"
        except OSError:  # gone between the two looks
            return False
        except IndexError:
            return True
    return True
