"""``tessera tune``: an Optuna study over ``tessera train`` runs (docs/tuning.md).

The search space is written in the config (``tune.space``, :mod:`tessera.tune.space`); the study lives in an Optuna
RDB storage that several workers share (:mod:`tessera.tune.study`); each trial is a ``tessera train`` job in its own
run directory, pruned after an unpromising epoch (:mod:`tessera.tune.trial`); the end of a study is a report with
plots and the best trial's command line (:mod:`tessera.tune.report`). The verb is :mod:`tessera.tune.cli`.
"""
