"""Check that a code change leaves ResNet-20 searches unchanged: static observations of the zoo CNNs and the plans a
seeded random search and a seeded PPO search produce on a synthetic scorer, as JSON, to diff between checkouts.

    PYTHONPATH=<checkout> python benchmarks/feature_parity.py --out /tmp/a.json   # once per checkout
    python benchmarks/feature_parity.py --compare /tmp/a.json /tmp/b.json --out benchmarks/results/feature_parity

The zoo ResNet-20 checkpoint's observations are taken when ``--checkpoint`` is given (static features do not depend
on weights, the checkpoint only makes the check literal).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def snapshot(checkpoint: str | None, ppo_steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from synthetic import PreferenceScorer

    from rlprune.agents.sb3_agents import make_agent
    from rlprune.envs import LayerPruningEnv
    from rlprune.envs.features import static_features
    from rlprune.models import build_model
    from rlprune.pruning import analyze

    out: dict = {"features": {}, "plans": {}}
    for name in ("resnet20", "mobilenetv2", "vgg16_bn"):
        torch.manual_seed(0)
        model = build_model(name).eval()
        if name == "resnet20" and checkpoint:
            from rlprune.io.checkpoint import load_checkpoint

            model, _ = load_checkpoint(checkpoint)
        s = analyze(model.eval(), torch.zeros(1, 3, 32, 32))
        out["features"][name] = static_features(s).tolist()
        out.setdefault("total_macs", {})[name] = s.total_macs
    torch.manual_seed(0)
    s = analyze(build_model("resnet20").eval(), torch.zeros(1, 3, 32, 32))
    env = LayerPruningEnv(PreferenceScorer(s, {0, 5, 9}), target=0.5)
    rng = np.random.default_rng(0)
    out["plans"]["random"] = [
        env.rollout(lambda _obs: rng.uniform(-1, 1, 1).astype(np.float32)).channels for _ in range(5)
    ]
    plans = []
    env2 = LayerPruningEnv(PreferenceScorer(s, {0, 5, 9}), target=0.5, on_episode=lambda i: plans.append(i["plan"]))
    agent = make_agent("ppo", env2, 0, {"n_steps": 48, "batch_size": 24})
    agent.learn(ppo_steps)
    out["plans"]["ppo"] = [p["channels"] for p in plans]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--ppo-steps", type=int, default=240)
    ap.add_argument("--compare", nargs=2, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        result = {
            "features_identical": a["features"] == b["features"],
            "total_macs_identical": a["total_macs"] == b["total_macs"],
            "random_plans_identical": a["plans"]["random"] == b["plans"]["random"],
            "ppo_plans_identical": a["plans"]["ppo"] == b["plans"]["ppo"],
            "ppo_episodes": len(a["plans"]["ppo"]),
        }
        from _results import write_results

        md = "# Feature and search parity before/after a change\n\n" + "\n".join(
            f"- {k}: {v}" for k, v in result.items()
        )
        write_results(args.out, result, md + "\n")
        print(result)
        return
    Path(args.out).write_text(json.dumps(snapshot(args.checkpoint, args.ppo_steps)))


if __name__ == "__main__":
    main()
