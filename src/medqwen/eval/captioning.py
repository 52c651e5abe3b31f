"""Caption / report-generation metrics: BLEU-1..4, ROUGE-L, METEOR, CIDEr-D.

Pure Python + numpy re-implementations of the coco-caption toolkit
(``pycocoevalcap``; Chen et al., 2015, "Microsoft COCO Captions: Data
Collection and Evaluation Server"), which is what radiology report-generation
papers (R2Gen, MIMIC-CXR, IU X-Ray) report.  No Java, no network.

Inputs are ``predictions: list[str]`` and ``references: list[list[str]]``
(one list of reference strings per prediction; a bare string is accepted as a
single reference).  Differences from coco-caption:

* Tokenisation is :func:`tokenize` (lowercase, split on non-alphanumerics)
  instead of the Java PTBTokenizer + punctuation removal.  They agree on plain
  text; they differ on contractions (PTB: ``do n't``; here ``don t``) and on
  decimals (here ``3.5`` -> ``3 5``).
* METEOR uses exact unigram matching only (no stem / synonym / paraphrase
  modules, no function-word weighting) with the original Banerjee & Lavie
  (2005) parameters, so values differ from Meteor 1.5 (``-l en -norm``).
* Empty predictions score 0 instead of raising.
BLEU, ROUGE-L and CIDEr-D otherwise follow the coco-caption code exactly.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np

_TOKEN_RE = re.compile(r"[^\W_]+")
_TINY, _SMALL = 1e-15, 1e-9  # coco-caption BLEU smoothing constants


def tokenize(text: str) -> list[str]:
    """Lowercases and splits on non-alphanumerics (PTB-like punctuation removal)."""
    return _TOKEN_RE.findall(str(text).lower())


def _prep(predictions: Sequence[str], references: Sequence[Sequence[str] | str]):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} reference sets")
    hyps = [tokenize(p) for p in predictions]
    refs = []
    for r in references:
        r = [r] if isinstance(r, str) else list(r)
        if not r:
            raise ValueError("every prediction needs at least one reference")
        refs.append([tokenize(x) for x in r])
    return hyps, refs


def _ngrams(words: Sequence[str], n: int) -> Counter:
    """Counts of all k-grams, 1 <= k <= n (coco-caption ``precook``)."""
    c: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i:i + k])] += 1
    return c


# ----------------------------------------------------------------------- BLEU
def corpus_bleu(predictions, references, max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..``max_n`` (Papineni et al., 2002), coco-caption ``Bleu``.

    Clipped n-gram precisions p_k are pooled over the corpus; BLEU-n =
    BP * (prod_{k<=n} p_k)^(1/n) with BP = exp(1 - r/c) if c < r else 1, where
    c is the total hypothesis length and r sums, per segment, the reference
    length *closest* to the hypothesis length (ties -> shorter).  As in
    coco-caption each p_k is (correct + 1e-15) / (guess + 1e-9), so a zero
    count gives a tiny positive value instead of exactly 0.
    """
    hyps, refs = _prep(predictions, references)
    correct, guess = [0] * max_n, [0] * max_n
    testlen = reflen = 0
    for h, rs in zip(hyps, refs):
        maxref: Counter = Counter()
        for r in rs:
            for g, c in _ngrams(r, max_n).items():
                maxref[g] = max(maxref[g], c)
        for g, c in _ngrams(h, max_n).items():
            correct[len(g) - 1] += min(c, maxref[g])
        for k in range(max_n):
            guess[k] += max(0, len(h) - k)
        testlen += len(h)
        reflen += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    bp = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, prod = [], 1.0
    for k in range(max_n):
        prod *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(bp * prod ** (1.0 / (k + 1)))
    return scores


# -------------------------------------------------------------------- ROUGE-L
def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) DP)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l_tokens(hyp: list[str], refs: list[list[str]], beta: float) -> float:
    if not hyp:
        return 0.0
    lcs = [lcs_length(hyp, r) for r in refs]
    p = max(n / len(hyp) for n in lcs)
    r = max(n / len(ref) if ref else 0.0 for n, ref in zip(lcs, refs))
    if p == 0 or r == 0:
        return 0.0
    return (1 + beta ** 2) * p * r / (r + beta ** 2 * p)


def sentence_rouge_l(prediction: str, references, beta: float = 1.2) -> float:
    """ROUGE-L F-measure (Lin, 2004) of one prediction, coco-caption ``Rouge``.

    P = max_i LCS(c, r_i)/|c|, R = max_i LCS(c, r_i)/|r_i| (maxima taken
    separately over references), F = (1 + b^2) P R / (R + b^2 P), b = 1.2.
    """
    hyps, refs = _prep([prediction], [references])
    return _rouge_l_tokens(hyps[0], refs[0], beta)


def rouge_l(predictions, references, beta: float = 1.2) -> float:
    """Corpus ROUGE-L: mean of :func:`sentence_rouge_l` (coco-caption)."""
    hyps, refs = _prep(predictions, references)
    return float(np.mean([_rouge_l_tokens(h, r, beta) for h, r in zip(hyps, refs)]))


# --------------------------------------------------------------------- METEOR
def align_exact(hyp: Sequence[str], ref: Sequence[str]) -> list[tuple[int, int]]:
    """Exact-match unigram alignment with few chunks (greedy string tiling).

    Repeatedly aligns the longest run of identical, still-unaligned tokens
    (ties: earliest hypothesis, then reference position).  Every word type gets
    min(count_hyp, count_ref) matches (maximal), and long runs keep the number
    of chunks low; METEOR's exact minimum-crossing search is approximated.
    """
    where: dict[str, list[int]] = defaultdict(list)
    for j, w in enumerate(ref):
        where[w].append(j)
    cand = [(i, j) for i, w in enumerate(hyp) for j in where.get(w, ())]
    hu, ru = [False] * len(hyp), [False] * len(ref)
    pairs: list[tuple[int, int]] = []
    while True:
        run: dict[tuple[int, int], int] = {}
        best = (0, 0, 0)  # (-length, i, j): min picks longest, then earliest
        for i, j in reversed(cand):  # run length of free matches starting at (i, j)
            if not hu[i] and not ru[j]:
                k = run[(i, j)] = run.get((i + 1, j + 1), 0) + 1
                best = min(best, (-k, i, j))
        k, i, j = -best[0], best[1], best[2]
        if k == 0:
            return sorted(pairs)
        for d in range(k):
            hu[i + d] = ru[j + d] = True
            pairs.append((i + d, j + d))


def count_chunks(pairs: Sequence[tuple[int, int]]) -> int:
    """Number of runs of alignments adjacent and in order in both strings."""
    pairs = sorted(pairs)
    return sum(1 for n, (i, j) in enumerate(pairs)
               if n == 0 or (i, j) != (pairs[n - 1][0] + 1, pairs[n - 1][1] + 1))


def _meteor_from_stats(hyp_len, ref_len, matches, chunks, alpha, beta, gamma) -> float:
    if matches == 0:
        return 0.0
    p, r = matches / hyp_len, matches / ref_len
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    return fmean * (1 - gamma * (chunks / matches) ** beta)


def _meteor_best(hyp, refs, alpha, beta, gamma):
    best = None
    for ref in refs:
        pairs = align_exact(hyp, ref)
        stats = (len(hyp), len(ref), len(pairs), count_chunks(pairs))
        s = _meteor_from_stats(*stats, alpha, beta, gamma)
        if best is None or s > best[0]:
            best = (s, stats)
    return best


def sentence_meteor(prediction: str, references, alpha: float = 0.9,
                    beta: float = 3.0, gamma: float = 0.5) -> float:
    """METEOR (Banerjee & Lavie, 2005), exact-match module only.

    P = m/|c|, R = m/|r|, Fmean = P R / (alpha P + (1 - alpha) R)
    (= 10PR/(R + 9P) for alpha=0.9), Pen = gamma (chunks/m)^beta,
    score = Fmean (1 - Pen); best over references.  Without the stem/synonym
    modules the values are lower than the Java Meteor 1.5 used by coco-caption.
    """
    hyps, refs = _prep([prediction], [references])
    return _meteor_best(hyps[0], refs[0], alpha, beta, gamma)[0]


def meteor(predictions, references, alpha: float = 0.9, beta: float = 3.0,
           gamma: float = 0.5) -> float:
    """Corpus METEOR: statistics of each segment's best reference are summed
    (lengths, matches, chunks) and scored once, like the Java scorer's
    aggregate line that coco-caption reports.  See :func:`sentence_meteor`."""
    hyps, refs = _prep(predictions, references)
    tot = [0, 0, 0, 0]
    for h, rs in zip(hyps, refs):
        for n, v in enumerate(_meteor_best(h, rs, alpha, beta, gamma)[1]):
            tot[n] += v
    return _meteor_from_stats(*tot, alpha, beta, gamma)


# -------------------------------------------------------------------- CIDEr-D
def cider_d(predictions, references, n: int = 4, sigma: float = 6.0,
            return_per_segment: bool = False):
    """CIDEr-D (Vedantam et al., 2015), as coco-caption's ``Cider`` scorer.

    TF-IDF vectors g_k over k-grams (k = 1..4) with
    IDF(w) = log(#segments) - log(max(1, df(w))), df counted over the
    *reference* sets of the evaluated corpus.  For each reference,
    sim_k = sum_w min(g_k^c(w), g_k^r(w)) g_k^r(w) / (|g_k^c| |g_k^r|)
    (clipping) times exp(-delta^2 / (2 sigma^2)), where delta is the
    difference in bigram counts, i.e. token lengths (coco-caption quirk);
    the segment score is 10 * mean_k mean_refs sim_k and CIDEr-D is the mean
    over segments.  With a single segment every IDF is 0, hence score 0.
    """
    hyps, refs = _prep(predictions, references)
    ref_counts = [[_ngrams(r, n) for r in rs] for rs in refs]
    df: Counter = Counter()
    for rcs in ref_counts:
        df.update({g for rc in rcs for g in rc})
    log_n = math.log(float(len(refs)))

    def vec(counts):
        v = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        for g, tf in counts.items():
            w = tf * (log_n - math.log(max(1.0, df[g])))
            v[len(g) - 1][g] = w
            norm[len(g) - 1] += w * w
        return v, [math.sqrt(x) for x in norm], sum(c for g, c in counts.items() if len(g) == 2)

    scores = []
    for h, rcs in zip(hyps, ref_counts):
        vh, nh, lh = vec(_ngrams(h, n))
        acc = np.zeros(n)
        for rc in rcs:
            vr, nr, lr = vec(rc)
            pen = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = sum(min(w, vr[k][g]) * vr[k][g] for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                acc[k] += val * pen
        scores.append(10.0 * float(np.mean(acc)) / len(rcs))
    mean = float(np.mean(scores))
    return (mean, scores) if return_per_segment else mean


def caption_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """All caption metrics: ``bleu_1..bleu_4``, ``rouge_l``, ``meteor``, ``cider_d``."""
    out = {f"bleu_{k + 1}": s for k, s in enumerate(corpus_bleu(predictions, references))}
    out["rouge_l"] = rouge_l(predictions, references)
    out["meteor"] = meteor(predictions, references)
    out["cider_d"] = cider_d(predictions, references)
    return out
