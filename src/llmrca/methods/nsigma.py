"""N-Sigma: how many pre-injection standard deviations each metric moves after the injection."""

from __future__ import annotations

from llmrca.case import Observation
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.params import check_bool
from llmrca.methods.scoring import deviation_scores
from llmrca.methods.window import DEFAULT_WINDOW, check_window, metric_window


class NSigma(BaseMethod):
    """Per metric column, ``max over the post window of |x - mean_pre| / std_pre`` (std with ddof 0, as a
    standard scaler fitted on the pre window). Constant baselines follow ``llmrca.methods.scoring``.

    Parameters: ``window`` samples each side of ``inject_time`` (None: all rows); ``two_sided`` scores drops as
    well as rises (RCAEval's implementation takes the signed maximum, i.e. ``two_sided=False``).
    """

    name = "nsigma"
    family = "metric"
    needs = frozenset({"metrics"})

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"window": DEFAULT_WINDOW, "two_sided": True}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        window = check_window(self.name, self.params["window"], minimum=2)
        two_sided = check_bool(self.name, "two_sided", self.params["two_sided"])
        w = metric_window(obs, window=window, min_pre=2, min_post=1)
        scores = deviation_scores(w.pre, w.post, "standard", two_sided=two_sided)
        return Ranking.from_scores(w.columns, scores)
