"""How a training run stops on a signal: at the next update boundary, with last.pt written.

Ctrl-C sends SIGINT, `kill`, Kubernetes and batch schedulers SIGTERM, SLURM's `--signal`
SIGUSR1 before a time limit, a closed terminal SIGHUP. The first asks the loop to stop at the
next update boundary; a second aborts at once. The exit code tells a job script what
happened: 130 for Ctrl-C, as shells expect, and 75 (sysexits.h EX_TEMPFAIL, "try again
later") for the others: the run is saved and the same command continues it.
"""

from __future__ import annotations

import signal

# The signals torchrun's agent passes on to the training processes: its default set, and
# SIGUSR1. `nmt train --nproc` asks for them; by hand: `torchrun --signals-to-handle ...`.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"

STOPPED_EXIT_CODE = 75


def stop_exit_code(signal_name: str | None) -> int:
    """130 for Ctrl-C; 75 for any other stop signal, or one sent to another process."""
    return 130 if signal_name == "SIGINT" else STOPPED_EXIT_CODE


class StopSignals:
    """While active, the first stop signal sets `raised` (and `name`); a second raises
    KeyboardInterrupt. On exit the handlers before are restored, or, with `then_ignore`,
    stop signals are ignored from then on.

    A process under torchrun needs `then_ignore`: when one process dies the launcher signals
    the others at once, and the default handler would end a survivor before it has printed
    why it stops (it exits right after anyway, and the launcher kills it after 30 s).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)

    def __init__(self, *, then_ignore: bool = False) -> None:
        self.raised = False
        self.name: str | None = None
        self.then_ignore = then_ignore

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised, self.name = True, signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.then_ignore else handler)
