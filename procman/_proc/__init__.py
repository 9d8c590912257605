"""procman's process layer: one child process, seen from the parent.

* ``start``   start methods (forkserver, fork, spawn), with every multiprocess-private detail
* ``child``   the parent side of one child: its pipes, its exit, signals to its group
* ``loop``    the I/O thread that runs every child's pipes and timers (uvloop)
* ``events``  the event hook thread, with ``flush()``
* ``output``  where the children's printed lines go

The rule (checked by import-linter, see pyproject.toml): it imports the child side
(procman._child) and procman._errors, nothing of the daemon layer or of ``workers``. These are the
only procman internals ``workers`` may use.
"""
