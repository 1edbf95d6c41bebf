"""Stop signals only set a flag; previous handlers come back afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from worker.signals import StopSignals


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_signal_sets_the_flag_and_handlers_are_restored(sig: signal.Signals) -> None:
    seen: list[int] = []

    def previous(signum: int, frame: object) -> None:
        seen.append(signum)

    old = signal.signal(sig, previous)
    try:
        with StopSignals() as stop:
            assert not stop.requested
            os.kill(os.getpid(), sig)
            assert stop.requested and stop.received == sig
            os.kill(os.getpid(), signal.SIGUSR2 if sig != signal.SIGUSR2 else signal.SIGUSR1)
            assert stop.received == sig  # the first signal is what is reported
        assert signal.getsignal(sig) is previous
        os.kill(os.getpid(), sig)
        assert seen == [sig]
    finally:
        signal.signal(sig, old)
