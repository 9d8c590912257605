"""The ``procman`` command: the application layer over procman and workers.

``procman run FILE.toml`` runs the daemons and timed jobs a file describes, with a control socket
(``procman status``, ``stop``, ``restart``...) and a console that shows what they print.

* ``main``     the command line: arguments, subcommands, their answers
* ``config``   the TOML file, checked whole at load: every error names its key and line
* ``runner``   ``procman run``: a Manager and a Pool made from a config, until a signal
* ``console``  what the daemons and jobs print and the lifecycle events, on the terminal
* ``control``  the control socket: where it lives, its requests and answers, sd_notify

The rule (import-linter, see pyproject.toml): nothing below imports this package, and it uses
only the public names of procman and workers.
"""

from .main import main

__all__ = ("main",)
