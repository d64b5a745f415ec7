"""From a question to search terms: the words that carry meaning, safe for any query syntax.

Terms are runs of letters and digits only, so nothing a user types can become an FTS5 or
tsquery operator. Question words and the usual English function words are dropped: BM25
would weigh them little anyway, but an OR query over "what" matches every passage.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves s t tell show give list describe explain much many""".split()
)
MAX_TERMS = 24


def terms(question: str) -> list[str]:
    """Distinct meaningful words of `question`, lower-cased, in order of first use."""
    seen: dict[str, None] = {}
    for word in WORD.findall(question.lower()):
        if word in STOPWORDS or (len(word) == 1 and not word.isdigit()):
            continue
        seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]
