"""The paper studies, in one shape (base.py): a dataclass config, named stages run in order, every
expensive intermediate cached under OUT, results.json after each stage, and tables.md.

    tracing      TracingStudy, TracingStudyConfig (`advforensics trace experiment`)
    attribution  AttributionStudy, AttributionStudyConfig (`advforensics attribution experiment`)
"""
