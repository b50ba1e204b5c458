"""Datasets: the SQL store of validated, content-versioned eval sets and training data
(store), and the file readers, validators and splitters it uses (read, rows, training,
split, report).

The store's functions are re-exported here, so `datasets.get_dataset(...)` reads as what it
does; each lives in exactly one module below.
"""

from tunebot.datasets.store import (
    EXTENSIONS,
    add_dataset,
    dataset_dir,
    delete_dataset,
    get_dataset,
    list_datasets,
    load_rows,
)

__all__ = ["EXTENSIONS", "add_dataset", "dataset_dir", "delete_dataset", "get_dataset",
           "list_datasets", "load_rows"]
