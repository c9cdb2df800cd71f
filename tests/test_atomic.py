"""verl_agrae.atomic: destinations hold the old or the new content, and failed writes leave nothing behind."""

from __future__ import annotations

import os
import stat

import pytest

from verl_agrae.atomic import atomic_target, atomic_write_bytes, atomic_write_text


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_text_and_bytes_replace_the_content_and_create_parents(tmp_path):
    dest = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(dest, "first\n") == dest
    assert dest.read_text(encoding="utf-8") == "first\n"
    atomic_write_text(dest, "zweite Fassung: é\n")
    assert dest.read_text(encoding="utf-8") == "zweite Fassung: é\n"
    atomic_write_bytes(dest, b"\x00\x01")
    assert dest.read_bytes() == b"\x00\x01"
    assert _leftovers(dest.parent) == []


def test_the_file_is_replaced_by_rename_not_rewritten_in_place(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    reader = open(dest, encoding="utf-8")  # a reader holding the old file keeps seeing all of it
    try:
        atomic_write_text(dest, "new")
        assert reader.read() == "old"
    finally:
        reader.close()
    assert dest.read_text() == "new"


def test_a_failed_text_write_keeps_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_text(dest, 123)  # type: ignore[arg-type]  # fails inside the write
    assert dest.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_target_moves_into_place_only_when_the_block_succeeds(tmp_path):
    dest = tmp_path / "sub" / "table.bin"
    with atomic_target(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".table.bin.") and tmp.name.endswith(".tmp")
        assert tmp.is_file() and not dest.exists()  # nothing visible before the block ends
        tmp.write_bytes(b"v1")
    assert dest.read_bytes() == b"v1"

    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_target(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer crashed")
    assert dest.read_bytes() == b"v1"
    assert _leftovers(dest.parent) == []


def test_interrupt_inside_the_block_also_cleans_up(tmp_path):
    dest = tmp_path / "x.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_target(dest) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_directory_target_replaces_an_existing_directory(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "stale.bin").write_text("incomplete earlier attempt")
    with pytest.raises(ValueError):
        with atomic_target(dest, directory=True) as tmp:
            (tmp / "weights.bin").write_text("half")
            raise ValueError("save failed")
    assert sorted(p.name for p in dest.iterdir()) == ["stale.bin"]  # untouched by the failed attempt
    assert _leftovers(tmp_path) == []

    with atomic_target(dest, directory=True) as tmp:
        assert tmp.is_dir()
        (tmp / "weights.bin").write_text("complete")
    assert sorted(p.name for p in dest.iterdir()) == ["weights.bin"]
    assert _leftovers(tmp_path) == []


def test_permissions_follow_the_umask_like_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic = atomic_write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_concurrent_targets_for_one_destination_get_distinct_temporaries(tmp_path):
    dest = tmp_path / "out.txt"
    with atomic_target(dest) as a, atomic_target(dest) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert dest.read_text() == "a"  # the outer block finished last
