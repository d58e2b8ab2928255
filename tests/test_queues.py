"""The review queues' cores: stable card ids, the order of new images, copies in one card."""
import numpy as np

from pipeline.model import queues


def test_new_images_most_uncertain_first_unfamiliar_apart_near_duplicates_once():
    labels = ["a", "b", "c"]
    probs = np.array([[0.90, 0.05, 0.05],   # sure
                      [0.40, 0.35, 0.25],   # torn between a and b: first
                      [0.60, 0.30, 0.10],
                      [0.41, 0.34, 0.25],   # a near-copy of row 1: not shown again
                      [0.50, 0.49, 0.01]])  # the most uncertain of all, but unfamiliar: at the end
    familiar = np.array([True, True, True, True, False])
    group = np.array([0, 1, 2, 1, 4])
    cards = queues.unlabeled([f"/new/{i}.png" for i in range(5)], probs, familiar, group, labels)
    assert [c["path"] for c in cards] == ["/new/1.png", "/new/2.png", "/new/0.png", "/new/4.png"]
    assert cards[0]["members"] == ["/new/3.png"] and "stands for 2" in cards[0]["reason"]
    assert cards[0]["top"] == [["a", 0.4], ["b", 0.35], ["c", 0.25]] and cards[0]["suggested"] == "a"
    assert "unfamiliar" in cards[-1]["reason"] and cards[-1]["familiar"] is False


def test_card_ids_are_stable_and_shared_across_queues():
    ranked = [{"path": "d/x.png", "label": "a", "suggested": "b", "confidence": "0.9", "score": "0.95",
               "split": "train", "flagged": "True"}]
    odd = [{"path": "d/x.png", "label": "a", "split": "train", "score": "0.3", "z": "6.1"}]
    s, o = queues.suspects(ranked)[0], queues.outliers(odd)[0]
    assert s["id"] == o["id"] == queues.card_id("d/x.png") and s["strict"] and s["confidence"] == 0.9


def test_misclassified_most_confident_mistake_first():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.05, 0.95], [0.6, 0.4]])
    cards = queues.misclassified(["p0", "p1", "p2", "p3"], np.array([0, 0, 0, 1]), probs, ["a", "b"])
    assert [c["path"] for c in cards] == ["p2", "p1", "p3"] and cards[0]["suggested"] == "b"


def test_copies_suggest_their_groups_most_common_label():
    rows = [{"group": "7", "path": "x", "label": "cat", "split": "train", "kind": "copy", "similarity": "1"},
            {"group": "7", "path": "y", "label": "cat", "split": "test", "kind": "copy", "similarity": "1"},
            {"group": "7", "path": "z", "label": "dog", "split": "train", "kind": "copy", "similarity": "1"}]
    cards = queues.duplicates(rows)
    assert [c["suggested"] for c in cards] == ["cat"] * 3 and "a copy of y (cat, test)" in cards[0]["reason"]


def test_copies_of_a_tie_suggest_nothing():
    rows = [{"group": "3", "path": "red/9.jpg", "label": "red", "split": "train", "kind": "copy", "similarity": "1"},
            {"group": "3", "path": "blue/copy.jpg", "label": "blue", "split": "test", "kind": "copy", "similarity": "1"}]
    cards = queues.duplicates(rows)
    assert [c["suggested"] for c in cards] == ["", ""]
    assert cards[0]["reason"] == "a copy of blue/copy.jpg (blue, test); as many 'red' as 'blue': which label is right?"


def test_an_image_in_a_copy_group_and_a_look_alike_group_is_one_card():
    rows = [{"group": "0", "path": "x", "label": "cat", "split": "train", "kind": "copy", "similarity": "1"},
            {"group": "0", "path": "y", "label": "dog", "split": "test", "kind": "copy", "similarity": "1"},
            {"group": "1", "path": "x", "label": "cat", "split": "train", "kind": "look-alike", "similarity": "0.99"},
            {"group": "1", "path": "z", "label": "dog", "split": "train", "kind": "look-alike", "similarity": "0.99"}]
    cards = queues.duplicates(rows)
    assert [c["path"] for c in cards] == ["x", "y", "z"] and len({c["id"] for c in cards}) == 3
    assert "a copy of y (dog, test)" in cards[0]["reason"] and "looks like z (dog, train)" in cards[0]["reason"]
