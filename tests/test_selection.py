from dataclasses import dataclass

from distill.selection import dpo_pairs, shortest_correct


@dataclass
class S:
    name: str
    correct: bool
    length: int


def test_shortest_correct():
    group = [S("a", False, 5), S("b", True, 30), S("c", True, 12), S("d", True, 40)]
    assert shortest_correct(group).name == "c"
    assert shortest_correct([S("a", False, 5), S("b", False, 3)]) is None  # no correct sample: problem dropped
    assert shortest_correct([]) is None


def test_ties_go_to_the_earliest_sample():
    group = [S("a", True, 10), S("b", True, 10), S("c", True, 10)]
    assert shortest_correct(group).name == "a"


def test_dpo_pairs_rules():
    group = [
        S("chosen", True, 20),
        S("wrong-longer", False, 25),
        S("wrong-shorter", False, 10),  # wrong but shorter than chosen: not rejected
        S("wrong-equal", False, 20),  # not longer: not rejected
        S("correct-1.5x", True, 30),  # exactly 1.5x: rejected
        S("correct-1.4x", True, 28),  # correct and not long enough: not rejected
    ]
    pairs = dpo_pairs(group)
    assert all(chosen.name == "chosen" for chosen, _ in pairs)
    assert [rejected.name for _, rejected in pairs] == ["correct-1.5x", "wrong-longer"]  # longest first


def test_dpo_pairs_edge_cases():
    assert dpo_pairs([S("a", False, 5), S("b", False, 9)]) == []  # no correct sample
    all_correct_similar = [S("a", True, 10), S("b", True, 11), S("c", True, 14)]
    assert dpo_pairs(all_correct_similar) == []  # all correct, none 1.5x longer
    all_correct = [S("a", True, 10), S("b", True, 15), S("c", True, 40)]
    assert [r.name for _, r in dpo_pairs(all_correct)] == ["c", "b"]
    assert len(dpo_pairs(all_correct, max_pairs=1)) == 1
