"""The child side: everything that runs inside a supervised child process, and nothing else.

The rule (checked by import-linter, see pyproject.toml): modules here import nothing of the parent
side, neither procman's process and daemon layers nor ``workers``, so that a child process loads
only this package (and what its daemon or job imports itself).

* ``boot``         the bootstrap every child runs first, and its control channel
* ``guard``        what keeps a child's leftovers from outliving it (reaper and shell guards)
* ``linux``        the few process calls it needs (prctl, liveness, titles, a flushed exit)
* ``wire``         the one wire protocol: frames, control records, errors, exit statuses
* ``pickling``     what crosses into a child, and back; ``explain``: why something cannot
* ``daemon_loop``  runs a daemon: start, ready, wait for stop, stop
* ``worker_loop``  runs a pool's jobs one at a time: job frames in, result frames out
* ``fsguard``      imported by the forkserver: it ignores SIGTERM to the manager's group
"""
