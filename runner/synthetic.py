"""A regression task built offline: MRPC's sentence pairs scored by word overlap.

The shared data holds no regression task (no STS-B), so tests and benchmarks
build one. Each MRPC pair is kept as it is or, for half of them (chosen with
``seed``), its second sentence is swapped for the second sentence of another
pair of the same split; the score is ``5 x`` the Jaccard overlap of the two
sentences' lower-cased word sets, in [0, 5], as STS-B's. The files follow the
classic GLUE STS-B layout (``STS-B/train.tsv``, ``STS-B/dev.tsv``: ten tab
separated columns, the score last), so ``task=glue/stsb task.data_dir=<out>``
reads them as it reads the real STS-B. Deterministic: the same input and seed
give byte-identical files.

    python -m runner.synthetic --glue-dir ../shared/data/glue --out /tmp/overlap-glue
    python -m runner experiment=demo task=glue/stsb task.data_dir=/tmp/overlap-glue
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import numpy as np

STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
WORD = re.compile(r"[a-z0-9]+")


def overlap_score(a: str, b: str) -> float:
    """5 x |words(a) & words(b)| / |words(a) | words(b)| (0 for two empty sentences)."""
    wa, wb = set(WORD.findall(a.lower())), set(WORD.findall(b.lower()))
    union = wa | wb
    return 5.0 * len(wa & wb) / len(union) if union else 0.0


def read_mrpc_pairs(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[3], r[4]) for r in rows[1:] if len(r) >= 5]


def overlap_pairs(pairs: list[tuple[str, str]], seed: int) -> list[tuple[str, str, float]]:
    """Half the pairs as they are, half with a second sentence from another pair; scored by overlap."""
    rng = np.random.default_rng(seed)
    n = len(pairs)
    swap = rng.random(n) < 0.5
    partner = (np.arange(n) + rng.integers(1, max(2, n), size=n)) % max(1, n)  # never the pair itself (n > 1)
    out = []
    for i, (s1, s2) in enumerate(pairs):
        if swap[i] and n > 1:
            s2 = pairs[int(partner[i])][1]
        out.append((s1, s2, round(overlap_score(s1, s2), 3)))
    return out


def write_stsb_tsv(path: Path, rows: list[tuple[str, str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(STSB_HEADER)]
    for i, (s1, s2, score) in enumerate(rows):  # GLUE's tsv files are unquoted; MRPC's sentences hold no tabs
        fields = [str(i), "synthetic", "mrpc-overlap", "2005", str(i), "mrpc", "mrpc", s1, s2, f"{score:.3f}"]
        lines.append("\t".join(f.replace("\t", " ") for f in fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_overlap_stsb(mrpc_dir: Path, out_root: Path, seed: int = 0) -> Path:
    """Write ``<out_root>/STS-B/{train,dev}.tsv`` from MRPC's files; returns the STS-B folder."""
    mrpc_dir, out_root = Path(mrpc_dir), Path(out_root)
    if (mrpc_dir / "MRPC").is_dir():
        mrpc_dir = mrpc_dir / "MRPC"
    target = out_root / "STS-B"
    for i, split in enumerate(("train", "dev")):
        src = mrpc_dir / f"{split}.tsv"
        if not src.is_file():
            raise FileNotFoundError(f"{src} not found; --glue-dir must hold MRPC/{split}.tsv")
        write_stsb_tsv(target / f"{split}.tsv", overlap_pairs(read_mrpc_pairs(src), seed + i))
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue-dir", type=Path, required=True, help="a GLUE root holding MRPC/ (or the MRPC folder)")
    p.add_argument("--out", type=Path, required=True, help="output GLUE root; STS-B/ is written in it")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        target = make_overlap_stsb(args.glue_dir, args.out, args.seed)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}/train.tsv and dev.tsv; run with task=glue/stsb task.data_dir={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
