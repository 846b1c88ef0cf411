"""RobustBench: run its protocol on a model, write its ``model_info`` JSON, rank against its leaderboard.

* :mod:`.compat` -- importing RobustBench with PyPI's ``pyautoattack`` (the one place);
* :mod:`.protocol` -- :func:`run_benchmark`: data, clean accuracy, AutoAttack standard;
* :mod:`.resumable_autoattack` -- AutoAttack's loop, resumable batch by batch;
* :mod:`.model_info` -- leaderboard entry fields, validation, writing;
* :mod:`.leaderboard` -- load, rank, insert a result, render;
* :mod:`.zoo` -- RobustBench zoo models by name;
* :mod:`.run` -- what ``advplug benchmark`` does with a checkpoint, zoo name or external weights.
"""
from .protocol import BenchmarkResult, run_benchmark  # noqa: F401
