"""A clock that is wrong on purpose, for the syncd subprocesses of tests/test_hostile_time.py:
``datetime.now()`` is ``$SYNCD_TEST_CLOCK_OFFSET_S`` seconds off (put on PYTHONPATH), until
``$SYNCD_TEST_CLOCK_STEP_AT_S`` seconds after start if that is set."""

import datetime as _datetime
import os
import time

_offset = _datetime.timedelta(seconds=float(os.environ.get("SYNCD_TEST_CLOCK_OFFSET_S", "0")))
# If set: the clock is stepped back to the true time this many seconds after start (as NTP would).
_step_at = float(os.environ.get("SYNCD_TEST_CLOCK_STEP_AT_S", "inf"))
_start = time.monotonic()


class _Skewed(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return super().now(tz) + (_offset if time.monotonic() - _start < _step_at else _datetime.timedelta(0))


_datetime.datetime = _Skewed
