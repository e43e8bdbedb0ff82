// The official `openai` Node SDK, unchanged, against a loraloop gateway: a chat completion,
// a Responses API answer (plain and streamed, then continued), and thumbs through plain
// fetch. Prints what it saw as one JSON line for tests/integration/test_clients.py.
import OpenAI from "openai";

const baseURL = process.env.LORALOOP_URL + "/v1";
const apiKey = process.env.LORALOOP_KEY;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });

async function rate(id, rating) {
  const response = await fetch(baseURL + "/feedback", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ id, rating }),
  });
  return response.status;
}

const chat = await client.chat.completions.create({
  model: "default", user: "node-user", max_tokens: 16, temperature: 0,
  messages: [{ role: "user", content: "Hi, I'm Ada. Can you help me bake a cake?" }],
});
const response = await client.responses.create({
  model: "default", input: "Hi, I'm Ada. Can you help me bake a cake?", max_output_tokens: 16, temperature: 0,
});
const events = [];
for await (const event of await client.responses.create({
  model: "default", input: "And a pie?", previous_response_id: response.id, max_output_tokens: 16, stream: true,
})) {
  events.push(event);
}
const last = events[events.length - 1];
// an event's response is the raw object (output_text is the SDK's helper on non-streamed ones)
const textOf = (r) => r.output.filter((item) => item.type === "message")
  .flatMap((item) => item.content).filter((part) => part.type === "output_text").map((part) => part.text).join("");
console.log(JSON.stringify({
  chat: { id: chat.id, text: chat.choices[0].message.content },
  response: { id: response.id, text: response.output_text },
  streamed: { types: [...new Set(events.map((e) => e.type))], last: last.type, id: last.response.id,
              previous: last.response.previous_response_id, text: textOf(last.response) },
  ratings: [await rate(chat.id, "up"), await rate(response.id, "down"), await rate(last.response.id, 1)],
}));
