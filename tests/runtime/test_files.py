"""Private files and folders: their modes whatever the umask, and an earlier run's leftovers tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bhiv_core.runtime.files import open_private, private_dir, tighten_tree
from tests.harness import umask


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(params=[0o022, 0o000, 0o277], ids=["umask-022", "umask-000", "umask-277"])
def any_umask(request: pytest.FixtureRequest) -> Iterator[int]:
    with umask(request.param):
        yield request.param


def test_a_new_folder_and_its_missing_parents_are_0700(tmp_path: Path, any_umask: int) -> None:
    folder = private_dir(tmp_path / "a" / "b" / "data")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", folder)] == [0o700, 0o700, 0o700]


def test_an_existing_folder_loses_group_and_other_access_but_its_parent_is_left(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "data", 0o775)
    private_dir(tmp_path / "data")
    assert (mode(tmp_path), mode(tmp_path / "data")) == (0o755, 0o700)


def test_a_file_in_the_way_of_a_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(NotADirectoryError):
        private_dir(tmp_path / "data")


@pytest.mark.parametrize("how", ["ab", "wb", "a", "w"])
def test_a_new_file_is_0600(tmp_path: Path, any_umask: int, how: str) -> None:
    with open_private(tmp_path / "f", how) as out:
        out.write(b"x" if "b" in how else "x")
    assert mode(tmp_path / "f") == 0o600


def test_an_existing_file_becomes_0600_and_keeps_or_drops_its_content(tmp_path: Path) -> None:
    for name in ("kept", "emptied"):
        (tmp_path / name).write_text("before\n")
        os.chmod(tmp_path / name, 0o644)
    with open_private(tmp_path / "kept", "a", encoding="utf-8") as out:
        out.write("after\n")
    with open_private(tmp_path / "emptied", "wb") as out:
        out.write(b"after\n")
    assert (tmp_path / "kept").read_text() == "before\nafter\n"
    assert (tmp_path / "emptied").read_text() == "after\n"
    assert (mode(tmp_path / "kept"), mode(tmp_path / "emptied")) == (0o600, 0o600)


def test_reading_modes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writes only"):
        open_private(tmp_path / "f", "r")


def test_tighten_tree_takes_group_and_other_access_from_everything_below(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "logs").mkdir(parents=True)
    (root / "audit.db").write_text("")
    (root / "logs" / "crm.log").write_text("")
    (root / "run.sh").write_text("")
    for path, loose in ((root, 0o755), (root / "logs", 0o755), (root / "audit.db", 0o644)):
        os.chmod(path, loose)
    os.chmod(root / "logs" / "crm.log", 0o664)
    os.chmod(root / "run.sh", 0o755)
    changed = tighten_tree(root)
    assert {p.relative_to(root).as_posix() for p in changed} == {
        ".",
        "logs",
        "audit.db",
        "logs/crm.log",
        "run.sh",
    }
    assert [mode(root / p) for p in (".", "logs", "audit.db", "logs/crm.log", "run.sh")] == [
        0o700,
        0o700,
        0o600,
        0o600,
        0o700,  # the owner keeps what it had
    ]
    assert tighten_tree(root) == []


def test_tighten_tree_follows_no_link_out_of_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shared.txt").write_text("")
    os.chmod(outside, 0o755)
    os.chmod(outside / "shared.txt", 0o644)
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "folder-link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "shared.txt")
    assert tighten_tree(root) == []
    assert (mode(outside), mode(outside / "shared.txt")) == (0o755, 0o644)


def test_tighten_tree_of_a_missing_folder_does_nothing(tmp_path: Path) -> None:
    assert tighten_tree(tmp_path / "missing") == []
