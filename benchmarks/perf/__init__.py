"""Speed: each figure a ratio to an anchor measured in the same run (``anchors.py``), or, where no
well-known code does the same work, a stated target with the machine's load beside it."""
