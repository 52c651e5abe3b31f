import math
import random
import warnings

import pytest

from medqwen.eval.captioning import (align_exact, caption_scores, cider_d, corpus_bleu,
                                     count_chunks, lcs_length, meteor,
                                     rouge_l, sentence_meteor, sentence_rouge_l, tokenize)

# coco-caption adds 1e-9 to every BLEU denominator, so a perfect match is 1 - O(1e-9).
EPS = 1e-8


def test_tokenize():
    assert tokenize("The heart-size is NORMAL.  No effusion!") == \
        ["the", "heart", "size", "is", "normal", "no", "effusion"]
    assert tokenize("") == [] and tokenize("__ ..") == []


# ----------------------------------------------------------------------- BLEU
def test_bleu_perfect_match():
    s = corpus_bleu(["The cat sat on the mat."], [["the cat sat on the mat"]])
    assert s == pytest.approx([1.0] * 4, abs=EPS)


def test_bleu_hand_computed_clipping():
    # hyp: the cat the cat (4 tokens); closest ref length 4 -> BP = 1.
    # unigrams: the x2 clipped to 1, cat x2 clipped to 1 -> p1 = 2/4
    # bigrams: "the cat" x2 clipped to 1, "cat the" 0 -> p2 = 1/3
    s = corpus_bleu(["the cat the cat"], [["the cat is here", "a cat"]])
    assert s[0] == pytest.approx(0.5, abs=EPS)
    assert s[1] == pytest.approx(math.sqrt(0.5 / 3), abs=EPS)
    assert s[2] < 1e-4 and s[3] < 1e-4  # no 3-gram match (coco smoothing -> ~0)


def test_bleu_brevity_penalty():
    # c = 2, r = 6, all precisions 1 -> BP = exp(1 - 6/2) = e^-2
    s = corpus_bleu(["the cat"], [["the cat sat on the mat"]])
    assert s[0] == pytest.approx(math.exp(-2), rel=1e-6)
    assert s[1] == pytest.approx(math.exp(-2), rel=1e-6)
    # longer hypothesis: no brevity penalty, precision drops instead (4/8)
    s = corpus_bleu(["the cat x y z w v u"], [["the cat sat on"]])
    assert s[0] == pytest.approx(2 / 8, abs=EPS)


def test_bleu_closest_reference_ties_to_shorter():
    # refs of length 3 and 5 are equally close to c = 4 -> r = 3, no BP.
    # (Picking 5 would give exp(1 - 5/4) = 0.7788.)
    s = corpus_bleu(["a b c d"], [["a b c", "a b c d e"]])
    assert s[0] == pytest.approx(1.0, abs=EPS)


def test_bleu_is_corpus_level_not_mean_of_sentences():
    # pooled p1 = (2 + 0) / (2 + 4) = 1/3; the sentence mean would be 1/2
    s = corpus_bleu(["a b", "c d e f"], [["a b"], ["w x y z"]])
    assert s[0] == pytest.approx(1 / 3, abs=EPS)


def test_bleu_bounds():
    rng = random.Random(1)
    vocab = "the lung is clear no effusion left right".split()
    for _ in range(20):
        preds = [" ".join(rng.choices(vocab, k=rng.randint(1, 9))) for _ in range(3)]
        refs = [[" ".join(rng.choices(vocab, k=rng.randint(1, 9)))] for _ in range(3)]
        s = corpus_bleu(preds, refs)
        assert all(0.0 <= x <= 1.0 for x in s)


def test_bleu_matches_nltk_corpus_bleu():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    preds = ["the heart size is normal and the lungs are clear",
             "there is a small left pleural effusion",
             "no acute cardiopulmonary process is seen"]
    refs = [["heart size is normal the lungs are clear", "the lungs are clear"],
            ["small left pleural effusion is present", "there is a left effusion"],
            ["no acute cardiopulmonary process", "there is no acute process seen"]]
    ours = corpus_bleu(preds, refs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, w in enumerate([(1.0,), (0.5, 0.5), (1 / 3,) * 3, (0.25,) * 4]):
            ref = nltk_bleu.corpus_bleu([[r.split() for r in rs] for rs in refs],
                                        [p.split() for p in preds], weights=w)
            assert ours[k] == pytest.approx(ref, abs=1e-7)


# -------------------------------------------------------------------- ROUGE-L
def test_lcs_length_and_symmetry():
    assert lcs_length("a b c d".split(), "a c b d e".split()) == 3
    assert lcs_length([], ["a"]) == 0
    a, b = "x a y b z c".split(), "a b c x y z".split()
    assert lcs_length(a, b) == lcs_length(b, a) == 3


def test_rouge_l_hand_computed():
    assert rouge_l(["the cat sat"], [["The cat sat."]]) == pytest.approx(1.0)
    # LCS("a b c d", "a c b d e") = 3: P = 3/4, R = 3/5, beta = 1.2
    # F = 2.44 * 0.75 * 0.6 / (0.6 + 1.44 * 0.75) = 1.098 / 1.68
    assert sentence_rouge_l("a b c d", ["a c b d e"]) == pytest.approx(1.098 / 1.68)
    assert sentence_rouge_l("x y", ["a b"]) == 0.0
    assert sentence_rouge_l("", ["a b"]) == 0.0


def test_rouge_l_max_precision_and_recall_taken_separately():
    # coco-caption: P = max(2/4, 4/4) = 1 and R = max(2/2, 4/8) = 1 -> F = 1
    assert sentence_rouge_l("a b c d", ["a b", "a b c d e f g h"]) == pytest.approx(1.0)


def test_rouge_l_beta_one_is_symmetric_and_corpus_is_mean():
    p, r = "a b c d e", "b x d e"
    assert sentence_rouge_l(p, [r], beta=1.0) == pytest.approx(sentence_rouge_l(r, [p], beta=1.0))
    preds, refs = ["a b c d", "x y"], [["a c b d e"], ["x y"]]
    assert rouge_l(preds, refs) == pytest.approx((1.098 / 1.68 + 1.0) / 2)


# --------------------------------------------------------------------- METEOR
def test_meteor_alignment_chunks():
    pairs = align_exact("the cat sat on the mat".split(), "on the mat sat the cat".split())
    assert len(pairs) == 6 and count_chunks(pairs) == 3  # [on the mat] [sat] [the cat]
    pairs = align_exact("a b a b".split(), "b a b".split())
    assert pairs == [(1, 0), (2, 1), (3, 2)] and count_chunks(pairs) == 1


def test_meteor_hand_computed():
    # m = 6, P = R = 1, chunks = 3: 1 - 0.5 * (3/6)^3 = 0.9375
    assert sentence_meteor("the cat sat on the mat", ["on the mat sat the cat"]) == \
        pytest.approx(0.9375)
    # m = 3, P = 1, R = 1/2: Fmean = 10PR/(R+9P) = 5/9.5; pen = 0.5 (1/3)^3
    assert sentence_meteor("the cat sat", ["the cat sat on the mat"]) == \
        pytest.approx(5 / 9.5 * (1 - 0.5 / 27))
    # identical 6-token strings: one chunk, still penalised: 1 - 0.5/6^3
    assert sentence_meteor("a b c d e f", ["a b c d e f"]) == pytest.approx(1 - 0.5 / 216)
    assert sentence_meteor("x y", ["a b"]) == 0.0 and sentence_meteor("", ["a"]) == 0.0


def test_meteor_best_reference_and_corpus_aggregation():
    assert sentence_meteor("a b", ["x", "a b"]) == pytest.approx(1 - 0.5 / 8)
    # segment stats: (m=2, chunks=1) and (m=2, chunks=2), all lengths 2.
    # corpus: P = R = 1, pen = 0.5 * (3/4)^3 -> 0.7890625 (segment mean = 0.71875)
    assert meteor(["a b", "c d"], [["a b"], ["d c"]]) == pytest.approx(1 - 0.5 * 0.75 ** 3)


# -------------------------------------------------------------------- CIDEr-D
def test_cider_d_hand_computed():
    # 2 segments -> IDF = log 2 for n-grams seen in one reference set.
    # seg1: identical unigram + bigram vectors -> cos 1 for n=1,2, 0 for n=3,4
    #       -> 10 * (1 + 1 + 0 + 0) / 4 = 5; seg2 has no overlap -> 0.
    score, per = cider_d(["a b", "c d"], [["a b"], ["e f"]], return_per_segment=True)
    assert per == pytest.approx([5.0, 0.0])
    assert score == pytest.approx(2.5)
    # 4-gram-long identical captions with disjoint vocabularies -> 10 each
    assert cider_d(["a b c d", "e f g h"], [["a b c d"], ["e f g h"]]) == pytest.approx(10.0)


def test_cider_d_clipping_and_length_penalty():
    # seg1 hyp "a a a" vs ref "a": unigram clipped min(3w, w) * w / (3w * w) = 1/3,
    # ref has no bigrams -> 0; delta = 2 - 0 bigrams -> exp(-4 / 72).
    # seg1 = 10 * (1/3) * exp(-1/18) / 4; seg2 = 0.
    expected = 10 / 3 * math.exp(-1 / 18) / 4 / 2
    assert cider_d(["a a a", "z"], [["a"], ["y"]]) == pytest.approx(expected)


def test_cider_d_zero_idf_cases():
    # single segment: log(1) - log(df) = 0 for every reference n-gram
    assert cider_d(["a b c"], [["a b c"]]) == 0.0
    # n-grams present in every reference set carry no weight
    assert cider_d(["the", "the"], [["the"], ["the"]]) == 0.0


# ----------------------------------------------------------------- evaluator
def test_caption_scores_keys_and_bounds():
    preds = ["no acute findings", "small left effusion", ""]
    refs = [["no acute cardiopulmonary findings"], ["left pleural effusion", "small effusion"],
            "heart is normal"]  # a bare string counts as one reference
    s = caption_scores(preds, refs)
    assert list(s) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor", "cider_d"]
    for k in ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor"]:
        assert 0.0 <= s[k] <= 1.0
    assert s["cider_d"] >= 0.0
    with pytest.raises(ValueError):
        caption_scores(["a"], [])
    with pytest.raises(ValueError):
        caption_scores(["a"], [[]])


def test_matches_pycocoevalcap_on_random_corpora():
    """Exact agreement with the reference Python scorers of coco-caption."""
    Bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu
    Rouge = pytest.importorskip("pycocoevalcap.rouge.rouge").Rouge
    Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
    rng = random.Random(0)
    vocab = "the a lung heart is clear no effusion normal size left right".split()
    for _ in range(25):
        n = rng.randint(2, 5)
        preds = [" ".join(rng.choices(vocab, k=rng.randint(1, 10))) for _ in range(n)]
        refs = [[" ".join(rng.choices(vocab, k=rng.randint(1, 10)))
                 for _ in range(rng.randint(1, 3))] for _ in range(n)]
        gts, res = dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)}
        assert corpus_bleu(preds, refs) == pytest.approx(
            Bleu(4).compute_score(gts, res, verbose=0)[0], abs=1e-12)
        assert rouge_l(preds, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
        assert cider_d(preds, refs) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)
