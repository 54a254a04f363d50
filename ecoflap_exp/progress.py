"""Progress bars for every long step (rich), quiet when the output is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        yield from progress.track(items, total=total, description=description)


@contextlib.contextmanager
def training_progress(description: str, total: int, completed: int = 0) -> Iterator[Callable[[str], None]]:
    """A bar over optimizer steps; the yielded function advances it one step with a status line
    (loss, learning rate, sparsity)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, status="")
        yield lambda status: progress.update(task, advance=1, status=status)
