"""Tool calling and structured output for `/v1/chat/completions`, by constrained decoding.

- `response_format` `json_object` / `json_schema`: the answer is generated under a grammar
  (`app.engine.constraints`, llguidance) that only lets through JSON valid against the
  schema, so it always parses, streamed or not (a `max_tokens` cut can still leave it
  unfinished: `finish_reason` is then `length`, as with OpenAI).
- `tools`: their names, descriptions and parameter schemas are written into the system
  message, with how to call one: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
  With `tool_choice` `required` or a named function the answer must be exactly one such call
  (the grammar holds the arguments to that tool's schema); with `auto` it is either that call
  or text that does not begin with `<`; with `none` the tools are not offered. The call comes
  back as OpenAI's `tool_calls`; the caller's `role: tool` results go back to the model as
  `<tool_response>` turns, and earlier calls as the assistant text that made them.

One call per answer (`parallel_tool_calls` is accepted and answered with one call).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.contract import ChatMessage
from app.engine.constraints import Grammar, GrammarError, check_grammar
from app.openai_api.schemas import (
    ChatCompletionRequest,
    ChatMessageIn,
    NamedTool,
    OpenAIError,
    ToolCall,
)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class Plan:
    """How one chat request is answered: its grammar and whether it may call a tool."""

    grammar: Grammar | None
    tools_offered: bool


def plan(body: ChatCompletionRequest) -> Plan:
    """The grammar a request's `tools`, `tool_choice` and `response_format` ask for.

    Raises:
        OpenAIError: 400 when a schema cannot be enforced or the named tool is not given.
    """
    tools = body.tools or []
    choice = body.tool_choice or ("auto" if tools else "none")
    answer: str | None = None  # the grammar of a text answer (None: free text)
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        answer = f"%json {json.dumps({'type': 'object'})}"
    elif fmt is not None and fmt.type == "json_schema":
        schema = fmt.json_schema.schema_ if fmt.json_schema else None
        answer = f"%json {json.dumps(schema or {'type': 'object'})}"
    if not tools or choice == "none":
        grammar = Grammar(f"start: {answer}") if answer else None
        return Plan(_checked(grammar, "response_format"), tools_offered=False)
    if isinstance(choice, NamedTool):
        name = choice.function["name"]
        tools = [t for t in tools if t.function.name == name]
        if not tools:
            raise OpenAIError(400, f"tool_choice names '{name}', which is not in tools.",
                              param="tool_choice")  # fmt: skip
    call = f'"{CALL_OPEN}" call "{CALL_CLOSE}"\ncall: %json {json.dumps(_call_schema(tools))}'
    if choice == "auto":
        text = "ANSWER" if answer else "TEXT"
        rules = f"start: {text} | {call}\n" + (
            f"ANSWER: {answer}" if answer else "TEXT: /[^<][\\s\\S]*/"
        )
        grammar = Grammar(rules if not answer else f"start: answer | {call}\nanswer: {answer}")
    else:
        grammar = Grammar(f"start: {call}")
    return Plan(_checked(grammar, "tools"), tools_offered=True)


def _call_schema(tools: Sequence[Any]) -> dict[str, Any]:
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.function.name},
                    "arguments": t.function.parameters or {"type": "object", "properties": {}},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
    }


def _checked(grammar: Grammar | None, param: str) -> Grammar | None:
    if grammar is not None:
        try:
            check_grammar(grammar)
        except GrammarError as exc:
            reason = str(exc).splitlines()[0].replace("failed to compile JSON schema: ", "")
            raise OpenAIError(400, f"{param}: {reason}.", param=param) from None
    return grammar


def tool_instructions(body: ChatCompletionRequest) -> str:
    """The system text that offers the tools and says how to call one."""
    listed = [
        {"name": t.function.name, "description": t.function.description or "",
         "parameters": t.function.parameters or {"type": "object", "properties": {}}}
        for t in body.tools or []
    ]  # fmt: skip
    return (
        "You can call these functions:\n"
        + json.dumps(listed, indent=1)
        + f'\nTo call one, answer with {CALL_OPEN}{{"name": NAME, "arguments": {{...}}}}'
        f"{CALL_CLOSE} and nothing else; its result comes back as <tool_response>."
    )


def conversation(body: ChatCompletionRequest, offered: bool) -> list[tuple[str, str]]:
    """The request's messages as (role, text) turns the prompt formats know: tool calls as
    the assistant text that makes them, tool results as `<tool_response>` user turns, and the
    tools offered in the system message."""
    names: dict[str, str] = {}
    turns: list[tuple[str, str]] = []
    for message in body.messages:
        turns.append(_turn(message, names))
    if offered:
        instructions = tool_instructions(body)
        if turns and turns[0][0] in ("system", "developer"):
            turns[0] = (turns[0][0], f"{turns[0][1]}\n\n{instructions}")
        else:
            turns.insert(0, ("system", instructions))
    return turns


def _turn(message: ChatMessageIn, names: dict[str, str]) -> tuple[str, str]:
    if message.role == "tool":
        name = names.get(message.tool_call_id or "", "the function")
        return "user", f"<tool_response>\n{name} returned: {message.text()}\n</tool_response>"
    if message.role == "assistant" and message.tool_calls:
        calls = []
        for call in message.tool_calls:
            names[call.id] = call.function.name
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except ValueError:
                arguments = call.function.arguments
            calls.append(
                CALL_OPEN + json.dumps({"name": call.function.name, "arguments": arguments})
                + CALL_CLOSE
            )  # fmt: skip
        return "assistant", (message.text() + "".join(calls)).strip()
    return message.role, message.text()


def messages_for(turns: Sequence[tuple[str, str]]) -> list[ChatMessage]:
    return [ChatMessage("system" if r == "developer" else r, t) for r, t in turns]


def parse_tool_call(text: str) -> ToolCall | None:
    """The tool call an answer made, or None (a text answer, or a call cut short)."""
    body = text.strip()
    if not body.startswith(CALL_OPEN) or CALL_CLOSE not in body:
        return None
    inner = body[len(CALL_OPEN) : body.index(CALL_CLOSE)]
    try:
        call = json.loads(inner)
        name, arguments = call["name"], call["arguments"]
    except (ValueError, KeyError, TypeError):
        return None
    return ToolCall(
        id=f"call_{uuid.uuid4().hex[:24]}",
        function={"name": name, "arguments": json.dumps(arguments)},
    )
