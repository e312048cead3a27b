"""The image cache's bookkeeping: a changed recipe is a new image, and old
images go only when no run holds them (no root, no containers needed)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from tests.e2e.machines import harness

pytestmark = pytest.mark.machines


def test_a_changed_recipe_is_a_new_image(monkeypatch: pytest.MonkeyPatch) -> None:
    before = harness.recipe_id(harness.recipe())
    monkeypatch.setattr(harness, "PACKAGES", (*harness.PACKAGES, "iproute2"))
    assert harness.recipe_id(harness.recipe()) != before
    monkeypatch.setattr(harness, "PACKAGES", harness.PACKAGES[:-1])
    monkeypatch.setattr(harness, "IMAGE_VERSION", harness.IMAGE_VERSION + 1)
    assert harness.recipe_id(harness.recipe()) != before


def test_old_images_go_once_no_run_holds_them(tmp_path: Path) -> None:
    keep, held, free = (tmp_path / f"rootfs-{name}" for name in ("new", "held", "free"))
    for image in (keep, held, free):
        (image / "etc").mkdir(parents=True)
    holder = os.open(tmp_path / "rootfs-held.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)  # another run boots from it
        harness._prune(keep)
        assert keep.is_dir() and held.is_dir() and not free.exists()
    finally:
        os.close(holder)
    harness._prune(keep)
    assert keep.is_dir() and not held.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rootfs-new"]
