"""alignloop: online alignment rounds for language models (sample, judge, learn, publish).

The folders loop/, records/, judges/ and policies/ install as alignloop.loop,
alignloop.records, alignloop.judges and alignloop.policies.
"""

__version__ = "0.1.0"
