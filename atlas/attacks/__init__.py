"""Typographic attacks: text written on images, and what it does to classifiers and neurons.

- `typographic`: `stamp` (an attack text on an image), classifiers (zero-shot, stored probe) and `attack_rows`
  (success rates of texts stamped at 8 positions);
- `experiments`: the runners that save reports into a store: `run_attack_table`, `run_stroop`,
  `run_word_sensitivity`.

Bias audits, which change no image, live apart in `atlas.audit`.
"""
