"""How sure a verdict is: paired differences between settings over seeds, with a 95% interval.

Every setting of a table is compared with the baseline (and the paper's best with ours) by the mean
difference of their accuracies and a 95% interval for it, chosen by what was measured:

- ``paired t``: both settings ran with the same seeds (>= 2 in common): seed ``s`` of each shares
  initialisation, data order and mask noise, so the per-seed differences carry the noise of the
  switch alone; interval = mean +- t(0.975, n-1) * sd / sqrt(n). Differences without spread (sd 0,
  e.g. two seeds that happen to differ by the same number of images) estimate no noise: the interval
  falls back to the validation images over those seeds' means (said in the method), else unresolved;
  only identical numbers on 3 or more paired seeds (the same run twice) are called equal without one.
  The difference is always the mean over the seeds the interval used.
- ``vs seed std``: one side has a single seed and the other several (results made before paired
  seeds): the difference from the other side's mean, with that side's seed spread standing in for
  both: +- t(0.975, n-1) * sd * sqrt(1 + 1/n).
- ``1 seed each``: the baseline's seed spread stands in for both sides: +- t(0.975, n-1) * sd * sqrt(2);
- ``images``: one seed on each side and no seed spread known: a normal interval over the validation images (binomial standard
  errors of both accuracies); it leaves out seed noise, so it is narrower than the truth.

The call: ``better`` / ``worse`` (the interval excludes 0), ``equal within +-X`` (the interval lies inside
+-X points; X = :data:`EQUIVALENCE_MARGIN`), else ``unresolved``; ``seeds_needed`` is the number of paired
seeds that would resolve a 2-point difference (80% power, two-sided 5%, t quantiles) at the observed spread.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

EQUIVALENCE_MARGIN = 2.0  # points of top-1: "equal within +-2" (one image of 360 is 0.28 points)
RESOLVE_POINTS = 2.0  # the difference seeds_needed is sized for
_Z_POWER = 1.959964 + 0.841621  # two-sided 5% + 80% power


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student's t quantile (scipy)."""
    from scipy.stats import t
    return float(t.ppf(q, df))


def parse_seed_values(text: Any) -> dict[int, float]:
    """``"0:81.2;1:83.0"`` -> {0: 81.2, 1: 83.0}; empty / NaN -> {}."""
    if not isinstance(text, str) or not text.strip():
        return {}
    out = {}
    for item in text.split(";"):
        if ":" in item:
            s, v = item.split(":", 1)
            out[int(float(s))] = float(v)
    return out


@dataclass
class Comparison:
    """``a - b`` with its 95% interval, the method that gave it, and the call."""

    delta: float
    lo: float
    hi: float
    n: int
    method: str
    call: str
    seeds_needed: int | None
    sd: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        if math.isnan(self.delta):
            return "-"
        ci = f"[{self.lo:+.1f}, {self.hi:+.1f}]" if math.isfinite(self.lo) else "[-]"
        return f"{self.delta:+.1f} {ci} {self.call}"


def call_of(lo: float, hi: float, margin: float = EQUIVALENCE_MARGIN) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "unresolved"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    if lo > -margin and hi < margin:
        return f"equal within +-{margin:g}"
    return "unresolved"


def seeds_needed(sd_diff: float, points: float = RESOLVE_POINTS, limit: int = 1000) -> int | None:
    """Paired seeds that detect a ``points`` difference with 80% power at the two-sided 5% level: the
    smallest n >= 2 with (t(0.975, n-1) + t(0.8, n-1)) * sd / sqrt(n) <= points (t quantiles, not the
    normal ones, so that a count said to resolve never falls below what the paired t interval needs);
    None when the spread is unknown or more than ``limit`` seeds would be needed."""
    if not math.isfinite(sd_diff):
        return None
    if sd_diff <= 0:
        return 2
    lo = max(2, math.ceil((_Z_POWER * sd_diff / points) ** 2))  # the normal approximation never overshoots
    for n in range(lo, limit + 1):
        if (t_quantile(n - 1) + t_quantile(n - 1, 0.8)) * sd_diff / math.sqrt(n) <= points:
            return n
    return None


#: validation images below which identical per-seed accuracies may be chance (steps of 100 / n_val points)
IDENTICAL_MIN_VAL = 100


def compare(a: dict[int, float], b: dict[int, float], *, a_std: float = float("nan"), b_std: float = float("nan"),
            a_n: int = 1, b_n: int = 1, n_val: float = float("nan"), noise: tuple[float, int] | None = None,
            margin: float = EQUIVALENCE_MARGIN) -> Comparison:
    """``a - b`` for two settings given their per-seed values (see the module doc for the methods);
    ``a_std`` / ``b_std`` stand in for a side's seed spread when its per-seed values are not known
    beyond one mean (results made before paired seeds)."""
    nan = float("nan")
    if not a or not b:
        return Comparison(nan, nan, nan, 0, "-", "unresolved", None)
    common = sorted(set(a) & set(b))
    mean_a, mean_b = sum(a.values()) / len(a), sum(b.values()) / len(b)
    if len(common) >= 2:
        d = [a[s] - b[s] for s in common]
        n = len(d)
        m = sum(d) / n
        sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
        if sd > 1e-9:
            hw = t_quantile(n - 1) * sd / math.sqrt(n)
            return Comparison(m, m - hw, m + hw, n, f"paired t over {n} seeds", call_of(m - hw, m + hw, margin),
                              seeds_needed(sd), sd)
        if n >= 3 and all(abs(x) < 1e-9 for x in d) and n_val >= IDENTICAL_MIN_VAL:
            # the same numbers on every seed: the same run (Fig. 5's 0.7 and 0.75 keep the same patches on a
            # 16-patch grid); two seeds, or a coarse accuracy (a few validation images: steps of 100 / n_val
            # points), are too few to tell that from chance
            return Comparison(0.0, 0.0, 0.0, n, f"identical on {n} paired seeds (the same run)",
                              f"equal within +-{margin:g}", None, 0.0)
        # no spread between the pairs: no estimate of the seed noise (a zero-width interval would call
        # "equal" or a difference on nothing); the validation images over these seeds' means, else unresolved
        pa, pb = sum(a[s] for s in common) / n / 100.0, sum(b[s] for s in common) / n / 100.0
        if math.isfinite(n_val) and n_val > 0:
            se = 100.0 * math.sqrt(max(pa * (1 - pa), 0) / n_val + max(pb * (1 - pb), 0) / n_val)  # the same images
            hw = 1.959964 * se
            return Comparison(m, m - hw, m + hw, n, f"{n} paired seeds without spread: {int(n_val)} validation "
                              "images only (binomial)", call_of(m - hw, m + hw, margin), None, 0.0)
        return Comparison(m, nan, nan, n, f"{n} paired seeds without spread, no interval", "unresolved", None, 0.0)
    delta = mean_a - mean_b
    multi = [(vals, std, max(len(vals), n)) for vals, std, n in ((a, a_std, a_n), (b, b_std, b_n))
             if len(vals) >= 2 or (math.isfinite(std) and n >= 2)]
    if multi and (len(a) == 1 or len(b) == 1):
        vals, std, k = max(multi, key=lambda p: p[2])
        sd = std if math.isfinite(std) else _sd(list(vals.values()))
        if math.isfinite(sd) and sd > 1e-9 and k >= 2:  # a spread of 0 estimates no noise
            hw = t_quantile(k - 1) * sd * math.sqrt(1 + 1 / k)
            return Comparison(delta, delta - hw, delta + hw, 1, f"1 seed vs {k} seeds (their seed std)",
                              call_of(delta - hw, delta + hw, margin), seeds_needed(math.sqrt(2) * sd), sd)
    va = _sd(list(a.values())) ** 2 if len(a) >= 2 else nan
    vb = _sd(list(b.values())) ** 2 if len(b) >= 2 else nan
    if len(a) >= 2 and len(b) >= 2 and va + vb > 1e-12:  # several seeds each, not paired: Welch
        se = math.sqrt(va / len(a) + vb / len(b))
        dof = (va / len(a) + vb / len(b)) ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1)) \
            if se > 0 else 1
        hw = t_quantile(max(1, int(dof))) * se
        return Comparison(delta, delta - hw, delta + hw, min(len(a), len(b)), "Welch t (unpaired seeds)",
                          call_of(delta - hw, delta + hw, margin), seeds_needed(math.sqrt(va + vb)), math.sqrt(va + vb))
    # 1 seed each: the table's seed spread (a spread of 0 estimates no noise)
    if noise is not None and math.isfinite(noise[0]) and noise[0] > 1e-9 and noise[1] >= 2:
        sd, k = noise
        hw = t_quantile(k - 1) * sd * math.sqrt(2)
        return Comparison(delta, delta - hw, delta + hw, 1, f"1 seed each (the baseline's std over {k} seeds)",
                          call_of(delta - hw, delta + hw, margin), seeds_needed(math.sqrt(2) * sd), sd)
    if math.isfinite(n_val) and n_val > 0:
        pa, pb = mean_a / 100.0, mean_b / 100.0
        se = 100.0 * math.sqrt(max(pa * (1 - pa), 0) / n_val + max(pb * (1 - pb), 0) / n_val)
        hw = 1.959964 * se
        return Comparison(delta, delta - hw, delta + hw, 1, f"1 seed: {int(n_val)} validation images only (binomial)",
                          call_of(delta - hw, delta + hw, margin), None)
    return Comparison(delta, nan, nan, 1, "1 seed, no interval", "unresolved", None)


def _sd(xs: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def at_chance(best: float, chance: float, n_val: float) -> bool:
    """True when the best accuracy is within two binomial standard errors of the chance level."""
    if not (math.isfinite(best) and math.isfinite(chance)):
        return False
    n = n_val if math.isfinite(n_val) and n_val > 0 else 1.0
    p = chance / 100.0
    return best <= chance + 2 * 100.0 * math.sqrt(p * (1 - p) / n)
