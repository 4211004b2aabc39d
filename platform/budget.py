"""``budget.max_trainable_params``: a sampled configuration over budget never becomes a trial.

The searcher counts the trainable parameters a sample would have (adapters plus the rebuilt
heads, ``modules_to_save``, which train fully) on the study's own base, in the driver, by
applying PEFT to a copy: the count is exactly the trial's (for ``rank_mode: gradient``, the
most its reallocated adapter can hold: ``rank`` everywhere). An over-budget sample is rejected,
not scaled to fit: a scaled allocation would train a configuration Optuna never proposed.
The rejection is told to Optuna as a PRUNED trial with no value, its reason and count as user
attributes (rows of the search summary). PRUNED, not FAIL: TPE ignores FAIL trials, so the
over-budget region keeps looking unexplored and attracts samples; PRUNED trials without
values it ranks with the worst. Measured with Optuna's TPE on ranks 1-8 where 5-8 are over
budget and the objective rises with the rank: 13 of 40 samples rejected with PRUNED, 34 of 40
with FAIL. Then the searcher samples again for the same Tune trial, so rejections never take
a trial slot, a worker or a Train job. A sample the counter cannot build (the trial would fail the same way) is rejected
with that reason. The same gate runs without a budget (``budget=None``) when a search samples
``lora.placement``: a sample that switches every group off cannot be built and never runs.
"""

from __future__ import annotations

import copy
import json

from platform.searcher import BestEpochOptunaSearch
from trainables.errors import RankhouseError

REJECTED = "rankhouse.rejected"  # Optuna user attribute: why the sample never ran
MAX_CONSECUTIVE_REJECTIONS = 50


class ParameterCounter:
    """Trainable parameters of a trial: the study's fixed config with the trial's nested sample
    laid over it, on its base built once (lazily) in the driver. The base is dropped from
    pickles: Tune saves the searcher in its experiment state."""

    def __init__(self, config: dict):
        self.config = config
        self._setup, self._model = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_setup": None, "_model": None}

    def __call__(self, sample: dict) -> int:
        from trainables import lora, loop, schema

        config = schema.overlay(self.config, sample)
        model_section = json.dumps(config["model"], sort_keys=True, default=str)
        if self._setup is None or self._model != model_section:  # a search may sample the model section
            self._setup, self._model = loop.base_model(config), model_section
        s = self._setup
        spec = lora.LoraSpec.from_config(config["lora"])
        model, _ = s.family.apply_lora(copy.deepcopy(s.model), spec, s.modules_to_save)
        if spec.rank_mode == "gradient":  # its warm-up is wider; what it keeps is at most rank everywhere
            from trainables import realloc

            adapters = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
            return lora.trainable_parameters(model) - adapters + realloc.uniform_budget(model, spec.rank)
        return lora.trainable_parameters(model)


class BudgetedOptunaSearch(BestEpochOptunaSearch):
    def __init__(self, *args, budget: int | None, counter: ParameterCounter, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget, self.counter = budget, counter

    def suggest(self, trial_id: str):
        import optuna

        smallest = None
        for _ in range(MAX_CONSECUTIVE_REJECTIONS):
            trial = super().suggest(trial_id)
            if not isinstance(trial, dict):  # Searcher.FINISHED or None
                return trial
            try:
                count = self.counter(trial)
            except Exception as exc:  # one unbuildable sample must not end the search
                count, reason = None, f"cannot be built: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            else:
                if self.budget is None or count <= self.budget:
                    return trial
                smallest = count if smallest is None else min(smallest, count)
                reason = f"{count} trainable parameters > budget.max_trainable_params = {self.budget}"
            ot_trial = self._ot_trials.pop(trial_id)
            ot_trial.set_user_attr(REJECTED, reason)
            ot_trial.set_user_attr("trainable_params", count)
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self.record(ot_trial, None)  # no Tune trial: the same trial samples again
            print(f"search: sample {ot_trial.number} rejected before training: {reason}", flush=True)
        self.flush()  # the search ends here: the record keeps the rejections that ended it
        if self.budget is None:
            raise RankhouseError(f"search.space: {MAX_CONSECUTIVE_REJECTIONS} samples in a row could not be built "
                                 f"(the last: {reason}); narrow the space (e.g. keep one lora.placement group on)")
        raise RankhouseError(f"budget.max_trainable_params: {MAX_CONSECUTIVE_REJECTIONS} samples in a row were "
                             f"rejected (budget {self.budget}, the smallest had {smallest}; the last: {reason}); "
                             "raise the budget or narrow the space's ranks")


def rejected(storage_url: str, study_name: str) -> list[dict]:
    """The samples a search rejected before training, from its Optuna study."""
    import optuna

    try:
        ot = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return []
    return [{"optuna_trial": t.number, "params": t.params, "trainable_params": t.user_attrs.get("trainable_params"),
             "reason": t.user_attrs[REJECTED]} for t in ot.get_trials(deepcopy=False) if REJECTED in t.user_attrs]
