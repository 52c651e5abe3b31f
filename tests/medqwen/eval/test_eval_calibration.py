"""Contextual calibration (Zhao et al. 2021) of ranked closed answers, by hand."""

import math

import pytest

from medqwen.eval.calibration import batch_calibration, contextual_calibration


def _record(question, answer, scores):
    return {"question": question, "answer": answer, "pred": max(scores, key=scores.get), "scores": scores}


def test_the_blank_image_prior_is_divided_out():
    # the model says "no" to both images, but "no" less firmly for the first; with a blank image it says
    # "no" with p = 0.8. Calibrated: log p(c | image) - log p(c | blank), each normalised over candidates.
    p_yes = [0.4, 0.1]
    image = [_record("Pneumonia?", "yes", {"yes": math.log(p), "no": math.log(1 - p)}) for p in p_yes]
    blank = [_record("Pneumonia?", "no", {"yes": math.log(0.2) + 5.0, "no": math.log(0.8) + 5.0})] * 2
    assert [r["pred"] for r in image] == ["no", "no"]
    calibrated = contextual_calibration(image, blank)
    assert [r["pred"] for r in calibrated] == ["yes", "no"]  # 0.4 / 0.2 = 2 > 0.6 / 0.8; 0.1 / 0.2 < 0.9 / 0.8
    assert calibrated[0]["scores"]["yes"] == pytest.approx(math.log(0.4 / 0.2))
    assert calibrated[0]["scores"]["no"] == pytest.approx(math.log(0.6 / 0.8))
    assert calibrated[1]["answer"] == "yes" and calibrated[1]["question"] == "Pneumonia?"
    assert image[0]["pred"] == "no"  # the input records are left as they were


def test_a_flat_prior_changes_nothing():
    image = [_record("Which tumour?", "glioma", {"glioma": -0.3, "meningioma": -2.0, "pituitary": -1.0})]
    blank = [_record("Which tumour?", "glioma", {"glioma": -7.0, "meningioma": -7.0, "pituitary": -7.0})]
    assert contextual_calibration(image, blank)[0]["pred"] == "glioma"


@pytest.mark.parametrize("blank, message", [
    ([], "1 records but 0 blank"),
    ([_record("Other?", "yes", {"yes": 0.0, "no": 0.0})], "record 0: question or candidates differ"),
    ([_record("Q?", "yes", {"yes": 0.0, "maybe": 0.0})], "record 0: question or candidates differ"),
])
def test_records_that_do_not_line_up_are_refused(blank, message):
    with pytest.raises(ValueError, match=message):
        contextual_calibration([_record("Q?", "yes", {"yes": 0.0, "no": -1.0})], blank)


def test_batch_calibration_divides_out_the_mean_answer_probability():
    # three pneumonia images, p(yes) = 0.5, 0.2, 0.05 -> mean 0.25; calibrated p(yes) / 0.25 vs p(no) / 0.75
    image = [_record("Pneumonia?", "yes", {"yes": math.log(p), "no": math.log(1 - p)}) for p in (0.5, 0.2, 0.05)]
    # a question with another candidate set is calibrated by its own group: one record, so its prior is itself
    image.append(_record("Which?", "b", {"a": math.log(0.9), "b": math.log(0.1)}))
    calibrated = batch_calibration(image)
    assert [r["pred"] for r in calibrated[:3]] == ["yes", "no", "no"]  # 0.5/0.25 = 2 > 0.5/0.75; 0.2/0.25 = 0.8 < 0.8/0.75
    assert calibrated[1]["scores"]["yes"] == pytest.approx(math.log(0.2 / 0.25))
    assert calibrated[1]["scores"]["no"] == pytest.approx(math.log(0.8 / 0.75))
    assert calibrated[3]["scores"] == pytest.approx({"a": 0.0, "b": 0.0})
    # unnormalised log-likelihoods (a constant per question) give the same result
    shifted = [{**r, "scores": {c: v - 3.0 * i for c, v in r["scores"].items()}} for i, r in enumerate(image)]
    for again, once in zip(batch_calibration(shifted), calibrated):
        assert again["scores"] == pytest.approx(once["scores"])
    assert [r["pred"] for r in batch_calibration(shifted)[:3]] == ["yes", "no", "no"]
