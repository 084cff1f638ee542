import pytest

from leukostage.classes import (
    BY_KEY,
    CLASS_KEYS,
    CLASSES,
    LEUKAEMIA_KEYS,
    NORMAL_KEY,
    class_info,
    parse_class,
    parse_final_call,
)


def test_keys_names_and_dataset_labels_are_the_contract():
    assert CLASS_KEYS == ("normal", "early", "mid", "advanced")
    assert [c.display_name for c in CLASSES] == ["Normal", "Early Stage", "Mid Stage", "Advanced Stage"]
    assert [c.dataset_label for c in CLASSES] == ["Benign (hematogones)", "Early Pre-B ALL", "Pre-B ALL", "Pro-B ALL"]
    assert [c.folder for c in CLASSES] == ["normal", "cancerous/early", "cancerous/mid", "cancerous/advanced"]


def test_the_leukaemias_are_the_cancerous_classes_and_normal_is_the_other():
    assert LEUKAEMIA_KEYS == ("early", "mid", "advanced") and NORMAL_KEY == "normal"
    assert all(c.is_leukaemia == c.folder.startswith("cancerous/") for c in CLASSES)


def test_unknown_class_lists_valid_keys():
    assert class_info("mid") is BY_KEY["mid"]
    with pytest.raises(ValueError, match="normal, early, mid, advanced"):
        class_info("stage4")


@pytest.mark.parametrize(
    "text, key",
    [
        ("mid", "mid"),
        ("Mid", "mid"),
        ("MID", "mid"),
        (" mid ", "mid"),
        ("Mid Stage", "mid"),
        ("mid  stage", "mid"),
        ("Pre-B ALL", "mid"),
        ("pro-b all", "advanced"),
        ("Normal", "normal"),
        ("Early Stage", "early"),
        ("Benign (hematogones)", "normal"),
    ],
)
def test_parse_class_takes_keys_in_any_case_and_display_names(text, key):
    assert parse_class(text) is BY_KEY[key]


@pytest.mark.parametrize("text", ["stage4", "", "Early Pre-B", "mid-stage", "advanced stage 2"])
def test_parse_class_refuses_others_listing_keys_and_names(text):
    with pytest.raises(ValueError, match=r"expected one of normal, early, mid, advanced .*Mid Stage"):
        parse_class(text)


@pytest.mark.parametrize(
    "text, key",
    [
        ("mid", "mid"),
        ("Mid Stage", "mid"),
        ("pro-b all", "advanced"),
        ("non_diagnostic", "non_diagnostic"),
        ("Non-diagnostic", "non_diagnostic"),
        ("NON DIAGNOSTIC", "non_diagnostic"),
    ],
)
def test_a_final_call_is_a_class_as_parse_class_reads_it_or_non_diagnostic(text, key):
    assert parse_final_call(text) == key


@pytest.mark.parametrize("text", ["uncertain", "", "stage 4"])
def test_other_final_calls_are_refused_listing_what_is_accepted(text):
    with pytest.raises(ValueError, match=r"normal, early, mid, advanced, non_diagnostic .*Non-diagnostic"):
        parse_final_call(text)


def test_a_result_without_a_class_and_its_capture_in_words():
    """Issue 18: the words every surface uses (page, case page, CLI, PDF) for why no class is asserted and how the
    picture was taken; none names a class."""
    from leukostage.classes import capture_note
    from leukostage.outcomes import uncertain_reason_name, uncertain_reason_text

    assert uncertain_reason_name("outside_training_domain") == "outside the training domain"
    assert uncertain_reason_name(None) == uncertain_reason_name("low_confidence") == "low confidence"
    assert "unlike the images the model was trained on" in uncertain_reason_text("outside_training_domain")
    for reason in ("outside_training_domain", "low_confidence", None):
        assert not any(c.display_name in uncertain_reason_text(reason) for c in CLASSES)
    assert capture_note({"mode": "eyepiece", "scale": 1.0}) == "Photo through the eyepiece: field cropped"
    assert capture_note({"mode": "eyepiece", "rescaled_by": 0.8}) == (
        "Photo through the eyepiece: field cropped, rescaled to the training scale"
    )
    assert capture_note({"mode": "direct", "rescaled_by": 1.2}) == "Field rescaled to the training scale"
    assert capture_note({"mode": "direct", "scale": 1.0}) is None and capture_note(None) is None
