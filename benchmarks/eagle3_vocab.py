"""Benchmark: EAGLE-3's draft-vocabulary size V_d on a target: acceptance ceiling and draft-step cost.

A token outside the draft vocabulary can never be drafted, so the share of the target's own greedy tokens
that the vocabulary covers caps top-1 acceptance. The vocabulary is ranked as EAGLE-3 ranks it (most
frequent answer tokens, methods/_eagle3_train.py) on reference answers of the four datagen prompt
sources (ShareGPT, GPTeacher codegen / roleplay, GSM8K train), tokenized by the target; coverage is
measured on the target's greedy answers in a datagen folder (disjoint text: the target's answers, not the
references). Per V_d it also reports the LM-head multiply-adds per drafted node and, unless --no-timing,
the median time of one tree level's head (k nodes: norm, lm_head, log-softmax, top-k) and of the whole
level (fc-free layer pass over the k nodes, no cached context, + head) with a random net; on a shared,
loaded CPU these times are indicative only.

Usage: python benchmarks/eagle3_vocab.py --data DIR [--sizes 8192,16384,32768] [--texts 3000] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

from harness.suite import read_jsonl, resolve_data_file
from harness.target import Target
from harness.train.prompts import SOURCES
from methods.eagle2 import causal_mask
from methods.eagle3 import Eagle3Net


def reference_answers(limit: int, data_dir: Path | None) -> list[str]:
    texts = []
    for name, relative in SOURCES.items():
        path = resolve_data_file(relative, None, data_dir)
        if name == "gsm8k":
            texts += [r["answer"] for r in read_jsonl(path)][:limit]
            continue
        records = json.loads(path.read_text(encoding="utf-8"))[:limit]
        for record in records:
            if "conversations" in record:
                texts += [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
            else:
                texts.append(record.get("response", ""))
    return texts


def greedy_answer_tokens(folder: Path) -> list[int]:
    manifest = json.loads((folder / "manifest.json").read_text())
    tokens = []
    for shard in manifest["shards"]:
        with safe_open(str(folder / shard["file"]), "pt") as f:
            ids, mask = f.get_tensor("input_ids"), f.get_tensor("loss_mask").bool()
        tokens += ids[mask].tolist()
    return tokens


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="a datagen folder of the target's greedy answers")
    parser.add_argument("--sizes", default="8192,16384,32768")
    parser.add_argument("--texts", type=int, default=3000, help="records per prompt source used for ranking")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    target = Target.load(None, dtype="float32", device="cpu")
    counts = Counter()
    for text in reference_answers(args.texts, args.data_dir):
        counts.update(target.tokenizer(text, add_special_tokens=False).input_ids)
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    greedy = greedy_answer_tokens(args.data)
    vocab, hidden = target.vocab_size, target.hidden_size
    result = {"target": target.model_id, "vocab_size": vocab, "ranking_tokens": sum(counts.values()),
              "ranking_distinct": len(counts), "greedy_tokens": len(greedy), "sizes": {}}
    k = args.top_k
    for size in [int(s) for s in args.sizes.split(",")] + [vocab]:
        chosen = ranked[:size]
        if len(chosen) < size:
            seen = set(chosen)
            chosen += [i for i in range(vocab) if i not in seen][:size - len(chosen)]
        keep = torch.zeros(vocab, dtype=torch.bool)
        keep[torch.tensor(chosen)] = True
        row = {"coverage": float(keep[torch.tensor(greedy)].float().mean()), "head_macs_per_node": size * hidden}
        if not args.no_timing:
            net = Eagle3Net(target.model, torch.tensor(sorted(chosen)), (2, 15, 27)).eval()
            out = torch.randn(k, hidden)
            row["head_ms"] = median_ms(lambda: torch.log_softmax(net.head(out).float(), -1).topk(k), args.repeats)
            embeds, feats = torch.randn(1, k, hidden), torch.randn(1, k, hidden)
            mask, positions = causal_mask(k, 0, torch.float32, "cpu"), torch.arange(k)[None]

            def level():
                layer = net(embeds, feats, positions, mask)
                return torch.log_softmax(net.head(layer[0]).float(), -1).topk(k)
            row["level_ms"] = median_ms(level, args.repeats)
        result["sizes"][str(size)] = row
        print(size, json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "sizes"}))


if __name__ == "__main__":
    main()
