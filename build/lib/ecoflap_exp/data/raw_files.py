"""A folder of downloaded releases (files and the members of their zip/tar archives), and placing
released files where the project reads them: copied or symlinked through a .part file (an
interrupted copy never leaves a truncated file), archive members extracted one pass per archive,
and files released in another format converted. Used by scripts/prepare_data.py."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

from ecoflap_exp.errors import UserError
from ecoflap_exp.progress import track


class Found(NamedTuple):
    """A released file in the raw dir: a file, or a member of an archive."""

    path: Path
    member: str | None = None

    def parts(self) -> tuple[str, ...]:
        return self.path.parts if self.member is None else PurePosixPath(self.member).parts

    def __str__(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"


def shared_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class RawDir:
    """The files and folders under a raw dir (walked once, symlinks followed) and, when asked, the
    members of the release archives in it."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise UserError(f"raw dir {root} is not a folder; give the folder holding the downloaded files")
        self.root = root
        self.files: dict[str, list[Path]] = defaultdict(list)
        self.dirs: dict[str, list[Path]] = defaultdict(list)
        self.listed: dict[Path, dict[str, list[str]]] = {}
        seen = set()
        for folder, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a symlink loop
                dirnames.clear()
                continue
            seen.add(real)
            dirnames.sort()
            for name in dirnames:
                self.dirs[name].append(Path(folder, name))
            for name in sorted(filenames):
                self.files[name].append(Path(folder, name))
        print(f"raw dir {root}: {sum(map(len, self.files.values()))} files")

    def members(self, archive: Path) -> dict[str, list[str]]:
        """File name -> member paths of a zip or tar archive (listed once)."""
        if archive not in self.listed:
            print(f"listing {archive} ...")
            try:
                if zipfile.is_zipfile(archive):
                    with zipfile.ZipFile(archive) as zf:
                        names = [n for n in zf.namelist() if not n.endswith("/")]
                else:
                    with tarfile.open(archive) as tar:
                        names = [m.name for m in tar if m.isfile()]
            except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
                raise UserError(f"{archive} is not a readable zip or tar archive ({err}); download it again") from err
            by_name: dict[str, list[str]] = defaultdict(list)
            for name in names:
                by_name[PurePosixPath(name).name].append(name)
            self.listed[archive] = by_name
        return self.listed[archive]

    def find(self, tail: tuple[str, ...], target: tuple[str, ...], archives: tuple[str, ...] = ()) -> Found | None:
        """The released copy of a target: a file whose path ends with `tail`, else such a member of one
        of the named archives; of several, the one sharing the longest path tail with `target`."""
        candidates = [Found(p) for p in self.files.get(tail[-1], ()) if p.parts[-len(tail):] == tail]
        if not candidates:
            candidates = [Found(archive, member) for name in archives for archive in self.files.get(name, ())
                          for member in self.members(archive).get(tail[-1], ())
                          if PurePosixPath(member).parts[-len(tail):] == tail]
        return max(candidates, key=lambda found: shared_tail(found.parts(), target), default=None)


Converter = Callable[[Path, Path], str]  # (released file, where to write ours) -> what was done
Gatherer = Callable[[RawDir, Path, bool], str | None]  # (raw dir, target, link) -> what was done


def progress(items: list, description: str) -> Iterable:
    """A progress bar for many items; none for one."""
    return track(items, description, total=len(items)) if len(items) > 1 else items


def write_stream(source: IO[bytes], target: Path) -> None:
    """Write through a .part file, so an interrupted run never leaves a truncated target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with part.open("wb") as f:
        shutil.copyfileobj(source, f)
    os.replace(part, target)


def place_file(source: Path, target: Path, link: bool) -> None:
    if link:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve())
    else:
        with source.open("rb") as f:
            write_stream(f, target)


def extract(archive: Path, wanted: dict[str, Path]) -> None:
    """Extract the named members of an archive (one pass over a tar) to their targets."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member, target in progress(list(wanted.items()), f"extracting from {archive.name}"):
                with zf.open(member) as f:
                    write_stream(f, target)
        return
    remaining = dict(wanted)
    print(f"extracting {len(wanted)} member(s) from {archive} ...")
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name in remaining:
                write_stream(tar.extractfile(member), remaining.pop(member.name))
                if not remaining:
                    break


def place_all(pairs: list[tuple[Found, Path]], link: bool, description: str) -> None:
    """Place many released files: loose ones one by one, archive members grouped per archive."""
    by_archive: dict[Path, dict[str, Path]] = defaultdict(dict)
    loose = []
    for found, target in pairs:
        if found.member is None:
            loose.append((found.path, target))
        else:
            by_archive[found.path][found.member] = target
    for source, target in progress(loose, description):
        place_file(source, target, link)
    for archive, wanted in by_archive.items():
        extract(archive, wanted)


def convert(found: Found, target: Path, converter: Converter) -> str:
    """Run a converter on a released file (extracted to a temporary folder first if archived)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with tempfile.TemporaryDirectory() as tmp:
        source = found.path
        if found.member is not None:
            source = Path(tmp, PurePosixPath(found.member).name)
            extract(found.path, {found.member: source})
        done = converter(source, part)
    os.replace(part, target)
    return f"{done} <- {found}"
