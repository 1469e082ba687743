"""Per-patient durability and the suggested maintenance interval.

Model (a shared-frailty Weibull, the standard model for repeated cycles of one
patient; empirical Bayes shrinkage, docs/clinical-rules.md):

    S(t | patient i) = exp(-z_i * (t / scale) ** shape),   z_i ~ Gamma(a, rate a)

z_i is the patient's own "speed of loss" (1 = the cohort's). The cohort part
(shape, scale, a) is fitted by maximum likelihood over all cycles of all
patients at once; each patient's z then has the posterior Gamma(a + d_i,
a + H_i), where d_i is the number of losses and H_i = sum over cycles of
(t_j / scale) ** shape, t_j being the time response is known to have held
(censored cycles) or the middle of the interval in which it was lost (events).
A patient with no cycles gets the cohort's answer; each loss and each day
held moves the answer toward the patient's own history, weight
H_i / (a + H_i).

The suggested interval is the time at which the patient's predictive
probability of still being in response falls to `target` (0.8 by default):
scale * H0 ** (1 / shape) with H0 = (a + H_i) * (target ** (-1 / (a + d_i)) - 1).
The range is the same time at the 10th and 90th percentiles of z_i (an 80%
credible range for the patient's own durability).

Everything is vectorised: 100,000 patients take a few seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

MIN_SUGGESTION_DAYS = 7.0  # no maintenance schedule tighter than weekly is suggested
MAX_SUGGESTION_DAYS = 182.0
PERSONAL_WEIGHT = 0.6  # basis "personal" from this share of personal information, "cohort" below 0.25
COHORT_WEIGHT = 0.25


@dataclass
class FrailtyWeibull:
    """Cohort fit of the shared-frailty Weibull (conditional shape/scale, frailty shape a)."""
    shape: float
    scale: float
    frailty_a: float
    n_patients: int
    n_cycles: int
    n_events: int
    converged: bool

    def cumulative_hazard(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        return (np.maximum(t, 0.0) / self.scale) ** self.shape

    def cohort_survival(self, t) -> np.ndarray:
        """Marginal (cohort) survival: z integrated out."""
        return (self.frailty_a / (self.frailty_a + self.cumulative_hazard(t))) ** self.frailty_a

    def time_for_hazard(self, h0) -> np.ndarray:
        return self.scale * np.asarray(h0, dtype=float) ** (1.0 / self.shape)


def cycle_exposure(cycles: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(time known/assumed, event) per cycle: the interval midpoint for losses,
    the last day response was seen for censored cycles."""
    left = cycles["left_days"].to_numpy(dtype=float)
    right = cycles["right_days"].to_numpy(dtype=float)
    event = np.isfinite(right)
    t = np.where(event, (left + np.where(event, right, 0.0)) / 2.0, left)
    return t, event


def _neg_loglik(theta, t, event, code, n_pat, d_i):
    log_shape, log_scale, log_a = theta
    k, lam, a = math.exp(log_shape), math.exp(log_scale), math.exp(log_a)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        H = (t / lam) ** k
        H_i = np.bincount(code, weights=H, minlength=n_pat)
        log_h = np.where(event, math.log(k) - k * math.log(lam) + (k - 1) * np.log(np.where(event, t, 1.0)), 0.0)
    ll = log_h.sum()
    ll += np.sum(special.gammaln(a + d_i) - special.gammaln(a) + a * math.log(a) - (a + d_i) * np.log(a + H_i))
    return -ll


def fit_frailty(cycles: pd.DataFrame, *, max_cycles: int = 400_000, seed: int = 0) -> FrailtyWeibull:
    """Maximum likelihood fit; very large cohorts are fitted on a random subset of patients."""
    t, event = cycle_exposure(cycles)
    informative = (t > 0) | event
    c = cycles.loc[informative]
    t, event = t[informative], event[informative]
    if event.sum() < 3:
        raise ValueError("too few losses of response to estimate durability (need at least 3)")
    codes, uniques = pd.factorize(c["patient_id"])
    if len(c) > max_cycles:
        rng = np.random.default_rng(seed)
        keep_pat = rng.random(len(uniques)) < max_cycles / len(c)
        keep = keep_pat[codes]
        t, event, codes = t[keep], event[keep], pd.factorize(codes[keep])[0]
    n_pat = int(codes.max()) + 1
    t = np.where(event, np.maximum(t, 0.5), t)  # an event at day 0 is impossible; half a day at least
    d_i = np.bincount(codes, weights=event.astype(float), minlength=n_pat)
    med = float(np.median(t[event]))
    x0 = np.array([0.3, math.log(max(med, 1.0) * 1.5), 0.0])
    res = optimize.minimize(_neg_loglik, x0, args=(t, event, codes, n_pat, d_i), method="Nelder-Mead",
                            options={"xatol": 1e-4, "fatol": 1e-3, "maxiter": 2000})
    log_shape, log_scale, log_a = np.clip(res.x, [-3, -3, -5], [3, 8, 8])
    return FrailtyWeibull(shape=math.exp(log_shape), scale=math.exp(log_scale), frailty_a=math.exp(log_a),
                          n_patients=n_pat, n_cycles=int(len(t)), n_events=int(event.sum()),
                          converged=bool(res.success))


def patient_posteriors(fit: FrailtyWeibull, cycles: pd.DataFrame) -> pd.DataFrame:
    """Per patient: n_cycles, n_events, H (exposure), posterior shape/rate of z, weight_personal."""
    t, event = cycle_exposure(cycles)
    t = np.where(event, np.maximum(t, 0.5), t)
    codes, uniques = pd.factorize(cycles["patient_id"])
    n = len(uniques)
    H = np.bincount(codes, weights=fit.cumulative_hazard(t), minlength=n)
    d = np.bincount(codes, weights=event.astype(float), minlength=n)
    n_cycles = np.bincount(codes, minlength=n)
    a = fit.frailty_a
    return pd.DataFrame({"patient_id": np.asarray(uniques, dtype=object), "n_cycles": n_cycles, "n_events": d.astype(int),
                         "exposure": H, "post_shape": a + d, "post_rate": a + H, "weight_personal": H / (a + H)})


def suggest_days(fit: FrailtyWeibull, post_shape, post_rate, target: float = 0.8,
                 range_level: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) days until P(still in response) falls to `target`."""
    if not 0 < target < 1:
        raise ValueError("target must be a probability between 0 and 1 (e.g. 0.8)")
    post_shape = np.asarray(post_shape, dtype=float)
    post_rate = np.asarray(post_rate, dtype=float)
    h0 = post_rate * (target ** (-1.0 / post_shape) - 1.0)
    point = fit.time_for_hazard(h0)
    tail = (1 - range_level) / 2
    z_hi = stats.gamma.ppf(1 - tail, post_shape, scale=1.0 / post_rate)
    z_lo = stats.gamma.ppf(tail, post_shape, scale=1.0 / post_rate)
    low = fit.time_for_hazard(-math.log(target) / z_hi)
    high = fit.time_for_hazard(-math.log(target) / np.maximum(z_lo, 1e-12))
    clip = lambda x: np.clip(x, MIN_SUGGESTION_DAYS, MAX_SUGGESTION_DAYS)
    return clip(point), clip(low), clip(high)


def taper_signals(cycles: pd.DataFrame, suggested: pd.Series) -> pd.DataFrame:
    """Per patient: taper ("none", "stretch", "consider_pause") and the reason.

    consider_pause: the last three cycles all lasted to the next infusion
    without a loss, and the patient was in remission before each of those
    infusions: response holds through the schedule, so maintenance may not be
    needed at this frequency, or at all (SUSTAIN-2 stepped down to the least
    frequent schedule that kept the response; Andrade 2017: individualise).
    stretch: the last two cycles held to the next infusion and the suggested
    interval is at least 20% longer than the recent one, or the patient's
    losses come later and later (three or more, each later than the last).
    """
    c = cycles.sort_values(["patient_id", "cycle_no"])
    pid = c["patient_id"]
    out = pd.DataFrame(index=pd.Index(pid.unique(), name="patient_id"))
    out["taper"] = "none"
    out["taper_reason"] = ""
    held = c["censor_reason"] == "next_infusion"
    last2 = c.groupby("patient_id", sort=False).tail(2)
    held2 = (last2["censor_reason"] == "next_infusion").groupby(last2["patient_id"], sort=False).agg(["all", "size"])
    held2 = held2["all"] & (held2["size"] == 2)
    recent = last2["interval_days"].where(np.isfinite(last2["interval_days"]))
    recent_interval = recent.groupby(last2["patient_id"], sort=False).median()
    sug = suggested.reindex(out.index)
    by_interval = held2.reindex(out.index, fill_value=False) & (sug >= 1.2 * recent_interval.reindex(out.index)).fillna(False)
    ev = c[c["event"].to_numpy(dtype=bool)]
    mid = (ev["left_days"] + ev["right_days"]) / 2
    step = mid.groupby(ev["patient_id"], sort=False).diff()
    rising = (step > 0).groupby(ev["patient_id"], sort=False).sum()
    n_ev = mid.groupby(ev["patient_id"], sort=False).size()
    by_trend = ((n_ev >= 3) & (rising == n_ev - 1)).reindex(out.index, fill_value=False)
    out.loc[by_interval.to_numpy(dtype=bool), ["taper", "taper_reason"]] = [
        "stretch", "held response up to each of the last two infusions; the suggested interval is longer than the current one"]
    out.loc[by_trend.to_numpy(dtype=bool), ["taper", "taper_reason"]] = [
        "stretch", "each loss of response came later than the one before"]
    if "pre_dose_remission" in c.columns:
        last3 = c.groupby("patient_id", sort=False).tail(3)
        ok = held.loc[last3.index] & last3["pre_dose_remission"].fillna(False).astype(bool)
        agg = ok.groupby(last3["patient_id"], sort=False).agg(["all", "size"])
        pause = (agg["all"] & (agg["size"] == 3)).reindex(out.index, fill_value=False)
        out.loc[pause.to_numpy(dtype=bool), ["taper", "taper_reason"]] = [
            "consider_pause", "in remission before each of the last three infusions, with no loss of response between them"]
    return out.reset_index()


# --- score trajectories ----------------------------------------------------------------

# The climb back is not a straight line: the ketamine effect holds for a while,
# then fades faster. Scores are regressed on days ** TIME_POWER. On the
# simulator (benefit fading like exp(-rate * t^2)) a straight line (1.0)
# overestimated the cohort median by 31% and 2.0 underestimated it by 11%;
# 1.5 came within 3%, with the same ranking of patients (docs/durability.md).
# A clinic should check it against its own data.
TIME_POWER = 1.5


def trajectory_estimates(code: np.ndarray, days: np.ndarray, relative: np.ndarray, n_patients: int,
                         threshold: float = 0.5, min_scores: int = 3,
                         time_power: float = TIME_POWER) -> tuple[np.ndarray, np.ndarray]:
    """How fast each patient's scores climb back after an infusion.

    Per patient, a least-squares line of score/baseline on (days since the
    infusion) ** time_power, pooled over the patient's cycles. Its "speed" is
    1 / the day the curve reaches `threshold` (0.5 = no longer 50% below
    baseline): the inverse of the patient's typical durability. Speed, unlike days, stays well defined for a
    patient whose scores barely rise (speed near 0: long durability), which is
    exactly the patient a fixed schedule over-treats. It uses every score, not
    only the first one out of response, so a single noisy score moves it
    little, and cycles re-dosed while still in response inform it too.

    Returns per patient code (speed per day, its sampling variance), NaN with
    fewer than `min_scores` scores. The variance is the delta-method one, with
    the residual variance pooled over patients (measurement noise belongs to
    the scale more than to the patient).
    """
    days = np.asarray(days, dtype=float) ** time_power
    n = np.bincount(code, minlength=n_patients).astype(float)
    St = np.bincount(code, days, minlength=n_patients)
    Sy = np.bincount(code, relative, minlength=n_patients)
    Stt = np.bincount(code, days * days, minlength=n_patients)
    Sty = np.bincount(code, days * relative, minlength=n_patients)
    Syy = np.bincount(code, relative * relative, minlength=n_patients)
    with np.errstate(divide="ignore", invalid="ignore"):
        tbar, ybar = St / n, Sy / n
        sxx = Stt - n * tbar ** 2
        sxy = Sty - n * tbar * ybar
        syy = Syy - n * ybar ** 2
        beta = sxy / sxx
        alpha = ybar - beta * tbar
        rss = np.maximum(syy - beta * sxy, 0.0)
        ok = (n >= min_scores) & (sxx > 1e-9)
        sigma2 = float(np.nanmedian((rss / (n - 2))[ok & (n > 2)])) if (ok & (n > 2)).any() else np.nan
        gap = np.maximum(threshold - alpha, 0.05 * threshold)
        speed = beta / gap
        var_b = sigma2 / sxx
        var_a = sigma2 * (1.0 / n + tbar ** 2 / sxx)
        cov_ab = -tbar * sigma2 / sxx
        var_speed = var_b / gap ** 2 + beta ** 2 * var_a / gap ** 4 + 2 * beta * cov_ab / gap ** 3
        # back from "per day ** time_power" to per day (delta method; floored at a year)
        floor = (1.0 / 365.0) ** time_power
        x = np.maximum(speed, floor)
        var_speed = var_speed * ((1.0 / time_power) * x ** (1.0 / time_power - 1.0)) ** 2
        speed = np.where(speed > 0, np.maximum(speed, 0.0) ** (1.0 / time_power), 0.0)
    return np.where(ok, speed, np.nan), np.where(ok, np.maximum(var_speed, 1e-12), np.nan)


def course_trajectories(course, response_fall: float = 0.5) -> pd.DataFrame:
    """trajectory_estimates for every patient in a course.Course (cycle-starting segments only)."""
    inf, sc = course.infusions, course.scores
    seg_row = sc["segment_row"].to_numpy()
    in_cycle = inf["starts_cycle"].to_numpy()[seg_row]
    days = ((sc["at"].to_numpy() - inf["at"].to_numpy()[seg_row]) / np.timedelta64(1, "D")).astype(float)[in_cycle]
    relative = (sc["total"].to_numpy() / sc["baseline_score"].to_numpy())[in_cycle]
    pid = sc["patient_id"].astype(str).to_numpy()[in_cycle]
    code, uniques = pd.factorize(pid)
    speed, var = trajectory_estimates(code, days, relative, len(uniques), 1.0 - response_fall)
    return pd.DataFrame({"patient_id": np.asarray(uniques, dtype=object), "trajectory_speed": speed,
                         "trajectory_var": var})


def with_trajectories(cycles: pd.DataFrame, course, response_fall: float = 0.5) -> pd.DataFrame:
    """The cycle table with each patient's score trend (trajectory_speed, trajectory_var) joined on,
    which `suggest_intervals` reads by default. Joined here, by the caller of course.py: the course
    defines cycles and knows nothing of suggestions."""
    return cycles.merge(course_trajectories(course, response_fall), on="patient_id", how="left")


def _winsorise(x: np.ndarray, q: float = 0.02) -> np.ndarray:
    lo, hi = np.quantile(x, [q, 1 - q])
    return np.clip(x, lo, hi)


@dataclass
class Combination:
    """How the measurements are weighed (estimated once per cohort). Speeds are 1/days."""
    prior_speed: float        # cohort centre of patients' speed of loss
    prior_var: float          # between-patient variance of the speed
    event_factor: float       # cycle-based speeds are multiplied by this onto the trajectory scale
    event_scale: float        # model variance of the cycle measurement x this = its real error variance
    trajectory_scale: float
    from_both: int            # patients with both measurements behind these figures


def _measurements(post: pd.DataFrame, fit: FrailtyWeibull, trajectories: pd.DataFrame | None):
    """Per patient (event speed, its variance, trajectory speed, its variance)."""
    k = fit.shape
    base_log_median = math.log(fit.scale) + math.log(math.log(2.0)) / k
    d = post["n_events"].to_numpy(dtype=float)
    H = post["exposure"].to_numpy(dtype=float)
    has_cycles = H > 1e-6
    shape = d + 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        e_log_z = special.digamma(shape) - np.log(np.where(has_cycles, H, 1.0))
        ev_speed = np.where(has_cycles, np.exp(-(base_log_median - e_log_z / k)), np.nan)
        ev_var = np.where(has_cycles, ev_speed ** 2 * special.polygamma(1, shape) / k ** 2, np.nan)
    if trajectories is not None and len(trajectories):
        tr = trajectories.set_index("patient_id").reindex(post["patient_id"])
        tr_speed = tr["trajectory_speed"].to_numpy(dtype=float)
        tr_var = tr["trajectory_var"].to_numpy(dtype=float)
    else:
        tr_speed = np.full(len(post), np.nan)
        tr_var = np.full(len(post), np.nan)
    return ev_speed, ev_var, tr_speed, tr_var, math.exp(-base_log_median)


def calibrate(post: pd.DataFrame, fit: FrailtyWeibull, trajectories: pd.DataFrame | None) -> Combination:
    """Method of moments over patients with both measurements.

    The model-based variances understate the real errors (measurement noise;
    a straight line through a curve), so both are rescaled from the data:
    with independent errors, the covariance of the two measurements across
    patients is the true between-patient variance and what each has beyond it
    is its error. Losses dated by the first score out of response come earlier
    than the real loss when scores are noisy (a score near the line crosses it
    by chance), so cycle-based speeds are rescaled onto the trajectory scale by
    the ratio of the medians (docs/durability.md gives its size).
    """
    ev, ev_var, tr, tr_var, base_speed = _measurements(post, fit, trajectories)
    use_tr = np.isfinite(tr) & np.isfinite(tr_var)
    use_ev = np.isfinite(ev) & np.isfinite(ev_var)
    both = use_tr & use_ev
    if both.sum() >= 30:
        factor = float(np.median(tr[both]) / np.median(ev[both]))
        x, y = _winsorise(ev[both] * factor), _winsorise(tr[both])
        between = max(float(np.cov(x, y)[0, 1]), 1e-6)
        err_ev = max(float(np.var(x)) - between, 1e-6)
        err_tr = max(float(np.var(y)) - between, 1e-6)
        return Combination(float(np.median(y)), between, factor,
                           err_ev / float(np.median(ev_var[both] * factor ** 2)), err_tr / float(np.median(tr_var[both])),
                           int(both.sum()))
    ref, ref_var = (tr[use_tr], tr_var[use_tr]) if use_tr.sum() >= 30 else (ev[use_ev], ev_var[use_ev])
    centre = float(np.median(ref)) if len(ref) else base_speed
    spread = float(np.var(_winsorise(ref))) if len(ref) > 1 else centre ** 2
    noise = float(np.median(ref_var)) if len(ref) else 0.0
    return Combination(centre, max(spread - noise, (0.2 * centre) ** 2), 1.0, 1.0, 1.0, int(both.sum()))


MIN_GROUP_PATIENTS = 30  # a subgroup needs this many measured patients to have its own centre


def group_centres(est_speed: np.ndarray, measured: np.ndarray, groups: pd.Series, fallback: float) -> np.ndarray:
    """Per patient, the median speed of measured patients in their group (the cohort's if too few)."""
    g = pd.Series(np.asarray(groups, dtype=object)).fillna("(missing)").astype(str).to_numpy()
    frame = pd.DataFrame({"g": g[measured], "v": est_speed[measured]})
    stats_ = frame.groupby("g")["v"].agg(["median", "size"])
    centre = stats_["median"].where(stats_["size"] >= MIN_GROUP_PATIENTS)
    return pd.Series(g).map(centre).fillna(fallback).to_numpy(dtype=float)


def combine_estimates(post: pd.DataFrame, fit: FrailtyWeibull, trajectories: pd.DataFrame | None,
                      combination: Combination | None = None, groups: pd.Series | None = None) -> pd.DataFrame:
    """Per-patient speed of loss (1/days): the cohort prior combined, by
    precision, with the patient's score trajectory or, where there are too few
    scores for one, with the cycles (through the frailty posterior without its
    prior, Gamma(d + 1/2, H)). weight_personal = 1 - posterior variance /
    prior variance."""
    cb = combination if combination is not None else calibrate(post, fit, trajectories)
    ev, ev_var, tr, tr_var, _ = _measurements(post, fit, trajectories)
    ev, ev_var = ev * cb.event_factor, ev_var * cb.event_factor ** 2 * cb.event_scale
    tr_var = tr_var * cb.trajectory_scale
    use_tr = np.isfinite(tr) & np.isfinite(tr_var) & (tr_var > 0)
    # The cycles count only where the scores are too few for a trajectory: both
    # come from the same noisy scores, so their errors are correlated, and in
    # validation adding the cycles to the trajectory made the ranking worse
    # (docs/durability.md).
    use_ev = np.isfinite(ev) & np.isfinite(ev_var) & (ev_var > 0) & ~use_tr
    centre = np.full(len(post), cb.prior_speed)
    if groups is not None:
        # shrink toward the patient's subgroup (e.g. baseline band) rather than the whole cohort
        measured = np.where(use_tr, tr, np.where(use_ev, ev, np.nan))
        centre = group_centres(measured, np.isfinite(measured),
                               pd.Series(groups).reindex(post["patient_id"]).reset_index(drop=True), cb.prior_speed)
    prec = np.full(len(post), 1.0 / cb.prior_var)
    num = centre / cb.prior_var
    for value, var, use in ((ev, ev_var, use_ev), (tr, tr_var, use_tr)):
        prec = prec + np.where(use, 1.0 / np.where(use, var, 1.0), 0.0)
        num = num + np.where(use, value / np.where(use, var, 1.0), 0.0)
    out = post[["patient_id"]].copy()
    out["speed"] = num / prec
    out["speed_var"] = 1.0 / prec
    out["weight_personal"] = 1.0 - (1.0 / prec) / cb.prior_var
    out["has_trajectory"] = np.isfinite(tr)
    out.attrs["combination"] = cb
    return out


def suggest_from_speed(speed, speed_var, shape: float, target: float = 0.8,
                       range_level: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) days until P(still in response) falls to `target`.

    The patient's median durability is 1/speed; single cycles vary around it
    like a Weibull with the cohort's conditional shape, so the time at which
    `target` of them still hold is median * (ln(1/target) / ln 2) ** (1/shape).
    The range carries the uncertainty about the patient's own speed.
    """
    if not 0 < target < 1:
        raise ValueError("target must be a probability between 0 and 1 (e.g. 0.8)")
    factor = (math.log(1.0 / target) / math.log(2.0)) ** (1.0 / shape)
    z = stats.norm.ppf(0.5 + range_level / 2)
    speed = np.asarray(speed, dtype=float)
    sd = np.sqrt(np.asarray(speed_var, dtype=float))
    slowest = 1.0 / MAX_SUGGESTION_DAYS
    days = lambda v: np.clip(factor / np.maximum(v, slowest), MIN_SUGGESTION_DAYS, MAX_SUGGESTION_DAYS)  # noqa: E731
    return days(speed), days(speed + z * sd), days(speed - z * sd)


def suggest_intervals(cycles: pd.DataFrame, *, target: float = 0.8, fit: FrailtyWeibull | None = None,
                      trajectories: pd.DataFrame | None = None, last_infusions: pd.Series | None = None,
                      instrument: str = "PHQ-9", combination: Combination | None = None,
                      by: str | None = None) -> tuple[pd.DataFrame, FrailtyWeibull]:
    """One row per responder (a patient with at least one durability cycle).

    `trajectories`: course_trajectories(course); by default taken from the
    cycle table's trajectory_speed/trajectory_var columns (`with_trajectories`
    adds them); without either, losses and held cycles only (much weaker);
    `last_infusions`: each patient's last infusion date (for next_due_on),
    by default the start of their last cycle; `by`: a cycle-table field whose
    subgroups (with at least MIN_GROUP_PATIENTS measured patients) are shrunk
    toward their own centre instead of the cohort's.
    """
    if fit is None:
        fit = fit_frailty(cycles)
    if trajectories is None and {"trajectory_speed", "trajectory_var"} <= set(cycles.columns):
        # with_trajectories carried each patient's score trend along
        trajectories = cycles.groupby("patient_id", sort=False)[["trajectory_speed", "trajectory_var"]].first().reset_index()
    post = patient_posteriors(fit, cycles)
    groups = None
    if by is not None:
        if by not in cycles.columns:
            raise ValueError(f"no field {by!r} in the cycle table to group by")
        groups = cycles.groupby("patient_id", sort=False)[by].last()
    est = combine_estimates(post, fit, trajectories, combination, groups)
    point, low, high = suggest_from_speed(est["speed"], est["speed_var"], fit.shape, target)
    post["weight_personal"] = est["weight_personal"].to_numpy()
    post["has_trajectory"] = est["has_trajectory"].to_numpy()
    post["median_days"] = np.round(1.0 / np.maximum(est["speed"].to_numpy(), 1.0 / MAX_SUGGESTION_DAYS), 1)
    post["suggested_interval_days"] = np.floor(point)
    post["interval_low_days"] = np.floor(low)
    post["interval_high_days"] = np.floor(high)
    w = post["weight_personal"].to_numpy()
    post["basis"] = np.where(w >= PERSONAL_WEIGHT, "personal", np.where(w < COHORT_WEIGHT, "cohort", "mixed"))
    last_start = cycles.groupby("patient_id", sort=False)["started_on"].max()
    last = last_start.reindex(post["patient_id"])
    if last_infusions is not None:
        last = last_infusions.reindex(post["patient_id"]).fillna(last)
    post["last_infusion_on"] = pd.to_datetime(last.to_numpy()).normalize()
    post["next_due_on"] = post["last_infusion_on"] + pd.to_timedelta(post["suggested_interval_days"], unit="D")
    taper = taper_signals(cycles, post.set_index("patient_id")["suggested_interval_days"])
    post = post.merge(taper, on="patient_id", how="left")
    post["target"] = target
    post["instrument"] = instrument
    post.attrs.update(est.attrs)
    return post, fit
