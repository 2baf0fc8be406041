"""Drives the official, unmodified OpenAI and Anthropic Python SDKs through Keyward.

The SDKs get Keyward's proxy URL as their base URL and an app token as their API key,
exactly as an application would configure them. Each makes a normal and a streamed call;
the script prints what came back as one JSON object and exits non-zero on any error.
Run by the Rust integration test `sdk.rs`, which owns the fake provider and the checks.
"""

import json
import os
import sys

import anthropic
import openai

base = os.environ["KEYWARD_URL"]
token = os.environ["KEYWARD_APP_TOKEN"]
out = {}

llm = openai.OpenAI(base_url=f"{base}/proxy/openai/v1", api_key=token, max_retries=0)
question = [{"role": "user", "content": "Is AAPL a buy?"}]
plain = llm.chat.completions.create(model="gpt-5.4-mini", messages=question)
out["openai_plain"] = plain.choices[0].message.content
out["openai_plain_usage"] = [plain.usage.prompt_tokens, plain.usage.completion_tokens]
text, chunks_with_usage = "", 0
for chunk in llm.chat.completions.create(model="gpt-5.4-mini", messages=question, stream=True):
    if chunk.usage is not None:
        chunks_with_usage += 1
    for choice in chunk.choices:
        text += choice.delta.content or ""
out["openai_streamed"] = text
# Keyward asks the provider for usage in the stream; a client that did not ask must not see it.
out["openai_streamed_usage_chunks"] = chunks_with_usage

claude = anthropic.Anthropic(base_url=f"{base}/proxy/anthropic", api_key=token, max_retries=0)
message = claude.messages.create(
    model="claude-sonnet-4-20250514", max_tokens=256, messages=question
)
out["anthropic_plain"] = message.content[0].text
out["anthropic_plain_usage"] = [message.usage.input_tokens, message.usage.output_tokens]
with claude.messages.stream(
    model="claude-sonnet-4-20250514", max_tokens=256, messages=question
) as stream:
    out["anthropic_streamed"] = "".join(stream.text_stream)
    final = stream.get_final_message()
out["anthropic_streamed_usage"] = [final.usage.input_tokens, final.usage.output_tokens]

json.dump(out, sys.stdout)
