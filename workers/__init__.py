"""workers: a timed job queue on a fixed pool of worker processes (see issue: not built yet)."""

__all__: tuple[str, ...] = ()
