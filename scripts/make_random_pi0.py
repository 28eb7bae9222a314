#!/usr/bin/env python
"""Write a random-weight pi0 checkpoint directory (for timing and memory checks where no real weights can be
downloaded, e.g. an offline GPU machine): config.json, model.safetensors, norm_stats.json (identity), a word-level
tokenizer over LIBERO-style instructions (unknown words map to <unk>: the weights are random anyway).

    python scripts/make_random_pi0.py --size full --dtype bfloat16 --device cuda --out /tmp/pi0_random
"""

from __future__ import annotations

import argparse
import time

import torch

from pi0.model.config import PI0Config
from pi0.model.modeling import PI0Model
from pi0.model.normalization import identity_stats
from pi0.ript.policy.pi0_policy import PI0Policy
from pi0.model.tokenizer import build_word_tokenizer

INSTRUCTIONS = [
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the black bowl next to the cookie box and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "open the middle drawer of the cabinet",
    "put the bowl on the stove",
    "push the plate to the front of the stove",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "full"), default="full")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="weights as stored")
    p.add_argument("--device", default="cpu", help="where the weights are initialised (cuda is much faster for full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    started = time.perf_counter()
    tokenizer = build_word_tokenizer(INSTRUCTIONS)
    config = PI0Config.full() if args.size == "full" else PI0Config.tiny(vocab_size=max(tokenizer.vocab_size, 8))
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = PI0Model(config)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    policy = PI0Policy(model, tokenizer, identity_stats(), device=args.device, dtype=dtype, seed=args.seed)
    policy.save_pretrained(args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: pi0 {args.size}, {params / 1e9:.2f} B parameters in {args.dtype}, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
