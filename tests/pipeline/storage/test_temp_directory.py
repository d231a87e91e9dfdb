"""The store spills next to its file, never into the process's working directory (the in-memory instance
the store file is attached to defaulted to ``.tmp`` in the working directory: a read-only root in a
container, and a soak's checkpoint failed when that directory was cleaned under it)."""

from __future__ import annotations

from agent_sre.pipeline.storage.store import SpanStore


def test_spilled_data_goes_next_to_the_store_file(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    store = SpanStore(tmp_path / "data" / "spans.duckdb", memory_limit="64MB")
    try:
        assert store.read("SELECT current_setting('temp_directory')")[0][0] == str(tmp_path / "data" / "spans.duckdb.tmp")
        # a group-by larger than the buffer pool spills
        assert store.read("SELECT count(*) FROM (SELECT h, count(*) FROM (SELECT md5(i::VARCHAR) AS h "
                          "FROM range(3000000) t(i)) GROUP BY h)")[0][0] == 3_000_000
        assert (tmp_path / "data" / "spans.duckdb.tmp").is_dir()  # it did spill, there
        assert not (cwd / ".tmp").exists() and list(cwd.iterdir()) == []
    finally:
        store.close()
