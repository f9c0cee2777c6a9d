"""The search policy, as small parts behind the one searcher Tune sees (tlsearch.search.study.StudySearch):

- duplicates: a configuration is never trained twice (skipped draws, random redraws);
- listed: in a space of few discrete configurations, TPE's acquisition over the untried ones;
- promotion: once such a space is tried in full, ASHA's promotion of what it stopped too early;
- optuna_adapter: the only code that touches Ray's OptunaSearch and Optuna's TPESampler internals;
- trials: the study's trials as the parts see them (a configuration is its parameters).
"""
