"""True fine-tuning: data formats and validation, the training recipe, LoRA, checkpoints, diffs.

* :mod:`ragtune.tune.data` — chat / prompt-completion / text formats, OpenAI-style checks,
  read line by line.
* :mod:`ragtune.tune.tokens` — tokenization in the inference layout, into compact training
  sequences (as the data is read).
* :mod:`ragtune.tune.loop` — :func:`~ragtune.tune.loop.train`, the whole run in one function.
* :mod:`ragtune.tune.loss` — cross-entropy on labelled positions only, chunked over the vocabulary.
* :mod:`ragtune.tune.hparams` — ``auto`` epochs, batch size and learning rate; the schedule.
* :mod:`ragtune.tune.batching`, :mod:`~ragtune.tune.lora`, :mod:`~ragtune.tune.checkpoint`,
  :mod:`~ragtune.tune.events`, :mod:`~ragtune.tune.distributed` — the building blocks.
* :mod:`ragtune.tune.diff` — how much each module's weights changed.
* :mod:`ragtune.tune.makeqa` — documents to checked question/answer examples, with
  :mod:`~ragtune.tune.templateqa` (rule-based questions), :mod:`~ragtune.tune.qa_writers`
  and :mod:`~ragtune.tune.qa_endpoint`.
* :mod:`ragtune.tune.validate` — the ``ragtune validate`` report.
"""
