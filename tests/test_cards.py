import pytest

from l2s.cards import atomic_model_dir, find_models, new_card, read_card, stable_hash, write_card


def _model(path):
    (path / "config.json").write_text("{}")
    write_card(path, new_card("m", "test", [], {"a": 1}))


def test_atomic_model_dir_renames_only_when_complete(tmp_path):
    final = tmp_path / "models" / "m"
    with atomic_model_dir(final) as temporary:
        assert not final.exists() and temporary.name.startswith(".tmp-")
        _model(temporary)
        assert find_models(tmp_path / "models") == {}  # a half-written model is never found
    assert find_models(tmp_path / "models") == {"m": final}
    assert read_card(final)["recipe_hash"] == stable_hash({"a": 1})


def test_interrupted_write_leaves_no_model(tmp_path):
    final = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        with atomic_model_dir(final) as temporary:
            _model(temporary)
            raise KeyboardInterrupt
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_rewrite_replaces_an_old_model(tmp_path):
    final = tmp_path / "m"
    for _ in range(2):
        with atomic_model_dir(final) as temporary:
            _model(temporary)
    assert find_models(tmp_path) == {"m": final}


def test_stable_hash_is_order_independent():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
