"""Thinking tags: inferring them from a Go template, and splitting model output on them.

Follows Ollama `thinking/template.go` (InferTags) and `thinking/parser.go` (spec ollama-api.md §8).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from engine.chat.gotemplate import Action, Branch, Chain, Command, Field, Node, Pipe, Text


def infer_thinking_tags(nodes: Sequence[Node]) -> tuple[str, str]:
    """(opening, closing) tags around `.Thinking` inside `range .Messages`; "" when not found.

    For each `.Thinking` field whose nearest enclosing range iterates over `.Messages`, the
    nearest enclosing node list's first and last text nodes (trimmed) become the tags. Later
    occurrences override earlier ones (Ollama `InferTags`).
    """
    tags = ["", ""]

    def visit_list(body: Sequence[Node], in_messages_range: bool) -> None:
        for n in body:
            visit(n, body, in_messages_range)

    def visit(n: Node, enclosing: Sequence[Node], in_messages_range: bool) -> None:
        if isinstance(n, Field) and n.idents[0] == "Thinking" and in_messages_range:
            if isinstance(enclosing[0], Text):
                tags[0] = enclosing[0].text.strip()
            if isinstance(enclosing[-1], Text):
                tags[1] = enclosing[-1].text.strip()
        elif isinstance(n, Action):
            visit(n.pipe, enclosing, in_messages_range)
        elif isinstance(n, Pipe):
            for c in n.cmds:
                visit(c, enclosing, in_messages_range)
        elif isinstance(n, Command):
            for a in n.args:
                visit(a, enclosing, in_messages_range)
        elif isinstance(n, Chain):
            visit(n.node, enclosing, in_messages_range)
        elif isinstance(n, Branch):
            if n.kind == "range":
                in_messages_range = _pipe_uses_field(n.pipe, "Messages")
            visit(n.pipe, enclosing, in_messages_range)
            visit_list(n.body, in_messages_range)
            visit_list(n.else_body or [], in_messages_range)

    visit_list(nodes, False)
    return tags[0], tags[1]


def _pipe_uses_field(pipe: Pipe, name: str) -> bool:
    stack: list[Node] = [pipe]
    while stack:
        n = stack.pop()
        if isinstance(n, Field) and n.idents[0] == name:
            return True
        if isinstance(n, Pipe):
            stack.extend(n.cmds)
        elif isinstance(n, Command):
            stack.extend(n.args)
        elif isinstance(n, Chain):
            stack.append(n.node)
    return False


class _State(Enum):
    LOOKING_FOR_OPENING = 0
    EATING_WHITESPACE_AFTER_OPENING = 1
    THINKING = 2
    EATING_WHITESPACE_AFTER_CLOSING = 3
    DONE = 4


# Go's unicode.IsSpace, used by Ollama's parsers to trim (str.isspace also counts \x1c-\x1f)
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)


def _overlap(s: str, tag: str) -> int:
    """Length of the longest suffix of s that is a proper-or-full prefix of tag."""
    for i in range(min(len(tag), len(s)), 0, -1):
        if s.endswith(tag[:i]):
            return i
    return 0


class ThinkingParser:
    """Splits streamed model text into (thinking, content) on a pair of tags.

    `prefilled` starts the parser as if the opening tag was already seen: use it when the
    rendered prompt, right-trimmed, ends with the opening tag (spec §8.3). Whitespace right after
    either tag is dropped; output that does not start with the opening tag is all content,
    leading whitespace included.
    """

    def __init__(self, opening: str, closing: str, *, prefilled: bool = False) -> None:
        self.opening, self.closing = opening, closing
        self.state = (
            _State.EATING_WHITESPACE_AFTER_OPENING if prefilled else _State.LOOKING_FOR_OPENING
        )
        self.acc = ""

    def add(self, text: str) -> tuple[str, str]:
        """Feed one piece; returns the (thinking, content) that can be released now."""
        self.acc += text
        thinking, content = [], []
        more = True
        while more:
            t, c, more = self._eat()
            thinking.append(t)
            content.append(c)
        return "".join(thinking), "".join(content)

    def _eat(self) -> tuple[str, str, bool]:
        """One state step: (thinking, content, keep going)."""
        acc = self.acc
        if self.state is _State.LOOKING_FOR_OPENING:
            trimmed = acc.lstrip(GO_SPACE)
            if trimmed.startswith(self.opening):
                after = trimmed[len(self.opening) :].lstrip(GO_SPACE)
                self.acc = after
                self.state = _State.THINKING if after else _State.EATING_WHITESPACE_AFTER_OPENING
                return "", "", True
            if self.opening.startswith(trimmed):  # a partial tag, or only whitespace so far
                return "", "", False
            self.state, self.acc = _State.DONE, ""
            return "", acc, False
        if self.state is _State.EATING_WHITESPACE_AFTER_OPENING:
            trimmed = acc.lstrip(GO_SPACE)
            self.acc = trimmed
            if not trimmed:
                return "", "", False
            self.state = _State.THINKING
            return "", "", True
        if self.state is _State.THINKING:
            if self.closing in acc:
                thinking, _, rest = acc.partition(self.closing)
                rest = rest.lstrip(GO_SPACE)
                self.acc = ""
                self.state = _State.DONE if rest else _State.EATING_WHITESPACE_AFTER_CLOSING
                return thinking, rest, False
            keep = _overlap(acc, self.closing)
            self.acc = acc[len(acc) - keep :] if keep else ""
            return acc[: len(acc) - keep], "", False
        if self.state is _State.EATING_WHITESPACE_AFTER_CLOSING:
            trimmed = acc.lstrip(GO_SPACE)
            self.acc = ""
            if trimmed:
                self.state = _State.DONE
            return "", trimmed, False
        self.acc = ""
        return "", acc, False


def split_thinking(text: str, opening: str, closing: str) -> tuple[str, str]:
    """(thinking, content) of a complete text, as the streaming parser would split it."""
    return ThinkingParser(opening, closing).add(text)
