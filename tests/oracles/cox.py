"""Cox proportional hazards, a thin wrapper over statsmodels PHReg.

Ties default to "efron", R's default (coxph) and the one most published results
use; statsmodels' own default is Breslow. Pass `cluster` (e.g. patient ids) for
the robust sandwich variance that treats one patient's cycles as correlated.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg


def cox_fit(data: pd.DataFrame, *, duration: str, event: str, covariates: list[str],
            ties: str = "efron", cluster: str | None = None, strata: str | None = None) -> dict:
    """Fit h(t|x) = h0(t) exp(x'b). Rows with a missing covariate are dropped (n says how many used).

    Returns {"ties", "n", "n_events", "loglik", "lr_chisq", "lr_df", "lr_p", "robust",
    "coefficients": {name: {"coef", "se", "hr", "hr_lo", "hr_hi", "z", "p"}}}.
    """
    if ties not in ("efron", "breslow"):
        raise ValueError(f"cox_fit: ties must be 'efron' or 'breslow', not {ties!r}")
    missing = [c for c in [duration, event, *covariates] + ([cluster] if cluster else [])
               + ([strata] if strata else []) if c not in data.columns]
    if missing:
        raise ValueError(f"cox_fit: missing columns {missing}")
    cols = [duration, event, *covariates] + ([cluster] if cluster else []) + ([strata] if strata else [])
    d = data[cols].dropna()
    exog = d[covariates].to_numpy(dtype=float)
    model = PHReg(d[duration].to_numpy(dtype=float), exog, status=d[event].to_numpy(dtype=float),
                  ties=ties, strata=d[strata].to_numpy() if strata else None)
    if cluster:
        res = model.fit(groups=d[cluster].to_numpy())
    else:
        res = model.fit()
    params = np.asarray(res.params)
    se = np.asarray(res.bse)
    null_ll = model.loglike(np.zeros_like(params))
    lr = 2.0 * (res.llf - null_ll)
    z = params / se
    zc = stats.norm.ppf(0.975)
    coefs = {name: {"coef": float(b), "se": float(s), "hr": float(np.exp(b)),
                    "hr_lo": float(np.exp(b - zc * s)), "hr_hi": float(np.exp(b + zc * s)),
                    "z": float(zz), "p": float(2 * stats.norm.sf(abs(zz)))}
             for name, b, s, zz in zip(covariates, params, se, z)}
    return {"ties": ties, "n": int(len(d)), "n_events": int(d[event].astype(bool).sum()),
            "loglik": float(res.llf), "lr_chisq": float(lr), "lr_df": len(covariates),
            "lr_p": float(stats.chi2.sf(lr, len(covariates))), "robust": bool(cluster),
            "coefficients": coefs}
