"""Ctrl-C (SIGINT) stops a sweep, whatever the process that started it did with SIGINT.

Python turns SIGINT into KeyboardInterrupt only when it starts with SIGINT at its default: a
process started with SIGINT ignored, as a non-interactive shell starts its background jobs
(``nohup make test &``, ``cmd &`` in a script), keeps ignoring it, and ``kill -INT`` would not
stop the sweep. ``pefteval run`` installs Python's own handler, so the sweep stops cleanly
(sweep.run_trials kills the running trials, says one line, exits 130). The fork server
(worker.context) still starts with SIGINT ignored, on purpose: Ctrl-C reaches the sweep alone.
"""

from __future__ import annotations

import signal
import threading


def stop_on_interrupt() -> None:
    """SIGINT raises KeyboardInterrupt in this process from now on (a no-op off the main thread,
    where no handler can be installed)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
