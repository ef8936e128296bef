"""``python -m fedhar.deploy.supernode``: Flower 1.42's ``flower-supernode``, as ``fedhar client`` runs it.

It is Flower's own SuperNode (same arguments, same code), started through this module for three reasons:

* **It exits when it gives up.** Flower's SuperNode ends its connection loop on an error it does not
  retry (a TLS error such as a server certificate the device no longer trusts, an HTTP error other than
  502/503/504) and logs it, but its Runtime API thread keeps the process alive: a SuperNode that is
  running, connected to nothing, while ``fedhar client`` waits for it (reproduced: a server restarted
  with a new certificate). Here the process exits (code ``EXIT_GAVE_UP``) with one line naming the last
  error, so ``fedhar client`` starts it again and says why.
* **A dead background thread ends it too.** Flower's heartbeat thread dies on an unexpected answer
  (``Heartbeat failed unexpectedly``) while the main loop goes on polling: the SuperLink then counts
  the device as offline and leaves it out of every run. Any uncaught thread exception exits
  (``EXIT_THREAD_DIED``).
* **A shorter heartbeat** (``--heartbeat-interval S``, default ``DEFAULT_HEARTBEAT_S``). A SuperNode
  tells the SuperLink its heartbeat interval (Flower 1.42: a constant 30 s, no option) and the SuperLink
  counts it offline ``2 x interval`` after its last heartbeat; only then does a device that died
  mid-round (power, network, SIGKILL) cost the round its update instead of the whole wait. The
  SuperLink accepts 10-1800 s (``HEARTBEAT_MIN_INTERVAL`` / ``HEARTBEAT_MAX_INTERVAL``, checked on the
  SuperLink); the SuperNode then sends one every ``(interval - 5 s) x 0.8`` (4 s at 10 s).

Nothing else changes: the process parses Flower's arguments, logs as Flower does and exits as Flower does
on a signal or a refused connection.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

DEFAULT_HEARTBEAT_S = 10.0  # the SuperLink's minimum: a dead device is offline 20 s after its last heartbeat
HEARTBEAT_RANGE_S = (10.0, 1800.0)  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL / HEARTBEAT_MAX_INTERVAL
EXIT_GAVE_UP, EXIT_THREAD_DIED = 75, 76
MARK = "fedhar-supernode:"  # starts the one line this module adds to the SuperNode's log


class LastProblem(logging.Handler):
    """Remembers the last warning or error Flower logged (what the connection loop gave up on)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().strip()
        except Exception:  # noqa: BLE001 - a log record that does not format is no reason to fail
            return
        if text and not text.startswith("Connection attempt failed, retrying"):
            self.text = text.splitlines()[0]


def set_heartbeat(interval_s: float) -> None:
    """The interval the SuperNode announces and heartbeats by (Flower reads it from module constants)."""
    from fedhar.deploy.flower_internals import fleet_http_connection, supercore_heartbeat

    low, high = HEARTBEAT_RANGE_S
    if not low <= interval_s <= high:
        raise SystemExit(f"{MARK} --heartbeat-interval must be within {low:.0f}-{high:.0f} s, got {interval_s}")
    fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = interval_s  # announced in ActivateNode and each heartbeat
    supercore_heartbeat.HEARTBEAT_DEFAULT_INTERVAL = interval_s  # the sender's schedule


def _say(text: str) -> None:
    print(f"{MARK} {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    interval = DEFAULT_HEARTBEAT_S
    if "--heartbeat-interval" in args:
        at = args.index("--heartbeat-interval")
        interval = float(args[at + 1])
        del args[at : at + 2]
    set_heartbeat(interval)
    last = LastProblem()
    flower_log = logging.getLogger("flwr")
    flower_log.addHandler(last)
    if not flower_log.isEnabledFor(logging.ERROR):  # a process that ran a quiet simulation silenced Flower
        flower_log.setLevel(logging.WARNING)  # the reason the loop ends must still reach `last`

    def thread_died(info: threading.ExceptHookArgs) -> None:
        name = info.thread.name if info.thread else "?"
        _say(f"a SuperNode thread ({name}) died: {info.exc_type.__name__}: {info.exc_value}; exiting")
        os._exit(EXIT_THREAD_DIED)

    threading.excepthook = thread_died
    from fedhar.deploy.flower_internals import supernode_cli

    sys.argv = ["flower-supernode", *args]  # Flower parses sys.argv and names its telemetry by argv[0]
    supernode_cli.flower_supernode()
    # the connection loop ended without a signal: Flower logged why and would idle on here forever
    _say(f"the connection to the SuperLink ended ({last.text or 'no reason logged'}); exiting")
    os._exit(EXIT_GAVE_UP)


if __name__ == "__main__":
    main()
