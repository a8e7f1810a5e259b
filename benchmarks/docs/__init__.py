"""Generators of the docs' measured blocks: ``readme.py`` (README tables, checked by
``tests/test_readme.py``) and ``results.py`` (``docs/RESULTS.md``)."""
