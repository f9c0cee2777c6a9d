"""What a trial process holds of its training split, whole (`data.loader: memory`) or streamed by Ray
Data (`ray_data`): the growth of its resident memory while it reads the split once.

    .venv/bin/python benchmarks/streamed_data.py [--rows 200000]   # -> results/streamed_data.json

A synthetic text table (60 words a row, a tiny BERT's WordPiece vocabulary, 64 tokens) on a local Ray
cluster of 2 CPUs. Each way runs in a fresh process that samples its own RSS every 5 ms: `memory`
tokenises the split as trials do (Python lists of token ids), `ray_data` iterates the loop's
StreamedBatches over the Ray dataset (after a first pass over the validation stream, so that Ray
Data's own start-up is not counted as data). `held_gib` is the growth of its private resident memory
(RSS less shared pages: the blocks Ray Data maps from its object store are the node's, counted once
there and bounded by the object store's size); `resident_gib`, of all of its RSS. Figure:
`streamed_vs_memory_held` (target: measurably below 1; tests/data/test_streamed.py asserts < 0.25
at 60,000 rows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result
from benchmarks.summary import refresh

# In a fresh process: the growth of its resident memory while it reads the training split.
MEASURE = """
import json, sys, threading, time
import psutil
from tlsearch.data.tables import DataFiles
from tlsearch.spec.model import ModelSpec
files, model, mode = DataFiles(**json.loads(sys.argv[1])), ModelSpec(**json.loads(sys.argv[2])), sys.argv[3]
def resident():  # (all resident, private resident: less the pages shared, Ray's object store's too)
    info = psutil.Process().memory_info()
    return info.rss / 2**30, (info.rss - info.shared) / 2**30
peak, done = [0.0, 0.0], threading.Event()
def sample():
    while not done.is_set():
        peak[:] = [max(p, now) for p, now in zip(peak, resident())]
        time.sleep(0.005)
if mode == "memory":
    from tlsearch.data.datasets import load_split, TextDataset
    from tlsearch.models.sources import build_model
    tokenizer = build_model(model, len(files.labels), weights=False).preprocessing
    before = resident()
    threading.Thread(target=sample, daemon=True).start()
    dataset = TextDataset(load_split(files, "train"), tokenizer, model.max_length)
    rows = len(dataset)
else:
    import ray
    from tlsearch.data.streamed import StreamedBatches, streamed_split
    from tlsearch.models.sources import build_model
    tokenizer = build_model(model, len(files.labels), weights=False).preprocessing
    ray.init(address=sys.argv[4], log_to_driver=False)
    def stream(split):
        return StreamedBatches(streamed_split(files, split, model, tokenizer).iterator(), 64, "text")
    sum(1 for _ in stream("validation"))  # Ray Data's own start-up (its executor, its imports) first
    before = resident()
    threading.Thread(target=sample, daemon=True).start()
    rows = sum(len(targets) for _, targets in stream("train"))
done.set()
time.sleep(0.02)
held = [max(p, now) - b for p, now, b in zip(peak, resident(), before)]
print(json.dumps({"rows": rows, "resident_gib": round(held[0], 3), "held_gib": round(held[1], 3)}))
"""


def held_gib(files: Any, model: Any, mode: str, ray_address: str) -> dict[str, Any]:
    """{rows read, GiB the process grew by} for one way of reading `files`' training split."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            json.dumps(files.__dict__),
            model.model_dump_json(),
            mode,
            ray_address,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def synthetic_split(directory: Path, rows: int) -> tuple[Any, Any]:
    """(DataFiles, ModelSpec) of a `rows`-row synthetic text table and a tiny BERT saved under `directory`."""
    from tlsearch.search.resolve import resolve_data
    from tlsearch.spec import validate_spec
    from tlsearch.testing import make_tiny_bert, text_rows, text_spec, write_parquet

    data = {
        "train": write_parquet(text_rows(rows, seed=1, words_per_row=60), directory / "train.parquet"),
        "validation": write_parquet(text_rows(30, seed=2), directory / "validation.parquet"),
    }
    bert = make_tiny_bert(directory / "bert")
    spec = validate_spec(text_spec(bert, data, directory / "runs", model={"max_length": 64}))
    files, _ = resolve_data(spec, directory)
    return files, spec.model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as scratch:
        files, model = synthetic_split(Path(scratch), args.rows)
        context = ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            held = {
                mode: held_gib(files, model, mode, context.address_info["address"])
                for mode in ("memory", "ray_data")
            }
        finally:
            ray.shutdown()
    figures = {
        "rows": args.rows,
        "tokens_per_row": model.max_length,
        "held_gib": {mode: h["held_gib"] for mode, h in held.items()},
        "resident_gib": {mode: h["resident_gib"] for mode, h in held.items()},
        "streamed_vs_memory_held": held["ray_data"]["held_gib"] / held["memory"]["held_gib"],
    }
    path = write_result("streamed_data", figures, f"python benchmarks/streamed_data.py --rows {args.rows}")
    refresh()
    print(path)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
