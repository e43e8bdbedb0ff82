"""Which training method learns most from thumbs as real users give them?

    python bench/methods.py [--persona formal] [--answers 2000] [--methods sft,kto,best-of-n] [--runs 1]

The feedback store is simulated offline, without vLLM, so every method sees the same data:
the demo model answers `--answers` training prompts (as the base serves them on day one), the
persona decides what each user thinks, and the realistic habits decide what the system is
told: 5% of liked and 15% of disliked answers get a thumb, 20% of thumbs flipped. Each
method trains on those thumbs (`loraloop train --data`, no registry), the gate judges, and
the result is measured by the persona's TRUE taste on held-out prompts no run trained on
(the base measured in the same run). Figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sample(model, tokenizer, prompts: list[str], per_prompt: int, seed: int,  # type: ignore[no-untyped-def]
           batch: int = 32) -> list[list[str]]:
    """`per_prompt` sampled answers to each prompt, `batch` prompts per generate call (left
    padded: on this CPU a batch of 32 is several times faster than one prompt at a time)."""
    import torch

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        ids = tokenizer.apply_chat_template([[{"role": "user", "content": t}] for t in chunk],
                                            add_generation_prompt=True, padding=True, return_tensors="pt",
                                            return_dict=True)
        with torch.no_grad():
            gen = model.generate(**ids, do_sample=True, temperature=1.0, max_new_tokens=64,
                                 num_return_sequences=per_prompt, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(gen[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [texts[j * per_prompt:(j + 1) * per_prompt] for j in range(len(chunk))]
    return out


def main() -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from demo.personas import persona
    from demo.population import REALISTIC, Habits, prompt
    from trainer.demo_model import ensure_demo_model
    from trainer.train import main as train
    from trainer.train_config import TrainConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--persona", default="formal")
    p.add_argument("--answers", type=int, default=2000, help="answers served before the first training run")
    p.add_argument("--methods", default="sft,kto,best-of-n")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--heldout-n", type=int, default=200)
    p.add_argument("--runs", type=int, default=1, help="data seeds per method (the median is reported)")
    p.add_argument("--ideal", action="store_true", help="every answer rated, no noise (the lab regime)")
    args = p.parse_args()

    home = Path(os.environ.get("LORALOOP_DATA_DIR", Path.home() / ".local/share/loraloop"))
    demo = ensure_demo_model(home)
    work = Path(tempfile.mkdtemp(prefix="loraloop-methods-"))
    (work / "models").symlink_to(demo.parent)
    os.environ["LORALOOP_DATA_DIR"] = str(work)
    os.environ.pop("LORALOOP_DATABASE_URL", None)  # the run's own SQLite, under `work`
    taste = persona(args.persona)
    habits = Habits() if args.ideal else REALISTIC
    tokenizer = AutoTokenizer.from_pretrained(demo)

    def load(adapter: Path | None):  # type: ignore[no-untyped-def]
        base = AutoModelForCausalLM.from_pretrained(demo, dtype=torch.float32)
        return (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()

    rng = random.Random(7)
    heldout = [prompt(rng, "heldout") for _ in range(args.heldout_n)]

    def true_rate(adapter: Path | None) -> float:
        answers = sample(load(adapter), tokenizer, heldout, 1, seed=11)
        return sum(taste.likes(q, a[0]) for q, a in zip(heldout, answers, strict=True)) / len(heldout)

    base_rate = true_rate(None)
    print(f"persona {args.persona}, {'ideal' if args.ideal else 'realistic'} habits {habits}; "
          f"base {base_rate:.2f} on {len(heldout)} held-out prompts", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in args.methods.split(",")}
    for run in range(args.runs):
        rng = random.Random(100 + run)
        asked = [prompt(rng) for _ in range(args.answers)]
        served = sample(load(None), tokenizer, asked, 1, seed=100 + run)
        thumbs = [(q, a[0], habits.thumb(taste.likes(q, a[0]), rng)) for q, a in zip(asked, served, strict=True)]
        thumbs = [(q, a, t) for q, a, t in thumbs if t is not None]
        kto = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}],
                "label": t} for q, a, t in thumbs]
        sft = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a, t in thumbs if t]
        (work / f"kto-{run}.jsonl").write_text("\n".join(json.dumps(e) for e in kto))
        (work / f"sft-{run}.jsonl").write_text("\n".join(json.dumps(e) for e in sft))
        up = sum(t for _, _, t in thumbs)
        print(f"data seed {run}: {len(thumbs)} thumbs of {args.answers} answers ({up} up, {len(thumbs) - up} down)",
              flush=True)
        for method in results:
            started = time.monotonic()
            data = work / f"{'sft' if method == 'sft' else 'kto'}-{run}.jsonl"
            try:
                result = train(TrainConfig(method=method, data=str(data), steps=args.steps, register=False,
                                           seed=run))
            except SystemExit as exc:
                print(f"  {method}: no candidate ({exc})", flush=True)
                results[method].append({"rate": None, "approved": False, "seconds": time.monotonic() - started})
                continue
            rate = true_rate(result.adapter_dir)
            results[method].append({"rate": rate, "approved": result.approved, "reasons": result.reasons,
                                    "seconds": round(time.monotonic() - started)})
            print(f"  {method}: held-out {rate:.2f} (base {base_rate:.2f}), gate "
                  f"{'approved' if result.approved else 'rejected: ' + '; '.join(result.reasons)}, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    print("\n| method | held-out true rate (median) | base | runs approved by the gate | seconds (median) |")
    print("|---|---|---|---|---|")
    for method, rs in results.items():
        rates = [r["rate"] for r in rs if r["rate"] is not None]
        print(f"| {method} | {statistics.median(rates) if rates else '-'} | {base_rate:.2f} | "
              f"{sum(r['approved'] for r in rs)}/{len(rs)} | {statistics.median(r['seconds'] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
