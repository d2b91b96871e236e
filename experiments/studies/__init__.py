"""One package per study: ``run`` (its command), ``report`` (its part of REPORT.md) and ``report.md`` (the
part's fixed prose). ``experiments.studies.registry.STUDIES`` lists them all; ``experiments.make_report``
walks it."""
