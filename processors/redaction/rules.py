"""What the redaction processor looks for: value patterns, key globs and the presets made of them.

Every pattern is written in the syntax RE2 (Arrow's regex engine, the hot path) and Python's ``re``
(the few values that need a callback: Luhn-checked cards, keyed hashes) read the same way: no
look-around, no back-references, flags only as scoped groups ``(?i:...)``, ASCII classes (``[0-9]``,
not ``\\d``, which Python reads as any Unicode digit).  A pattern whose first group is named ``keep``
keeps that group (``Bearer ``, ``api_key=``) and redacts the rest of the match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ValueRule:
    name: str  # what the mask says: [REDACTED:<name>]
    regex: str
    check: Callable[[str], bool] | None = None  # a match counts only if check(match) holds

    @property
    def keeps_prefix(self) -> bool:
        return self.regex.startswith("(?P<keep>")

    @property
    def compiled(self) -> re.Pattern:
        return _compiled(self.regex)


_CACHE: dict[str, re.Pattern] = {}


def _compiled(regex: str) -> re.Pattern:
    if regex not in _CACHE:
        _CACHE[regex] = re.compile(regex)
    return _CACHE[regex]


def luhn_valid(text: str) -> bool:
    """The Luhn checksum of the digits in ``text`` (every payment card number passes; 9 in 10 random ids fail)."""
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# --- secrets -----------------------------------------------------------------------------
SECRET_RULES = (
    ValueRule("private_key", r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?s:.*?)-----END[A-Z ]*PRIVATE KEY-----"),
    ValueRule("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    # OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-) and Anthropic (sk-ant-api03-) keys.
    ValueRule("openai_key", r"\bsk-[A-Za-z0-9_-]{20,}"),
    ValueRule("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    ValueRule("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    ValueRule("slack_token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    ValueRule("bearer_token", r"(?P<keep>(?i:\bbearer\s+))[A-Za-z0-9._~+/-]{8,}=*"),
    # `api_key=...`, `"password": "..."`, `?token=...`: the value after a credential's name.  Its first
    # character is not `[`, so what an earlier rule masked is not masked again.
    ValueRule("api_key", r"(?P<keep>(?i:\b(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|client[_-]?secret|"
                         r"secret[_-]?key|password|passwd|pwd|token|secret)[\"']?\s*[:=]\s*[\"']?))"
                         r"[^\s\"'&,;<>\[][^\s\"'&,;<>]{5,}"),
)

# --- personal data -----------------------------------------------------------------------
PII_RULES = (
    # Visa, Mastercard (51-55, 2221-2720), Discover in groups of four (or 13 and 19 digits unbroken), Amex
    # 4-6-5; Luhn-checked, so a 16-digit id or a nanosecond timestamp is left alone (9 times in 10).  A
    # number after the card ("4111 1111 1111 1111 123", its CVV) is not read as part of it.
    ValueRule("card", r"\b(?:(?:4[0-9]{3}|5[1-5][0-9]{2}|2[2-7][0-9]{2}|6(?:011|5[0-9]{2}))(?:[ -]?[0-9]{4}){3}"
                      r"(?:[0-9]{3})?|3[47][0-9]{2}[ -]?[0-9]{6}[ -]?[0-9]{5}|4[0-9]{12})\b", check=luhn_valid),
    # RFC 5322 atext but `/` and `=`, so a URL path or a key=value around an address is not swallowed.
    ValueRule("email", r"[A-Za-z0-9!#$%&'*+?^_`{|}~.-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*"),
    # E.164 (+ and 8 to 15 digits, optional separators) or North American (555) 123-4567 / 555-123-4567.
    # A bare run of digits is no phone number: ids, counts and timestamps are left alone.
    ValueRule("phone", r"\+[1-9](?:[ .-]?[0-9]){7,14}\b|\(?\b[2-9][0-9]{2}\)?[ .-][0-9]{3}[ .-][0-9]{4}\b"),
)

# --- keys ----------------------------------------------------------------------------------
# Attributes whose whole value is a credential, whatever it looks like.
SECRET_KEYS = (
    "*password*", "*passwd*", "*secret*", "*api_key*", "*api-key*", "*apikey*", "*authorization*", "*cookie*",
    "*access_token*", "*refresh_token*", "*auth_token*", "*session_token*", "*private_key*", "*credential*",
)

# Message contents of the GenAI conventions the pipeline reads (OpenTelemetry gen_ai.*, OpenLLMetry's
# indexed gen_ai.prompt.N.*, OpenInference llm.*_messages.* and input/output.value).  Roles, ids and
# token counts stay: they are what SLOs, cost and attribution use.
CONTENT_KEYS = (
    "gen_ai.prompt", "gen_ai.completion", "gen_ai.input.messages", "gen_ai.output.messages",
    "gen_ai.system_instructions", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
    "gen_ai.prompt.*.content", "gen_ai.completion.*.content", "gen_ai.completion.*.tool_calls.*.arguments",
    "llm.input_messages.*.content*", "llm.output_messages.*.content*", "llm.input_messages.*.message_content.text",
    "llm.prompts", "llm.prompts.*", "*.tool_calls.*.function.arguments", "input.value", "output.value",
    "traceloop.entity.input", "traceloop.entity.output",
)

# The key a redacted span (or log record) carries: how many values were redacted, never which.
COUNT_KEY = "agent_sre.redacted_count"
LENGTH_SUFFIX = ".length"

PRESETS = ("secrets", "pii", "genai-content")


def glob_regex(globs: list[str] | tuple[str, ...]) -> str | None:
    """One anchored RE2/Python regex matching any of ``globs`` (``*`` any run, ``?`` one character)."""
    if not globs:
        return None
    parts = []
    for glob in globs:
        parts.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob))
    return "^(?:" + "|".join(parts) + ")$"
