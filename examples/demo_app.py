"""An ordinary OpenAI app serving three customers. Nothing in it sets up tracking:
run it under ``cmdrdata-run`` and every call is metered for the customer it serves."""

from __future__ import annotations

import openai

from cmdrdata_autotrack import customer_context

client = openai.OpenAI()
question = [{"role": "user", "content": "How is usage billed?"}]

# A request handler names its customer once; every call inside is theirs.
with customer_context("acme-corp", plan="pro"):
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=question)
    print("acme-corp  :", reply.choices[0].message.content)

# Or per call.
stream = client.chat.completions.create(
    model="gpt-4o-mini", messages=question, stream=True, customer_id="globex"
)
print("globex     :", "".join(chunk.choices[0].delta.content or "" for chunk in stream))

vectors = client.embeddings.create(
    model="text-embedding-3-small", input=["invoice", "usage"], customer_id="initech"
)
print("initech    :", len(vectors.data), "embeddings")
