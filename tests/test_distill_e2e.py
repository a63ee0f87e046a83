"""Each distill command end to end on the lab models, with small settings (few problems, few steps)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from l2s.cards import find_models, read_card

pytestmark = pytest.mark.slow


def _l2s(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "l2s.cli", *args], capture_output=True, text=True, timeout=1800, cwd=cwd
    )


def _loads_in_transformers(model_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).chat_template


def test_merge_linear_and_ties_sweep(lab_models, tmp_path):
    out = tmp_path / "lab-merge"
    result = _l2s(
        "distill",
        "merge",
        "--long",
        str(lab_models / "lab-long"),
        "--short",
        str(lab_models / "lab-short"),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    card = read_card(out)
    assert card["method"] == "merge-linear" and card["parents"] == ["lab-long", "lab-short"]
    assert card["recipe"]["mergekit"]["models"][0]["parameters"]["weight"] == 0.5
    _loads_in_transformers(out)
    sweep = tmp_path / "ties"
    result = _l2s(
        "distill",
        "merge",
        "--long",
        str(lab_models / "lab-long"),
        "--short",
        str(lab_models / "lab-short"),
        "--method",
        "ties",
        "--sweep",
        "0.3,0.7",
        "--out",
        str(sweep),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(find_models(sweep)) == ["ties-w0.3", "ties-w0.7"]
    assert read_card(sweep / "ties-w0.3")["recipe"]["mergekit"]["base_model"].endswith("lab-base")


def test_bad_recipe_fails_before_loading(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: models/lab-long\nk: 0\nlearning_rate: fast\n")
    result = _l2s("distill", "shortest", "--recipe", str(recipe), "--out", str(tmp_path / "never"))
    assert result.returncode != 0 and "invalid ShortestRecipe" in result.stderr
    assert not (tmp_path / "never").exists()
