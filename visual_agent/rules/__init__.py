"""Standing questions: yes/no rules that watch a source, with a change gate, hysteresis, cooldown, a call budget,
evidence and a look-back (docs/VISUAL_AGENT_GUIDE.md, "Rules").

| module | one job |
| --- | --- |
| `config.py` | `RuleConfig` and the limits on a rule set (count, payload size, check rate, look-back) |
| `state.py` | `RuleState`: hysteresis and cooldown, no I/O |
| `answer.py` | the structured yes/no answer: schema, provider options, defensive parser |
| `budget.py` | `CallBudget`: model calls per source and minute |
| `follow.py` | `NewFrames`: each unseen frame of a source, across a buffer replaced under the same name |
| `lookback.py` | `Lookback`: the last seconds of a source as small JPEG thumbnails |
| `engine.py` | `RuleEngine`: per-source watchers, checks, state/event/evidence publishing, counters |
| `control.py` | `RuleControl`: rule sets from `<prefix>/rules/set`, errors on `<prefix>/rules/error` |
| `homeassistant.py` | `RuleDiscovery`: a binary_sensor and an evidence image per rule |
"""

from .answer import ANSWER_SCHEMA, parse_answer, structured_options
from .budget import CallBudget
from .config import MAX_RULES, MAX_RULES_PAYLOAD_BYTES, RuleConfig, RuleSetError, check_rule_set, parse_rule_set
from .control import RuleControl
from .engine import DEFAULT_RULE_CALLS_PER_MINUTE, RuleEngine
from .homeassistant import RuleDiscovery
from .lookback import Lookback
from .state import OnOff, RuleState, Transition

__all__ = [
    "ANSWER_SCHEMA",
    "CallBudget",
    "DEFAULT_RULE_CALLS_PER_MINUTE",
    "Lookback",
    "MAX_RULES",
    "MAX_RULES_PAYLOAD_BYTES",
    "OnOff",
    "RuleConfig",
    "RuleControl",
    "RuleDiscovery",
    "RuleEngine",
    "RuleSetError",
    "RuleState",
    "Transition",
    "check_rule_set",
    "parse_answer",
    "parse_rule_set",
    "structured_options",
]
