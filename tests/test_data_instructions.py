"""The README's data instructions, followed literally: `scripts/get-multi30k.sh` fetches
Multi30k (here from the local copy beside the repository, through its MULTI30K_URL), and the
shipped recipes preprocess it unchanged, pointed at it with the one override, data.root."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from nmt_cli.config import DataConfig, SourceConfig
from nmt_cli.data.corpus import located

REPO = Path(__file__).resolve().parent.parent
LOCAL_COPY = REPO.parent / "shared" / "data" / "multi30k"
needs_local_copy = pytest.mark.skipif(
    not LOCAL_COPY.is_dir(), reason="no Multi30k copy beside the repository (../shared)"
)


def fetch(directory: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MULTI30K_URL": LOCAL_COPY.as_uri()}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "get-multi30k.sh"), str(directory)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_located_joins_relative_paths_to_the_root_once() -> None:
    data = DataConfig(
        root="corpora",
        train=(SourceConfig(src="m/a.de", tgt="/abs/a.en"), SourceConfig(task="copy", size=3)),
        test=(SourceConfig(tsv="t.tsv"),),
    )
    found = located(data)
    assert (found.train[0].src, found.train[0].tgt) == ("corpora/m/a.de", "/abs/a.en")
    assert found.train[1] == data.train[1] and found.test[0].tsv == "corpora/t.tsv"
    assert found.root == "" and located(found) == found


@needs_local_copy
def test_the_download_script_fetches_and_checks_multi30k(tmp_path: Path) -> None:
    target = tmp_path / "data" / "multi30k"
    done = fetch(target)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == sorted(
        f"{split}.{lang}.gz"
        for split in ("train", "val", "test_2016_flickr")
        for lang in ("en", "de", "fr")
    )
    again = fetch(target)  # files already there are checked, not fetched again
    assert again.returncode == 0, again.stderr
    cut = target / "val.de.gz"
    cut.write_bytes(gzip.compress(b"only one line\n"))
    broken = fetch(target)
    assert broken.returncode == 1
    assert (
        broken.stderr.strip() == f"error: {cut} has 1 lines, not 1014; delete it and run this again"
    )


@needs_local_copy
def test_a_shipped_recipe_preprocesses_the_downloaded_corpus(tmp_path: Path, run_nmt) -> None:
    assert fetch(tmp_path / "data" / "multi30k").returncode == 0
    recipe = REPO / "recipes" / "multi30k-de-en-rnn.yaml"
    small = ["--set", "tokenizer.vocab_size=1000"]
    # data.root: data, which is read relative to where nmt runs
    here = run_nmt(["preprocess", str(recipe), "--out", "data-bin", *small], cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    manifest = json.loads((tmp_path / "data-bin" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["pairs"] == 28_998
    assert manifest["splits"]["test"]["pairs"] == 1000
    root = ["--set", f"data.root={tmp_path / 'data'}"]
    elsewhere = run_nmt(
        ["preprocess", str(recipe), "--out", str(tmp_path / "again"), *root, *small]
    )
    assert elsewhere.returncode == 0, elsewhere.stderr


@needs_local_copy
def test_the_domain_split_script_makes_the_readmes_split(tmp_path: Path) -> None:
    """scripts/split-multi30k-domain.sh (README, "Fine-tuning on your domain"): the counts the
    README states, which add up to Multi30k's (every pair in one part), one tab per TSV line."""
    out = tmp_path / "multi30k-sports"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "split-multi30k-domain.sh"), str(LOCAL_COPY), str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = {p.name: p.read_text(encoding="utf-8").splitlines() for p in out.iterdir()}
    counts = {name: len(text) for name, text in lines.items()}
    assert counts == {
        "general.train.tsv": 27_122, "sports.train.tsv": 1_878,
        "general.valid.tsv": 957, "sports.valid.tsv": 57,
        "general.test.de": 917, "general.test.en": 917,
        "sports.test.de": 83, "sports.test.en": 83,
    }  # fmt: skip
    for name, text in lines.items():
        if name.endswith(".tsv"):
            assert all(line.count("\t") == 1 for line in text), name
