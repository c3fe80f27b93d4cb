"""How many trials a search runs, and how many at once, in a form a resumed search can change.

Tune saves both numbers with the experiment (the SearchGenerator's total and its ConcurrencyLimiter's
limit) and restores them over whatever a resumed run asks for. `SearchLimits` is that same pair of
wrappers, except that after Tune restored the saved state it puts back this run's two numbers:
`--resume --num-samples 40 --max-concurrent 8` runs 40 trials in all, 8 at a time, and what the
searcher learned so far (Optuna's trials, the reference trials already handed out) stays.
"""

from __future__ import annotations

from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from orchestrator.compat import set_total_samples


class SearchLimits(SearchGenerator):
    def __init__(self, searcher: Searcher, num_samples: int, max_concurrent: int) -> None:
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
        self.num_samples, self.max_concurrent = num_samples, max_concurrent

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        set_total_samples(self, self.num_samples)  # trials already made count: 4 made, 6 asked, 2 more
        self.searcher.max_concurrent = self.max_concurrent
