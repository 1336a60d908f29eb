"""One module per benchmark, each with the same four functions the runner calls:

- `setting(settings) -> str`: the run's name, e.g. "mmlu-5shot".
- `load_items(data_dir, settings, tokenizer) -> (items, data_files)`: the examples to score, each a dict
  with "id", "group" and "prompt" (text, no BOS), in the protocol's order and sample.
- `score(backend, items, settings) -> records`: model outputs, the extracted answer and a score per item.
- `summarize(records, settings) -> metrics`: the benchmark's numbers; "score" is the card's column (0-100).
"""

from importlib import import_module

MODULES = {"mmlu": "mmlu", "gsm8k": "gsm8k", "bbh": "bbh", "tydiqa": "tydiqa", "codex": "codex",
           "alpacafarm": "alpacafarm"}


def task_module(name: str):
    return import_module(f"camelid.eval.tasks.{MODULES[name]}")
