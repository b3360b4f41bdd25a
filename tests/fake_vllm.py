"""A stand-in vLLM server for fast tests: the routes alignlab calls, in a thread, with a real tiny model.

It samples with the tiny GPT-2 (the same seeded weights the tests train), returns the sampled token ids
and their log-probs after temperature as vLLM's ``/v1/completions`` does (``return_token_ids``,
``logprobs``; EOS kept), and hot-loads LoRA adapters from disk with peft, so a test can check that what
the trainer recomputes matches what the engine returned and that each update reached the server.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch


class FakeVLLM:
    """``with FakeVLLM(model, tokenizer, name) as fake:`` serves on ``fake.base_url`` (``.../v1``)."""

    def __init__(self, model, tokenizer, name: str = "alignlab-base", logprob_noise: float = 0.0):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.logprob_noise = logprob_noise  # added to every returned log-prob (a precision gap)
        self.adapters: dict[str, object] = {}  # name -> peft model
        self.calls: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.rng = torch.Generator().manual_seed(0)  # the server's own RNG, as vLLM's --seed
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- routes ----------------------------------------------------------------------------------------
    def route(self, path: str, body: dict | None):
        self.calls.append((path, body))
        if path == "/v1/models":
            return 200, {"data": [{"id": self.name}, *({"id": a} for a in self.adapters)]}
        if path == "/tokenize":
            return 200, {"tokens": self.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]}
        if path == "/v1/load_lora_adapter":
            from peft import PeftModel

            if body["lora_name"] in self.adapters:
                return 400, {"error": {"message": f"adapter {body['lora_name']} already loaded"}}
            import copy

            base = copy.deepcopy(self.model)
            self.adapters[body["lora_name"]] = PeftModel.from_pretrained(base, body["lora_path"]).eval()
            return 200, "Success"
        if path == "/v1/unload_lora_adapter":
            if self.adapters.pop(body["lora_name"], None) is None:
                return 404, {"error": {"message": "no such adapter"}}
            return 200, "Success"
        if path == "/collective_rpc":
            from safetensors.torch import load_file

            state = load_file(str(Path(body["kwargs"]["weights_path"]) / "model.safetensors"))
            self.model.load_state_dict(state, strict=False)
            return 200, {"results": [None]}
        if path == "/reset_prefix_cache":
            return 200, None
        if path == "/v1/completions":
            return 200, self.complete(body)
        return 404, {"error": {"message": f"no route {path}"}}

    @torch.no_grad()
    def complete(self, body: dict) -> dict:
        model = self.model if body["model"] == self.name else self.adapters[body["model"]]
        seed = body.get("seed")
        gen = self.rng if seed is None else torch.Generator().manual_seed(int(seed))
        eos, temp = self.tokenizer.eos_token_id, float(body["temperature"])
        choices = []
        for prompt in body["prompt"]:
            for _ in range(body["n"]):
                ids, lps = list(prompt), []
                for _ in range(body["max_tokens"]):
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float() / temp
                    logp = torch.log_softmax(logits, -1)
                    tok = int(torch.multinomial(logp.exp(), 1, generator=gen))
                    ids.append(tok)
                    lps.append(float(logp[tok]) + self.logprob_noise)
                    if tok == eos:
                        break
                out = ids[len(prompt) :]
                choices.append(
                    {
                        "index": len(choices),
                        "text": self.tokenizer.decode(out),
                        "token_ids": out,
                        "logprobs": {"token_logprobs": lps, "tokens": [f"token_id:{t}" for t in out]},
                        "finish_reason": "stop" if out and out[-1] == eos else "length",
                    }
                )
        return {"choices": choices}

    def handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def answer(self, body):
                with fake.lock:
                    code, out = fake.route(self.path, body)
                data = (json.dumps(out) if not isinstance(out, str) else out).encode() if out else b""
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(None)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.answer(json.loads(self.rfile.read(n) or b"{}"))

        return Handler
