"""Adversarial evaluation sets that pefteval generates itself (no released files exist for them).

``squad``: AddAnsCtx, AddNegAns, AddAny and AddAnyExtend for SQuAD v1.1; ``statements``: the
rule-based English question-to-negated-statement conversion that AddNegAns uses.
"""
