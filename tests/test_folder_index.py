"""A dataset folder's index: one listing, a shard's own keys only, partial writes and folders never keys."""

from __future__ import annotations

from airflow.sdk import ObjectStoragePath

from airflow_provider_imagen._task.keyed import FolderIndex
from airflow_provider_imagen._task.local_folder import write_image


def test_a_shard_indexes_only_its_own_keys(tmp_path):
    for key in ("SKU-1", "SKU-2"):
        write_image(str(tmp_path), f"{key}.png", b"\x89PNG" + b"0" * 20, replacing=False)
        (tmp_path / f"{key}.{'a' * 24}.0.1024x1024.json").write_text("{}")
    (tmp_path / ".SKU-3.png.0123.part").write_bytes(b"partial")  # a write cut short
    (tmp_path / "manifests").mkdir()

    whole = FolderIndex(ObjectStoragePath(f"file://{tmp_path}"))
    assert sorted(whole.keys) == ["SKU-1", "SKU-2"]
    assert whole.keys["SKU-1"].images == {"SKU-1.png": 24}
    assert whole.keys["SKU-1"].sidecars == [f"SKU-1.{'a' * 24}.0.1024x1024.json"]

    shard = FolderIndex(ObjectStoragePath(f"file://{tmp_path}"), selected=lambda key: key == "SKU-2")
    assert list(shard.keys) == ["SKU-2"]
    assert shard.has("SKU-2") and not shard.has("SKU-1")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".part")) == [".SKU-3.png.0123.part"]
