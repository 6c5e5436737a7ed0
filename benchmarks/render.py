"""Rewrite the generated blocks of benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/render.py            # rewrite the README
    python benchmarks/render.py --check    # exit 1 if the README differs from what the JSON renders

A block lies between `<!-- results:NAME -->` and `<!-- /results:NAME -->` and shows results/NAME.json:
the command that produced it, the host it ran on, its settings and its tables. Everything between the
markers is generated, so numbers are changed by rerunning a benchmark, never by editing the README.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)

# The command that fills a block, for blocks named otherwise than `python benchmarks/<name>.py`.
COMMANDS = {
    "quantize-digits": "python benchmarks/quantize.py --task digits",
    "quantize-mnist": "python benchmarks/quantize.py --task mnist",
    "quantize-peers": "python benchmarks/quantize.py --peers",
    "quantize-qat-lr": "python benchmarks/quantize.py --task zoo --teachers gn_separable,digits_cnn,digits_mlp_bn --seeds 0,1 --target mobile --sources generator --qat-lr 0.0001,0.001,0.003,0.01 --name quantize-qat-lr",
    "own-teacher-tabular": "python benchmarks/own_teacher.py --only tabular",
    "own-teacher-image": "python benchmarks/own_teacher.py --only image",
    "real-ceiling-mnist": "python benchmarks/real_ceiling.py --task mnist --seeds 0,1",
    "real-ceiling-digits": "python benchmarks/real_ceiling.py --task digits --steps 3000 --seeds 0,1,2,3",
    "real-ceiling-zoo": "python benchmarks/real_ceiling.py --task zoo --teachers gn_separable,wide_shallow --steps 4000 --shifts 0 --seeds 0",
    "replay-fidelity": "python benchmarks/replay_fidelity.py --seeds 2,3",
    "distill-bn_cnn": "python benchmarks/distill.py --teachers bn_cnn --time-budget 840 --seeds 0,1 --name distill-bn_cnn",
    "distill-bn_cnn-faster-host": "python benchmarks/distill.py --teachers bn_cnn --time-budget 840 --seeds 0,1 --name distill-bn_cnn-faster-host",
    "distill-lenet5": "python benchmarks/distill.py --teachers lenet5 --time-budget 600 --seeds 0,1 --name distill-lenet5",
    "distill-strided": "python benchmarks/distill.py --teachers strided_cnn --time-budget 600 --seeds 0,1 --name distill-strided",
    "distill-bn_cnn-clean": "python benchmarks/distill.py --teachers bn_cnn --time-budget 840 --set distill.input_noise=0 --set distill.input_attack=0 --name distill-bn_cnn-clean",
    "distill-lenet5-clean": "python benchmarks/distill.py --teachers lenet5 --time-budget 600 --set distill.input_noise=0 --set distill.input_attack=0 --name distill-lenet5-clean",
    "distill-resnet_small": "python benchmarks/distill.py --teachers resnet_small --time-budget 600 --seeds 0 --name distill-resnet_small",
    "distill-resnet_small-s1": "python benchmarks/distill.py --teachers resnet_small --time-budget 600 --seeds 1 --name distill-resnet_small-s1",
    "distill-mlp": "python benchmarks/distill.py --teachers mlp --time-budget 600 --seeds 0,1 --name distill-mlp",
    "distill-digits": "python benchmarks/distill.py --teachers digits_cnn,digits_mlp_bn --name distill-digits",
    "distill-digits-avx2": "python benchmarks/distill.py --teachers digits_cnn,digits_mlp_bn --seeds 0,1 --name distill-digits-avx2",
    "distill-builtin-120s": "python benchmarks/distill.py --teachers digits --seeds 0,1,2,3 --time-budget 120 --name distill-builtin-120s",
    "distill-builtin-120s-avx2": "python benchmarks/distill.py --teachers digits --seeds 0,1,2,3 --time-budget 120 --name distill-builtin-120s-avx2",
    "distill-builtin-2threads": "python benchmarks/distill.py --teachers digits --seeds 0,1,2,3 --set threads=2 --name distill-builtin-2threads",
    "distill-gn_separable": "python benchmarks/distill.py --teachers gn_separable --seeds 0,1 --name distill-gn_separable",
    "distill-gn_separable-avx2": "python benchmarks/distill.py --teachers gn_separable --seeds 0,1 --name distill-gn_separable-avx2",
    "distill-new-kinds": "python benchmarks/distill.py --teachers layernorm_mlp,elu_avgpool32 --seeds 0,1 --name distill-new-kinds",
    "distill-gelu_ls": "python benchmarks/distill.py --teachers gelu_ls --seeds 0,1 --name distill-gelu_ls",
    "distill-digits-new-kinds": "python benchmarks/distill.py --teachers digits_instnorm,digits_mobile,digits_vit --seeds 0,1 --name distill-digits-new-kinds",
    "distill-digits_vit-ratio1": "python benchmarks/distill.py --teachers digits_vit --set student.ratio=1.0 --seeds 0,1 --name distill-digits_vit-ratio1",
    "real-ceiling-new-kinds": "python benchmarks/real_ceiling.py --task zoo --teachers digits_instnorm,digits_mobile,digits_vit --steps 4000 --shifts 0 --seeds 0 --name real-ceiling-new-kinds",
    "distill-meta-nobudget": "python benchmarks/distill.py --teachers wide_shallow,gn_separable --synthesizers meta --seeds 0 --name distill-meta-nobudget",
    "distill-conditional": "python benchmarks/distill.py --teachers digits,lenet5,gn_separable --synthesizers conditional --seeds 0 --name distill-conditional",
    "replay-standard": "python benchmarks/replay.py --task digits --modes vae,none --seeds 0,1,2,3",
    "replay-class-by-class": "python benchmarks/replay.py --task digits --scenario class-by-class --modes vae,none --seeds 0,1",
    "scale-cuda": "python benchmarks/scale.py --device cuda",
}


def command_for(name: str) -> str:
    return COMMANDS.get(name, f"python benchmarks/{name}.py")


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def block(name: str, doc: dict | None) -> str:
    """The generated text between a block's markers."""
    if doc is None:
        return f"Not measured yet: run `{command_for(name)}`.\n"
    head = f"`{doc['command']}`, measured on {doc['measured_on']}."
    if doc.get("settings"):
        head += " Settings: " + ", ".join(f"{k} = {_value(v)}" for k, v in doc["settings"].items()) + "."
    return f"{head}\n\n{results.tables_markdown(doc)}\n"


def load_all(folder: Path) -> dict[str, dict]:
    return {p.stem: results.load(p) for p in sorted(folder.glob("*.json"))}


def render(text: str, docs: dict[str, dict]) -> str:
    """`text` with every block rewritten from `docs`; a result with no block in `text` is an error."""
    names = {m.group("name") for m in BLOCK.finditer(text)}
    orphans = sorted(set(docs) - names)
    if orphans:
        raise SystemExit(f"no <!-- results:NAME --> block in the README for: {', '.join(orphans)}")
    return BLOCK.sub(lambda m: m.group(1) + block(m.group("name"), docs.get(m.group("name"))) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is stale, change nothing")
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--results", type=Path, default=results.RESULTS)
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = render(text, load_all(args.results))
    if args.check:
        if new != text:
            print(f"{args.readme} is stale: run python benchmarks/render.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
