"""Data: tables on disk, builtin demo data sets, and torch datasets over them."""

from tlsearch.data.tables import DataFiles, file_sha256, label_set, read_table

__all__ = ["DataFiles", "file_sha256", "label_set", "read_table"]
