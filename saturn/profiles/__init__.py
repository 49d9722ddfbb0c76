"""The profile store: measured (signature, technique, knobs, GPU count, hardware) -> step time."""

from saturn.profiles.store import (
                                   COLUMNS,
                                   default_dir,
                                   load_store,
                                   lookup,
                                   profiles_for,
                                   read_table,
                                   store_path,
                                   upsert_rows,
                                   write_store,
)

__all__ = ["COLUMNS", "default_dir", "load_store", "lookup", "profiles_for", "read_table", "store_path",
           "upsert_rows", "write_store"]
