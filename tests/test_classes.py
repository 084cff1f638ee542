import pytest

from leukostage.classes import BY_KEY, CLASS_KEYS, CLASSES, class_info


def test_keys_names_and_dataset_labels_are_the_contract():
    assert CLASS_KEYS == ("normal", "early", "mid", "advanced")
    assert [c.display_name for c in CLASSES] == ["Normal", "Early Stage", "Mid Stage", "Advanced Stage"]
    assert [c.dataset_label for c in CLASSES] == [
        "Benign (hematogones)", "Early Pre-B ALL", "Pre-B ALL", "Pro-B ALL"]
    assert [c.folder for c in CLASSES] == ["normal", "cancerous/early", "cancerous/mid", "cancerous/advanced"]


def test_unknown_class_lists_valid_keys():
    assert class_info("mid") is BY_KEY["mid"]
    with pytest.raises(ValueError, match="normal, early, mid, advanced"):
        class_info("stage4")
