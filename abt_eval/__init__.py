"""Evaluation of ABT checkpoints: synthetic sounds, the development suite, a pre-training corpus for CPU
experiments and the one-command heareval run. How to use each part: ``docs/evaluation.md``.

Modules: ``sounds`` (the synthesis library), ``devsuite`` (HEAR-format tasks), ``corpus`` (a pre-training
corpus disjoint from the suite), ``hear_eval`` (heareval on many models and tasks, with a random-init
baseline), ``heareval_compat`` (heareval 2021.1.3 on a modern stack) and ``hear_tools`` (installs the
HEAR tools).
"""
